"""Plain stores for half a vector of 16-bit floats in Inductor's CPU kernels.

A fused step's loop runs sixteen float32 lanes at a time (one AVX-512
register). Where a value is stored as bfloat16 or float16 (bf16 state,
bf16/fp16 parameters, a Kahan compensation), those sixteen values are half of
a 512-bit register of 16-bit lanes, and Inductor 2.13 writes them with
``Vectorized<BFloat16>::store(ptr, 16)``, a *masked* 512-bit store
(``_mm512_mask_storeu_epi16``) whose masked-off half reaches into the next
32 bytes. On the Intel Xeon (Sapphire Rapids, AVX-512) VM this project is
measured on, that store alone made the bf16-state step 2.1-2.2× the float32
step's time at 4M parameters in one tensor; the same kernel with a plain
256-bit store (``_mm256_storeu_si256`` of the register's low half, the same
32 bytes) took 0.95×, and at 10M parameters in 16 tensors
(``benchmarks/state_precision_speed.py``) 0.95× plain and 1.03× centered
with momentum, against 1.08× and 2.16× before (``docs/performance.md`` tells
how the store was found, ``docs/low-memory.md`` has the tables). The codes
of 8-bit state (16 bytes from a 512-bit register) and the 16-bit loads were
tried the same way and gained nothing, so they keep Inductor's code.

:func:`call` runs the fused path's compile with Inductor's vector store
emitter wrapped for its duration, so that the kernels compiled there get the
plain store; nothing else in the process is touched outside the call, and a
kernel compiled there is the same code with a cheaper store, so another
thread compiling meanwhile loses nothing.
Where the emitter is not the one this was written against (another PyTorch
version, no AVX-512), the kernel keeps Inductor's own store: the same values,
only slower. Inductor's on-disk cache keeps what a kernel was compiled as:
a kernel cached before this existed keeps its masked store.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from typing import Any, TypeVar

import torch

__all__ = ["call", "active"]

_T = TypeVar("_T")

# register bits of the store → the plain store of that many low bits of a 512-bit register
_PLAIN = {256: "_mm256_storeu_si256(reinterpret_cast<__m256i*>({ptr}), _mm512_castsi512_si256({value}));"}
_HALF_FLOATS = (torch.bfloat16, torch.float16)


@functools.lru_cache(maxsize=1)
def _emitter() -> tuple[Any, Callable[..., Any], Callable[[Any], str]] | None:
    """Inductor's CPU vector kernel, its store emitter and its index printer,
    if they are the ones this module knows (the parameters of 2.13's
    ``_get_store_line``). Looked up at the first compiled call, not at
    import: importing Inductor's C++ code generator takes 1-2 s."""
    try:
        from torch._inductor.codegen import cpp
    except ImportError:  # pragma: no cover - a torch without Inductor
        return None
    kernel = getattr(cpp, "CppVecKernel", None)
    emit = getattr(kernel, "_get_store_line", None)
    index = getattr(cpp, "cexpr_index", None)
    if emit is None or index is None or list(inspect.signature(emit).parameters) != [
            "self", "value", "var", "index", "dtype", "accu_store"]:
        return None
    return kernel, emit, index


def _plain_store(self: Any, value: Any, var: str, index: Any, dtype: torch.dtype,
                 accu_store: bool = False) -> Any:
    """Inductor's store line, with a contiguous, untailed store of half a
    512-bit register of 16-bit floats turned into a plain 256-bit store."""
    found = _emitter()
    assert found is not None
    code = found[1](self, value, var, index, dtype, accu_store)
    plain = _PLAIN.get(self.num_elems * dtype.itemsize * 8)
    if (plain is None or dtype not in _HALF_FLOATS or accu_store or self.tail_size is not None
            or self.vec_isa.bit_width() != 512):
        return code
    line = code.getvalue().strip()
    head, sep, rest = line.partition(".store(")
    tail = f", {found[2](self.num_elems)});"
    if not sep or "\n" in line or not rest.endswith(tail) or head != str(value):
        return code  # a strided or otherwise different store: Inductor's own
    out = type(code)()
    out.writeline(plain.format(ptr=rest[: -len(tail)], value=head))
    return out


def active() -> bool:
    """Whether compiled steps get the plain stores (Inductor's emitter is the known one)."""
    return _emitter() is not None


def call(fn: Callable[..., _T], *args: Any, **kwargs: Any) -> _T:
    """``fn(*args, **kwargs)`` (a compile) with Inductor's CPU vector stores of
    16-bit floats made plain while it runs."""
    found = _emitter()
    if found is None:
        return fn(*args, **kwargs)
    kernel, emit, _ = found
    if kernel.__dict__.get("_get_store_line") is not emit:  # already wrapped (a nested or concurrent call)
        return fn(*args, **kwargs)
    kernel._get_store_line = _plain_store
    try:
        return fn(*args, **kwargs)
    finally:
        kernel._get_store_line = emit
