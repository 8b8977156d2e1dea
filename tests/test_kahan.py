"""kahan_summation: bfloat16 parameters with a bfloat16 compensation (rmsprop.precision)."""

from __future__ import annotations

import io

import pytest
import torch

import rmsprop
from rmsprop.paths import PATHS as STEPS
from rmsprop.paths.grouping import StepTensors
from rmsprop.precision import KAHAN_COMP, kahan_write_
from rmsprop.settings import hyper_from, saved_defaults

from helpers import EVERY_BUFFER_KNOBS, grad_stream, make_params, needs_fused, train_cast

PATHS = {"reference": {"foreach": False}, "foreach": {"foreach": True}, "fused": {"fused": True}}
EVERY_PATH = ["reference", "foreach", pytest.param("fused", marks=needs_fused)]
KNOBS = EVERY_BUFFER_KNOBS


def _bf16(params):
    return [torch.nn.Parameter(p.detach().bfloat16(), requires_grad=p.requires_grad) for p in params]


def _weights(opt, params):
    """x = θ + c of each parameter that has a state, in float32."""
    return [p.detach().float() + opt.state[p][KAHAN_COMP].float() for p in params if p in opt.state]


# ---------------------------------------------------------------- the maths


def _stalled_run(path, steps=200, precision="fp32", **knobs):
    """bf16 parameters at 1.0 and a constant gradient: each update is about
    lr = 1e-4, below half a bf16 step at 1.0 (2**-9): round-to-nearest never
    moves them (tests/test_precision.py)."""
    p = torch.nn.Parameter(torch.ones(1024, dtype=torch.bfloat16))
    opt = rmsprop.RMSprop([p], lr=1e-4, state_precision=precision, **knobs, **PATHS[path])
    for _ in range(steps):
        p.grad = torch.ones_like(p)
        opt.step()
    return p, opt


@pytest.mark.parametrize("path", EVERY_PATH)
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_kahan_keeps_learning_where_round_to_nearest_stalls(path, precision):
    """Under "bf16" state too: with bf16 parameters the update would run in
    bfloat16 there (rmsprop.precision.working_dtype), where θ + c is θ."""
    nearest, _ = _stalled_run("foreach", precision=precision)  # (every path stalls: tests/test_precision.py)
    assert torch.equal(nearest.detach().float(), torch.ones(1024))
    p, opt = _stalled_run(path, precision=precision, kahan_summation=True)
    exact = 1.0 - (1e-4 / (1e-8 + (1 - 0.99) ** 0.5)) * sum(  # the float32 trajectory of one element
        (1 - 0.99 ** (t + 1)) ** -0.5 * (0.01 ** 0.5) for t in range(200))
    x = p.detach().float() + opt.state[p][KAHAN_COMP].float()
    # θ + c on the exact trajectory (c keeps 8 bits of a residual below 2**-9: each step's
    # rounding of it is at most 2**-18, far under 2e-4 over 200 steps) ...
    assert torch.allclose(x, torch.full_like(x, exact), rtol=0, atol=2e-4)
    # ... and θ is that weight rounded to nearest: deterministic, the same for every element
    assert torch.equal(p.detach(), x.bfloat16())
    assert p.detach().float().std().item() == 0 and p.detach().float()[0] < 1


def test_kahan_tracks_fp32_master_weights_far_more_closely_than_either_rounding():
    """A fixed stream of gradients (mean 0.5) at lr 1e-3, where most updates
    are below half a bf16 step of the weights (|θ| ~ 1): after 200 steps
    Kahan's θ is the fp32 run's weight rounded to nearest, almost
    everywhere; round-to-nearest stalls and stochastic rounding random-walks."""
    start = torch.randn(2048, generator=torch.Generator().manual_seed(0)).bfloat16().float()
    gen = torch.Generator().manual_seed(1)
    stream = [(torch.randn(2048, generator=gen) + 0.5).bfloat16() for _ in range(200)]  # the same g for all

    def run(dtype, **knobs):
        p = torch.nn.Parameter(start.to(dtype, copy=True))
        opt = rmsprop.RMSprop([p], lr=1e-3, state_precision="fp32", foreach=True, **knobs)
        for g in stream:
            p.grad = g.to(dtype)
            opt.step()
        return p.detach().float()


    master = run(torch.float32)
    runs = {name: run(torch.bfloat16, **knobs) for name, knobs in
            {"kahan": {"kahan_summation": True}, "stochastic": {"stochastic_rounding": True},
             "nearest": {}}.items()}
    errors = {name: (theta - master).abs().mean().item() for name, theta in runs.items()}
    assert errors["kahan"] < 0.1 * errors["stochastic"] and errors["kahan"] < 0.1 * errors["nearest"], errors
    assert (runs["kahan"] == master.bfloat16().float()).float().mean() > 0.99


