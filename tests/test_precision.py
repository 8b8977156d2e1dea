"""state_precision: how the state is stored, and that the update does not care."""

from __future__ import annotations

import io

import pytest
import torch

import rmsprop

from helpers import EVERY_BUFFER_KNOBS, clone_params, grad_stream, make_params, needs_fused, train_cast

PATHS = {"reference": {"foreach": False}, "foreach": {"foreach": True}, "fused": {"fused": True}}
# Every path, the fused one under the shared marker (it needs a C++ compiler).
EVERY_PATH = ["reference", "foreach", pytest.param("fused", marks=needs_fused)]
KNOBS = EVERY_BUFFER_KNOBS


@pytest.mark.parametrize("param_dtype,precision,expected", [
    (torch.float32, "param", torch.float32), (torch.float32, "fp32", torch.float32),
    (torch.float32, "bf16", torch.bfloat16), (torch.bfloat16, "param", torch.bfloat16),
    (torch.bfloat16, "fp32", torch.float32), (torch.float64, "bf16", torch.bfloat16),
])
def test_buffers_are_stored_as_asked(param_dtype, precision, expected):
    params = make_params(param_dtype)
    opt = train_cast(params, grad_stream(params, 2), state_precision=precision, **KNOBS)
    for p in params:
        for key, value in opt.state[p].items():
            if key != "step":
                assert value.dtype == expected, (key, value.dtype)


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
@pytest.mark.parametrize("path", EVERY_PATH)
def test_wide_state_for_bf16_params_is_the_float32_update_rounded_once(path, precision):
    """Each step widens θ to float32, updates with the state, and rounds θ
    once: bit for bit the same path's float32 optimizer with the same state
    precision whose parameter is rounded to bfloat16 after every step, θ and
    every buffer. That holds for ``"bf16"`` state too, though its buffers are
    stored in the parameters' own dtype as under ``"param"`` (which keeps
    PyTorch's bfloat16 maths): the eager paths once took the matching dtypes
    for ``"param"`` and stepped in bfloat16. (Across paths, float32 reference
    and foreach are bit-equal, tests/test_hostile.py, and the fused path is
    held to 2e-6 of them, tests/test_fused.py.)"""
    base = make_params(torch.float32)
    stream = grad_stream(base, 6)
    narrow = [torch.nn.Parameter(p.detach().bfloat16(), requires_grad=p.requires_grad) for p in base]
    opt = rmsprop.RMSprop(narrow, state_precision=precision, **KNOBS, **PATHS[path])
    shadow = [torch.nn.Parameter(p.detach().float(), requires_grad=p.requires_grad) for p in narrow]
    ref = rmsprop.RMSprop(shadow, state_precision=precision, **KNOBS, **PATHS[path])
    for grads in stream:
        for p, s, g in zip(narrow, shadow, grads):
            p.grad = None if g is None else g.bfloat16()
            s.grad = None if g is None else p.grad.float()
        opt.step()
        ref.step()
        with torch.no_grad():
            for s in shadow:
                s.copy_(s.bfloat16().float())  # the one rounding of θ
    stored = {"fp32": torch.float32, "bf16": torch.bfloat16}[precision]
    for p, s in zip(narrow, shadow):
        assert p.dtype == torch.bfloat16 and torch.equal(p.float(), s.detach())
        assert opt.state.get(p, {}).keys() == ref.state.get(s, {}).keys()
        for key, value in ref.state.get(s, {}).items():
            assert key == "step" or opt.state[p][key].dtype == stored, key
            assert opt.state[p][key].dtype == value.dtype and torch.equal(opt.state[p][key], value), key


@pytest.mark.parametrize("path", ["foreach", pytest.param("fused", marks=needs_fused)])
def test_bf16_state_agrees_across_paths(path):
    base = make_params(torch.float32)
    stream = grad_stream(base, 6)
    ref, other = clone_params(base), clone_params(base)
    opt_ref = train_cast(ref, stream, state_precision="bf16", **KNOBS, foreach=False)
    opt = train_cast(other, stream, state_precision="bf16", **KNOBS, **PATHS[path])
    for a, b in zip(ref, other):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
        for key, value in opt_ref.state[a].items():
            # one bf16 ulp where the float32 results straddle a rounding boundary
            torch.testing.assert_close(opt.state[b][key].float(), value.float(), rtol=2**-7, atol=0)


