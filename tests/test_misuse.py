"""Misuse: what the optimizer does with input that is legal but unusual.

- A param group may mix dtypes and devices: every path groups by device and
  dtype and gives each tensor what PyTorch's for-loop gives it (PyTorch's
  foreach, in float16 and bfloat16, rounds its multipliers to the dtype).
- A gradient whose dtype differs from its parameter's (PyTorch 2.13's
  ``grad_dtype``) is cast to the parameter's dtype, on every path. PyTorch's
  own two paths disagree there, and its ``centered=True`` fails inside
  ``lerp``; where the cast is exact (a narrower gradient) we equal its for-loop.
  A gradient on another device than its parameter cannot be set at all.
- ``zero_grad(set_to_none=False)`` then a step with all-zero gradients leaves
  every parameter unchanged, bit for bit, for every preset and path, when
  weight decay is off and no momentum is carried (0/0 included: ε = 0).
- Duplicate parameters behave as PyTorch's: a warning within a group, an
  error across groups, and each occurrence stepped as PyTorch's same path does.
"""

from __future__ import annotations

import warnings

import pytest
import torch

import rmsprop
from rmsprop.paths import fused

from helpers import clone_params, grad_stream, make_params, run

HAS_COMPILER = fused.fused_unavailable_reason([torch.zeros(1)], False) is None
needs_compiler = pytest.mark.skipif(not HAS_COMPILER, reason="fused path unavailable: no C++ compiler")

# (our path arguments, torch.optim.RMSprop's same path)
SAME_PATH = {"reference": ({"foreach": False}, {"foreach": False}),
             "foreach": ({"foreach": True}, {"foreach": True})}
# In float16 and bfloat16 PyTorch's foreach multiplies by α, μ and 1 − η·λ
# rounded to the dtype (on CPU); its for-loop and both our paths do not.
FORLOOP = {"foreach": False}


def _mixed_group(seed: int = 0) -> list[torch.nn.Parameter]:
    """One group's worth of parameters: four real dtypes, complex, and one on
    the meta device (the only second device a CPU machine has)."""
    gen = torch.Generator().manual_seed(seed)
    params = [torch.randn(4, 3, generator=gen).to(dtype)
              for dtype in (torch.float32, torch.float64, torch.bfloat16, torch.float16)]
    params.append(torch.randn(5, generator=gen, dtype=torch.complex64))
    params.append(torch.randn(6, generator=gen, device="meta"))
    return [torch.nn.Parameter(p) for p in params]


def _mixed_stream(params, steps: int = 4):
    gen = torch.Generator().manual_seed(7)
    return [[torch.randn(p.shape, generator=gen, dtype=p.dtype).to(p.device) for p in params]
            for _ in range(steps)]


def _assert_equal_where_torch_is_finite(ours, theirs, complex_rtol: float = 0.0):
    """Equal wherever PyTorch's parameter is finite; ours is finite everywhere
    (in float16 PyTorch's ε = 1e-8 rounds to 0, and a centered 0/0 gives NaN)."""
    for p, q in zip(ours, theirs):
        if p.device.type == "meta":
            assert q.device.type == "meta" and p.shape == q.shape
            continue
        p, q = p.detach(), q.detach()
        assert torch.isfinite(p).all(), p.dtype
        finite = torch.isfinite(q)
        if p.is_complex() and complex_rtol:
            torch.testing.assert_close(p[finite], q[finite], rtol=complex_rtol, atol=0)
        else:
            assert torch.equal(p[finite], q[finite]), p.dtype


@pytest.mark.parametrize("path", list(SAME_PATH))
@pytest.mark.parametrize("knobs", [{}, {"momentum": 0.9, "centered": True, "weight_decay": 0.1}],
                         ids=["plain", "momentum-centered-wd"])
def test_a_group_of_mixed_dtypes_and_devices_steps_as_torchs_for_loop(path, knobs):
    ours_kw, _ = SAME_PATH[path]
    base = _mixed_group()
    stream = _mixed_stream(base)
    ours_p, theirs_p = clone_params(base), clone_params(base)
    run(rmsprop.RMSprop, ours_p, stream, **knobs, **ours_kw)
    run(torch.optim.RMSprop, theirs_p, stream, **knobs, **FORLOOP)
    # Our foreach path takes complex θ as real views from line (1), PyTorch's
    # for-loop from line (4): weight decay rounds differently, by an ulp or so.
    _assert_equal_where_torch_is_finite(ours_p, theirs_p, complex_rtol=1e-6 if path == "foreach" else 0.0)


