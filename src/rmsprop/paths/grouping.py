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
    groups = Optimizer._group_tensors_by_device_and_dtype([
        params,
        grads,
        square_avgs,
        grad_avgs if hyper.centered else [None] * n,
        momentum_buffers if hyper.momentum != 0 else [None] * n,
        steps,
    ])
    for (device, dtype), (lists, _) in groups.items():
        yield device, dtype, tuple(lists)
