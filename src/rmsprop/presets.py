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

from .settings import FROM_PRESET, SETTINGS, by_role, names

__all__ = ["Preset", "PRESETS", "KNOBS", "get_preset", "translate"]


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
        op_order: whose order of operations the averages (4)–(5) follow,
            so that the preset rounds as its framework does
            (:data:`rmsprop.engine.OP_ORDERS`).
        argument_names: the framework's own argument names that differ from
            ours, as (theirs, ours) pairs; :func:`translate` applies them.
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
    op_order: str = "torch"
    argument_names: tuple[tuple[str, str], ...] = ()

    def knobs(self) -> dict[str, Any]:
        """The preset's knob values as a plain dict (``lr`` may be ``None``)."""
        return {k: getattr(self, k) for k in KNOBS}


# Every per-group knob a preset sets: the settings whose default comes from
# the preset (rmsprop.settings), which are this dataclass's value fields.
KNOBS: tuple[str, ...] = tuple(s.name for s in SETTINGS if s.default is FROM_PRESET)
assert KNOBS == tuple(
    f.name for f in dataclasses.fields(Preset) if f.name not in ("name", "source", "argument_names")
), "Preset's fields and the settings table's preset rows must agree"

_ALL = (
    Preset(
        "seed",
        "the tutorial notebook this project grew from: θ ← θ − η·g/sqrt(v + ε)",
        lr=0.01,
        alpha=0.9,
        eps=1e-8,
        eps_in_sqrt=True,
        argument_names=(("gamma", "alpha"),),
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
        op_order="tf",
        argument_names=(("learning_rate", "lr"), ("decay", "alpha"), ("epsilon", "eps")),
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
        argument_names=(("learning_rate", "lr"), ("rho", "alpha"), ("epsilon", "eps"),
                        ("global_clipnorm", "max_grad_norm"), ("ema_momentum", "ema_decay")),
    ),
    Preset(
        "optax",
        "optax.rmsprop: scale_by_rms → scale(−η) → trace, so η sits inside the trace",
        lr=None,
        alpha=0.9,
        eps=1e-8,
        eps_in_sqrt=True,
        lr_in_momentum=True,
        argument_names=(
            ("learning_rate", "lr"),
            ("decay", "alpha"),
            ("initial_scale", "initial_square_avg"),
            ("add_decayed_weights", "weight_decay"),
        ),
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
        op_order="tf",
        argument_names=(("decoupled_decay", "decoupled_weight_decay"),),
    ),
    Preset(
        "sb3",
        "stable_baselines3.common.sb2_compat.rmsprop_tf_like.RMSpropTFLike: TF1's ε inside the root "
        "and accumulator starting at 1, PyTorch's η outside the momentum buffer",
        lr=1e-2,
        alpha=0.99,
        eps=1e-8,
        eps_in_sqrt=True,
        initial_square_avg=1.0,
        op_order="torch-1.5",
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

# What translate() accepts besides a framework's own names: every setting a
# user may pass (the table's rows but the records), and the optimizer-wide policy.
_ACCEPTED = frozenset(name for name in names() if name not in by_role("label", "bookkeeping")) | {
    "nonfinite", "max_grad_norm"}

# Keras's switch for its average: on, `ema_momentum` (default 0.99) is ema_decay; off, nothing is averaged.
_KERAS_EMA_MOMENTUM = 0.99


def translate(preset: str, **theirs: Any) -> dict[str, Any]:
    """The framework's own arguments renamed to ours, plus ``preset=``.

    ``RMSprop(params, **translate("keras", learning_rate=1e-3, rho=0.95))`` is
    ``RMSprop(params, preset="keras", lr=1e-3, alpha=0.95)``. Names that are
    already ours pass through; a name that is neither raises ValueError (in
    optax, ``add_decayed_weights`` is the ``optax.add_decayed_weights(λ)``
    chained before ``optax.rmsprop``; in optax, ``momentum=None`` means 0;
    Keras's ``global_clipnorm`` is ``max_grad_norm``, and ``use_ema=True``
    with ``ema_momentum=δ`` (default 0.99) is ``ema_decay=δ``).
    """
    names = dict(get_preset(preset).argument_names)
    ours: dict[str, Any] = {"preset": preset}
    if preset == "keras" and "use_ema" in theirs:  # Keras: use_ema=True, ema_momentum=δ is ema_decay=δ
        use_ema = theirs.pop("use_ema")
        momentum = theirs.pop("ema_momentum", _KERAS_EMA_MOMENTUM)
        theirs["ema_momentum"] = momentum if use_ema else 0.0
    for key, value in theirs.items():
        name = names.get(key, key)
        if name not in _ACCEPTED:
            raise ValueError(f"{preset} argument {key!r} has no counterpart in rmsprop.RMSprop")
        if name == "momentum" and value is None:
            value = 0.0
        ours[name] = value
    return ours
