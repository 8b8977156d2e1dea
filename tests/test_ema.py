"""The weights' average, line (16): ``ema_decay=``, ``ema_every=``, ``ema_warmup=``.

Held to a restatement of its definition in float64 on every path, to the
weights it must not change, and to its promises: the swap for evaluation
round-trips bit for bit, export matches by identity or name and refuses
before writing, the average is kept at float32 or wider whatever the state's
precision, and it survives a state dict (PyTorch's loader would cast it to
the parameter's dtype) and a resume bit for bit.
"""

from __future__ import annotations

import copy
import io

import pytest
import torch

import rmsprop

from helpers import clone_params, grad_stream, make_params, needs_fused

STEPS = 12
PATHS = [pytest.param(dict(foreach=False), id="reference"), pytest.param(dict(foreach=True), id="foreach"),
         pytest.param(dict(fused=True), id="fused", marks=needs_fused)]


def _expected(trajectory: list[torch.Tensor], decay: float, every: int, warmup: bool) -> torch.Tensor:
    """(16) restated from its definition: steps t = 1…T with weights θₜ; the
    n-th averaging step (t = 1 + (n − 1)·k) mixes θₜ in with weight 1 − δₙ,
    the first one with weight 1."""
    ema = None
    for t, theta in enumerate(trajectory, start=1):
        if (t - 1) % every:
            continue
        n = (t - 1) // every + 1
        if n == 1:
            ema = theta.clone()
            continue
        d = min(decay, 1 - n ** (-2 / 3)) if warmup else decay
        ema = ema + (1 - d) * (theta - ema)
    assert ema is not None
    return ema


def _train(params, stream, **knobs):
    """Step over ``stream``, recording every parameter after each step."""
    opt = rmsprop.RMSprop(params, lr=1e-2, momentum=0.9, **knobs)
    trajectory = []
    for grads in stream:
        for p, g in zip(params, grads):
            p.grad = g
        opt.step()
        trajectory.append([p.detach().clone() for p in params])
    return opt, trajectory


# The fused path compiles one structure per (ema_every, ema_warmup): two cover both switches.
_DEFINITION_CASES = [pytest.param(path.values[0], combo, marks=path.marks, id=f"{path.id}-{combo}")
                     for combo in [(0.9, 1, False), (0.5, 3, False), (0.99, 1, True), (0.999, 2, True)]
                     for path in (PATHS if combo[1] > 1 else PATHS[:2])]


@pytest.mark.parametrize("path,combo", _DEFINITION_CASES)
def test_the_average_is_its_definition_and_leaves_the_weights_alone(path, combo):
    decay, every, warmup = combo
    base = make_params(torch.float64, complex_too=True)
    stream = grad_stream(base, STEPS)
    with_ema, without = clone_params(base), clone_params(base)
    opt, trajectory = _train(with_ema, stream, ema_decay=decay, ema_every=every, ema_warmup=warmup, **path)
    _train(without, stream, **path)
    for i, (p, q) in enumerate(zip(with_ema, without)):
        assert torch.equal(p, q), f"θ{i}: the average changed the weights"
        if not p.requires_grad:
            assert "ema" not in opt.state.get(p, {})
            continue
        # a parameter without a gradient at some step does not count that step (its own t)
        steps = [t for t, grads in enumerate(stream) if grads[i] is not None]
        expected = _expected([trajectory[t][i] for t in steps], decay, every, warmup)
        # (torch.lerp's kernel fuses the multiply-add: a few ulp from the restatement's two roundings)
        torch.testing.assert_close(opt.state[p]["ema"], expected, rtol=1e-13, atol=1e-15)


@pytest.mark.parametrize("path", PATHS)
def test_every_path_averages_alike_in_float32(path):
    base = make_params(torch.float32)
    stream = grad_stream(base, STEPS)
    ref_params, params = clone_params(base), clone_params(base)
    ref, _ = _train(ref_params, stream, ema_decay=0.9, foreach=False)
    opt, _ = _train(params, stream, ema_decay=0.9, **path)
    for p, q in zip(ref_params, params):
        if p.requires_grad:
            torch.testing.assert_close(opt.state[q]["ema"], ref.state[p]["ema"], rtol=2e-6, atol=1e-7)


