"""The fused path: the engine's pure function, compiled over a whole group.

:func:`_step_group` applies :func:`rmsprop.engine.rmsprop_update` to every
tensor of a device-and-dtype group. It is traced once per structure into a
graph (``make_fx`` on fake tensors) and Inductor turns that graph into one
pass over memory per tensor (C++/OpenMP on CPU, Triton on CUDA). It is the
same function the reference path calls, so the two cannot drift.

What is compiled in, and what is a runtime value:

- compile-time: the boolean knobs (centered, maximize, eps_in_sqrt,
  lr_in_momentum, nesterov, decoupled_weight_decay, bias_correction), whether
  weight decay and momentum are on at all, whether bfloat16 parameters are
  written with stochastic rounding or keep a Kahan compensation (storage
  rows), whether the step counts are written in the pass (see
  :func:`fused_step`), and every tensor's shape, strides, dtype and device;
- runtime, as 0-d float64 tensors, so that derived values such as 1 − α are
  exact before they meet the tensors, as with Python numbers on the other
  paths: lr, alpha and eps (zero or not) and the nonzero weight_decay and
  momentum. A learning-rate schedule, even one through 0, or a changed alpha,
  never recompiles.

The tensors are updated in float64 for float64 parameters and in float32
otherwise (float16 and bfloat16 parameters are rounded once, when written back).

One compiled step is kept per :func:`_key` and :func:`_layout` (the
compile-time part above, read off the call's own arguments), shared by every
optimizer in the process, and called directly with the group's tensors; a
call finds its code by a C++ guard of its tensors' layout
(:mod:`rmsprop.guards`), or, where none accepts it, by the layout read in
Python. ``torch.compile`` would check the same facts with Dynamo's guards,
but calling through Dynamo cost 60-100 µs a call on the RL network's 6
tensors, where the compiled code itself takes 20 µs (docs/performance.md).
Inductor's on-disk caches let a second process skip the compile and the
C++/Triton build. Inside a user's own
``torch.compile`` the step is traced into the user's graph instead.
"""

from __future__ import annotations

import functools
import os
import shutil
from collections.abc import Callable, Sequence
from typing import Any, cast, overload

import torch
import torch.utils._pytree as pytree
from torch import Tensor

from ..engine import Hyper, _is_zero, clip_adaptive, ema_weight, rmsprop_update
from ..guards import Guard, layout_guard
from ..precision import Buffer, kahan_read, kahan_write_, load, store_, working_dtype, write_param_
from ..quant import Blockwise, is_quantized, stored_dtype
from ..settings import by_role
from . import stores
from .grouping import StepTensors, by_device_and_dtype, first_repeat

__all__ = ["fused_step", "fused_unavailable_reason", "compiled_structures", "DISABLE_ENV"]

#: Set to 1 to turn compiling off everywhere: ``fused=True`` then raises and the
#: automatic choice never picks the fused path.
DISABLE_ENV = "RMSPROP_DISABLE_COMPILE"

_FUSED_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64,
                 torch.complex64, torch.complex128)

# :func:`_key` → the steps compiled for it, one per layout; shared across
# optimizers and steps.
_COMPILED: dict[tuple, list[_Compiled]] = {}


def compiled_structures() -> int:
    """How many distinct group structures have been compiled in this process."""
    return sum(map(len, _COMPILED.values()))


