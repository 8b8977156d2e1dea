"""``rmsprop.RMSprop`` is a drop-in ``torch.optim.RMSprop``.

For every configuration torch can express, in float32 and float64, over 100
steps: the same parameters and the same ``state`` (keys, dtypes, shapes,
values). Our paths use PyTorch's own kernels in PyTorch's order, so we ask for
bit equality, which is stricter than the promise (fp32 ≤ 1e-6, fp64 ≤ 1e-12).
"""

from __future__ import annotations

import copy
import inspect

import pytest
import torch

import rmsprop

from cases import TORCH_EXPRESSIBLE
from helpers import clone_params, grad_stream, make_params, needs_fused, run

STEPS = 100


def assert_same_optimizer(ours, theirs, our_params, their_params):
    for p, q in zip(our_params, their_params):
        assert torch.equal(p, q)
        assert ours.state[p].keys() == theirs.state[q].keys()
        for key, value in theirs.state[q].items():
            mine = ours.state[p][key]
            assert (mine.dtype, mine.shape, mine.device) == (value.dtype, value.shape, value.device), key
            assert torch.equal(mine, value), key


@pytest.mark.parametrize("foreach", [False, True], ids=["forloop", "foreach"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["fp32", "fp64"])
@pytest.mark.parametrize("name,knobs", TORCH_EXPRESSIBLE, ids=[n for n, _ in TORCH_EXPRESSIBLE])
def test_same_trajectory_and_state_as_torch(name, knobs, dtype, foreach):
    base = make_params(dtype, complex_too=True)
    stream = grad_stream(base, STEPS)
    ours_p, theirs_p = clone_params(base), clone_params(base)
    changes = {30: 3e-3, 60: 2e-2}
    ours = run(rmsprop.RMSprop, ours_p, stream, changes, foreach=foreach, **knobs)
    theirs = run(torch.optim.RMSprop, theirs_p, stream, changes, foreach=foreach, **knobs)
    assert_same_optimizer(ours, theirs, ours_p, theirs_p)
    assert ours.state_dict()["state"].keys() == theirs.state_dict()["state"].keys()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["fp32", "fp64"])
@pytest.mark.parametrize("name,knobs", TORCH_EXPRESSIBLE, ids=[n for n, _ in TORCH_EXPRESSIBLE])
def test_default_paths_keep_the_drop_in_promise(name, knobs, dtype):
    """Both classes on their default path (ours: cache-blocked foreach on CPU,
    the reference path for a group holding complex parameters; PyTorch's: the
    for-loop): bit for bit, complex parameters included."""
    base = make_params(dtype, complex_too=True)
    stream = grad_stream(base, STEPS)
    ours_p, theirs_p = clone_params(base), clone_params(base)
    ours = run(rmsprop.RMSprop, ours_p, stream, **knobs)
    theirs = run(torch.optim.RMSprop, theirs_p, stream, **knobs)
    assert_same_optimizer(ours, theirs, ours_p, theirs_p)


@pytest.mark.parametrize("dtype", [torch.complex64, torch.complex128], ids=["complex64", "complex128"])
def test_default_paths_agree_on_complex_weight_decay_for_every_seed(dtype):
    """Swap the import and nothing else moves, on the default paths too, at
    every step. With weight decay PyTorch's foreach and for-loop paths round a
    complex update 1 ulp apart (the for-loop adds λ·θ in complex arithmetic),
    in 43 to 50 of 50 seeds measured: our default on CPU must be the path
    PyTorch's default is there, its for-loop (our reference path)."""
    differ = {}
    for seed in range(50):
        knobs = dict(weight_decay=0.1, momentum=0.9 * (seed % 2), centered=seed % 4 >= 2)
        gen = torch.Generator().manual_seed(seed)
        base = [torch.nn.Parameter(torch.randn(s, generator=gen, dtype=dtype)) for s in ((5,), (3, 4), ())]
        base.append(torch.nn.Parameter(torch.randn(4, generator=gen, dtype=dtype.to_real())))  # a real one
        ours_p, theirs_p = clone_params(base), clone_params(base)
        ours, theirs = rmsprop.RMSprop(ours_p, **knobs), torch.optim.RMSprop(theirs_p, **knobs)
        for t, grads in enumerate(grad_stream(base, 30, seed=1000 + seed)):
            for p, q, g in zip(ours_p, theirs_p, grads):
                p.grad, q.grad = g, None if g is None else g.clone()
            ours.step()
            theirs.step()
            if not all(torch.equal(p, q) for p, q in zip(ours_p, theirs_p)):
                differ[seed] = t
                break
        else:
            assert_same_optimizer(ours, theirs, ours_p, theirs_p)
    assert differ == {}, f"seeds differing (at step): {differ}"


def _step_a_repeated_parameter(cls, size: int, **kwargs):
    """Three steps of a group listing its first parameter twice, as PyTorch's constructor accepts
    (with a warning that a repeat will become an error)."""
    gen = torch.Generator().manual_seed(0)
    p, r = (torch.nn.Parameter(torch.randn(n, generator=gen)) for n in (size, 7))
    with pytest.warns(UserWarning, match="duplicate parameters"):
        opt = cls([p, r, p], lr=1e-2, momentum=0.9, centered=True, **kwargs)
    for _ in range(3):
        p.grad, r.grad = torch.randn(size, generator=gen), torch.randn(7, generator=gen)
        opt.step()
    return opt, [p, r]


