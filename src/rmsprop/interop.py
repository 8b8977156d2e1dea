"""Carry optimizer state over from libraries whose checkpoints are not PyTorch's.

State dicts of ``torch.optim.RMSprop`` and timm's ``RMSpropTF`` load directly
with ``load_state_dict``. Keras, optax and TensorFlow keep the same moments in
their own containers; :func:`import_moments` writes them into an
:class:`rmsprop.RMSprop` whose preset matches the source, so training continues
as the source library would have continued. docs/migration.md shows where each
library keeps each moment.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch.optim.optimizer import _get_scalar_dtype

__all__ = ["import_moments", "MOMENT_NAMES"]

#: The state keys a moment may fill: v, ḡ and b of the formula.
MOMENT_NAMES = ("square_avg", "grad_avg", "momentum_buffer")


def import_moments(
    optimizer: torch.optim.Optimizer,
    moments: Sequence[Mapping[str, Any]],
    step: int,
) -> None:
    """Set every parameter's state from another library's moments.

    Args:
        optimizer: the optimizer to fill; its parameters, in param-group order,
            are matched one to one with ``moments``.
        moments: one mapping per parameter from a name in :data:`MOMENT_NAMES`
            to an array-like of the parameter's shape (a NumPy array, a JAX or
            TensorFlow array converted with ``numpy.asarray``, a tensor). A
            momentum buffer must be in this library's sign convention: optax's
            ``trace`` holds −b (it accumulates the already negated update).
        step: how many steps the source library has taken (its iteration
            count), which bias correction reads.

    Raises:
        ValueError: on a count, name or shape mismatch, before any state changes.
    """
    params = [(p, group) for group in optimizer.param_groups for p in group["params"]]
    if len(moments) != len(params):
        raise ValueError(f"got moments for {len(moments)} parameters, the optimizer has {len(params)}")
    if step < 0:
        raise ValueError(f"step must be >= 0, got {step}")
    new_states = []
    for i, ((p, group), entry) in enumerate(zip(params, moments)):
        unknown = set(entry) - set(MOMENT_NAMES)
        if unknown:
            raise ValueError(f"parameter {i}: unknown moment names {sorted(unknown)}; use {MOMENT_NAMES}")
        if "square_avg" not in entry:
            raise ValueError(f"parameter {i}: square_avg is required")
        step_device = p.device if group["capturable"] else None
        state = {"step": torch.tensor(float(step), dtype=_get_scalar_dtype(), device=step_device)}
        for name, value in entry.items():
            tensor = torch.as_tensor(value).to(dtype=p.dtype, device=p.device)
            if tensor.shape != p.shape:
                raise ValueError(
                    f"parameter {i}: {name} has shape {tuple(tensor.shape)}, "
                    f"the parameter has shape {tuple(p.shape)}"
                )
            state[name] = tensor.clone(memory_format=torch.contiguous_format)
        new_states.append(state)
    for (p, _), state in zip(params, new_states):
        optimizer.state[p] = state
