"""The ``rmsprop`` command: ``rmsprop demo`` and friends."""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from . import __version__, bench, compare, demo, trajectories

__all__ = ["main"]

# name, module (with configure_parser and a docstring for --help), one-line help
COMMANDS = (
    ("demo", demo, "replay the seed notebook, then show where RMSProp beats SGD"),
    ("bench", bench, "time our paths against torch.optim.RMSprop and the memory-bandwidth roofline"),
    ("trajectories", trajectories,
     "draw the paths of SGD, momentum, RMSProp's forms and Adam on 2-D test functions"),
    ("compare", compare,
     "train one model with several optimizers and seeds on real data; curves, table, CSV/JSON"),
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="rmsprop",
        description="RMSProp for PyTorch, done properly.",
    )
    parser.add_argument("--version", action="version", version=f"rmsprop {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, module, text in COMMANDS:
        module.configure_parser(commands.add_parser(name, help=text, description=module.__doc__,
                                                    formatter_class=argparse.RawDescriptionHelpFormatter))
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.run(args)
