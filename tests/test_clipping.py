"""Clipping inside the step: ``max_grad_norm=`` (line (0)) against
``torch.nn.utils.clip_grad_norm_`` followed by ``torch.optim.RMSprop``, and
``agc_clip=`` (line (0')) against timm's ``adaptive_clip_grad``, restated here
in plain torch from its documented formula (timm itself is checked live in
integration/test_agc_timm.py).

What matches how (float32 for (0), float64 for (0')):

- reference and foreach paths: bit for bit with PyTorch's for-loop and foreach
  step after ``clip_grad_norm_``, parameters and state, several groups;
- fused path: bit for bit with our own fused step fed the gradients that
  ``clip_grad_norm_`` clipped (the factor adds no rounding of its own inside
  the compiled pass), and so within the fused path's usual distance of
  PyTorch's step (tests/test_fused.py's FP32_TOLERANCE: Inductor's C++
  rounds a few operations differently);
- (0') on the fused path: the unit norms are reductions inside the compiled
  pass, so it is within a few ulps in float64, not bit for bit.
"""

from __future__ import annotations

import copy
import math
import pickle

import pytest
import torch

import rmsprop

from helpers import needs_fused

C = 1.0  # max_grad_norm
STEPS = 6
# Per step: the global norm of the gradients below is about 8.5 × this, so the
# steps alternate between clipped (norm > C) and untouched (norm < C).
SCALES = (10.0, 0.01, 3.0, 0.1, 100.0, 0.5)
SHAPES = [(6, 4), (7,), (), (4, 3, 3, 3), (0,), (5, 1)]
SECOND_GROUP = {"lr": 0.03, "momentum": 0.9, "centered": True, "weight_decay": 0.01}
PATH_ARGS = {"reference": {"foreach": False}, "foreach": {"foreach": True}, "fused": {"fused": True}}
EVERY_PATH = ["reference", "foreach", pytest.param("fused", marks=needs_fused)]
# tests/test_fused.py's bound on the fused path against the reference in float32 and float64
FP32_TOLERANCE = 2e-6
FP64_TOLERANCE = 1e-14


def _start(shapes=SHAPES, dtype=torch.float32, seed=0) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(s, generator=gen, dtype=dtype) for s in shapes]


def _stream(shapes=SHAPES, dtype=torch.float32, seed=1) -> list[list[torch.Tensor]]:
    gen = torch.Generator().manual_seed(seed)
    return [[torch.randn(s, generator=gen, dtype=dtype) * scale for s in shapes] for scale in SCALES]


def _params(start) -> list[torch.nn.Parameter]:
    return [torch.nn.Parameter(x.clone()) for x in start]


def _groups(params, first=None, second=None) -> list[dict]:
    """Two groups: three parameters with PyTorch's defaults, the rest centered with momentum and decay."""
    return [{"params": params[:3], "lr": 0.01, **(first or {})},
            {"params": params[3:], **SECOND_GROUP, **(second or {})}]


def _feed(params, grads) -> None:
    for p, g in zip(params, grads):
        p.grad = g.clone()


def _relative(a: torch.Tensor, b: torch.Tensor) -> float:
    if a.numel() == 0:
        return 0.0
    return ((a - b).abs().max() / b.abs().max().clamp_min(1e-30)).item()


