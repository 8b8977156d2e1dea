"""Execution paths for the one update, and the policy that picks one.

- ``reference``: per tensor, calls :func:`rmsprop.engine.rmsprop_update`.
- ``foreach``: multi-tensor ``torch._foreach_*`` ops, grouped by device and dtype.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor
from torch.nn import Parameter
from torch.optim.optimizer import _default_to_fused_or_foreach

from .foreach import foreach_step
from .reference import reference_step

__all__ = ["PATHS", "choose_path", "foreach_step", "reference_step"]

PATHS = {"reference": reference_step, "foreach": foreach_step}

# Tensor types the foreach ops take as they are (subclasses such as DTensor go
# through PyTorch's own policy).
_PLAIN = (Tensor, Parameter)


def choose_path(params: Sequence[Tensor], foreach: bool | None, differentiable: bool) -> str:
    """Pick the path for one param group's step. A pure policy function.

    An explicit choice always wins, and a choice that cannot run raises rather
    than falling back: ``foreach=True`` with ``differentiable=True`` is an error
    (foreach ops do not record autograd history).

    With ``foreach=None``: ``foreach`` on CPU for plain tensors (its
    cache-blocked loop beats the reference path there; ``make bench``), and
    PyTorch's own choice elsewhere (``foreach`` where the device has native
    multi-tensor kernels, e.g. CUDA); ``reference`` otherwise and whenever
    ``differentiable=True``.
    """
    if foreach:
        if differentiable:
            raise ValueError("foreach=True cannot run with differentiable=True: "
                             "foreach ops do not support autograd; use foreach=False")
        return "foreach"
    if foreach is None and params and not differentiable:
        if all(p.device.type == "cpu" and type(p) in _PLAIN for p in params):
            return "foreach"
        _, use_foreach = _default_to_fused_or_foreach(list(params), differentiable, use_fused=False)
        if use_foreach:
            return "foreach"
    return "reference"
