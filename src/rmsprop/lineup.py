"""The optimizers that ``rmsprop trajectories`` and ``rmsprop compare`` put side by side.

Each entry builds an optimizer from parameters and a learning rate; everything
else is fixed here, so a name means the same update in every picture:

============================  =====================================================================
name                          update
============================  =====================================================================
``sgd``                       ``torch.optim.SGD(lr)``
``momentum``                  ``torch.optim.SGD(lr, momentum=0.9)``
``rmsprop-seed``              the seed tutorial's ``RMSPropOptimizer(lr, gamma=0.9)``: ε inside the root
``rmsprop``                   ``rmsprop.RMSprop(lr)``: PyTorch's form (α=0.99, ε outside the root)
``rmsprop-centered``          ``rmsprop.RMSprop(lr, centered=True)``
``rmsprop-momentum``          ``rmsprop.RMSprop(lr, momentum=0.9)``
``rmsprop-tf1``               ``rmsprop.RMSprop(lr, preset="tf1")``: accumulator starts at 1
``adam``                      ``torch.optim.Adam(lr)``
============================  =====================================================================
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from types import MappingProxyType

import torch

from .cliutil import comma_list
from .optimizer import RMSprop
from .seed import RMSPropOptimizer

__all__ = [
    "Contender", "LINEUP", "DEFAULT_NAMES", "add_lineup_options", "lrs_table", "make", "parse_lrs",
    "resolve_lrs",
]

Factory = Callable[[Iterable[torch.Tensor], float], torch.optim.Optimizer]


@dataclass(frozen=True)
class Contender:
    """One optimizer of the line-up: its name, its legend text, how to build it, its colour."""

    name: str
    label: str
    build: Factory
    color: str


_ALL = (
    Contender("sgd", "SGD", lambda p, lr: torch.optim.SGD(p, lr=lr), "tab:gray"),
    Contender("momentum", "SGD + momentum 0.9", lambda p, lr: torch.optim.SGD(p, lr=lr, momentum=0.9),
              "tab:brown"),
    Contender("rmsprop-seed", "RMSProp, seed form (γ=0.9, ε in √)",
              lambda p, lr: RMSPropOptimizer(p, lr=lr, gamma=0.9), "tab:orange"),
    Contender("rmsprop", "RMSProp, PyTorch form (α=0.99)", lambda p, lr: RMSprop(p, lr=lr), "tab:blue"),
    Contender("rmsprop-centered", "RMSProp, centered", lambda p, lr: RMSprop(p, lr=lr, centered=True),
              "tab:cyan"),
    Contender("rmsprop-momentum", "RMSProp + momentum 0.9", lambda p, lr: RMSprop(p, lr=lr, momentum=0.9),
              "tab:purple"),
    Contender("rmsprop-tf1", "RMSProp, TF1 form (v₀=1)", lambda p, lr: RMSprop(p, lr=lr, preset="tf1"),
              "tab:olive"),
    Contender("adam", "Adam", lambda p, lr: torch.optim.Adam(p, lr=lr), "tab:red"),
)

#: name → :class:`Contender`, read-only, in the order the pictures list them.
LINEUP: Mapping[str, Contender] = MappingProxyType({c.name: c for c in _ALL})

#: What the commands run when ``--optimizers`` is not given (the issue's list; tf1 only on request).
DEFAULT_NAMES: tuple[str, ...] = tuple(n for n in LINEUP if n != "rmsprop-tf1")


def make(name: str, params: Iterable[torch.Tensor], lr: float) -> torch.optim.Optimizer:
    """Build the line-up's optimizer ``name`` over ``params`` with learning rate ``lr``."""
    return LINEUP[name].build(params, lr)


def parse_lrs(text: str, names: Iterable[str] = LINEUP) -> dict[str, float]:
    """``--lr`` values: ``0.01`` (every optimizer) or ``sgd=0.1,adam=3e-3``.

    Returns name → lr; the key ``"*"`` stands for every optimizer. Raises ValueError on a
    name not in ``names`` (default: the line-up) or a learning rate that is not a positive number.
    """
    names = tuple(dict.fromkeys(names))
    result: dict[str, float] = {}
    for item in (x.strip() for x in text.split(",")):
        name, _, value = item.rpartition("=")
        name = name.strip() or "*"
        if name != "*" and name not in names:
            raise ValueError(f"{name!r} is not one of {', '.join(names)}")
        try:
            lr = float(value)
        except ValueError:
            raise ValueError(f"not a learning rate: {value!r}") from None
        if not 0 < lr < math.inf:
            raise ValueError(f"a learning rate must be a finite number above 0, got {value}")
        result[name] = lr
    return result


def resolve_lrs(names: Iterable[str], defaults: Mapping[str, float],
                overrides: Iterable[Mapping[str, float]] = ()) -> dict[str, float]:
    """Each optimizer's learning rate: ``defaults``, then each override in order (``"*"``: all)."""
    lrs = {name: defaults[name] for name in names}
    for override in overrides:
        for name in lrs:
            if name in override:
                lrs[name] = override[name]
            elif "*" in override:
                lrs[name] = override["*"]
    return lrs


def _lr_option(names: tuple[str, ...]) -> Callable[[str], dict[str, float]]:
    def parse(text: str) -> dict[str, float]:
        try:
            return parse_lrs(text, names)
        except ValueError as err:
            raise argparse.ArgumentTypeError(str(err)) from None

    return parse


def add_lineup_options(parser: argparse.ArgumentParser, lr_defaults: str,
                       lr_names: Iterable[str] = ()) -> None:
    """``--optimizers``, ``--lr`` and ``--help-lrs``, the same in every command that uses the line-up.
    ``lr_names``: names ``--lr NAME=LR`` takes besides the line-up's (a task's own optimizers)."""
    names = tuple(LINEUP)
    parser.add_argument("--optimizers", metavar="LIST", type=comma_list(names, {"all": names}),
                        help=f"comma list of {', '.join(LINEUP)}, or all (default: all but rmsprop-tf1)")
    parser.add_argument("--help-lrs", action="store_true", help="print the default learning rates and exit")
    parser.add_argument("--lr", action="append", type=_lr_option((*names, *lr_names)),
                        metavar="LR|NAME=LR,...",
                        help="learning rate for every optimizer (0.01), or per optimizer "
                             f"(sgd=0.1,adam=0.02); repeat: later wins (default: {lr_defaults}, "
                             "see --help-lrs)")


def lrs_table(kind: str, defaults: Mapping[str, Mapping[str, float]]) -> str:
    """``--help-lrs``: one row per function or task (``kind`` heads the column), one column per optimizer."""
    width = max(len(kind), *(len(k) for k in defaults)) + 2
    lines = [f"{kind:<{width}}" + "".join(f"{n:>18}" for n in LINEUP)]
    for key, lrs in defaults.items():
        lines.append(f"{key:<{width}}" + "".join(f"{lrs[n]:>18g}" for n in LINEUP))
    return "\n".join(lines)
