"""The tensors of one step, as one record, and their split by device, dtype and state storage."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import NamedTuple, TypeVar

import torch
from torch import Tensor

from ..precision import Buffer

__all__ = ["StepTensors", "by_device_and_dtype", "first_repeat"]

_T = TypeVar("_T")


class StepTensors(NamedTuple):
    """What a path updates: one entry per parameter in every list.

    ``grad_avgs`` and ``momentum_buffers`` follow PyTorch's convention: empty
    unless the knobs use them. ``idents`` are the parameters' stable
    identities (their indices in the optimizer, as state dicts number them),
    which salt stochastic rounding so that every path and mode draws the
    same bits. ``comps`` are bfloat16 parameters' Kahan compensations
    (``kahan_summation``), empty unless the group keeps them.
    """

    params: list[Tensor]
    grads: list[Tensor]
    square_avgs: Sequence[Buffer]  # Sequence: a list of plain tensors is one too
    grad_avgs: Sequence[Buffer]
    momentum_buffers: Sequence[Buffer]
    steps: list[Tensor]
    idents: list[int]
    emas: Sequence[Tensor] = ()  # the weights' averages (line (16)), empty unless the knobs use them
    comps: Sequence[Tensor] = ()  # Kahan compensations of bf16 parameters, empty unless kahan_summation

    def select(self, indices: list[int], centered: bool, use_momentum: bool) -> StepTensors:
        """The entries at ``indices`` (the optional lists only where used)."""

        def pick(xs: Sequence[_T]) -> list[_T]:
            return [xs[i] for i in indices]

        return StepTensors(pick(self.params), pick(self.grads), pick(self.square_avgs),
                           pick(self.grad_avgs) if centered else [],
                           pick(self.momentum_buffers) if use_momentum else [],
                           pick(self.steps), pick(self.idents), pick(self.emas) if self.emas else (),
                           pick(self.comps) if self.comps else ())


def by_device_and_dtype(t: StepTensors, centered: bool, use_momentum: bool
                        ) -> Iterator[tuple[torch.device, torch.dtype, StepTensors]]:
    """Yield ``(device, dtype, tensors)`` per device, parameter dtype and state storage."""
    # One device, dtype and storage (nearly every model): no grouping to do,
    # and grouping would cost more than a small model's whole update.
    params, square_avgs = t.params, t.square_avgs
    dtype, device, stored = params[0].dtype, params[0].device, square_avgs[0].dtype
    if all(p.dtype is dtype and p.device == device and v.dtype is stored
           for p, v in zip(params, square_avgs)):
        yield device, dtype, t
        return
    # The state's storage splits groups too: under state_precision="int8" the
    # small tensors of a group keep float32 state (rmsprop.quant).
    groups: dict[tuple, list[int]] = {}
    for i, (p, v) in enumerate(zip(params, square_avgs)):
        groups.setdefault((p.device, p.dtype, v.dtype), []).append(i)
    for (device, dtype, _), indices in groups.items():
        yield device, dtype, t.select(indices, centered, use_momentum)


def first_repeat(params: Sequence[Tensor]) -> tuple[int, int] | None:
    """The positions (i, j), i < j, of the first tensor listed twice, or None."""
    first: dict[int, int] = {}
    for j, p in enumerate(params):
        i = first.setdefault(id(p), j)
        if i != j:
            return i, j
    return None