def test_bf16_state_trains_like_fp32_state():
    torch.manual_seed(0)
    x = torch.randn(256, 16)
    y = x @ torch.randn(16, 1) + 0.1 * torch.randn(256, 1)
    losses = {}
    for precision in ("fp32", "bf16"):
        torch.manual_seed(1)
        model = torch.nn.Linear(16, 1)
        opt = rmsprop.RMSprop(model.parameters(), lr=1e-2, state_precision=precision)
        for _ in range(200):
            loss = torch.nn.functional.mse_loss(model(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
        losses[precision] = loss.item()
    assert losses["bf16"] == pytest.approx(losses["fp32"], rel=0.05)


@pytest.mark.parametrize("precision", ["bf16", "fp32"])
def test_state_dict_keeps_the_stored_precision_and_resumes_exactly(precision):
    dtype = torch.float32 if precision == "bf16" else torch.bfloat16
    base = [torch.nn.Parameter(p.detach().to(dtype)) for p in make_params(torch.float32)[:3]]
    stream = grad_stream(base, 6)
    straight = clone_params(base)
    train_cast(straight, stream, state_precision=precision, **KNOBS)
    resumed = clone_params(base)
    opt = train_cast(resumed, stream[:3], state_precision=precision, **KNOBS)
    buf = io.BytesIO()
    torch.save(opt.state_dict(), buf)
    buf.seek(0)
    fresh = rmsprop.RMSprop(resumed, state_precision=precision, lr=1.0)
    fresh.load_state_dict(torch.load(buf, weights_only=True))
    assert fresh.state[resumed[1]]["square_avg"].dtype == opt.state[resumed[1]]["square_avg"].dtype
    for grads in stream[3:]:
        for p, g in zip(resumed, grads):
            p.grad = None if g is None else g.to(dtype)
        fresh.step()
    for a, b in zip(straight, resumed):
        assert torch.equal(a, b)


def test_bad_precision_is_refused():
    with pytest.raises(ValueError, match="Invalid state_precision value: 'int4'"):
        rmsprop.RMSprop([torch.zeros(1, requires_grad=True)], state_precision="int4")
    p = torch.zeros(2, dtype=torch.complex64, requires_grad=True)
    p.grad = torch.ones_like(p)
    with pytest.raises(ValueError, match="needs real parameters"):
        rmsprop.RMSprop([p], state_precision="bf16").step()


# ------------------------------------------------------------ stochastic rounding


def _stalled_run(path, stochastic, steps=400, seed=0, precision="fp32"):
    """bf16 parameters at 1.0 and a constant gradient: RMSProp moves each by
    about lr = 1e-4 a step, far below half a bf16 ulp at 1.0 (2**-9), so
    rounding to nearest never moves them."""
    p = torch.nn.Parameter(torch.ones(4096, dtype=torch.bfloat16))
    opt = rmsprop.RMSprop([p], lr=1e-4, state_precision=precision, stochastic_rounding=stochastic,
                          rounding_seed=seed, **PATHS[path])
    for _ in range(steps):
        p.grad = torch.ones_like(p)
        opt.step()
    return p.detach().float(), opt


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
@pytest.mark.parametrize("path", EVERY_PATH)
def test_stochastic_rounding_keeps_learning_where_round_to_nearest_stalls(path, precision):
    """With float32 state, and with bfloat16 state (stored in the parameters'
    own dtype, yet updated in float32 and so rounded stochastically: the
    eager paths once stepped it in bfloat16 and never rounded)."""
    nearest, _ = _stalled_run(path, stochastic=False, precision=precision)
    assert torch.equal(nearest, torch.ones(4096))  # stalled: not one parameter moved
    rounded, opt = _stalled_run(path, stochastic=True, precision=precision)
    exact, v = 1.0, torch.zeros((), dtype=torch.float32)  # the trajectory of one element, θ unrounded
    for _ in range(400):
        v = (0.99 * v + 0.01).to(opt.state[opt.param_groups[0]["params"][0]]["square_avg"].dtype).float()
        exact -= 1e-4 / (v.sqrt().item() + 1e-8)
    # unbiased: the mean lands on the exact trajectory (std of the mean ≈ 4e-5 here)
    assert rounded.mean().item() == pytest.approx(exact, abs=5e-4)
    assert rounded.std().item() > 0  # each element took its own random path


def test_stochastic_rounding_is_deterministic_given_the_seed_and_paths_agree():
    a, _ = _stalled_run("reference", True, steps=30, seed=7)
    b, _ = _stalled_run("foreach", True, steps=30, seed=7)
    c, _ = _stalled_run("reference", True, steps=30, seed=8)
    assert torch.equal(a, b)  # the same bits from the same (seed, step, position, index)
    assert not torch.equal(a, c)


def test_stochastic_rounding_resumes_bit_exactly():
    straight, _ = _stalled_run("foreach", True, steps=20, seed=3)
    p = torch.nn.Parameter(torch.ones(4096, dtype=torch.bfloat16))
    opt = rmsprop.RMSprop([p], lr=1e-4, state_precision="fp32", stochastic_rounding=True, rounding_seed=3)
    for t in range(20):
        if t == 10:
            buf = io.BytesIO()
            torch.save(opt.state_dict(), buf)
            buf.seek(0)
            opt = rmsprop.RMSprop([p], lr=1.0, state_precision="fp32")
            opt.load_state_dict(torch.load(buf, weights_only=True))  # seed and switch come from the file
        p.grad = torch.ones_like(p)
        opt.step()
    assert torch.equal(p.detach().float(), straight)


def test_stochastic_rounding_needs_a_wider_update_and_bf16_params():
    with pytest.raises(ValueError, match="stochastic_rounding=True needs state_precision"):
        rmsprop.RMSprop([torch.zeros(1, requires_grad=True)], stochastic_rounding=True)
    p = torch.nn.Parameter(torch.ones(3, dtype=torch.float16))
    message = r"parameter 0 of param group 0: stochastic_rounding supports bfloat16 parameters \(wider"
    with pytest.raises(ValueError, match=message + r" ones are written as they are\), not torch.float16"):
        rmsprop.RMSprop([p], state_precision="fp32", stochastic_rounding=True, foreach=False)
