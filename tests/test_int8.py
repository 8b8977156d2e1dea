"""state_precision="int8": the block-wise 8-bit codec and the optimizer around it."""

from __future__ import annotations

import importlib.util
import io
import math
import pathlib
import re

import pytest
import torch

import rmsprop
from rmsprop import quant
from rmsprop.paths import fused_step
from rmsprop.paths.fused import fused_unavailable_reason
from rmsprop.paths.grouping import StepTensors
from rmsprop.plan import new_state
from rmsprop.precision import get_buffer, load
from rmsprop.settings import hyper_from, saved_defaults

PATHS = {"reference": {"foreach": False}, "foreach": {"foreach": True}, "fused": {"fused": True}}
KNOBS = {"lr": 0.01, "alpha": 0.9, "eps": 1e-3, "momentum": 0.9, "centered": True, "weight_decay": 0.01}
needs_compile = pytest.mark.skipif(fused_unavailable_reason([torch.zeros(1)], False) is not None,
                                   reason="the fused path cannot compile here (no C++ compiler)")


def _wide_values(n: int, seed: int = 0, signed: bool = True) -> torch.Tensor:
    """Values spanning twelve decades, in blocks of very different scales."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, generator=gen) * 10.0 ** torch.randint(-6, 6, (n,), generator=gen)
    x = x * 10.0 ** torch.randint(-3, 3, (math.ceil(n / quant.BLOCK),), generator=gen).repeat_interleave(
        quant.BLOCK)[:n]
    return x if signed else x.square()


def _code_space(x: torch.Tensor, absmax: torch.Tensor, signed: bool) -> torch.Tensor:
    """Where each value sits on its map's code axis (a real number)."""
    scale = absmax.repeat_interleave(quant.BLOCK)[: x.numel()].view(x.shape)
    y = (x / torch.where(scale > 0, scale, 1)).abs()
    return y.sqrt() * 126 if signed else y.sqrt().sqrt().sqrt() * 253


# ------------------------------------------------------------ the codec


@pytest.mark.parametrize("signed", [False, True])
def test_codes_read_back_within_half_a_grid_step(signed):
    x = _wide_values(10_000 + 17, signed=signed).double()  # a short last block
    buf = quant.encode(x, signed)
    assert buf.codes.dtype == (torch.int8 if signed else torch.uint8) and buf.codes.shape == x.shape
    assert buf.absmax.dtype == torch.float32 and buf.absmax.shape == (quant.num_blocks(x.numel()),)
    back = quant.decode(buf, torch.float64)
    absmax = buf.absmax.double()
    where = _code_space(x, absmax, signed)
    error = (_code_space(back, absmax, signed) - where).abs()
    first = where >= 1 if not signed else torch.ones_like(where, dtype=torch.bool)
    assert error[first].max() <= 0.5 + 1e-6
    if not signed:  # below the first code: read as the first code, never as 0
        assert error.max() <= 1 + 1e-6 and (back[x > 0] > 0).all()
    assert ((back.sign() == x.sign()) | (back == 0)).all()


def test_the_block_maximum_reads_back_exactly_and_zero_blocks_stay_zero():
    x = _wide_values(4 * quant.BLOCK, signed=False)
    x[quant.BLOCK: 2 * quant.BLOCK] = 0
    back = quant.decode(quant.encode(x, signed=False))
    rows, back_rows = x.view(4, -1), back.view(4, -1)
    assert torch.equal(back_rows.amax(dim=1), rows.amax(dim=1).float())
    assert torch.equal(back_rows[1], torch.zeros(quant.BLOCK))


def test_a_nonzero_square_average_never_reads_back_as_zero():
    """v read as 0 would turn g/(√v + ε) into g/ε: the smallest values round up to the first code."""
    x = torch.full((quant.BLOCK,), 1e-30)
    x[0] = 1.0
    for rounding in (None, (torch.tensor(3.0), 5)):
        back = quant.decode(quant.encode(x, signed=False, rounding=rounding))
        assert (back > 0).all() and back[0] == 1.0


