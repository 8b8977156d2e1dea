"""The ``rmsprop`` command: ``rmsprop demo`` and friends."""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from . import __version__, bench, demo

__all__ = ["main"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="rmsprop",
        description="RMSProp for PyTorch, done properly.",
    )
    parser.add_argument("--version", action="version", version=f"rmsprop {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    demo.configure_parser(
        commands.add_parser(
            "demo",
            help="replay the seed notebook, then show where RMSProp beats SGD",
            description=demo.__doc__,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
    )
    bench.configure_parser(
        commands.add_parser(
            "bench",
            help="time our paths against torch.optim.RMSprop and the memory-bandwidth roofline",
            description=bench.__doc__,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.run(args)
