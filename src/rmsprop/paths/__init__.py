"""Execution paths for the one update, and the policy that picks one.

- ``reference``: per tensor, calls :func:`rmsprop.engine.rmsprop_update`.
- ``foreach``: multi-tensor ``torch._foreach_*`` ops, grouped by device and dtype.
- ``fused``: the engine's function compiled with ``torch.compile`` over a group.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor
from torch.nn import Parameter
from torch.optim.optimizer import _default_to_fused_or_foreach

from .foreach import foreach_step
from .fused import fused_step, fused_unavailable_reason
from .reference import reference_step

__all__ = ["PATHS", "AUTO_FUSED_MIN_NUMEL", "choose_path", "foreach_step", "fused_step", "reference_step"]

#: The automatic choice compiles a group only from this many elements on: below
#: it, the first step's compile costs more than a long run saves (docs/paths.md).
AUTO_FUSED_MIN_NUMEL = 1 << 22

PATHS = {"reference": reference_step, "foreach": foreach_step, "fused": fused_step}

# Tensor types the foreach ops take as they are (subclasses such as DTensor go
# through PyTorch's own policy).
_PLAIN = (Tensor, Parameter)


def choose_path(
    params: Sequence[Tensor], foreach: bool | None, differentiable: bool, fused: bool | None = None
) -> str:
    """Pick the path for one param group's step. A pure policy function.

    An explicit choice always wins, and a choice that cannot run raises rather
    than falling back: ``foreach=True`` with ``differentiable=True``, ``fused=True``
    where compiling cannot run (no C++ compiler, an unsupported dtype,
    ``differentiable=True``, ``RMSPROP_DISABLE_COMPILE=1``), and ``foreach=True``
    with ``fused=True`` are errors.

    With ``fused=None, foreach=None``: ``fused`` for groups of at least
    AUTO_FUSED_MIN_NUMEL elements where it can run; otherwise, on CPU for
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
            and sum(p.numel() for p in params) >= AUTO_FUSED_MIN_NUMEL
            and fused_unavailable_reason(list(params), differentiable) is None
        ):
            return "fused"
        if all(p.is_cpu and type(p) in _PLAIN for p in params):
            return "reference" if any(p.is_complex() for p in params) else "foreach"
        _, use_foreach = _default_to_fused_or_foreach(list(params), differentiable, use_fused=False)
        if use_foreach:
            return "foreach"
    return "reference"