@needs_compiler
@pytest.mark.parametrize("count", [2, pytest.param(5, marks=pytest.mark.slow)])
def test_fused_steps_a_mixed_group_as_each_dtype_alone(count):
    base = _mixed_group()[:count]  # each dtype compiles; not the meta device
    stream = _mixed_stream(base)
    together = clone_params(base)
    run(rmsprop.RMSprop, together, stream, fused=True, momentum=0.9)
    for i in range(len(base)):
        alone = clone_params([base[i]])
        run(rmsprop.RMSprop, alone, [[grads[i]] for grads in stream], fused=True, momentum=0.9)
        assert torch.equal(together[i], alone[0]), base[i].dtype


def _grad_dtype_params(param_dtype, grad_dtype, seed=0):
    gen = torch.Generator().manual_seed(seed)
    p = torch.nn.Parameter(torch.randn(16, generator=gen).to(param_dtype))
    p.grad_dtype = grad_dtype
    stream = [[(torch.randn(16, generator=gen) * 3).to(grad_dtype)] for _ in range(4)]
    return p, stream


PATHS = {"reference": {"foreach": False}, "foreach": {"foreach": True}, "fused": {"fused": True}}
DTYPE_PAIRS = {"f32-f64": (torch.float32, torch.float64), "bf16-f32": (torch.bfloat16, torch.float32),
               "f64-f32": (torch.float64, torch.float32)}


def _grad_dtype_cases():
    for path in PATHS:
        for name, (param_dtype, grad_dtype) in DTYPE_PAIRS.items():
            marks = []
            if path == "fused":  # one compile in `make test`
                marks = [needs_compiler] + ([] if name == "bf16-f32" else [pytest.mark.slow])
            yield pytest.param(path, param_dtype, grad_dtype, marks=marks, id=f"{path}-{name}")


@pytest.mark.parametrize("path,param_dtype,grad_dtype", list(_grad_dtype_cases()))
def test_a_gradient_of_another_dtype_is_cast_to_the_parameters(path, param_dtype, grad_dtype):
    knobs = dict(momentum=0.9, centered=True, weight_decay=0.1, **PATHS[path])
    p, stream = _grad_dtype_params(param_dtype, grad_dtype)
    q = torch.nn.Parameter(p.detach().clone())
    opt = run(rmsprop.RMSprop, [p], stream, **knobs)
    cast = run(rmsprop.RMSprop, [q], [[g.to(param_dtype) for g in gs] for gs in stream], **knobs)
    assert torch.equal(p, q)
    for key, value in cast.state[q].items():
        assert value.dtype == opt.state[p][key].dtype and torch.equal(opt.state[p][key], value), key


def test_torch_fails_where_we_cast_and_we_equal_its_for_loop_where_the_cast_is_exact():
    p, stream = _grad_dtype_params(torch.float32, torch.float64)
    with pytest.raises(RuntimeError, match="expected dtype float for `end`"):
        run(torch.optim.RMSprop, [p], stream, centered=True)
    for knobs in ({}, {"momentum": 0.9, "weight_decay": 0.1}):
        ours, stream = _grad_dtype_params(torch.float64, torch.float32)
        theirs = torch.nn.Parameter(ours.detach().clone())
        theirs.grad_dtype = torch.float32
        run(rmsprop.RMSprop, [ours], stream, foreach=False, **knobs)
        run(torch.optim.RMSprop, [theirs], stream, foreach=False, **knobs)
        assert torch.equal(ours, theirs)


def test_a_gradient_on_another_device_cannot_be_set():
    """The optimizer never sees one: PyTorch refuses the assignment itself."""
    p = torch.nn.Parameter(torch.zeros(3))
    with pytest.raises(RuntimeError, match="device"):
        p.grad = torch.zeros(3, device="meta")


def _preset_kwargs(name: str) -> dict:
    preset = rmsprop.PRESETS[name]
    return {"preset": name, **({"lr": 0.01} if preset.lr is None else {})}


