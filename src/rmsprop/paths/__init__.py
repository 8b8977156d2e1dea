"""Execution paths for the one update, and the policy that picks one.

- ``reference``: per tensor, calls :func:`rmsprop.engine.rmsprop_update`.
- ``foreach``: multi-tensor ``torch._foreach_*`` ops, grouped by device and dtype.
- ``fused``: the engine's function compiled with ``torch.compile`` over a group.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

from torch import Tensor
from torch.nn import Parameter
from torch.optim.optimizer import _default_to_fused_or_foreach

from .foreach import foreach_step
from .fused import fused_step, fused_unavailable_reason
from .reference import reference_step

__all__ = ["PATHS", "AUTO_FUSED", "AutoFused", "auto_fused", "choose_path", "foreach_step", "fused_step",
           "reference_step"]


class AutoFused(NamedTuple):
    """Where the automatic choice compiles a group: from ``min_numel`` elements in
    all and ``min_per_tensor`` elements per tensor on average (the fused step pays
    a fixed Python and guard cost per tensor that foreach's does not)."""

    min_numel: int
    min_per_tensor: int


#: The automatic choice's thresholds per state precision ("fp32" also stands for
#: "param"), fitted to benchmarks/path_choice.py's table (docs/paths.md).
AUTO_FUSED: dict[str, AutoFused] = {
    "fp32": AutoFused(1 << 22, 0),
    "bf16": AutoFused(1 << 22, 0),
    "int8": AutoFused(1 << 22, 0),
}

PATHS = {"reference": reference_step, "foreach": foreach_step, "fused": fused_step}

# Tensor types the foreach ops take as they are (subclasses such as DTensor go
# through PyTorch's own policy).
_PLAIN = (Tensor, Parameter)


def auto_fused(numel: int, tensors: int, state_precision: str = "param") -> bool:
    """Whether ``tensors`` tensors of ``numel`` elements in all, state stored at
    ``state_precision``, are worth compiling when the user did not choose."""
    rule = AUTO_FUSED.get(state_precision, AUTO_FUSED["fp32"])
    return tensors > 0 and numel >= rule.min_numel and numel >= rule.min_per_tensor * tensors


def choose_path(
    params: Sequence[Tensor], foreach: bool | None, differentiable: bool, fused: bool | None = None,
    state_precision: str = "param",
) -> str:
    """Pick the path for one param group's step. A pure policy function.

    An explicit choice always wins, and a choice that cannot run raises rather
    than falling back: ``foreach=True`` with ``differentiable=True``, ``fused=True``
    where compiling cannot run (no C++ compiler, an unsupported dtype,
    ``differentiable=True``, ``RMSPROP_DISABLE_COMPILE=1``), and ``foreach=True``
    with ``fused=True`` are errors.

    With ``fused=None, foreach=None``: ``fused`` where :func:`auto_fused` says
    so for the group's size, tensor count and ``state_precision`` (the group's
    setting) and compiling can run; otherwise, on CPU for
    plain tensors, ``foreach`` (its cache-blocked loop beats the reference
    path there; ``make bench``) unless the group holds a complex parameter,
    and PyTorch's own choice elsewhere (``foreach`` where the device has
    native multi-tensor kernels, e.g. CUDA); ``reference`` otherwise and
    whenever ``differentiable=True``.

    A group with a complex parameter takes ``reference`` on CPU because that
    is the path PyTorch's default takes there (its for-loop, which the
    reference path equals bit for bit): with weight decay the for-loop adds
    λ·θ in complex arithmetic and the foreach ops on the real views round it
    1 ulp differently, at some step of every seed measured
    (``tests/test_torch_dropin.py``). Without weight decay the two agree; the
    rule does not look at the knobs, so it holds for every preset and for a
    weight decay changed mid-run.
    """
    if foreach and fused:
        raise ValueError("`foreach` and `fused` should not both be True.")
    if fused:
        reason = fused_unavailable_reason(list(params), differentiable)
        if reason is not None:
            raise ValueError(f"fused=True cannot run: {reason}")
        return "fused"
    if foreach:
        if differentiable:
            raise ValueError("foreach=True cannot run with differentiable=True: "
                             "foreach ops do not support autograd; use foreach=False")
        return "foreach"
    if foreach is None and params and not differentiable:
        if (
            fused is None
            and auto_fused(sum(p.numel() for p in params), len(params), state_precision)
            and fused_unavailable_reason(list(params), differentiable) is None
        ):
            return "fused"
        if all(p.is_cpu and type(p) in _PLAIN for p in params):
            return "reference" if any(p.is_complex() for p in params) else "foreach"
        _, use_foreach = _default_to_fused_or_foreach(list(params), differentiable, use_fused=False)
        if use_foreach:
            return "foreach"
    return "reference"
