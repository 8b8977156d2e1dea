"""Carrying state over from other libraries: timm's state dicts and raw moments."""

from __future__ import annotations

import pytest
import torch

import rmsprop
from rmsprop.interop import import_moments

from helpers import clone_params, grad_stream, make_params


def _timm_layout_state_dict(**group):
    """A state dict in the layout timm's RMSpropTF writes (its group keys, an int step)."""
    keys = dict(lr=0.01, momentum=0.9, alpha=0.9, eps=1e-10, centered=False, weight_decay=0.0,
                decoupled_decay=False, lr_in_momentum=True, caution=False)
    return {
        "state": {0: {"step": 5, "square_avg": torch.full((3,), 2.0),
                      "momentum_buffer": torch.full((3,), 0.1)}},
        "param_groups": [{**keys, **group, "params": [0]}],
    }


def test_a_timm_state_dict_reads_as_the_timm_preset():
    p = torch.nn.Parameter(torch.randn(3))
    opt = rmsprop.RMSprop([p])  # even from a torch-preset optimizer: the saved knobs win
    opt.load_state_dict(_timm_layout_state_dict(decoupled_decay=True, weight_decay=0.01))
    group = opt.param_groups[0]
    assert group["preset"] == "timm" and group["decoupled_weight_decay"] is True
    assert (group["eps_in_sqrt"], group["initial_square_avg"], group["lr_in_momentum"]) == (True, 1.0, True)
    assert "decoupled_decay" not in group and group["caution"] is False
    assert opt.state[p]["step"].dtype == torch.float32 and opt.state[p]["step"].item() == 5


def test_a_timm_state_dict_saved_with_caution_continues_cautious():
    p = torch.nn.Parameter(torch.randn(3))
    opt = rmsprop.RMSprop([p])
    opt.load_state_dict(_timm_layout_state_dict(caution=True))
    assert opt.param_groups[0]["caution"] is True and opt.param_groups[0]["preset"] == "timm"


@pytest.mark.parametrize("option", ["corrected_weight_decay"])
def test_timm_options_we_do_not_implement_are_refused(option):
    p = torch.nn.Parameter(torch.randn(3))
    opt = rmsprop.RMSprop([p], preset="timm")
    before = opt.state_dict()["param_groups"][0].copy()
    with pytest.raises(ValueError, match=f"timm's RMSpropTF with {option}=True"):
        opt.load_state_dict(_timm_layout_state_dict(**{option: True}))
    assert opt.state_dict()["param_groups"][0] == before


@pytest.mark.parametrize("preset,knobs", [("keras", {"momentum": 0.9, "centered": True}),
                                          ("optax", {"lr": 0.01, "bias_correction": True}),
                                          ("tf1", {"lr": 0.01, "momentum": 0.9})])
def test_imported_moments_continue_exactly(preset, knobs):
    base = make_params(torch.float64)[:3]
    # A gradient for every parameter at every step, as in Keras and optax, whose
    # step count is one for all variables.
    stream = [[torch.zeros_like(p) if g is None else g for p, g in zip(base, grads)]
              for grads in grad_stream(base, 20)]
    straight = clone_params(base)
    opt = rmsprop.RMSprop(straight, preset=preset, **knobs)
    for t, grads in enumerate(stream):
        if t == 10:  # hand the moments over as a foreign library would keep them: plain arrays
            moments = [{k: v.numpy().copy() for k, v in opt.state[p].items() if k != "step"}
                       for p in straight]
            resumed = [torch.nn.Parameter(p.detach().clone()) for p in straight]
            other = rmsprop.RMSprop(resumed, preset=preset, **knobs)
            import_moments(other, moments, step=10)
        for p, g in zip(straight, grads):
            p.grad = g
        opt.step()
        if t >= 10:
            for p, g in zip(resumed, grads):
                p.grad = g
            other.step()
    for a, b in zip(straight, resumed):
        assert torch.equal(a, b)


