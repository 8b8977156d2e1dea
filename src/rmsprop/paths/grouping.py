"""Split a param group's tensors by device and dtype, for the multi-tensor paths."""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import Tensor
from torch.optim.optimizer import Optimizer

from ..engine import Hyper

__all__ = ["by_device_and_dtype"]


def by_device_and_dtype(
    params: list[Tensor],
    grads: list[Tensor],
    square_avgs: list[Tensor],
    grad_avgs: list[Tensor],
    momentum_buffers: list[Tensor],
    steps: list[Tensor],
    hyper: Hyper,
) -> Iterator[tuple[torch.device, torch.dtype, tuple[list, ...]]]:
    """Yield ``(device, dtype, (θs, gs, vs, ḡs, bs, ts))`` per device and dtype.

    ``grad_avgs`` and ``momentum_buffers`` follow PyTorch's convention (empty
    unless the knobs use them); in what is yielded they are lists of None then.
    """
    n = len(params)
    lists = (
        params,
        grads,
        square_avgs,
        grad_avgs if hyper.centered else [None] * n,
        momentum_buffers if hyper.momentum != 0 else [None] * n,
        steps,
    )
    # One device and dtype (nearly every model): no grouping to do, and
    # PyTorch's grouping would cost more than a small model's whole update.
    dtype, device = params[0].dtype, params[0].device
    if all(p.dtype is dtype and p.device == device for p in params):
        yield device, dtype, lists
        return
    for (device, dtype), (grouped, _) in Optimizer._group_tensors_by_device_and_dtype(list(lists)).items():
        yield device, dtype, tuple(grouped)