def fused_unavailable_reason(params: list[Tensor], differentiable: bool,
                             who: Callable[[int], str] = "parameter {}".format) -> str | None:
    """Why the fused path cannot run on these parameters, or None if it can
    (``who(i)`` names the ``i``-th parameter in the reason)."""
    if os.environ.get(DISABLE_ENV, "") not in ("", "0"):
        return f"compiling is turned off by {DISABLE_ENV}={os.environ[DISABLE_ENV]}"
    if differentiable:
        return "differentiable=True needs the reference path (the compiled step records no autograd history)"
    for i, p in enumerate(params):
        if p.dtype not in _FUSED_DTYPES:
            return f"{who(i)} has dtype {p.dtype}, which is not supported (floating point or complex only)"
        if type(p) not in (Tensor, torch.nn.Parameter):
            return f"{who(i)} is a tensor subclass, {type(p).__name__}, which is not supported"
    repeat = first_repeat(params)
    if repeat is not None:
        # the reference and foreach paths step it once per listing, as PyTorch's for-loop and foreach do
        return (f"{who(repeat[1])} is {who(repeat[0])} again: one compiled pass writes each tensor once, "
                "where PyTorch steps a parameter as often as it is listed (and warns that a repeat will "
                "become an error); remove the repeat, or pass foreach=True or fused=False")
    if any(p.device.type == "cpu" for p in params) and not _cpp_compiler():
        return "no C++ compiler found for Inductor's CPU backend (set CXX or install g++)"
    return None


@functools.lru_cache(maxsize=1)
def _cpp_compiler() -> str | None:
    """The C++ compiler Inductor would use (looked up once: PATH walks are slow)."""
    return os.environ.get("CXX") or shutil.which("g++") or shutil.which("c++") or shutil.which("clang++")


@functools.lru_cache(maxsize=256)
def _scalar(role: str, value: float, device: torch.device) -> Tensor:
    """A 0-d float64 tensor holding ``value``, reused across steps (never
    written). Keyed by role too: two knobs that happen to be equal must not
    share one tensor, or Dynamo would guard on the aliasing and recompile
    when they part."""
    return torch.tensor(value, dtype=torch.float64, device=device)


def _step_group(params: list[Tensor], grads: list[Tensor], square_avgs: Sequence[Buffer],
                grad_avgs: Sequence[Buffer], momentum_buffers: Sequence[Buffer], steps: list[Tensor],
                idents: tuple[int, ...], hyper: Hyper, compute: torch.dtype, finite: Tensor | None,
                rounding_seed: int | None, emas: Sequence[Tensor], grad_scale: Tensor | None,
                real_view: bool, comps: Sequence[Tensor], ema_ws: Sequence[Tensor], count: bool) -> None:
    """The traced body: (0)…(16) for every tensor at ``compute`` precision,
    written back in place (Inductor fuses the casts into the one pass). With
    a ``finite`` flag, each write keeps the old value where the flag is False:
    a select in the same pass, never a host sync. ``real_view``: the tensors
    are complex ones' real views. With ``comps`` (Kahan), the update runs on
    θ + c and writes θ and c back, in the same pass. With ``count``, the
    step counts are written in the pass too (else the caller adds them)."""

    def write(dest: Tensor, new: Tensor, old: Tensor) -> None:
        dest.copy_(new if finite is None else torch.where(finite, new, old))

    for i in range(len(params)):
        comp = comps[i] if comps else None
        p, v = kahan_read(params[i], comp, compute), load(square_avgs[i], compute)
        m = load(grad_avgs[i], compute) if hyper.centered else None
        b = None if _is_zero(hyper.momentum) else load(momentum_buffers[i], compute)
        step = steps[i] + 1
        g, scale = grads[i].to(compute), grad_scale
        if not _is_zero(hyper.agc_clip):  # (0) then (0') here, where real views are known as such
            g = clip_adaptive(g if scale is None else g.mul(scale), p, hyper.agc_clip, real_view)
            scale = None
        new = rmsprop_update(p, g, v, m, b, step, hyper._replace(agc_clip=0.0),
                             emas[i] if emas else None, scale, ema_ws[i] if emas else None)
        if count:
            write(steps[i], step, steps[i])
        if new.ema is not None:
            write(emas[i], new.ema, emas[i])
        if comp is not None:
            kahan_write_(params[i], comp, new.param, keep=finite)
        elif rounding_seed is not None and params[i].dtype != compute:
            rounded = torch.empty_like(params[i])
            write_param_(rounded, new.param, rounding_seed, step, idents[i])
            write(params[i], rounded, params[i])
        else:
            write(params[i], new.param, p)
        store_(square_avgs[i], new.square_avg, keep=finite, rounding=(step, idents[i]), key="square_avg")
        if new.grad_avg is not None:
            store_(grad_avgs[i], new.grad_avg, keep=finite, rounding=(step, idents[i]), key="grad_avg")
        if new.momentum_buffer is not None:
            store_(momentum_buffers[i], new.momentum_buffer, keep=finite, rounding=(step, idents[i]),
                   key="momentum_buffer")


