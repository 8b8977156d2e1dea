"""The declarative table of cases that the generic tests iterate over.

A case is a name and the knobs it passes to ``rmsprop.RMSprop``; the tests
decide which paths and dtypes run it. Keep it data: no logic beyond building
the product.
"""

from __future__ import annotations

import itertools
from typing import Any

from rmsprop.engine import OP_ORDERS

# The ways momentum can enter the update (formula lines 10-14).
MOMENTUM_MODES: dict[str, dict[str, Any]] = {
    "no-momentum": {"momentum": 0.0},
    "momentum": {"momentum": 0.9},
    "momentum-nesterov": {"momentum": 0.9, "nesterov": True},
    "lr-in-momentum": {"momentum": 0.9, "lr_in_momentum": True},
    "lr-in-momentum-nesterov": {"momentum": 0.9, "lr_in_momentum": True, "nesterov": True},
}
WEIGHT_DECAY_MODES: dict[str, dict[str, Any]] = {
    "no-wd": {"weight_decay": 0.0},
    "l2": {"weight_decay": 0.1},
    "decoupled": {"weight_decay": 0.1, "decoupled_weight_decay": True},
}
SWITCHES = ("centered", "eps_in_sqrt", "bias_correction", "maximize")


def _labelled() -> list[tuple[str, dict[str, str], dict[str, Any]]]:
    """(name, the value of each knob dimension, knobs) for the whole product."""
    out = []
    for (m_name, m), (w_name, w), flags, v0, order in itertools.product(
        MOMENTUM_MODES.items(),
        WEIGHT_DECAY_MODES.items(),
        itertools.product((False, True), repeat=len(SWITCHES)),
        (0.0, 1.0),
        OP_ORDERS,
    ):
        on = [s for s, f in zip(SWITCHES, flags) if f]
        name = "-".join([m_name, w_name, *on, f"v0={v0:g}", f"order={order}"])
        labels = {"momentum": m_name, "decay": w_name, "v0": f"{v0:g}", "op_order": order,
                  **{s: str(f) for s, f in zip(SWITCHES, flags)}}
        knobs = {**m, **w, **dict(zip(SWITCHES, flags)), "initial_square_avg": v0, "op_order": order}
        out.append((name, labels, {"lr": 0.01, "alpha": 0.9, "eps": 1e-3, **knobs}))
    return out


def every_combination() -> list[tuple[str, dict[str, Any]]]:
    """Every knob combination: momentum modes × decay modes × switches × v₀ ∈ {0, 1} × op orders."""
    return [(name, knobs) for name, _, knobs in _labelled()]


def pairwise_combinations() -> list[tuple[str, dict[str, Any]]]:
    """A subset of :func:`every_combination` in which every pair of values of
    any two knob dimensions (momentum mode, decay mode, each switch, v₀) occurs
    at least once: a covering array, picked greedily and deterministically."""
    rows = _labelled()

    def pairs(labels):
        keys = list(labels)
        return {(a, labels[a], b, labels[b]) for i, a in enumerate(keys) for b in keys[i + 1:]}

    uncovered = set().union(*(pairs(labels) for _, labels, _ in rows))
    chosen = []
    while uncovered:
        best = max(rows, key=lambda row: len(pairs(row[1]) & uncovered))
        chosen.append((best[0], best[2]))
        uncovered -= pairs(best[1])
    return chosen


# Configurations torch.optim.RMSprop can express, for the drop-in checks.
TORCH_EXPRESSIBLE: list[tuple[str, dict[str, Any]]] = [
    (
        "-".join(k for k, v in kw.items() if v) or "default",
        {k: v for k, v in kw.items() if v},
    )
    for kw in (
        dict(zip(("momentum", "centered", "weight_decay", "maximize"), values))
        for values in itertools.product((0, 0.9), (False, True), (0, 0.1), (False, True))
    )
]