def _same_bits(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Equal values and dtype, NaN where the other is NaN."""
    return a.dtype == b.dtype and torch.equal(a.nan_to_num(0.5), b.nan_to_num(0.5)) and torch.equal(
        a.isnan(), b.isnan())


def _assert_same(ours, our_opt, theirs, their_opt, tolerance: float = 0.0) -> None:
    """θ and every state buffer PyTorch keeps: equal (tolerance 0) or within ``tolerance``, relatively."""
    for i, (a, b) in enumerate(zip(ours, theirs)):
        pairs = [("θ", a.detach(), b.detach())]
        pairs += [(key, our_opt.state[a][key], value) for key, value in their_opt.state[b].items()]
        for key, x, y in pairs:
            if tolerance == 0 or key == "step":
                assert torch.equal(x, y), f"parameter {i} {key}"
            else:
                assert _relative(x, y) <= tolerance, f"parameter {i} {key}"


def _clip_run(path, stream, *, twin="torch", start=None, **knobs):
    """Step ours (``max_grad_norm=C``) and a twin fed ``clip_grad_norm_``'s
    clipped gradients: PyTorch's RMSprop of the path's kind (``twin="torch"``)
    or our own path without ``max_grad_norm`` (``twin="ours"``). After every
    step ``grad_norm`` must be ``clip_grad_norm_``'s value, bit for bit, and
    our gradients as they were fed. Returns both sides and the norms."""
    start = _start() if start is None else start
    ours, theirs = _params(start), _params(start)
    our_opt = rmsprop.RMSprop(_groups(ours), max_grad_norm=C, **PATH_ARGS[path], **knobs)
    if twin == "torch":
        their_opt = torch.optim.RMSprop(_groups(theirs), foreach=path == "foreach")
    else:
        their_opt = rmsprop.RMSprop(_groups(theirs), **PATH_ARGS[path])
    norms = []
    for t, grads in enumerate(stream):
        _feed(ours, grads)
        _feed(theirs, grads)
        fed = [p.grad for p in ours]
        norms.append(torch.nn.utils.clip_grad_norm_(theirs, C))
        our_opt.step()
        their_opt.step()
        assert _same_bits(our_opt.grad_norm, norms[-1]), f"step {t}: {our_opt.grad_norm} != {norms[-1]}"
        for p, g, original in zip(ours, fed, grads):
            assert p.grad is g and _same_bits(g, original), f"step {t}: p.grad was changed"
    return ours, our_opt, theirs, their_opt, norms


# ------------------------------------------------------------------ (0) max_grad_norm


@pytest.mark.parametrize("path", ["reference", "foreach"])
def test_max_grad_norm_is_clip_grad_norm_then_torchs_step_bit_for_bit(path):
    ours, our_opt, theirs, their_opt, norms = _clip_run(path, _stream())
    assert min(norms) < C < max(norms), "the stream must hold steps above and below the limit"
    _assert_same(ours, our_opt, theirs, their_opt)


@needs_fused
def test_fused_max_grad_norm_is_its_own_step_on_clipped_gradients_bit_for_bit():
    """The fused path scales each gradient inside its compiled pass: bit for bit what the
    same path computes from the gradients that ``clip_grad_norm_`` scaled."""
    ours, our_opt, twins, twin_opt, norms = _clip_run("fused", _stream(), twin="ours")
    assert min(norms) < C < max(norms)
    _assert_same(ours, our_opt, twins, twin_opt)


@needs_fused
def test_fused_max_grad_norm_is_within_the_fused_paths_distance_of_torch():
    ours, our_opt, theirs, their_opt, _ = _clip_run("fused", _stream())
    _assert_same(ours, our_opt, theirs, their_opt, tolerance=FP32_TOLERANCE)


@pytest.mark.parametrize("path,twin", [("reference", "torch"), ("foreach", "ours")])
def test_max_grad_norm_on_bfloat16_parameters_rounds_the_clipped_gradient_as_torch(path, twin):
    """bfloat16 parameters with state in their own dtype: the factor is applied at
    bfloat16, as ``clip_grad_norm_`` writes it into a bfloat16 gradient. (Our
    foreach path is held to itself: even without clipping it rounds bfloat16
    differently from PyTorch's foreach; the fused path computes in float32.)"""
    shapes = SHAPES[:4]
    start, stream = _start(shapes, torch.bfloat16), _stream(shapes, torch.bfloat16)
    ours, our_opt, theirs, their_opt, _ = _clip_run(path, stream, start=start, twin=twin)
    _assert_same(ours, our_opt, theirs, their_opt)


@pytest.mark.parametrize("path", ["reference", "foreach"])
def test_max_grad_norm_with_mixed_dtypes_is_torchs(path):
    """float32 and float64 parameters interleaved, some 0-d: the norm over the
    stacked per-tensor norms must sum them in the order ``clip_grad_norm_``
    does, and the factor (float64 then) scales each gradient in its own dtype,
    as ``clip_grad_norm_`` does in place: a 0-d float32 gradient times a 0-d
    float64 factor would otherwise become float64 (found by the hostile
    property test of tests/test_hostile.py)."""
    dtypes = [torch.float32, torch.float64] * 5
    gen = torch.Generator().manual_seed(3)
    shapes = [() if i % 3 == 0 else (5 + i,) for i in range(len(dtypes))]
    start = [torch.randn(s, generator=gen, dtype=d) for s, d in zip(shapes, dtypes)]
    ours, theirs = _params(start), _params(start)
    our_opt = rmsprop.RMSprop(ours, max_grad_norm=C, centered=True, momentum=0.9, **PATH_ARGS[path])
    their_opt = torch.optim.RMSprop(theirs, centered=True, momentum=0.9, foreach=path == "foreach")
    for t in range(STEPS):
        grads = [torch.randn(p.shape, generator=gen, dtype=p.dtype) * SCALES[t] for p in ours]
        _feed(ours, grads)
        _feed(theirs, grads)
        norm = torch.nn.utils.clip_grad_norm_(theirs, C)
        our_opt.step()
        their_opt.step()
        assert torch.equal(our_opt.grad_norm, norm), f"step {t}"
    _assert_same(ours, our_opt, theirs, their_opt)


# ------------------------------------------------------------- (0) and nonfinite


def _poison(stream, step: int, value: float):
    bad = [[g.clone() for g in grads] for grads in stream]
    bad[step][3].view(-1)[7] = value  # in the second group
    return bad


def _snapshot(params, opt):
    return [p.detach().clone() for p in params], copy.deepcopy(opt.state_dict())


def _assert_unchanged(after, before, skipped: int = 0) -> None:
    (params_a, sd_a), (params_b, sd_b) = after, before
    assert all(torch.equal(x, y) for x, y in zip(params_a, params_b))
    assert [g["skipped_steps"] for g in sd_a["param_groups"]] == [g["skipped_steps"] + skipped
                                                                 for g in sd_b["param_groups"]]
    assert sd_a["state"].keys() == sd_b["state"].keys()
    for k, state in sd_a["state"].items():
        assert all(torch.equal(value, sd_b["state"][k][key]) for key, value in state.items()), k


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")], ids=["nan", "inf", "-inf"])
@pytest.mark.parametrize("path", EVERY_PATH)
def test_skip_with_max_grad_norm_skips_and_the_norm_says_why(path, bad):
    """One read of the gradients gives both the norm and the verdict: a
    non-finite gradient skips the whole step (nothing changes), the norm is
    NaN or inf, and the run goes on as the run without that batch."""
    stream = _stream()
    poisoned = _poison(stream, 3, bad)
    clean = _params(_start())
    ref = rmsprop.RMSprop(_groups(clean), max_grad_norm=C, **PATH_ARGS[path])
    for t, grads in enumerate(stream):
        if t != 3:
            _feed(clean, grads)
            ref.step()
    params = _params(_start())
    opt = rmsprop.RMSprop(_groups(params), max_grad_norm=C, nonfinite="skip", **PATH_ARGS[path])
    for t, grads in enumerate(poisoned):
        _feed(params, grads)
        before = _snapshot(params, opt)
        opt.step()
        if t == 3:
            _assert_unchanged(_snapshot(params, opt), before, skipped=1)
            assert (opt.grad_norm.isnan() if math.isnan(bad) else opt.grad_norm == math.inf)
    assert opt.skipped_steps == 1
    assert all(torch.equal(a, b) for a, b in zip(params, clean))


@pytest.mark.parametrize("path", EVERY_PATH)
def test_raise_with_max_grad_norm_changes_nothing(path):
    params = _params(_start())
    opt = rmsprop.RMSprop(_groups(params), max_grad_norm=C, nonfinite="raise", **PATH_ARGS[path])
    for grads in _poison(_stream(), 2, float("nan"))[:3]:
        _feed(params, grads)
        before = _snapshot(params, opt)
        if not any(g.isnan().any() for g in grads):
            opt.step()
            continue
        norm = opt.grad_norm
        with pytest.raises(FloatingPointError, match="parameter 0 of param group 1 at step 3"):
            opt.step()
        _assert_unchanged(_snapshot(params, opt), before)
        assert opt.grad_norm is norm  # the raising step kept nothing, its norm included


@pytest.mark.parametrize("policy", ["propagate", "skip", "raise"])
def test_grad_norm_of_a_step_without_gradients_is_clip_grad_norm_s_zero(policy):
    """``grad_norm`` is the last step's norm: after a step in which no
    parameter has a gradient it is 0, as ``clip_grad_norm_`` returns for no
    gradients, not the norm of the step before."""
    params = _params(_start())
    opt = rmsprop.RMSprop(params, max_grad_norm=C, nonfinite=policy)
    _feed(params, _stream()[0])
    opt.step()
    assert opt.grad_norm > 0
    opt.zero_grad()
    opt.step()
    expected = torch.nn.utils.clip_grad_norm_(params, C)
    assert torch.equal(opt.grad_norm, expected) and opt.grad_norm.dtype == expected.dtype


def test_propagate_with_max_grad_norm_is_torchs_nan_everywhere():
    """With "propagate" a NaN makes the norm NaN and so every clipped gradient
    NaN, as ``clip_grad_norm_`` does: every parameter becomes NaN."""
    ours, our_opt, theirs, their_opt, norms = _clip_run("reference", _poison(_stream(), 2, float("nan"))[:3])
    assert norms[-1].isnan()
    for a, b in zip(ours, theirs):
        assert torch.equal(a.isnan(), b.isnan()) and (a.numel() == 0 or a.isnan().all())


@pytest.mark.parametrize("policy", ["propagate", "skip", "raise"])
@pytest.mark.parametrize("path", EVERY_PATH)
def test_a_finite_gradient_whose_norm_overflows_is_clipped_to_zero_as_torch_does(path, policy):
    """Entries of 1e20 are finite, but their squares overflow float32: the
    norm is inf and ``clip_grad_norm_``'s factor C/(inf + 1e-6) is 0, so the
    step runs on zero gradients (v decays, momentum carries on). Every policy
    takes that step: the gradients are finite, only their norm is not."""
    stream = _stream()
    stream[3][0].view(-1)[5] = 1e20
    twin = "ours" if path == "fused" else "torch"
    ours, our_opt, theirs, their_opt, norms = _clip_run(path, stream, twin=twin, nonfinite=policy)
    assert norms[3] == math.inf and our_opt.skipped_steps == 0
    assert all(float(our_opt.state[p]["step"]) == STEPS for p in ours if p.numel())
    _assert_same(ours, our_opt, theirs, their_opt)


# ------------------------------------------------------------------ (0') agc_clip


def _unit_norms(x: torch.Tensor) -> torch.Tensor:
    """timm's unit: the whole tensor when it has at most one dim, else each slice
    along dim 0 (an output row of a weight), its norm kept broadcastable."""
    if x.dim() <= 1:
        return torch.linalg.vector_norm(x)
    return torch.linalg.vector_norm(x, dim=list(range(1, x.dim())), keepdim=True)


def agc_as_timm_documents(param: torch.Tensor, grad: torch.Tensor, factor: float) -> torch.Tensor:
    """NFNets' adaptive clipping as timm 1.0.31 documents ``adaptive_clip_grad``
    (eps 1e-3, 2-norm): the allowed norm is factor·max(‖θ_unit‖, 1e-3); a unit
    whose gradient norm is below it keeps its gradient, any other is rescaled
    by allowed/max(‖g_unit‖, 1e-6)."""
    allowed = _unit_norms(param).clamp(min=1e-3) * factor
    norm = _unit_norms(grad)
    return torch.where(norm < allowed, grad, grad * (allowed / norm.clamp(min=1e-6)))


AGC_SHAPES = [(6, 4), (7,), (), (4, 3, 3, 3), (5,), (3, 2)]
AGC_FACTORS = (0.05, 5e-4)  # one per group; the second's limit on a zero weight, 5e-7, is below 1e-6


def _agc_problem():
    """float64; a zero 1-D weight (its limit is κ times the 1e-3 floor) whose
    first gradient, while the weight is still zero, has a norm below 1e-6 but
    above that limit (so the 1e-6 floor under gradient norms decides its
    factor), a zero gradient row, and
    per-unit gradient scales from 1e-3 to 10, so that units are clipped and
    kept at every step."""
    start = _start(AGC_SHAPES, torch.float64)
    start[4].zero_()
    gen = torch.Generator().manual_seed(5)
    stream = []
    for _ in range(STEPS):
        grads = []
        for s in AGC_SHAPES:
            scale = 10.0 ** torch.randint(-3, 2, s[:1] + (1,) * (len(s) - 1), generator=gen)
            grads.append(torch.randn(s, generator=gen, dtype=torch.float64) * scale)
        grads[3][1].zero_()
        stream.append(grads)
    stream[0][4] *= 8e-7 / stream[0][4].norm()
    return start, stream


@pytest.mark.parametrize("path,global_too", [
    ("reference", False), ("foreach", False), pytest.param("fused", False, marks=needs_fused),
    ("reference", True), ("foreach", True), pytest.param("fused", True, marks=needs_fused),
], ids=["reference-agc", "foreach-agc", "fused-agc",
        "reference-max-norm-then-agc", "foreach-max-norm-then-agc", "fused-max-norm-then-agc"])
def test_agc_clip_is_timms_formula_then_torchs_step(path, global_too):
    """(0') per group, before (1) maximize and (3) decay, as timm clips before
    its optimizer runs; with ``max_grad_norm`` too, (0) comes first."""
    start, stream = _agc_problem()
    ours, theirs = _params(start), _params(start)
    first, second = ({"agc_clip": k} for k in AGC_FACTORS)
    our_opt = rmsprop.RMSprop(_groups(ours, first, {**second, "maximize": True}),
                              max_grad_norm=C if global_too else None, **PATH_ARGS[path])
    their_opt = torch.optim.RMSprop(_groups(theirs, {}, {"maximize": True}), foreach=path == "foreach")
    kept = clipped = 0
    for grads in stream:
        _feed(ours, grads)
        _feed(theirs, grads)
        if global_too:
            torch.nn.utils.clip_grad_norm_(theirs, C)
        with torch.no_grad():
            for group, factor in zip(their_opt.param_groups, AGC_FACTORS):
                for p in group["params"]:
                    limit = _unit_norms(p).clamp(min=1e-3) * factor
                    below = _unit_norms(p.grad) < limit
                    kept, clipped = kept + int(below.sum()), clipped + int((~below).sum())
                    p.grad.copy_(agc_as_timm_documents(p, p.grad, factor))
        our_opt.step()
        their_opt.step()
    assert kept and clipped, "units on both sides of the limit"
    _assert_same(ours, our_opt, theirs, their_opt, tolerance=FP64_TOLERANCE if path == "fused" else 0.0)


def _small_net() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Conv2d(2, 3, 3), torch.nn.Tanh(), torch.nn.Flatten(),
                               torch.nn.Linear(3 * 4 * 4, 5))


def test_agc_under_step_in_backward_is_agc_under_step():
    """(0') needs only its own tensor, so stepping each parameter inside
    backward gives the same bits as ``step()`` after backward."""
    nets = [_small_net(), _small_net()]
    opts = [rmsprop.RMSprop(net.parameters(), lr=0.01, momentum=0.9, agc_clip=0.01) for net in nets]
    x = torch.randn(4, 2, 6, 6, generator=torch.Generator().manual_seed(1))
    with rmsprop.step_in_backward(opts[0]):
        for _ in range(4):
            for net in nets:
                net(x).square().mean().backward()
            opts[1].step()
            opts[1].zero_grad()
    for a, b in zip(*(net.parameters() for net in nets)):
        assert torch.equal(a, b)
    assert not torch.equal(nets[0][0].weight, _small_net()[0].weight)


# ------------------------------------------------------------------ refusals


BAD_NORMS = [(0, ValueError), (0.0, ValueError), (-1.0, ValueError), (float("nan"), ValueError),
             (float("inf"), ValueError), (-float("inf"), ValueError), (True, TypeError),
             ("1.0", TypeError), (torch.tensor(1.0), TypeError)]


@pytest.mark.parametrize("value,error", BAD_NORMS, ids=lambda v: repr(v) if not isinstance(v, type) else "")
def test_max_grad_norm_refuses_what_is_not_a_positive_finite_number(value, error):
    p = torch.nn.Parameter(torch.ones(2))
    with pytest.raises(error, match="max_grad_norm"):
        rmsprop.RMSprop([p], max_grad_norm=value)
    opt = rmsprop.RMSprop([p], max_grad_norm=2.0)
    with pytest.raises(error, match="max_grad_norm"):
        opt.max_grad_norm = value
    assert opt.max_grad_norm == 2.0


def test_max_grad_norm_takes_ints_and_none():
    p = torch.nn.Parameter(torch.ones(2))
    opt = rmsprop.RMSprop([p], max_grad_norm=3)
    assert opt.max_grad_norm == 3 and opt.grad_norm is None
    opt.max_grad_norm = None
    p.grad = torch.ones(2)
    opt.step()
    assert opt.grad_norm is None


def test_step_in_backward_refuses_max_grad_norm_and_hooks_nothing():
    net = _small_net()
    opt = rmsprop.RMSprop(net.parameters(), max_grad_norm=1.0)
    with pytest.raises(ValueError, match="max_grad_norm"):
        rmsprop.step_in_backward(opt)
    before = [p.detach().clone() for p in net.parameters()]
    net(torch.ones(1, 2, 6, 6)).sum().backward()
    assert all(torch.equal(p, b) and p.grad is not None for p, b in zip(net.parameters(), before))


def test_max_grad_norm_cannot_be_set_while_step_in_backward_is_attached():
    opt = rmsprop.RMSprop(_small_net().parameters())
    with rmsprop.step_in_backward(opt):
        with pytest.raises(ValueError, match="max_grad_norm"):
            opt.max_grad_norm = 1.0
        assert opt.max_grad_norm is None
        opt.max_grad_norm = None  # off stays allowed
    opt.max_grad_norm = 1.0  # detached: allowed again
    assert opt.max_grad_norm == 1.0


@pytest.mark.parametrize("value,error", [(-0.1, ValueError), (float("nan"), ValueError),
                                         (float("inf"), ValueError), (True, TypeError), ("0.1", TypeError)])
def test_agc_clip_refusals_name_the_group(value, error):
    ok, bad = torch.nn.Parameter(torch.ones(2)), torch.nn.Parameter(torch.ones(3))
    match = "agc_clip.* in param group 1"
    with pytest.raises(error, match=match):
        rmsprop.RMSprop([{"params": [ok]}, {"params": [bad], "agc_clip": value}])
    opt = rmsprop.RMSprop([ok])
    with pytest.raises(error, match=match):
        opt.add_param_group({"params": [bad], "agc_clip": value})
    assert len(opt.param_groups) == 1
    opt = rmsprop.RMSprop([{"params": [ok]}, {"params": [bad]}])
    for p in (ok, bad):
        p.grad = torch.ones_like(p)
    opt.step()
    opt.param_groups[1]["agc_clip"] = value
    before = _snapshot([ok, bad], opt)
    with pytest.raises(error, match=match):
        opt.step()
    opt.param_groups[1]["agc_clip"] = 0.0  # (state_dict checks the groups too)
    _assert_unchanged(_snapshot([ok, bad], opt), before)


# ------------------------------------------------------------------ pickling


def test_pickle_and_deepcopy_keep_max_grad_norm():
    params = _params(_start())
    opt = rmsprop.RMSprop(_groups(params), max_grad_norm=0.5, nonfinite="skip")
    _feed(params, _stream()[0])
    opt.step()
    for clone in (pickle.loads(pickle.dumps(opt)), copy.deepcopy(opt)):
        assert clone.max_grad_norm == 0.5 and clone.nonfinite == "skip"
        clone_params = [p for group in clone.param_groups for p in group["params"]]
        _feed(clone_params, _stream()[1])
        clone.step()
        assert clone.grad_norm is not None and float(clone.grad_norm) > 0