# Inductor's per-input asserts check each input's shape and strides at about a
# microsecond per tensor, which is most of a small model's step; the compiled
# code is looked up by exactly that metadata (:func:`_key`), so they repeat
# a check already made.
_Options = dict[str, str | int | bool | Callable[..., Any]]  # Inductor's options
_INDUCTOR_OPTIONS: _Options = {"size_asserts": False, "alignment_asserts": False, "scalar_asserts": False}

# With 8-bit state each buffer's block maximum is a reduction over the new
# values, and by default Inductor recomputes the whole update inside every
# kernel that reads it. Realizing any value read more than once stores it
# instead: measured on 4 × 625k fp32 params (2-core CPU), the int8 step went
# from 8.6 to 4.9 ms plain and from 19.4 to 12.3 ms centered with momentum.
# Structures with plain state keep Inductor's default (one loop already).
_QUANTIZED_OPTIONS: _Options = {**_INDUCTOR_OPTIONS, "realize_reads_threshold": 1}

# Inductor runs a loop on all threads from 512 elements a thread, and opens
# one OpenMP parallel region per kernel, so a small group's step wakes every
# thread once per step. ATen leaves a loop under 32,768 elements (its grain
# size) on one thread, and so do we for a group that small in all: on the
# 2-vCPU VM the RL net's fused step (4,996 elements) took 0.48-0.49× the
# time single-threaded, 10k elements in 16 tensors 0.83-1.23× (level within
# the noise), while making every loop under 4,096 elements a thread serial
# instead made 100k in 16 tensors 1.76× slower (one region for 16 loops was
# cheaper than 16 serial loops): the group's total decides, not each loop.
SERIAL_BELOW = 32768


def _options(quantized: bool, numel: int, cpu: bool) -> _Options:
    """Inductor's options for a group of ``numel`` parameter elements (both
    exceptions to Inductor's defaults were measured on its CPU backend only,
    and the GPU backend keeps them)."""
    if not cpu:
        return _INDUCTOR_OPTIONS
    options = _QUANTIZED_OPTIONS if quantized else _INDUCTOR_OPTIONS
    return {**options, "cpp.threads": 1} if numel < SERIAL_BELOW else options


_TENSOR = object()  # where a tensor sits among a call's arguments (its metadata ends the key)


def _key(args: tuple) -> tuple[list[Tensor], tuple]:
    """The tensors of a call, in order, and the part of the key its compiled
    code is looked up by that is not the tensors' layout: every argument
    that is not a tensor (the compile-time part of the module docstring)
    and where each tensor sits. (The arguments as :func:`_step_group` takes
    them: tensors, lists of tensors and 8-bit buffers, the Hyper, and
    values; :func:`_compile` checks that the tensors found here are every
    tensor of the call.)"""
    tensors: list[Tensor] = []
    key: list[Any] = []
    for arg in args:
        if isinstance(arg, Tensor):
            tensors.append(arg)
            key.append(_TENSOR)
        elif type(arg) is list:  # tensors, or 8-bit buffers (two tensors each)
            key.append(len(arg))
            if Blockwise in map(type, arg):
                for x in arg:
                    key.append(type(x) is Blockwise)
                    if type(x) is Blockwise:
                        tensors += x
                    else:
                        tensors.append(x)
            else:
                tensors += arg
        elif type(arg) is Hyper:  # numbers as tensors, switches and Python zeros as they are
            split = _HYPER_SPLITS.get(id(arg))
            if split is None or split[0] is not arg:
                split = _split(arg)
            tensors += split[1]
            key.append(split[2])
        else:  # a flag, a dtype, a seed, None, the idents (a tuple of ints)
            key.append(arg)
    return tensors, tuple(key)