@pytest.mark.parametrize(
    "moments,message",
    [
        ([{"square_avg": torch.ones(2)}], "got moments for 1 parameters, the optimizer has 2"),
        ([{"square_avg": torch.ones(2)}, {"velocity": torch.ones(3)}], "unknown moment names"),
        ([{"square_avg": torch.ones(2)}, {"grad_avg": torch.ones(3)}], "square_avg is required"),
        ([{"square_avg": torch.ones(2)}, {"square_avg": torch.ones(4)}], "has shape (4,)"),
    ],
)
def test_import_moments_checks_before_it_changes_anything(moments, message):
    params = [torch.nn.Parameter(torch.zeros(2)), torch.nn.Parameter(torch.zeros(3))]
    opt = rmsprop.RMSprop(params)
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        import_moments(opt, moments, step=3)
    assert len(opt.state) == 0


def _full_precision_moments(params, knobs, steps=3):
    """Moments a float64 run of the same knobs reached, as a foreign library would hand them over."""
    wide = [torch.nn.Parameter(p.detach().to(torch.float64)) for p in params]
    opt = rmsprop.RMSprop(wide, **knobs)
    for t in range(steps):
        for p in wide:
            p.grad = torch.randn(p.shape, generator=torch.Generator().manual_seed(t), dtype=p.dtype)
        opt.step()
    return [{k: v.numpy() for k, v in opt.state[p].items() if k != "step"} for p in wide]


@pytest.mark.parametrize("precision", ["fp32", "bf16", "int8"])
def test_imported_moments_are_stored_as_state_precision_says(precision):
    """Stored as a group of that state_precision stores its state (the same as a
    full-precision state dict loads into it), and still so after a step."""
    knobs = dict(momentum=0.9, centered=True)
    # A large tensor (8-bit codes under int8) and a small one (kept float32 there).
    dtype = torch.bfloat16 if precision == "fp32" else torch.float32
    base = [torch.randn(64, 80).to(dtype), torch.randn(7).to(dtype)]
    moments = _full_precision_moments(base, knobs)
    imported, loaded = clone_params(base), clone_params(base)
    opt = rmsprop.RMSprop(imported, state_precision=precision, **knobs)
    import_moments(opt, moments, step=3)
    via_dict = rmsprop.RMSprop(loaded, state_precision=precision, **knobs)
    via_dict.load_state_dict({
        "state": {i: {"step": torch.tensor(3.0), **{k: torch.from_numpy(v).float() for k, v in m.items()}}
                  for i, m in enumerate(moments)},
        "param_groups": [{**opt.state_dict()["param_groups"][0]}],
    })
    fresh_params = clone_params(base)
    fresh = rmsprop.RMSprop(fresh_params, state_precision=precision, **knobs)
    for p in fresh_params:
        p.grad = torch.ones_like(p)
    fresh.step()  # the layout the optimizer gives its own state
    for p, q, r in zip(imported, loaded, fresh_params):
        ours, theirs = opt.state[p], via_dict.state[q]
        assert ours.keys() == theirs.keys() == fresh.state[r].keys()
        for key in ours:
            assert ours[key].dtype == fresh.state[r][key].dtype, key
            assert torch.equal(ours[key], theirs[key]), key
    for p in imported:
        p.grad = torch.ones_like(p)
    opt.step()
    for p, r in zip(imported, fresh_params):
        dtypes = {k: v.dtype for k, v in opt.state[p].items()}
        assert dtypes == {k: v.dtype for k, v in fresh.state[r].items()}


def _trained(complex_last=False):
    """An optimizer over two parameters that has state already (so "untouched" is not just "empty")."""
    last = torch.randn(3, dtype=torch.complex64) if complex_last else torch.randn(3)
    params = [torch.nn.Parameter(torch.randn(2)), torch.nn.Parameter(last)]
    opt = rmsprop.RMSprop(params, momentum=0.9, centered=True)
    for p in params:
        p.grad = torch.ones_like(p)
    opt.step()
    return opt


def _assert_state_untouched(opt, before):
    after = opt.state_dict()["state"]
    assert after.keys() == before.keys()
    for i in before:
        assert after[i].keys() == before[i].keys()
        for key in before[i]:
            assert torch.equal(after[i][key], before[i][key]), (i, key)