def test_swapping_the_average_in_round_trips_bit_for_bit():
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1))
    frozen = model[2].bias
    opt = rmsprop.RMSprop([{"params": [model[0].weight, model[0].bias], "ema_decay": 0.9},
                           {"params": [model[2].weight]}], lr=1e-2)
    x = torch.randn(16, 4)
    for _ in range(5):
        opt.zero_grad()
        model(x).square().mean().backward()
        opt.step()
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    with opt.ema_weights():
        assert torch.equal(model[0].weight, opt.state[model[0].weight]["ema"])
        assert torch.equal(model[0].bias, opt.state[model[0].bias]["ema"])
        assert torch.equal(model[2].weight, before["2.weight"])  # its group keeps no average
        assert torch.equal(frozen, before["2.bias"])
        assert not torch.equal(model[0].weight, before["0.weight"])
    for name, p in model.named_parameters():
        assert torch.equal(p, before[name]), name
    with pytest.raises(RuntimeError, match="inside"):
        with opt.ema_weights():
            raise RuntimeError("inside")
    for name, p in model.named_parameters():
        assert torch.equal(p, before[name]), name


def test_copy_ema_to_matches_by_identity_or_name_and_refuses_before_writing():
    model = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.Linear(2, 1))
    opt = rmsprop.RMSprop(model.named_parameters(), lr=0.1, ema_decay=0.5)
    for _ in range(3):
        opt.zero_grad()
        model(torch.ones(1, 3)).sum().backward()
        opt.step()
    export = copy.deepcopy(model)
    opt.copy_ema_to(export)  # a copy: matched by name
    for (name, p), q in zip(model.named_parameters(), export.parameters()):
        assert torch.equal(q, opt.state[p]["ema"]), name
    other = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.Linear(2, 2))  # 1.weight: another shape
    untouched = [p.detach().clone() for p in other.parameters()]
    with pytest.raises(ValueError, match="copy_ema_to: the model's '1.weight' has shape"):
        opt.copy_ema_to(other)
    assert all(torch.equal(p, q) for p, q in zip(other.parameters(), untouched))  # nothing written

    unnamed = rmsprop.RMSprop(model.parameters(), lr=0.1, ema_decay=0.5)
    for _ in range(2):
        unnamed.zero_grad()
        model(torch.ones(1, 3)).sum().backward()
        unnamed.step()
    with pytest.raises(ValueError, match="parameter 0 of param group 0 is not a parameter of the model"):
        unnamed.copy_ema_to(copy.deepcopy(model))
    unnamed.copy_ema_to(model)  # the model itself: matched by identity
    assert all(torch.equal(p, unnamed.state[p]["ema"]) for p in model.parameters())


@pytest.mark.parametrize("precision", ["param", "fp32", "bf16", "int8"])
def test_the_average_is_float32_or_wider_whatever_the_state_precision(precision):
    params = [torch.nn.Parameter(torch.randn(64, 80).to(torch.bfloat16)),  # 8-bit state when "int8"
              torch.nn.Parameter(torch.randn(3, dtype=torch.float64))]
    opt = rmsprop.RMSprop(params, lr=1e-3, ema_decay=0.99, state_precision=precision)
    for p in params:
        p.grad = torch.ones_like(p)
    opt.step()
    assert opt.state[params[0]]["ema"].dtype == torch.float32
    assert opt.state[params[1]]["ema"].dtype == torch.float64


