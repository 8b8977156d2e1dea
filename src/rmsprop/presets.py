"""Presets: every framework's RMSProp as data.

A preset is a frozen record of the *semantic* knobs (where ε sits, what the
accumulator starts at, whether η lives inside the momentum buffer, ...) and the
framework's *default hyperparameters*. It is never a subclass: the one engine in
:mod:`rmsprop.engine` reads the resolved knobs, whatever their origin.

Facts come from each framework's own documentation and source (see the
project's SEMANTICS notes); matching the live libraries step for step is
checked by ``make parity``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

__all__ = ["Preset", "PRESETS", "KNOBS", "get_preset"]


@dataclass(frozen=True)
class Preset:
    """One framework's RMSProp: its semantics and its default hyperparameters.

    Attributes:
        name: the key in :data:`PRESETS`.
        source: where the formula comes from, for a reader.
        lr: default learning rate, or ``None`` when the framework has none
            (the caller must then pass ``lr=``).
        alpha: decay of the running averages (PyTorch ``alpha``, Keras ``rho``,
            TF/optax ``decay``, the seed's ``gamma``).
        eps: the ε of the denominator.
        weight_decay: default weight decay λ.
        momentum: default momentum μ.
        centered: divide by an estimate of the variance instead of the
            uncentered second moment.
        eps_in_sqrt: ``sqrt(v + ε)`` when True, ``sqrt(v) + ε`` when False.
        initial_square_avg: the value the square average starts from (TF1: 1).
        lr_in_momentum: η inside the momentum buffer (TF/Keras/optax/timm)
            instead of outside it (PyTorch).
        nesterov: Nesterov momentum (optax's ``trace(nesterov=True)``).
        decoupled_weight_decay: θ ← θ(1 − η·λ) instead of the L2 gradient term.
        bias_correction: divide the averages by 1 − αᵗ (optax's option).
    """

    name: str
    source: str
    lr: float | None
    alpha: float
    eps: float
    weight_decay: float = 0.0
    momentum: float = 0.0
    centered: bool = False
    eps_in_sqrt: bool = False
    initial_square_avg: float = 0.0
    lr_in_momentum: bool = False
    nesterov: bool = False
    decoupled_weight_decay: bool = False
    bias_correction: bool = False

    def knobs(self) -> dict[str, Any]:
        """The preset's knob values as a plain dict (``lr`` may be ``None``)."""
        return {k: getattr(self, k) for k in KNOBS}


# Every per-group knob a preset sets, in the order the documentation lists them.
KNOBS: tuple[str, ...] = tuple(
    f.name for f in dataclasses.fields(Preset) if f.name not in ("name", "source")
)

_ALL = (
    Preset(
        "seed",
        "the tutorial notebook this project grew from: θ ← θ − η·g/sqrt(v + ε)",
        lr=0.01,
        alpha=0.9,
        eps=1e-8,
        eps_in_sqrt=True,
    ),
    Preset(
        "torch",
        "torch.optim.RMSprop: ε outside the root, η outside the momentum buffer",
        lr=1e-2,
        alpha=0.99,
        eps=1e-8,
    ),
    Preset(
        "tf1",
        "tf.compat.v1.train.RMSPropOptimizer: accumulator starts at 1, ε inside, "
        "η inside the momentum buffer",
        lr=None,
        alpha=0.9,
        eps=1e-10,
        eps_in_sqrt=True,
        initial_square_avg=1.0,
        lr_in_momentum=True,
    ),
    Preset(
        "keras",
        "keras.optimizers.RMSprop (Keras 3): ε inside, η inside the buffer, "
        "decoupled weight decay",
        lr=1e-3,
        alpha=0.9,
        eps=1e-7,
        eps_in_sqrt=True,
        lr_in_momentum=True,
        decoupled_weight_decay=True,
    ),
    Preset(
        "optax",
        "optax.rmsprop: scale_by_rms → scale(−η) → trace, so η sits inside the trace",
        lr=None,
        alpha=0.9,
        eps=1e-8,
        eps_in_sqrt=True,
        lr_in_momentum=True,
    ),
    Preset(
        "timm",
        "timm.optim.RMSpropTF: TF1's semantics in PyTorch (accumulator starts at 1)",
        lr=1e-2,
        alpha=0.9,
        eps=1e-10,
        eps_in_sqrt=True,
        initial_square_avg=1.0,
        lr_in_momentum=True,
    ),
    Preset(
        "dqn",
        "DeepMind's DQN (Nature 2015): centered, ε inside, all state starts at 0",
        lr=2.5e-4,
        alpha=0.95,
        eps=0.01,
        centered=True,
        eps_in_sqrt=True,
    ),
)

#: name → :class:`Preset`, read-only.
PRESETS: Mapping[str, Preset] = MappingProxyType({p.name: p for p in _ALL})


def get_preset(name: str) -> Preset:
    """Return the preset called ``name``; raise ValueError listing the valid names."""
    try:
        return PRESETS[name]
    except (KeyError, TypeError):
        valid = ", ".join(repr(n) for n in PRESETS)
        raise ValueError(f"Unknown preset {name!r}; valid presets are {valid}") from None