def _snapshot(opt):
    return {i: {k: v.clone() for k, v in s.items()} for i, s in opt.state_dict()["state"].items()}


@pytest.mark.parametrize("step", [float("nan"), float("inf"), 2.5, -1, True, torch.tensor(float("nan"))],
                         ids=["nan", "inf", "2.5", "-1", "bool", "nan-tensor"])
def test_import_moments_refuses_a_step_that_is_not_a_count(step):
    opt = _trained()
    before = _snapshot(opt)
    good = [{"square_avg": torch.ones(2)}, {"square_avg": torch.ones(3)}]
    with pytest.raises(ValueError, match="step must be a whole number >= 0"):
        import_moments(opt, good, step=step)
    _assert_state_untouched(opt, before)


def test_import_moments_takes_a_whole_step_in_any_numeric_form():
    np = pytest.importorskip("numpy")
    opt = _trained()
    for step in (7, 7.0, np.int64(7), np.asarray(7), torch.tensor(7)):
        import_moments(opt, [{"square_avg": torch.ones(2)}, {"square_avg": torch.ones(3)}], step=step)
        assert opt.state[opt.param_groups[0]["params"][0]]["step"].item() == 7


_NAN, _INF = float("nan"), float("inf")


@pytest.mark.parametrize(
    "last,complex_last,message",
    [
        ({"square_avg": torch.tensor([1.0, _NAN, 1.0])}, False, "square_avg holds NaN or infinite"),
        ({"square_avg": torch.tensor([1.0, _INF, 1.0])}, False, "square_avg holds NaN or infinite"),
        ({"square_avg": torch.tensor([1.0, -1e-3, 1.0])}, False, "square_avg holds negative values"),
        ({"square_avg": torch.ones(3), "momentum_buffer": torch.tensor([0.0, _NAN, 0.0])}, False,
         "momentum_buffer holds NaN or infinite"),
        ({"square_avg": torch.ones(3), "grad_avg": torch.tensor([-_INF, 0.0, 0.0])}, False,
         "grad_avg holds NaN or infinite"),
        # finite as given, infinite once stored at the parameter's float32
        ({"square_avg": torch.tensor([1.0, 1e300, 1.0], dtype=torch.float64)}, False,
         r"square_avg holds NaN or infinite values \(as torch.float32\)"),
        ({"square_avg": torch.ones(3), "grad_avg": torch.full((3,), 1 + 2j)}, False,
         r"grad_avg is complex \(torch.complex64\), the parameter is real"),
        ({"square_avg": torch.ones(3)}, True,
         r"square_avg is real \(torch.float32\), the parameter is complex"),
        ({"square_avg": torch.tensor([1 + 1j, 1 - 1j, 1 + 1j])}, True, "square_avg holds negative values"),
        ({"square_avg": torch.ones(3, dtype=torch.complex64),
          "momentum_buffer": torch.tensor([0j, complex(0, _NAN), 0j])}, True,
         "momentum_buffer holds NaN or infinite"),
    ],
    ids=["nan", "inf", "negative", "nan-momentum", "inf-grad-avg", "overflow", "complex-for-real",
         "real-for-complex", "complex-negative-imag", "complex-nan-imag"],
)
def test_import_moments_refuses_bad_moments_before_it_changes_anything(last, complex_last, message):
    """The bad entry is the LAST parameter's: the first one's good moments must not have been written."""
    opt = _trained(complex_last)
    before = _snapshot(opt)
    with pytest.raises(ValueError, match="parameter 1: " + message):
        import_moments(opt, [{"square_avg": torch.full((2,), 5.0)}, last], step=4)
    _assert_state_untouched(opt, before)


def test_complex_moments_keep_their_imaginary_part():
    p = torch.nn.Parameter(torch.randn(3, dtype=torch.complex64))
    opt = rmsprop.RMSprop([p], momentum=0.9)
    moments = {"square_avg": torch.tensor([1 + 2j, 3 + 4j, 5 + 6j]), "momentum_buffer": torch.full((3,), -1j)}
    import_moments(opt, [moments], step=2)
    for key, value in moments.items():
        assert torch.equal(opt.state[p][key], value.to(torch.complex64)), key
