"""One C++ check that many tensors still have the layout they had.

A step reuses what it decided at the last one (the plan of a group:
:mod:`rmsprop.plan`; the compiled code for a group: :mod:`rmsprop.paths.fused`)
only while the tensors involved keep their layout. Reading a tensor's shape,
strides, dtype and device in Python costs about a microsecond, and a step of
16 parameters involves some 60 tensors; Dynamo's ``TensorGuards`` checks them
in C++ at about 0.15 µs each.

A guard checks more than the layout: each tensor's Python type,
``requires_grad`` and dispatch keys (sparse or dense, inference tensor or
not), and that no tensor is passed twice. So a guard may refuse what the
reuse would have allowed, never the other way round: a caller treats a
refusal as "decide again", at the full price. A guard is kept only if it
accepts the very tensors it was built from (a tensor passed twice never
passes). ``TensorGuards`` is private to PyTorch: where it is missing or its
signature differs, :func:`layout_guard` returns None and callers decide
every step afresh, as correctly and more slowly.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Protocol

import torch
from torch import Tensor

__all__ = ["Guard", "layout_guard"]


class Guard(Protocol):
    def check(self, *tensors: Tensor) -> bool: ...


def layout_guard(tensors: Sequence[Tensor]) -> Guard | None:
    """A check that tensors have exactly the layout (shape, strides, dtype,
    device), Python type and ``requires_grad`` of these, in this order;
    None where it cannot be built."""
    if not _works():
        return None
    return _build(tensors)


def _build(tensors: Sequence[Tensor]) -> Guard | None:
    try:
        from torch._C._dynamo.guards import TensorGuards

        # Each size and stride given is checked exactly (None would leave it free).
        guard = TensorGuards(*tensors, dynamic_dims_sizes=[list(t.shape) for t in tensors],  # type: ignore[misc]
                             dynamic_dims_strides=[list(t.stride()) for t in tensors])  # type: ignore[misc]
        return guard if guard.check(*tensors) is True else None
    except Exception:  # noqa: BLE001 (a private API: any failure means "not available")
        return None


@functools.lru_cache(maxsize=1)
def _works() -> bool:
    """Whether this PyTorch's guards refuse what they must: asked once, of
    tensors that differ from the guarded one in each fact alone."""
    x = torch.zeros(2, 3)
    guard = _build([x])
    others = (torch.zeros(3, 2).t(), torch.zeros(3, 2), torch.zeros(2, 3, dtype=torch.float64),
              torch.zeros(2, 6)[:, ::2], torch.zeros(2, 3, 1))
    return guard is not None and not any(guard.check(other) for other in others)