def test_a_state_dict_keeps_the_average_wide_and_resumes_bit_for_bit():
    torch.manual_seed(0)
    w = torch.nn.Parameter(torch.randn(6, 5).to(torch.bfloat16))
    stream = [torch.randn(6, 5).to(torch.bfloat16) for _ in range(8)]

    def make(p):
        return rmsprop.RMSprop([p], lr=1e-3, ema_decay=0.99, ema_every=2, ema_warmup=True)

    straight = make(w)
    for g in stream:
        w.grad = g
        straight.step()

    torch.manual_seed(0)
    u = torch.nn.Parameter(torch.randn(6, 5).to(torch.bfloat16))
    first = make(u)
    for g in stream[:5]:
        u.grad = g
        first.step()
    buffer = io.BytesIO()
    torch.save({"param": u.detach().clone(), "opt": first.state_dict()}, buffer)
    buffer.seek(0)
    saved = torch.load(buffer)
    resumed_param = torch.nn.Parameter(saved["param"])
    resumed = make(resumed_param)
    resumed.load_state_dict(saved["opt"])
    assert resumed.state[resumed_param]["ema"].dtype == torch.float32  # not cast to bfloat16
    for g in stream[5:]:
        resumed_param.grad = g
        resumed.step()
    assert torch.equal(resumed_param, w)
    assert torch.equal(resumed.state[resumed_param]["ema"], straight.state[w]["ema"])


def test_switched_on_mid_run_the_average_starts_from_the_weights_then():
    p = torch.nn.Parameter(torch.randn(5))
    opt = rmsprop.RMSprop([p], lr=0.1)
    for _ in range(3):
        p.grad = torch.randn(5)
        opt.step()
    before = p.detach().clone()
    opt.param_groups[0]["ema_decay"] = 0.9
    p.grad = torch.randn(5)
    opt.step()
    expected = before + 0.1 * (p.detach() - before)  # step 4: 1 − δ of it, from the weights at switch-on
    torch.testing.assert_close(opt.state[p]["ema"], expected, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("knobs,message", [
    (dict(ema_decay=1.0), r"Invalid ema_decay value: 1.0 \(must lie in \[0, 1\)\)"),
    (dict(ema_decay=-0.1), "Invalid ema_decay value"),
    (dict(ema_decay=float("nan")), "Invalid ema_decay value"),
    (dict(ema_every=0), r"Invalid ema_every value: 0 \(an int ≥ 1\)"),
    (dict(ema_every=1.5), "Invalid ema_every value"),
    (dict(ema_every=True), "Invalid ema_every value"),
    (dict(ema_warmup=2), "Invalid ema_warmup value"),
])
def test_bad_settings_are_refused_naming_the_group(knobs, message):
    p = torch.nn.Parameter(torch.zeros(2))
    with pytest.raises(ValueError, match=message):
        rmsprop.RMSprop([p], **knobs)
    opt = rmsprop.RMSprop([p], lr=0.1)
    opt.param_groups[0].update(knobs)
    p.grad = torch.ones(2)
    with pytest.raises(ValueError, match=message + ".*in param group 0"):
        opt.step()
    assert not opt.state and torch.equal(p, torch.zeros(2))  # nothing written


def test_a_skipped_step_leaves_the_average_as_it_was():
    p = torch.nn.Parameter(torch.randn(4))
    opt = rmsprop.RMSprop([p], lr=0.1, ema_decay=0.9, nonfinite="skip")
    for _ in range(3):
        p.grad = torch.randn(4)
        opt.step()
    ema = opt.state[p]["ema"].clone()
    p.grad = torch.tensor([1.0, float("nan"), 0.0, 0.0])
    opt.step()
    assert torch.equal(opt.state[p]["ema"], ema) and opt.skipped_steps == 1


def test_a_tampered_average_in_a_state_dict_is_refused_before_anything_changes():
    p = torch.nn.Parameter(torch.randn(4))
    opt = rmsprop.RMSprop([p], lr=0.1, ema_decay=0.9)
    p.grad = torch.randn(4)
    opt.step()
    sd = opt.state_dict()
    sd["state"][0]["ema"] = torch.zeros(5)
    before = copy.deepcopy(opt.state_dict())
    with pytest.raises(ValueError, match="ema for parameter 0 of group 0 has shape"):
        opt.load_state_dict(sd)
    assert torch.equal(opt.state_dict()["state"][0]["ema"], before["state"][0]["ema"])