def test_the_write_rounds_theta_as_torch_rounds_and_keeps_c_finite():
    """θ is ``x.to(torch.bfloat16)`` bit for bit (computed on the bits, which a
    compiled pass cannot skip), for float32 bit patterns of every kind, ties
    included; c = x − θ exactly where it fits in bfloat16; where θ is not
    finite (x NaN, ±inf, or past bfloat16's range) c is 0, so a parameter that
    overflowed stays ±inf at the next step instead of turning NaN."""
    bits = torch.randint(-2**31, 2**31 - 1, (1 << 16,), generator=torch.Generator().manual_seed(0),
                         dtype=torch.int64).to(torch.int32)
    ties = torch.randn(1024, generator=torch.Generator().manual_seed(1)).view(torch.int32) & -65536 | 0x8000
    specials = torch.tensor([0.0, -0.0, 1.0, float("inf"), -float("inf"), float("nan"), 3.4e38, -3.4e38,
                             1e-45, torch.finfo(torch.bfloat16).max])
    x = torch.cat([bits.view(torch.float32), ties.view(torch.float32), specials])
    theta, comp = torch.empty_like(x, dtype=torch.bfloat16), torch.empty_like(x, dtype=torch.bfloat16)
    kahan_write_(theta, comp, x)
    torch.testing.assert_close(theta, x.to(torch.bfloat16), rtol=0, atol=0, equal_nan=True)
    finite = theta.isfinite()
    assert torch.equal(comp[~finite], torch.zeros_like(comp[~finite])) and bool(comp.isfinite().all())
    assert torch.equal(comp[finite], (x[finite] - theta[finite].float()).to(torch.bfloat16))
    p = torch.nn.Parameter(torch.tensor([3.3e38, 1.0], dtype=torch.bfloat16))
    opt = rmsprop.RMSprop([p], lr=1e38, state_precision="fp32", kahan_summation=True)
    for _ in range(2):
        p.grad = torch.tensor([-1.0, 1.0], dtype=torch.bfloat16)
        opt.step()
        assert p[0].item() == float("inf") and opt.state[p][KAHAN_COMP][0].item() == 0


# ---------------------------------------------------------------- paths


@pytest.mark.parametrize("precision", ["fp32", "bf16", "int8"])
def test_reference_and_foreach_agree_bit_for_bit(precision):
    """Both run the update in float32 on θ + c (the foreach path restates the
    maths; in float32 the two are bit-equal, tests/test_hostile.py) and call
    the one write, so θ and c agree to the bit; under "bf16" state too,
    where the update would otherwise run in bfloat16."""
    base = make_params(torch.float32)
    stream = grad_stream(base, 6)
    runs = []
    for path in ("reference", "foreach"):
        params = _bf16(base)
        opt = train_cast(params, stream, state_precision=precision, kahan_summation=True, **KNOBS,
                         **PATHS[path])
        runs.append((params, opt))
    (a, opt_a), (b, opt_b) = runs
    for p, q in zip(a, b):
        assert torch.equal(p, q)
        assert (p in opt_a.state) == (q in opt_b.state)
        if p in opt_a.state:
            assert torch.equal(opt_a.state[p][KAHAN_COMP], opt_b.state[q][KAHAN_COMP])
    assert any(bool(opt_a.state[p][KAHAN_COMP].ne(0).any()) for p in a if p in opt_a.state)