def _split(hyper: Hyper) -> tuple[Hyper, list[Tensor], tuple]:
    """A runtime Hyper's tensors, and its fields with each tensor's place
    marked: kept while the same Hyper comes back (:func:`_runtime_hyper`
    hands over the same one while a group's settings hold)."""
    split = (hyper, [x for x in hyper if isinstance(x, Tensor)],
             tuple(_TENSOR if isinstance(x, Tensor) else x for x in hyper))
    if len(_HYPER_SPLITS) >= 64:
        _HYPER_SPLITS.clear()
    _HYPER_SPLITS[id(hyper)] = split  # holding `hyper` keeps its id unique
    return split


_HYPER_SPLITS: dict[int, tuple[Hyper, list[Tensor], tuple]] = {}


def _layout(tensors: list[Tensor]) -> tuple:
    """The rest of the key: each tensor's shape, strides, dtype and device.
    Two calls with the same :func:`_key` and layout run the same code
    correctly: it is all the compiled code assumes, what Dynamo's guards
    would check of these arguments."""
    return tuple([(t.shape, t.stride(), t.dtype, t.device) for t in tensors])


class _Compiled:
    """One compiled step, the layout it was compiled for, and guards that
    recognise that layout without reading it in Python."""

    __slots__ = ("layout", "fn", "guards")

    def __init__(self, layout: tuple, fn: Callable[..., Any]) -> None:
        self.layout, self.fn = layout, fn
        self.guards: list[Guard] = []


# A few guards per layout (rmsprop.guards): a caller may alternate between
# tensors that a guard tells apart and the code does not (warm_up's plain
# tensors, then the Parameters).
_GUARDS_PER_LAYOUT = 4


def _lookup(tensors: list[Tensor], key: tuple) -> _Compiled | None:
    """The compiled step for a call, without compiling: by a guard, else by its
    layout read in Python (then a guard is added for it)."""
    entries = _COMPILED.get(key)
    if entries is None:
        return None
    for entry in entries:
        for guard in entry.guards:
            if guard.check(*tensors):
                return entry
    layout = _layout(tensors)
    for entry in entries:
        if entry.layout == layout:
            if len(entry.guards) < _GUARDS_PER_LAYOUT:
                added = layout_guard(tensors)
                if added is not None:
                    entry.guards.append(added)
            return entry
    return None


def _compile(args: tuple, tensors: list[Tensor], options: _Options) -> Callable[..., Any]:
    """:func:`_step_group` over ``args``, traced (on fake tensors: nothing is
    read or written) into a graph whose inputs are ``tensors``, and compiled
    by Inductor. The result takes the tensors of a call with the same
    :func:`_key` and :func:`_layout` and updates them in place."""
    from torch._subclasses.fake_tensor import FakeTensorMode
    from torch.fx.experimental.proxy_tensor import make_fx
    from torch.fx.experimental.symbolic_shapes import ShapeEnv

    leaves, spec = pytree.tree_flatten(args)
    at = [i for i, x in enumerate(leaves) if isinstance(x, Tensor)]
    if len(at) != len(tensors) or any(leaves[i] is not t for i, t in zip(at, tensors)):
        raise RuntimeError("rmsprop internal error: the compiled step's inputs are out of order")
    for i in at:
        leaves[i] = None  # the traced body holds no tensor of this call

    def body(*inputs: Tensor) -> None:
        filled = list(leaves)
        for i, x in zip(at, inputs):
            filled[i] = x
        _step_group(*pytree.tree_unflatten(filled, spec))

    examples = [t.detach() for t in tensors]
    with torch.no_grad():
        graph = make_fx(body, tracing_mode="fake")(*examples)
        # A fake mode with a shape environment, as Dynamo would hand Inductor: without
        # one, Inductor's and AOTAutograd's on-disk caches are bypassed. Static shapes.
        context = torch._guards.TracingContext(FakeTensorMode(shape_env=ShapeEnv()))
        with torch._guards.tracing(context):
            return stores.call(torch._inductor.compile, graph, examples, options=options)


