"""The ``rmsprop`` command: ``rmsprop demo`` and friends.

A user error (a bad option value, a file in a missing directory) is found while the
command line is read, before any work, and reported as one line on stderr,
``rmsprop COMMAND: error: ...``, with exit code 2. Output goes out line by line,
and a reader that leaves early (``rmsprop demo | head -3``) ends the command quietly.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from collections.abc import Sequence
from typing import NoReturn

from . import __version__, bench, compare, demo, trajectories
from .cliutil import line_buffered

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

#: The exit code of a command whose reader closed the pipe: 128 + SIGPIPE, as a shell reports
#: for a process that the signal ended (Python ignores SIGPIPE and gets BrokenPipeError instead).
CLOSED_PIPE = 141


class _Parser(argparse.ArgumentParser):
    """argparse's parser, but an error is one line, ``PROG: error: MESSAGE``, without the usage
    block (``--help`` has it); exit code 2 as before. Subcommand parsers are of this class too."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
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
    try:
        with line_buffered(sys.stdout):
            code = args.run(args)
            sys.stdout.flush()
        return code
    except BrokenPipeError:
        # The reader left (rmsprop demo | head -3): nothing more is wanted. Point stdout and stderr
        # at devnull so that the flush at exit cannot fail again (Python's docs, "Note on SIGPIPE").
        devnull = os.open(os.devnull, os.O_WRONLY)
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(AttributeError, OSError, ValueError):  # not a file: nothing to do
                os.dup2(devnull, stream.fileno())
        return CLOSED_PIPE