@pytest.mark.parametrize("signed", [False, True])
def test_decoding_then_encoding_reproduces_every_code(signed):
    x = _wide_values(5000, seed=3, signed=signed)
    x[[7, 300, 4999]] = torch.tensor([math.inf, math.nan, -math.inf if signed else math.inf])
    buf = quant.encode(x, signed)
    again = quant.encode(quant.decode(buf), signed)
    assert torch.equal(again.codes, buf.codes) and torch.equal(again.absmax, buf.absmax)


def _with_outliers(x: torch.Tensor, signed: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """x with values float32 cannot hold on a grid in three blocks (the short
    last one included), and the mask of where they are."""
    where = torch.zeros(x.numel(), dtype=torch.bool)
    where[[3, quant.BLOCK + 10, quant.BLOCK + 11, x.numel() - 1]] = True
    values = [math.inf, math.nan, -math.inf if signed else math.inf, -math.inf if signed else math.nan]
    if x.dtype == torch.float64:  # beyond float32's range: float32 state would hold it as ±inf
        values[0] = 1e300
    out = x.clone().view(-1)
    out[where] = torch.tensor(values, dtype=x.dtype)
    return out.view(x.shape), where.view(x.shape)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("rounding", [None, 2.0], ids=["nearest", "stochastic"])
@pytest.mark.parametrize("signed", [False, True])
def test_a_nonfinite_value_keeps_to_its_element(signed, rounding, dtype):
    """±inf and NaN (the square of a gradient of 1e25, a NaN gradient) read
    back as themselves and leave every other code and every scale as they
    would be with a 0 in their place: the scale is the largest finite value."""
    x = _wide_values(3 * quant.BLOCK + 40, seed=4, signed=signed).to(dtype)
    bad, where = _with_outliers(x, signed)
    calm = torch.where(where, 0, x)
    rng = None if rounding is None else (torch.tensor(rounding), 3)
    buf, ref = quant.encode(bad, signed, rng), quant.encode(calm, signed, rng)
    assert torch.equal(buf.absmax, ref.absmax) and buf.absmax.isfinite().all()
    assert torch.equal(buf.codes[~where], ref.codes[~where])
    want = bad[where]
    want = torch.where(want.abs() > torch.finfo(torch.float32).max, want.sign() * math.inf, want)
    torch.testing.assert_close(quant.decode(buf, dtype)[where], want, equal_nan=True, rtol=0, atol=0)
    assert quant.check_stored(buf.codes, buf.absmax, signed) is None


def _stored(signed: bool) -> quant.Blockwise:
    x, _ = _with_outliers(_wide_values(3 * quant.BLOCK + 40, seed=6, signed=signed), signed)
    x[quant.BLOCK: 2 * quant.BLOCK] = 0  # a block of scale 0
    return quant.encode(x, signed, (torch.tensor(1.0), 0))


@pytest.mark.parametrize("signed", [False, True])
def test_check_stored_takes_what_encode_writes_and_every_code(signed):
    """Every code stands for a value: the grid, ±inf (255; ±127) or NaN (254; −128)."""
    buf = _stored(signed)
    assert quant.check_stored(buf.codes, buf.absmax, signed) is None
    reserved = torch.tensor([-128, -127, 127] if signed else [254, 255], dtype=buf.codes.dtype)
    codes = buf.codes.clone()
    codes[quant.BLOCK: quant.BLOCK + len(reserved)] = reserved
    assert quant.check_stored(codes, buf.absmax, signed) is None
    back = quant.decode(quant.Blockwise(codes, buf.absmax))[quant.BLOCK: quant.BLOCK + len(reserved)]
    want = [math.nan, -math.inf, math.inf] if signed else [math.nan, math.inf]
    torch.testing.assert_close(back, torch.tensor(want), equal_nan=True, rtol=0, atol=0)


def _scale(block: int, value: float):
    return lambda b: (b.codes, b.absmax.index_fill(0, torch.tensor([block]), value))


def _without_top(b: quant.Blockwise) -> tuple[torch.Tensor, torch.Tensor]:
    top = 126 if b.codes.dtype == torch.int8 else 253
    return torch.where(b.codes.abs() == top, b.codes // 2, b.codes), b.absmax


@pytest.mark.parametrize("signed", [False, True])
@pytest.mark.parametrize("mutate,reason", [
    (lambda b: (b.codes.float(), b.absmax), "codes of dtype torch.float32; expected torch.u?int8"),
    (lambda b: (b.codes.view(torch.uint8 if b.codes.dtype == torch.int8 else torch.int8), b.absmax),
     "expected torch.u?int8"),
    (lambda b: (b.codes, b.absmax.double()),
     r"scales of dtype torch.float64 and shape \(4,\); expected float32"),
    (lambda b: (b.codes, b.absmax[:-1]), r"expected float32 of shape \(4,\)"),
    (_scale(2, -1.0), "scales negative or non-finite"),
    (_scale(2, math.inf), "scales negative or non-finite"),
    (_scale(0, math.nan), "scales negative or non-finite"),
    (_scale(1, 1.0), r"codes that do not fit their scales: block 1 has a nonzero scale"),  # block 1 is zeros
    (_without_top, "block 0 has a nonzero scale and no code at the top"),
], ids=["float codes", "other map", "float64 scales", "scales short", "negative scale", "inf scale",
        "nan scale", "scale of a zero block", "no top code"])
def test_check_stored_names_what_is_wrong(signed, mutate, reason):
    codes, absmax = mutate(_stored(signed))
    assert re.search(reason, quant.check_stored(codes, absmax, signed) or "")


def test_check_stored_refuses_codes_of_the_old_grid():
    """Codes written when 255 (127) was the grid's top would now read their
    block's largest value as +inf; such a block lacks the new top code unless
    one of its values happens to sit there, so this state is refused."""
    for signed, top, power in ((False, 255, 8), (True, 127, 2)):
        x = _wide_values(2 * quant.BLOCK, seed=8, signed=signed).view(2, -1)
        absmax = x.abs().amax(dim=1)
        old = torch.round((x / absmax[:, None]).abs() ** (1 / power) * top).copysign(x)
        codes = old.view(-1).to(torch.int8 if signed else torch.uint8)
        assert "no code at the top" in quant.check_stored(codes, absmax, signed)


@pytest.mark.parametrize("signed", [False, True])
def test_stochastic_rounding_is_unbiased_in_value_and_deterministic(signed):
    """Values a quarter of the way from one code to the next: rounding to
    nearest always reads them low, stochastic rounding reads them high one
    time in four, so that the mean is the value."""
    top, power = (126, 2) if signed else (253, 8)
    c = 30 + torch.arange(quant.BLOCK - 1, dtype=torch.float64) % (top - 31)  # where the grid is fine
    lo, hi = (c / top) ** power, ((c + 1) / top) ** power
    x = torch.cat([torch.ones(1, dtype=torch.float64), lo + 0.25 * (hi - lo)])
    draws = 400
    total = sum(quant.decode(quant.encode(x, signed, (torch.tensor(float(t)), 9)), torch.float64)
                for t in range(draws))
    nearest = quant.decode(quant.encode(x, signed), torch.float64)
    spacing = torch.cat([torch.ones(1, dtype=torch.float64), hi - lo])
    assert ((nearest - x) / spacing)[1:].mean() == pytest.approx(-0.25, abs=1e-3)
    assert ((total / draws - x) / spacing)[1:].mean().abs() < 0.01  # 4σ of 255 × 400 draws ≈ 0.0043
    a = quant.encode(x, signed, (torch.tensor(7.0), 1))
    assert torch.equal(a.codes, quant.encode(x, signed, (torch.tensor(7.0), 1)).codes)
    assert not torch.equal(a.codes, quant.encode(x, signed, (torch.tensor(8.0), 1)).codes)


def test_blocks_follow_the_logical_order_whatever_the_layout():
    x = _wide_values(64 * 80, seed=5).view(64, 80)
    assert torch.equal(quant.encode(x.t(), True).codes, quant.encode(x.t().contiguous(), True).codes)


# ------------------------------------------------------------ the optimizer's state


def _params(dtype=torch.float32, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return [torch.nn.Parameter(torch.randn(s, generator=gen).to(dtype))
            for s in [(64, 80), (5000,), (7,), (3, 4)]]  # two quantized, two kept float32


def _train(params, steps, seed=1, **kwargs):
    opt = rmsprop.RMSprop(params, **kwargs)
    gen = torch.Generator().manual_seed(seed)
    for t in range(steps):
        for p in params:
            p.grad = (torch.randn(p.shape, generator=gen) * 10.0 ** (t % 5 - 2)).to(p.dtype)
        opt.step()
    return opt


def test_large_tensors_keep_codes_and_small_ones_float32():
    params = _params(torch.bfloat16)
    opt = _train(params, 2, state_precision="int8", **KNOBS)
    for p in params[:2]:
        state = opt.state[p]
        assert state["square_avg_codes"].dtype == torch.uint8 and state["square_avg_codes"].shape == p.shape
        for key in ("grad_avg", "momentum_buffer"):
            assert state[key + "_codes"].dtype == torch.int8
            assert state[key + "_absmax"].shape == (quant.num_blocks(p.numel()),)
        assert not {"square_avg", "grad_avg", "momentum_buffer"} & state.keys()
    for p in params[2:]:
        assert {k: v.dtype for k, v in opt.state[p].items() if k != "step"} == dict.fromkeys(
            ("square_avg", "grad_avg", "momentum_buffer"), torch.float32)


def test_serialized_state_is_a_byte_per_element_and_loads_with_weights_only():
    p = torch.nn.Parameter(torch.randn(1 << 18))
    p.grad = torch.randn_like(p)
    opt = rmsprop.RMSprop([p], momentum=0.9, centered=True, state_precision="int8")
    opt.step()
    buf = io.BytesIO()
    torch.save(opt.state_dict(), buf)
    assert buf.tell() / (p.numel() * 3) <= 1.05  # the goal; codes + one fp32 scale per 256
    buf.seek(0)
    loaded = torch.load(buf, weights_only=True)
    assert loaded["state"][0]["square_avg_codes"].dtype == torch.uint8


@pytest.mark.parametrize("path", ["foreach", pytest.param("fused", marks=needs_compile)])
def test_paths_agree_with_the_reference_in_float64(path):
    """The same bits of randomness on every path: float64 maths differs only in
    the last bits, which can move a value across a code's boundary now and then."""
    ref, other = _params(torch.float64), _params(torch.float64)
    opt_ref = _train(ref, 6, state_precision="int8", **KNOBS, foreach=False)
    opt = _train(other, 6, state_precision="int8", **KNOBS, **PATHS[path])
    for a, b in zip(ref, other):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-9)
        for key, value in opt_ref.state[a].items():
            if key.endswith("_codes"):
                differ = opt.state[b][key].int() != value.int()
                assert differ.float().mean() < 1e-3, key
                assert ((opt.state[b][key].int() - value.int()).abs() <= 1).all(), key
            else:
                torch.testing.assert_close(opt.state[b][key].double(), value.double(), rtol=1e-6, atol=1e-12)


@pytest.mark.parametrize("path", ["foreach", pytest.param("fused", marks=needs_compile)])
def test_a_group_that_starts_with_float32_state_steps_its_codes_too(path):
    """Small tensors first: each group of one storage is stepped on its own."""
    ref, other = _params(torch.float64)[::-1], _params(torch.float64)[::-1]
    _train(ref, 3, state_precision="int8", **KNOBS, foreach=False)
    _train(other, 3, state_precision="int8", **KNOBS, **PATHS[path])
    for a, b in zip(ref, other):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("path", ["reference", "foreach", pytest.param("fused", marks=needs_compile)])
def test_int8_state_steps_close_to_fp32_state(path):
    exact, small = _params(torch.float64), _params(torch.float64)
    start = [p.detach().clone() for p in exact]
    opt_exact = _train(exact, 10, state_precision="fp32", **KNOBS, foreach=False)
    opt = _train(small, 10, state_precision="int8", **KNOBS, **PATHS[path])
    for p0, a, b in zip(start, exact, small):
        moved = (a - p0).abs().mean()
        assert (b - a).abs().mean() < 0.05 * moved  # within a few % of the distance travelled
    for a, b in zip(exact[:2], small[:2]):
        v = opt_exact.state[a]["square_avg"]
        v8 = load(get_buffer(opt.state[b], "square_avg"), torch.float64)
        assert ((v8.sqrt() - v.sqrt()).abs().mean() / v.sqrt().mean()) < 0.05


def test_nonfinite_skip_leaves_the_codes_alone():
    params = _params()
    opt = _train(params, 2, state_precision="int8", nonfinite="skip", **KNOBS)
    before = {k: v.clone() for k, v in opt.state[params[0]].items()}
    params[0].grad[0, 0] = math.nan
    opt.step()
    assert opt.skipped_steps == 1
    assert all(torch.equal(before[k], v) for k, v in opt.state[params[0]].items())


@needs_compile
def test_the_fused_pass_obeys_a_false_finite_flag_on_codes():
    p = torch.randn(5000)
    state = new_state(p, {**saved_defaults(), "state_precision": "int8", "initial_square_avg": 1.0,
                          "momentum": 0.9})
    square, momentum = get_buffer(state, "square_avg"), get_buffer(state, "momentum_buffer")
    saved = [x.clone() for x in (*square, *momentum, p)]
    hyper = hyper_from({**saved_defaults(), "lr": 0.1, "alpha": 0.9, "momentum": 0.9})  # the rest: PyTorch's
    tensors = StepTensors([p], [torch.randn(5000)], [square], [], [momentum], [state["step"]], [0])
    fused_step(tensors, hyper, finite=torch.tensor(False))
    assert all(torch.equal(a, b) for a, b in zip(saved, (*square, *momentum, p)))
    fused_step(tensors, hyper, finite=torch.tensor(True))
    assert not torch.equal(saved[0], square.codes)


def _outlier_run(outlier: float, state_precision: str = "int8", steps: int = 5, **kwargs):
    """``steps`` steps of random gradients, in which element (0, 5) of the
    first tensor's is 0 at step 0, ``outlier`` at step 1 and, unless
    ``outlier`` is 0 (the calm run), ordinary after it."""
    params = _params()
    opt = rmsprop.RMSprop(params, lr=0.01, momentum=0.9, state_precision=state_precision, **kwargs)
    gen = torch.Generator().manual_seed(1)
    for t in range(steps):
        for p in params:
            p.grad = torch.randn(p.shape, generator=gen) * 10.0 ** (t % 5 - 2)
        if t <= 1 or outlier == 0:
            params[0].grad[0, 5] = outlier if t == 1 else 0.0
        opt.step()
    return params, opt


OUTLIERS = {"overflowing square": 1e25, "NaN": math.nan}


@pytest.mark.parametrize("outlier", list(OUTLIERS))
@pytest.mark.parametrize("path", ["reference", "foreach", pytest.param("fused", marks=needs_compile)])
def test_an_element_whose_square_overflows_or_is_nan_touches_no_other(path, outlier):
    """g = 1e25 makes g² = +inf: with float32 state v = +inf, d = +inf, u = 0,
    and that element stops moving while every other goes on. int8 state does
    the same: the other 255 elements of its block (parameters, codes and
    scales) are bit for bit those of a run whose gradient there stays 0.
    A NaN gradient (nonfinite="propagate") stays in its element too."""
    calm_params, calm = _outlier_run(0.0, **PATHS[path])
    params, opt = _outlier_run(OUTLIERS[outlier], **PATHS[path])
    exact_params, exact = _outlier_run(OUTLIERS[outlier], "fp32", foreach=False)
    element = torch.zeros(64, 80, dtype=torch.bool)
    element[0, 5] = True
    assert torch.equal(params[0][~element], calm_params[0][~element])
    for a, b in zip(params[1:], calm_params[1:]):
        assert torch.equal(a, b)
    state, calm_state = opt.state[params[0]], calm.state[calm_params[0]]
    for key in ("square_avg", "momentum_buffer"):
        assert torch.equal(state[key + "_absmax"], calm_state[key + "_absmax"])
        assert torch.equal(state[key + "_codes"][~element], calm_state[key + "_codes"][~element])
        exact_value = exact.state[exact_params[0]][key][0, 5]
        torch.testing.assert_close(load(get_buffer(state, key), torch.float32)[0, 5], exact_value,
                                   equal_nan=True, rtol=0, atol=0)
    torch.testing.assert_close(params[0][0, 5], exact_params[0][0, 5], equal_nan=True, rtol=0, atol=0)
    if outlier == "overflowing square":  # it stopped: v = +inf, and the momentum it had was 0
        assert params[0][0, 5] == _params()[0][0, 5]


@pytest.mark.parametrize("outlier", list(OUTLIERS))
@pytest.mark.parametrize("knobs", [{"nonfinite": "skip"}, {"centered": True}], ids=["skip", "centered"])
def test_every_state_the_optimizer_writes_loads_back(outlier, knobs):
    """The scales stay finite whatever the gradients, so a state dict with an
    overflowed or NaN element loads into the optimizer and into a fresh one,
    and resumes bit for bit. (nonfinite="skip" does not see g = 1e25, which
    is finite; it skips the NaN step.)"""
    params, opt = _outlier_run(OUTLIERS[outlier], steps=2, **knobs)
    saved = [p.detach().clone() for p in params]
    buf = io.BytesIO()
    torch.save(opt.state_dict(), buf)
    opt.load_state_dict(opt.state_dict())
    buf.seek(0)
    fresh = rmsprop.RMSprop(saved, state_precision="int8", lr=0.01, momentum=0.9, **knobs)
    fresh.load_state_dict(torch.load(buf, weights_only=True))
    gen = torch.Generator().manual_seed(7)
    for _ in range(2):
        for p, q in zip(params, saved):
            p.grad = torch.randn(p.shape, generator=gen)
            q.grad = p.grad.clone()
        opt.step()
        fresh.step()
    for p, q in zip(params, saved):
        torch.testing.assert_close(p, q, equal_nan=True, rtol=0, atol=0)
    assert params[0].isnan().sum() <= 1  # at most the NaN element itself


def test_resume_from_a_state_dict_is_bit_exact():
    straight = _params()
    _train(straight, 6, state_precision="int8", **KNOBS)
    resumed = _params()
    opt = _train(resumed, 3, state_precision="int8", **KNOBS)
    buf = io.BytesIO()
    torch.save(opt.state_dict(), buf)
    buf.seek(0)
    fresh = rmsprop.RMSprop(resumed, state_precision="int8", lr=1.0)
    fresh.load_state_dict(torch.load(buf, weights_only=True))
    gen = torch.Generator().manual_seed(1)
    for t in range(6):  # the same gradient stream as _train's, its first 3 steps skipped
        grads = [(torch.randn(p.shape, generator=gen) * 10.0 ** (t % 5 - 2)) for p in resumed]
        if t < 3:
            continue
        for p, g in zip(resumed, grads):
            p.grad = g
        fresh.step()
    for a, b in zip(straight, resumed):
        assert torch.equal(a, b)


@pytest.mark.parametrize("source,target", [("fp32", "int8"), ("int8", "param"), ("int8", "bf16")])
def test_state_dicts_convert_between_precisions(source, target):
    """The optimizer being loaded decides how its state is stored: a
    full-precision state dict is encoded (to nearest), an 8-bit one decoded."""
    params = _params()
    opt = _train(params, 3, state_precision=source, **KNOBS)
    fresh = rmsprop.RMSprop(params, state_precision=target, **KNOBS)
    fresh.load_state_dict(opt.state_dict())
    assert fresh.param_groups[0]["state_precision"] == target
    for key in ("square_avg", "grad_avg", "momentum_buffer"):
        saved, loaded = get_buffer(opt.state[params[0]], key), get_buffer(fresh.state[params[0]], key)
        if target == "int8":
            expected = quant.encode(saved, signed=key != "square_avg")
            assert torch.equal(loaded.codes, expected.codes) and torch.equal(loaded.absmax, expected.absmax)
        else:
            want = load(saved, torch.float32).to(torch.bfloat16 if target == "bf16" else torch.float32)
            assert torch.equal(loaded, want)
        small = fresh.state[params[3]][key]
        assert small.dtype == (torch.bfloat16 if target == "bf16" else torch.float32)
    fresh.step()  # and it goes on from there


def test_a_pytorch_state_dict_loads_into_an_int8_optimizer():
    params = _params()
    gen = torch.Generator().manual_seed(2)
    theirs = torch.optim.RMSprop(params, momentum=0.9, centered=True)
    for p in params:
        p.grad = torch.randn(p.shape, generator=gen)
    theirs.step()
    ours = rmsprop.RMSprop(params, state_precision="int8")
    ours.load_state_dict(theirs.state_dict())
    codes = ours.state[params[1]]
    assert torch.equal(codes["momentum_buffer_codes"],
                       quant.encode(theirs.state[params[1]]["momentum_buffer"], True).codes)
    ours.step()


@pytest.mark.parametrize("mutate,message", [
    (lambda s: s.__setitem__("square_avg_codes", s["square_avg_codes"].float()), "expected torch.uint8"),
    (lambda s: s.__setitem__("square_avg_absmax", s["square_avg_absmax"][:-1]), "expected float32 of shape"),
    (lambda s: s.pop("grad_avg_absmax"), "needs both grad_avg_codes and grad_avg_absmax"),
    (lambda s: s.__setitem__("momentum_buffer", torch.zeros(64, 80)), "both as a tensor and as 8-bit codes"),
    (lambda s: s.__setitem__("square_avg_absmax", -s["square_avg_absmax"]), "negative or non-finite"),
    (lambda s: s.__setitem__("grad_avg_codes", s["grad_avg_codes"].view(torch.uint8)), "expected torch.int8"),
])
def test_a_bad_8bit_state_dict_is_refused_before_anything_changes(mutate, message):
    params = _params()
    opt = _train(params, 2, state_precision="int8", **KNOBS)
    sd = opt.state_dict()
    sd["state"][0] = dict(sd["state"][0])
    mutate(sd["state"][0])
    before = {k: v.clone() for k, v in opt.state[params[0]].items()}
    with pytest.raises(ValueError, match=message):
        opt.load_state_dict(sd)
    assert all(torch.equal(before[k], v) for k, v in opt.state[params[0]].items())


def test_what_int8_cannot_hold_is_refused():
    with pytest.raises(ValueError, match="differentiable=True cannot run with state_precision='int8'"):
        rmsprop.RMSprop([torch.nn.Parameter(torch.zeros(5000))], state_precision="int8", differentiable=True)
    z = torch.nn.Parameter(torch.zeros(5000, dtype=torch.complex64))
    z.grad = torch.ones_like(z)
    with pytest.raises(ValueError, match="needs real parameters"):
        rmsprop.RMSprop([z], state_precision="int8").step()

    class Sharded(torch.Tensor):  # stands for FSDP2's DTensor
        pass

    s = torch.zeros(5000).as_subclass(Sharded).requires_grad_()
    s.grad = torch.ones(5000)
    with pytest.raises(ValueError, match="does not support Sharded parameters"):
        rmsprop.RMSprop([s], state_precision="int8", foreach=False).step()


def test_step_in_backward_and_share_memory_work_with_codes():
    model_a, model_b = (torch.nn.Linear(80, 64) for _ in range(2))
    model_b.load_state_dict(model_a.state_dict())
    x = torch.randn(16, 80)
    opt_a = rmsprop.RMSprop(model_a.parameters(), state_precision="int8", **KNOBS)
    opt_b = rmsprop.RMSprop(model_b.parameters(), state_precision="int8", **KNOBS).share_memory()
    assert opt_b.state[model_b.weight]["square_avg_codes"].is_shared()
    handle = rmsprop.step_in_backward(opt_b)
    for _ in range(3):
        model_a(x).square().mean().backward()
        opt_a.step()
        opt_a.zero_grad()
        model_b(x).square().mean().backward()
    handle.remove()
    assert torch.equal(model_a.weight, model_b.weight)


# ------------------------------------------------------------ quality, with teeth


def _quality():
    path = pathlib.Path(__file__).parents[1] / "benchmarks" / "low_memory_quality.py"
    spec = importlib.util.spec_from_file_location("low_memory_quality", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_int8_state_trains_as_well_as_fp32_and_a_broken_codec_does_not():
    """The Low memory page's quality benchmark (docs/low-memory.md), shortened (150 steps, one seed). Its
    goals are one-sided: int8 state's loss at most 1% above fp32 state's (a
    lower one is no defect) and its v within 5% of fp32 state's in geometric
    mean (measured: −0.2% and 1.8%). Two broken codecs must miss: a linear
    map for square_avg on loss (measured +61%), and codes rounded to nearest,
    not stochastically, on v (its v sticks low as it rises, read 15% low;
    its loss is 1.4% *lower*, so a loss bound alone cannot catch it)."""
    quality = _quality()
    run = lambda: quality.train("int8", steps=150, seed=0, foreach=False)  # noqa: E731
    base, exact = quality.train("fp32", steps=150, seed=0, foreach=False)
    loss, opt = run()
    assert loss / base - 1 <= 0.01 and quality.square_avg_bias(opt, exact) <= quality.BIAS_GOAL
    with quality.broken_codec("linear map for square_avg"):
        assert run()[0] / base - 1 > 0.2
    with quality.broken_codec("round to nearest"):
        assert quality.square_avg_bias(run()[1], exact) > 2 * quality.BIAS_GOAL


@pytest.mark.parametrize("preset", list(rmsprop.PRESETS))
@pytest.mark.parametrize("extra", [{}, {"nesterov": True, "momentum": 0.9}, {"bias_correction": True}])
def test_every_preset_and_knob_steps_on_codes_like_on_float32(preset, extra):
    """Every preset (TF1's v starting at 1 included) with int8 state: the
    foreach path equals the reference, and both stay near fp32 state."""
    lr = {"lr": 1e-3} if rmsprop.PRESETS[preset].lr is None else {}
    exact, ref, other = _params(torch.float64), _params(torch.float64), _params(torch.float64)
    start = [p.detach().clone() for p in exact]
    _train(exact, 4, preset=preset, state_precision="fp32", foreach=False, **lr, **extra)
    _train(ref, 4, preset=preset, state_precision="int8", foreach=False, **lr, **extra)
    _train(other, 4, preset=preset, state_precision="int8", foreach=True, **lr, **extra)
    for p0, a, b, c in zip(start, exact, ref, other):
        torch.testing.assert_close(c, b, rtol=1e-6, atol=1e-9)
        assert (b - a).abs().mean() <= 0.05 * (a - p0).abs().mean() + 1e-12