@needs_fused
def test_fused_agrees_with_the_reference_in_theta_plus_c():
    """The fused pass compiles the same update, held to 2e-6 (relative) of
    the reference in float32 (tests/test_fused.py); θ + c then carries that,
    plus c's own rounding (8 bits of a residual below half a bf16 step of
    θ: at most 2**-17 of θ) where a 1-ulp difference in x' moves θ's
    rounding. So x agrees within 2e-5 of θ. (Two tensors: compiling more is slow.)"""
    base = make_params(torch.float32)[1:3]
    stream = grad_stream(base, 6)
    runs = []
    for path in ("reference", "fused"):
        params = _bf16(base)
        opt = train_cast(params, stream, state_precision="fp32", kahan_summation=True, **KNOBS, **PATHS[path])
        runs.append(_weights(opt, params))
    for x, y in zip(*runs):
        assert torch.allclose(x, y, rtol=2e-5, atol=1e-7)


@pytest.mark.parametrize("path", EVERY_PATH)
@torch.no_grad()
def test_a_false_finite_flag_changes_neither_theta_nor_c(path):
    params = [torch.randn(4096).bfloat16(), torch.randn(3, 5).bfloat16()]
    grads = [torch.randn_like(p) for p in params]
    comps = [torch.randn_like(p) * 1e-4 for p in params]
    v = [torch.rand_like(p, dtype=torch.float32) for p in params]
    t = [torch.tensor(2.0) for _ in params]
    hyper = hyper_from({**saved_defaults(), "lr": 0.1, "alpha": 0.9})
    tensors = StepTensors(params, grads, v, [], [], t, [0, 1], comps=comps)
    before = [x.clone() for x in (*params, *comps)]
    STEPS[path](tensors, hyper, finite=torch.tensor(False))
    assert all(torch.equal(x, y) for x, y in zip((*params, *comps), before))
    STEPS[path](tensors, hyper, finite=torch.tensor(True))
    assert not torch.equal(params[0], before[0]) and not torch.equal(comps[0], before[2])


# ---------------------------------------------------------------- state


def test_the_compensation_is_made_with_the_state_switched_on_later_and_dropped_when_off():
    p = torch.nn.Parameter(torch.ones(8, dtype=torch.bfloat16))
    opt = rmsprop.RMSprop([p], lr=1e-4, state_precision="bf16", kahan_summation=True)
    p.grad = torch.ones_like(p)
    opt.step()
    comp = opt.state[p][KAHAN_COMP]
    assert comp.dtype == torch.bfloat16 and comp.shape == p.shape and bool(comp.ne(0).all())
    opt.param_groups[0]["kahan_summation"] = False
    opt.step()
    assert KAHAN_COMP not in opt.state[p] and KAHAN_COMP not in opt.state_dict()["state"][0]
    opt.param_groups[0]["kahan_summation"] = True
    before = p.detach().clone()
    opt.step()  # a fresh compensation, from zero: x = θ
    assert torch.equal(p.detach(), before) and bool(opt.state[p][KAHAN_COMP].ne(0).all())


def _saved_run(steps, **knobs):
    p = torch.nn.Parameter(torch.randn(64, generator=torch.Generator().manual_seed(0)).bfloat16())
    opt = rmsprop.RMSprop([p], lr=1e-3, momentum=0.9, state_precision="int8", kahan_summation=True, **knobs)
    gen = torch.Generator().manual_seed(1)
    grads = [torch.randn(64, generator=gen).bfloat16() for _ in range(steps)]
    return p, opt, grads


def test_a_saved_state_resumes_bit_exactly():
    p, opt, grads = _saved_run(20)
    for t, g in enumerate(grads):
        if t == 10:
            buf = io.BytesIO()
            torch.save(opt.state_dict(), buf)
            buf.seek(0)
            saved_p = p.detach().clone()
        p.grad = g
        opt.step()
    q = torch.nn.Parameter(saved_p)
    fresh = rmsprop.RMSprop([q], lr=1.0, state_precision="int8")  # the switch comes from the file
    fresh.load_state_dict(torch.load(buf, weights_only=True))
    assert fresh.param_groups[0]["kahan_summation"] is True
    for g in grads[10:]:
        q.grad = g
        fresh.step()
    assert torch.equal(p, q) and torch.equal(opt.state[p][KAHAN_COMP], fresh.state[q][KAHAN_COMP])