def _run(args: tuple, quantized: bool) -> None:
    """One compiled call: the code for this call's key and layout, compiled the
    first time (the options follow from them: the parameters' shapes are in
    the layout)."""
    tensors, key = _key(args)
    entry = _lookup(tensors, key)
    if entry is None:
        options = _options(quantized, sum(x.numel() for x in args[0]), args[0][0].is_cpu)
        entry = _Compiled(_layout(tensors), _compile(args, tensors, options))
        guard = layout_guard(tensors)
        if guard is not None:
            entry.guards.append(guard)
        _COMPILED.setdefault(key, []).append(entry)
    if torch.is_grad_enabled():  # the step is under no_grad; a direct caller may not be
        with torch.no_grad():
            entry.fn(*tensors)
    else:
        entry.fn(*tensors)


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """float64 maths for float64 parameters, float32 for everything narrower."""
    real = torch.empty((), dtype=dtype).real.dtype if dtype.is_complex else dtype
    return torch.float64 if real == torch.float64 else torch.float32


# A zero weight decay or momentum switches its formula lines off: structure,
# compiled in. Every other number, zero or not, is a runtime value, so a
# schedule through lr = 0 (a warm-up from 0) never recompiles.
_STRUCTURAL_ZEROS = ("weight_decay", "momentum", "agc_clip", "ema_decay")
_RUNTIME = by_role("runtime")


def _runtime_hyper(hyper: Hyper, device: torch.device) -> Hyper:
    """Numbers become 0-d float64 tensors, except a zero weight decay or
    momentum, which stays a Python zero. Kept for the next step while a
    group's settings stay as they are (the plan hands over the same Hyper):
    not for a tensor lr, whose value may change in place."""
    seen = _RUNTIME_HYPERS.get((id(hyper), device))
    if seen is not None and seen[0] is hyper:
        return seen[1]

    def value(role: str, x: Any) -> Any:
        if isinstance(x, Tensor):
            return x.to(device=device, dtype=torch.float64)
        if x == 0 and role in _STRUCTURAL_ZEROS:
            return 0.0
        return _scalar(role, float(x), device)

    runtime = hyper._replace(**{role: value(role, getattr(hyper, role)) for role in _RUNTIME})
    if not isinstance(hyper.lr, Tensor):  # the only setting that may be a tensor (rmsprop.settings)
        if len(_RUNTIME_HYPERS) >= 64:
            _RUNTIME_HYPERS.clear()
        _RUNTIME_HYPERS[id(hyper), device] = (hyper, runtime)  # holding `hyper` keeps its id unique
    return runtime


# (id of a Hyper, device) → (that Hyper, its runtime form)
_RUNTIME_HYPERS: dict[tuple[int, torch.device], tuple[Hyper, Hyper]] = {}