# 300,000 elements: a step of over 1 MiB, where the default would otherwise compile, and more than
# one of the foreach path's chunks
@pytest.mark.parametrize("size", [100, 300_000])
def test_a_parameter_listed_twice_steps_as_torchs_default_and_foreach_path_step_it(size):
    """PyTorch's for-loop (its default on CPU) steps a repeated parameter twice in a row, its
    foreach path line by line, so the two disagree: our default on CPU takes the path PyTorch's
    default takes (the reference path, its for-loop) at every size, and foreach=True equals
    PyTorch's foreach=True at every size (the chunks of the cache-blocked loop are never cut
    between two listings of a tensor)."""
    for ours_kwargs, theirs_kwargs in (({}, {}), ({"foreach": True}, {"foreach": True})):
        ours, ours_p = _step_a_repeated_parameter(rmsprop.RMSprop, size, **ours_kwargs)
        theirs, theirs_p = _step_a_repeated_parameter(torch.optim.RMSprop, size, **theirs_kwargs)
        assert_same_optimizer(ours, theirs, ours_p, theirs_p)
        assert int(ours.state[ours_p[0]]["step"]) == 6  # two steps a step, as PyTorch counts them


@needs_fused
def test_fused_refuses_a_parameter_listed_twice_before_any_write():
    """One compiled pass writes each tensor once: stepping a repeated parameter once while counting
    two steps (what the fused path did) would leave θ and its step count apart. Refused, naming both."""
    p, r = torch.nn.Parameter(torch.randn(300)), torch.nn.Parameter(torch.randn(7))
    opt = rmsprop.RMSprop([p, r], lr=1e-2, fused=True)
    p.grad, r.grad = torch.randn(300), torch.randn(7)
    opt.step()
    opt.param_groups[0]["params"].append(p)  # edited by hand: the constructor's warning never ran
    before = [p.detach().clone(), r.detach().clone()], copy.deepcopy(opt.state_dict())
    message = (r"fused=True cannot run: parameter 2 of param group 0 is parameter 0 of param group 0 again: "
               r".* pass foreach=True or fused=False")
    with pytest.raises(ValueError, match=message):
        opt.step()
    assert all(torch.equal(a, b) for a, b in zip(before[0], (p, r)))
    assert str(opt.state_dict()) == str(before[1])


@pytest.mark.parametrize("lr", [torch.tensor(0.01), torch.tensor([0.01]), torch.tensor([[0.01]])],
                         ids=["0-d", "[1]", "[1,1]"])
def test_tensor_lr_matches_torch(lr):
    base = make_params(torch.float32)
    stream = grad_stream(base, 20)
    ours_p, theirs_p = clone_params(base), clone_params(base)
    ours = run(rmsprop.RMSprop, ours_p, stream, lr=lr.clone(), momentum=0.5)
    theirs = run(torch.optim.RMSprop, theirs_p, stream, lr=lr.clone(), momentum=0.5)
    assert_same_optimizer(ours, theirs, ours_p, theirs_p)


def _train_with_groups_and_schedulers(cls, dtype):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1)).to(dtype)
    opt = cls(
        [
            {"params": model[0].parameters(), "momentum": 0.9, "centered": True},
            {"params": model[2].parameters(), "lr": 0.05, "weight_decay": 0.01},
        ],
        lr=0.01,
        alpha=0.95,
    )
    schedulers = [
        torch.optim.lr_scheduler.StepLR(opt, step_size=10, gamma=0.5),
        torch.optim.lr_scheduler.ReduceLROnPlateau(opt, patience=2),
    ]
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(32, 4, generator=gen, dtype=dtype)
    y = torch.randn(32, 1, generator=gen, dtype=dtype)
    for _ in range(STEPS):
        def closure():
            opt.zero_grad()
            loss = torch.nn.functional.mse_loss(model(x), y)
            loss.backward()
            return loss

        loss = opt.step(closure)
        schedulers[0].step()
        schedulers[1].step(loss.item())
    return model, opt


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["fp32", "fp64"])
def test_param_groups_and_schedulers_match_torch(dtype):
    ours_model, ours = _train_with_groups_and_schedulers(rmsprop.RMSprop, dtype)
    theirs_model, theirs = _train_with_groups_and_schedulers(torch.optim.RMSprop, dtype)
    assert_same_optimizer(ours, theirs, list(ours_model.parameters()), list(theirs_model.parameters()))
    assert [g["lr"] for g in ours.param_groups] == [g["lr"] for g in theirs.param_groups]


def test_signature_is_torchs():
    ours = inspect.signature(rmsprop.RMSprop.__init__).parameters
    theirs = inspect.signature(torch.optim.RMSprop.__init__).parameters
    positional = [n for n, p in ours.items() if p.kind is p.POSITIONAL_OR_KEYWORD]
    assert positional == list(theirs)
    extra = [n for n, p in ours.items() if p.kind is p.KEYWORD_ONLY]
    assert extra == ["fused", "preset", "eps_in_sqrt", "initial_square_avg", "lr_in_momentum", "nesterov",
                     "decoupled_weight_decay", "bias_correction", "op_order", "caution", "agc_clip",
                     "max_grad_norm", "ema_decay", "ema_every", "ema_warmup", "nonfinite",
                     "state_precision", "stochastic_rounding", "rounding_seed", "kahan_summation"]


def test_defaults_are_torchs():
    p = [torch.nn.Parameter(torch.zeros(1))]
    ours, theirs = rmsprop.RMSprop(p).defaults, torch.optim.RMSprop(p).defaults
    for key, value in theirs.items():
        assert ours[key] == value, key
