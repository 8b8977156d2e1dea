"""Split a param group's tensors by device, dtype and state storage, for the multi-tensor paths."""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import Tensor

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
    """Yield ``(device, dtype, (θs, gs, vs, ḡs, bs, ts))`` per device, dtype and state storage.

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
    # One device, dtype and storage (nearly every model): no grouping to do,
    # and grouping would cost more than a small model's whole update.
    dtype, device, stored = params[0].dtype, params[0].device, square_avgs[0].dtype
    if all(p.dtype is dtype and p.device == device and v.dtype is stored
           for p, v in zip(params, square_avgs)):
        yield device, dtype, lists
        return
    # The state's storage splits groups too: under state_precision="int8" the
    # small tensors of a group keep float32 state (rmsprop.quant).
    groups: dict[tuple, list[int]] = {}
    for i, (p, v) in enumerate(zip(params, square_avgs)):
        groups.setdefault((p.device, p.dtype, v.dtype), []).append(i)
    for (device, dtype, _), indices in groups.items():
        yield device, dtype, tuple([xs[i] for i in indices] for xs in lists)