def fused_step(t: StepTensors, hyper: Hyper, *, finite: Tensor | None = None,
               rounding_seed: int | None = None, grad_scale: Tensor | None = None,
               state_precision: str = "param") -> None:
    """Apply one step to all tensors: one compiled call per device and dtype.
    Where ``finite`` (a 0-d bool tensor) is False nothing changes, decided
    inside the compiled pass."""
    if not t.params:
        return
    centered, use_momentum = hyper.centered, hyper.momentum != 0
    for device, dtype, group in by_device_and_dtype(t, centered, bool(use_momentum)):
        if dtype.is_complex or not all(map(Tensor.dim, group.params)):
            p, g = _real(group.params), _real(group.grads)
            v, m, b = _real(group.square_avgs), _real(group.grad_avgs), _real(group.momentum_buffers)
            e, c = cast("list[Tensor]", _real(group.emas)), _real(list(group.comps))
        else:  # nearly every group: each tensor has its parameter's shape (the plan checked), as it is
            p, g, v, m, b, e, c = map(_listed, (group.params, group.grads, group.square_avgs, group.grad_avgs,
                                                group.momentum_buffers, group.emas, group.comps))
        steps = group.steps
        quantized = is_quantized(v[0])
        # the random bits' salt is read only when rounding: elsewhere, one structure for any parameters
        idents = tuple(group.idents) if quantized or rounding_seed is not None else (0,) * len(p)
        # the state stored narrower (rmsprop.precision) widens to the working dtype
        compute = working_dtype(_compute_dtype(dtype), stored_dtype(v[0]), state_precision, bool(c))
        run_hyper = _runtime_hyper(hyper, device)
        scale = None if grad_scale is None else grad_scale.to(device)
        # t ← t + 1 for every tensor, in the pass or after it. Each count is a
        # 0-d tensor of its own, which Inductor writes in an `omp single` block
        # ending in a barrier of all threads: 16 of them made 1M parameters in
        # 16 tensors step in 860-1150 µs against 700-735 µs with the counts
        # added after the pass (2 threads, passive waits). A group compiled
        # single-threaded has no barrier, and there one eager add over its
        # counts would cost more than the pass's writes; a `finite` flag
        # decided on the device keeps them in the pass, under the flag.
        count = finite is not None or sum(map(Tensor.numel, p)) < SERIAL_BELOW
        args = (p, g, v, m, b, steps, idents, run_hyper, compute, finite, rounding_seed, e, scale,
                dtype.is_complex, c, _ema_weights(hyper, steps, device) if e else (), count)
        if torch.compiler.is_compiling():
            # Inside a user's own torch.compile: trace through, do not nest.
            _step_group(*args)
        else:
            _run(args, quantized)
        if not count:
            torch._foreach_add_(steps, 1)


def _ema_weights(hyper: Hyper, steps: Sequence[Tensor], device: torch.device) -> list[Tensor]:
    """(16)'s weight of this step for each tensor, as 0-d float64 tensors computed
    once per step here rather than per element inside the pass (the step counts
    are read on the host only where they live on the CPU: engine.ema_weight)."""
    out: list[Tensor] = []
    seen: dict[float | int, Tensor] = {}
    for step in steps:
        key = float(step) if step.is_cpu and not torch.compiler.is_compiling() else id(step)
        weight = seen.get(key)
        if weight is None:
            w = ema_weight(hyper, step + 1)
            weight = seen[key] = (w.to(device) if isinstance(w, Tensor)
                                  else torch.tensor(w, dtype=torch.float64, device=device))
        out.append(weight)
    return out


def _listed(xs: Sequence[Any]) -> list[Any]:
    """A list (:func:`_key` reads the tensors of lists)."""
    return xs if type(xs) is list else list(xs)


@overload
def _real(tensors: list[Tensor]) -> list[Tensor]: ...
@overload
def _real(tensors: Sequence[Buffer]) -> Sequence[Buffer]: ...
def _real(tensors: Sequence[Buffer]) -> Sequence[Buffer]:
    """Real, at-least-1-d tensors on the same storage: complex tensors as
    ``view_as_real`` (outside the graph), and 0-d tensors as 1-element views
    (Inductor 2.13 drops in-place writes into some 0-d graph inputs). A
    parameter is passed as it is: the compiled code neither reads nor
    records autograd state, and a detached view costs a microsecond a tensor."""
    out: list[Buffer] = []
    for x in tensors:
        if isinstance(x, Blockwise) or x.dim() and not x.is_complex():  # nearly every tensor: as it is
            out.append(x)
            continue
        x = torch.view_as_real(x.detach()) if torch.is_complex(x) else x.detach()
        out.append(x.view(1) if x.dim() == 0 else x)
    return out
