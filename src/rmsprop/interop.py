"""Carry optimizer state over from libraries whose checkpoints are not PyTorch's.

State dicts of ``torch.optim.RMSprop`` and timm's ``RMSpropTF`` load directly
with ``load_state_dict``. Keras, optax and TensorFlow keep the same moments in
their own containers; :func:`import_moments` writes them into an
:class:`rmsprop.RMSprop` whose preset matches the source, so training continues
as the source library would have continued. docs/migration.md shows where each
library keeps each moment.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

from . import quant
from .plan import new_step
from .precision import put_buffer, storage_refusal, to_storage

__all__ = ["import_moments", "MOMENT_NAMES"]

#: The state keys a moment may fill: v, ḡ and b of the formula.
MOMENT_NAMES = ("square_avg", "grad_avg", "momentum_buffer")


def import_moments(
    optimizer: torch.optim.Optimizer,
    moments: Sequence[Mapping[str, Any]],
    step: int,
) -> None:
    """Set every parameter's state from another library's moments.

    Each moment is stored as the parameter's group keeps its state
    (``state_precision``: the parameter's dtype, float32, bfloat16 or 8-bit
    codes), rounded once from the values given, exactly as a fresh buffer of
    that group would be laid out.

    Args:
        optimizer: the optimizer to fill; its parameters, in param-group order,
            are matched one to one with ``moments``.
        moments: one mapping per parameter from a name in :data:`MOMENT_NAMES`
            to an array-like of the parameter's shape (a NumPy array, a JAX or
            TensorFlow array converted with ``numpy.asarray``, a tensor). A
            momentum buffer must be in this library's sign convention: optax's
            ``trace`` holds −b (it accumulates the already negated update). A
            complex parameter takes complex moments in PyTorch's layout: the
            real and imaginary parts averaged apart (``torch.view_as_real``),
            so ``square_avg`` holds (mean Re(g)², mean Im(g)²), not |g|².
        step: how many steps the source library has taken (its iteration
            count), which bias correction reads: a whole number ≥ 0 (an int,
            or a float, NumPy scalar or one-element array holding one).

    Raises:
        ValueError: before any state changes, on a count, name or shape
            mismatch; on a step that is not a whole number ≥ 0 (NaN, ±inf,
            2.5, −1, a bool); on a moment holding NaN or ±inf once stored, a
            negative ``square_avg``, a complex moment for a real parameter or
            a real one for a complex parameter.
    """
    params = [(p, group) for group in optimizer.param_groups for p in group["params"]]
    if len(moments) != len(params):
        raise ValueError(f"got moments for {len(moments)} parameters, the optimizer has {len(params)}")
    count = _step_count(step)
    new_states = []
    for i, ((p, group), entry) in enumerate(zip(params, moments)):
        unknown = set(entry) - set(MOMENT_NAMES)
        if unknown:
            raise ValueError(f"parameter {i}: unknown moment names {sorted(unknown)}; use {MOMENT_NAMES}")
        if "square_avg" not in entry:
            raise ValueError(f"parameter {i}: square_avg is required")
        state: dict[str, Any] = {"step": new_step(p, group, count)}
        for name, value in entry.items():
            put_buffer(state, name, _stored(p, group["state_precision"], name, value, f"parameter {i}"))
        new_states.append(state)
    for (p, _), state in zip(params, new_states):
        optimizer.state[p] = state


def _step_count(step: object) -> int:
    """``step`` as an int, or ValueError unless it is a whole number ≥ 0."""
    value = step
    if not isinstance(value, (int, float)):  # a NumPy or JAX scalar, a one-element array or tensor
        try:
            tensor = torch.as_tensor(value)
        except (TypeError, ValueError, RuntimeError):
            tensor = None
        if tensor is None or tensor.numel() != 1 or tensor.dtype == torch.bool or tensor.is_complex():
            raise ValueError(f"step must be a whole number >= 0 (the source's iteration count), got {step!r}")
        value = tensor.item()
    if isinstance(value, bool) or not (isinstance(value, int) or math.isfinite(value)) or value < 0 \
            or value != int(value):
        raise ValueError(f"step must be a whole number >= 0 (the source's iteration count), got {step!r}")
    return int(value)


def _stored(p: Tensor, precision: str, name: str, value: object, who: str) -> Tensor | quant.Blockwise:
    """Moment ``name`` of ``p`` in the form ``precision`` stores it, after
    checking it; ValueError (naming ``who`` and the moment) for a bad one.

    The form is the one :func:`rmsprop.precision.new_buffer` gives a fresh
    buffer, reached with one rounding from the values given: the dtype
    :func:`~rmsprop.precision.state_dtype` names, or 8-bit codes encoded to
    nearest from the values at float32 (float64 for float64 parameters), as a
    full-precision state dict loads.
    """
    where = f"{who}: {name}"
    try:
        tensor = torch.as_tensor(value)
    except (TypeError, ValueError, RuntimeError) as err:
        raise ValueError(f"{where} is not array-like ({type(value).__name__}): {err}") from None
    if tensor.is_complex() and not p.is_complex():
        raise ValueError(f"{where} is complex ({tensor.dtype}), the parameter is real ({p.dtype}): "
                         "its imaginary part has nowhere to go")
    if p.is_complex() and not tensor.is_complex():
        raise ValueError(f"{where} is real ({tensor.dtype}), the parameter is complex ({p.dtype}): PyTorch "
                         "keeps a complex parameter's moments complex, real and imaginary parts averaged "
                         "apart (torch.view_as_real); pass them in that form")
    if tensor.dtype == torch.bool:
        raise ValueError(f"{where} has dtype torch.bool; moments are numbers")
    if tensor.shape != p.shape:
        raise ValueError(f"{where} has shape {tuple(tensor.shape)}, the parameter has shape {tuple(p.shape)}")
    parts = torch.view_as_real(tensor) if tensor.is_complex() else tensor
    if name == "square_avg" and bool((parts < 0).any()):
        raise ValueError(f"{where} holds negative values; a mean of squares is >= 0")
    reason = storage_refusal(p, precision, False, False)  # (how θ is written is not asked here)
    if reason is not None:
        raise ValueError(f"{who}: {reason}")
    buf = to_storage(tensor.contiguous(), p, precision, name)
    if isinstance(buf, quant.Blockwise):
        finite, stored = torch.isfinite(buf.absmax).all(), "8-bit codes"
    else:
        finite = torch.isfinite(torch.view_as_real(buf) if buf.is_complex() else buf).all()
        stored = str(buf.dtype)
    if not bool(finite):  # checked as stored: 1e300 is infinite in float32
        raise ValueError(f"{where} holds NaN or infinite values (as {stored})")
    return buf