@pytest.mark.parametrize("tamper,message", [
    (lambda c: c.float(), r"kahan_comp of dtype torch.float32 and shape \(64,\); expected torch.bfloat16"),
    (lambda c: c[:32].clone(), r"kahan_comp of dtype torch.bfloat16 and shape \(32,\)"),
    (lambda c: torch.full_like(c, float("nan")), "NaN or infinite values in kahan_comp"),
    (lambda c: c.tolist(), "kahan_comp as a list"),
], ids=["dtype", "shape", "nan", "list"])
def test_a_tampered_compensation_is_refused_on_load_before_anything_changes(tamper, message):
    p, opt, grads = _saved_run(3)
    for g in grads:
        p.grad = g
        opt.step()
    sd = opt.state_dict()
    sd["state"][0][KAHAN_COMP] = tamper(sd["state"][0][KAHAN_COMP])
    target = rmsprop.RMSprop([p], lr=0.5, state_precision="int8")
    where = "loaded state dict's state for parameter 0 of group 0 has "
    with pytest.raises(ValueError, match=where + message):
        target.load_state_dict(sd)
    assert not target.state and target.param_groups[0]["lr"] == 0.5


# ---------------------------------------------------------------- refusals


def test_refusals_name_the_group_and_parameter():
    p32 = torch.nn.Parameter(torch.zeros(3))
    with pytest.raises(ValueError, match="parameter 0 of param group 0: kahan_summation supports bfloat16 "
                                         "parameters, not float32"):
        rmsprop.RMSprop([p32], state_precision="fp32", kahan_summation=True)
    p16 = torch.nn.Parameter(torch.zeros(3, dtype=torch.bfloat16))
    with pytest.raises(ValueError, match="kahan_summation=True cannot run with stochastic_rounding=True"):
        rmsprop.RMSprop([p16], state_precision="fp32", kahan_summation=True, stochastic_rounding=True)
    with pytest.raises(ValueError, match="kahan_summation=True needs state_precision='fp32', 'bf16' or 'int"):
        rmsprop.RMSprop([p16], kahan_summation=True)
    opt = rmsprop.RMSprop([p16], state_precision="fp32", kahan_summation=True)
    with pytest.raises(ValueError, match="parameter 0 of param group 1: kahan_summation supports bfloat16"):
        opt.add_param_group({"params": [p32]})
    assert len(opt.param_groups) == 1


@pytest.mark.parametrize("edit,message", [
    ({"kahan_summation": True}, "parameter 1 of param group 0: kahan_summation supports bfloat16 parameters"),
    ({"kahan_summation": True, "stochastic_rounding": True}, "cannot run with stochastic_rounding=True"),
    ({"kahan_summation": True, "state_precision": "param"}, "kahan_summation=True needs state_precision"),
], ids=["float32", "stochastic", "param"])
def test_a_group_edited_by_hand_is_refused_at_the_step_before_anything_changes(edit, message):
    params = [torch.nn.Parameter(torch.randn(5).bfloat16()), torch.nn.Parameter(torch.randn(5))]
    opt = rmsprop.RMSprop(params, lr=0.1, state_precision="fp32")
    for p in params:
        p.grad = torch.ones_like(p)
    opt.step()
    before = [p.detach().clone() for p in params], [dict(opt.state[p]) for p in params]
    before_state = [{k: v.clone() for k, v in s.items()} for s in before[1]]
    opt.param_groups[0].update(edit)
    with pytest.raises(ValueError, match=message):
        opt.step()
    assert all(torch.equal(p, q) for p, q in zip(params, before[0]))
    for p, saved in zip(params, before_state):
        assert opt.state[p].keys() == saved.keys()
        assert all(torch.equal(opt.state[p][k], v) for k, v in saved.items())