ALL_PRESETS = list(rmsprop.PRESETS)
# The fused path compiles per preset: `make test` takes DQN's (centered, ε in
# the root: d = 0 by the clamp), `make test-slow` every one.
FUSED_PRESETS = ["dqn"]


def _zero_grad_cases():
    for path in PATHS:
        for name in ALL_PRESETS:
            marks = []
            if path == "fused":
                marks = [needs_compiler] + ([] if name in FUSED_PRESETS else [pytest.mark.slow])
            yield pytest.param(path, name, marks=marks, id=f"{path}-{name}")


@pytest.mark.parametrize("path,preset", list(_zero_grad_cases()))
@pytest.mark.parametrize("eps", [None, 0.0], ids=["preset-eps", "eps0"])
def test_zero_gradients_leave_parameters_unchanged(path, preset, eps):
    """A model whose gradients were zeroed (not set to None), for every preset:
    from a fresh state, and after real steps (no momentum carried), a step
    moves no parameter by a single bit; with ε = 0 every update is 0/0."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.Tanh(), torch.nn.Linear(3, 2))
    kwargs = {**_preset_kwargs(preset), **PATHS[path], **({} if eps is None else {"eps": eps})}
    opt = rmsprop.RMSprop(model.parameters(), **kwargs)
    x = torch.randn(8, 4)
    for train_steps in (0, 3):
        for _ in range(train_steps):
            opt.zero_grad()
            model(x).square().mean().backward()
            opt.step()
        model(x).sum().backward()  # grads exist and are nonzero until zeroed
        opt.zero_grad(set_to_none=False)
        assert all(p.grad is not None and not p.grad.any() for p in model.parameters())
        before = [p.detach().clone() for p in model.parameters()]
        opt.step()
        for p, b in zip(model.parameters(), before):
            assert torch.equal(p, b) and torch.equal(p.signbit(), b.signbit()), (preset, train_steps)


def test_zero_gradients_with_momentum_carry_the_buffer_as_torch_does():
    """With momentum after real steps, a zero gradient still moves θ by η·μ·b:
    the guarantee above is about the update u, which is exactly 0."""
    base = make_params(torch.float32)
    stream = grad_stream(base, 3)
    stream.append([None if g is None else torch.zeros_like(g) for g in stream[-1]])
    ours_p, theirs_p = clone_params(base), clone_params(base)
    run(rmsprop.RMSprop, ours_p, stream, momentum=0.9)
    run(torch.optim.RMSprop, theirs_p, stream, momentum=0.9)
    for p, q in zip(ours_p, theirs_p):
        assert torch.equal(p, q)


@pytest.mark.parametrize("path", list(SAME_PATH))
def test_duplicate_parameters_within_a_group_warn_and_step_as_torchs_same_path(path):
    ours_kw, theirs_kw = SAME_PATH[path]
    base = make_params(torch.float32)[1:3]
    stream = grad_stream(base, 4)
    results = []
    for cls, kw in ((rmsprop.RMSprop, ours_kw), (torch.optim.RMSprop, theirs_kw)):
        params = clone_params(base)
        with pytest.warns(UserWarning, match="duplicate parameters"):
            opt = cls([params[0], params[1], params[0]], momentum=0.9, **kw)
        for grads in stream:
            for p, g in zip(params, grads):
                p.grad = None if g is None else g.clone()
            opt.step()
        results.append((params, opt))
    (ours, ours_opt), (theirs, theirs_opt) = results
    for p, q in zip(ours, theirs):
        assert torch.equal(p, q)
        for key, value in theirs_opt.state[q].items():
            assert torch.equal(ours_opt.state[p][key], value), key


def test_duplicate_parameters_across_groups_raise_before_anything_changes():
    p, q = torch.nn.Parameter(torch.randn(2)), torch.nn.Parameter(torch.randn(2))
    message = "some parameters appear in more than one parameter group"
    with pytest.raises(ValueError, match=message):
        rmsprop.RMSprop([{"params": [p]}, {"params": [q, p]}])
    opt = rmsprop.RMSprop([p], lr=0.1)
    before = [dict(g) for g in opt.param_groups]
    with pytest.raises(ValueError, match=message):
        opt.add_param_group({"params": [q, p]})
    assert opt.param_groups == before
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        opt.add_param_group({"params": [q]})  # a new parameter is fine
