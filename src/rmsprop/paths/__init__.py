"""Execution paths for the one update, and the policy that picks one.

- ``reference``: per tensor, calls :func:`rmsprop.engine.rmsprop_update`.
- ``foreach``: multi-tensor ``torch._foreach_*`` ops, grouped by device and dtype.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor
from torch.optim.optimizer import _default_to_fused_or_foreach

from .foreach import foreach_step
from .reference import reference_step

__all__ = ["PATHS", "choose_path", "foreach_step", "reference_step"]

PATHS = {"reference": reference_step, "foreach": foreach_step}



def choose_path(params: Sequence[Tensor], foreach: bool | None, differentiable: bool) -> str:
    """Pick the path for one param group's step. A pure policy function.

    An explicit choice always wins, and a choice that cannot run raises rather
    than falling back: ``foreach=True`` with ``differentiable=True`` is an error
    (foreach ops do not record autograd history).

    With ``foreach=None``: PyTorch's own choice (``foreach`` when every
    parameter lives on a device with native multi-tensor kernels, e.g. CUDA),
    else ``reference``. On CPU, foreach ops loop over tensors one op at a time
    and the reference path is faster (README, "Paths").
    """
    if foreach:
        if differentiable:
            raise ValueError("foreach=True cannot run with differentiable=True: "
                             "foreach ops do not support autograd; use foreach=False")
        return "foreach"
    if foreach is None and params:
        _, use_foreach = _default_to_fused_or_foreach(list(params), differentiable, use_fused=False)
        if use_foreach:
            return "foreach"
    return "reference"
