"""What the ``rmsprop`` commands share: option types, ``--json FILE|-``, the progress
bar, and matplotlib loaded only when a picture is asked for.

Nothing here imports a plotting library at import time: the core package must
work with torch alone (``pip install 'rmsprop[plot]'`` adds the rest).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

__all__ = [
    "Progress", "UsageError", "add_json_option", "comma_list", "figure", "guarded", "integer",
    "json_target", "line_buffered", "number", "output_file", "positive_float", "positive_int", "pyplot",
    "require_matplotlib", "save_png", "seed_int", "text_stream", "thread_count", "torch_threads",
    "unit_interval", "write_json",
]


class UsageError(Exception):
    """A command-line mistake found after parsing: the command prints it and exits with 2."""


# ---------------------------------------------------------------- option types
#
# Every numeric option is parsed by one of these argparse types, so a bad value is refused
# while the command line is read, before any work: argparse then prints one line,
# "rmsprop COMMAND: error: argument --NAME: ...", and exits with code 2 (see cli.main).

def integer(low: int = 1, high: int | None = None, *, span: str | None = None) -> Callable[[str], int]:
    """An argparse type: an integer in [low, high] (``None``: no upper end); ``span`` words the
    range in the error message where the numbers themselves would not read well."""
    span = span or (f"of at least {low}" if high is None else f"from {low} to {high}")

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
        if value < low or (high is not None and value > high):
            raise argparse.ArgumentTypeError(f"must be an integer {span}, got {text}")
        return value

    return parse


def number(low: float = -math.inf, high: float = math.inf, *, above: bool = False) -> Callable[[str], float]:
    """An argparse type: a finite float in [low, high], or in (low, high] with ``above``."""
    if high == math.inf:
        span = f"above {low:g}" if above else f"of at least {low:g}"
    else:
        span = f"in {'(' if above else '['}{low:g}, {high:g}]"

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
        inside = low < value if above else low <= value
        if not (math.isfinite(value) and inside and value <= high):
            raise argparse.ArgumentTypeError(f"must be a finite number {span}, got {text}")
        return value

    return parse


#: A count: an integer of at least 1 (epochs, steps, rounds, batch sizes).
positive_int = integer(1)

#: A learning rate, or any other number that must be finite and above 0.
positive_float = number(0.0, above=True)

#: A decay rate such as gamma or alpha: finite, in [0, 1].
unit_interval = number(0.0, 1.0)

#: A seed: torch.manual_seed's range (a negative seed s stands for 2**64 - 1 + s there).
seed_int = integer(-(2**63), 2**64 - 1, span="from -2**63 to 2**64 - 1")


def thread_count(text: str) -> int:
    """An argparse type: torch threads, from 1 to the number of CPUs here (more only wait on each
    other, and an absurd count crashes torch)."""
    cpus = os.cpu_count() or 1
    return integer(1, cpus, span=f"from 1 to {cpus} (the CPUs here)")(text)


def output_file(text: str) -> str:
    """An argparse type: a file the command can create, checked before the run (which may take
    minutes) rather than when it writes: its directory exists and is writable."""
    path = Path(text)
    folder = path.parent
    if not folder.is_dir():
        raise argparse.ArgumentTypeError(f"no such directory: '{folder}'")
    if path.is_dir():
        raise argparse.ArgumentTypeError(f"'{path}' is a directory")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise argparse.ArgumentTypeError(f"cannot write into '{folder}'")
    return text


def json_target(text: str) -> str:
    """An argparse type: ``-`` (stdout) or an :func:`output_file`."""
    return text if text == "-" else output_file(text)


def comma_list(allowed: tuple[str, ...], extra: dict[str, tuple[str, ...]] | None = None
               ) -> Callable[[str], list[str]]:
    """An argparse type for comma lists of ``allowed`` names (``extra`` names expand to several)."""

    def parse(text: str) -> list[str]:
        items: list[str] = []
        for item in (x.strip() for x in text.split(",")):
            if extra and item in extra:
                items += extra[item]
            elif item in allowed:
                items.append(item)
            else:
                raise argparse.ArgumentTypeError(
                    f"{item!r} is not one of {', '.join(allowed + tuple(extra or ()))}")
        return items

    return parse


def add_json_option(parser: argparse.ArgumentParser) -> None:
    """``--json FILE|-``, the same in every command."""
    parser.add_argument("--json", metavar="FILE", type=json_target,
                        help="write the numbers as JSON to FILE, or - for stdout "
                             "(what the command prints then goes to stderr)")


def guarded(command: str, body: Callable[[], int], needs_matplotlib: bool = False) -> int:
    """Run a command's ``body``; a UsageError or a missing optional package becomes
    ``rmsprop COMMAND: error: ...`` on stderr and exit code 2. With ``needs_matplotlib``
    a missing matplotlib is found before any work is done."""
    try:
        if needs_matplotlib:
            require_matplotlib()
        return body()
    except (UsageError, ImportError) as err:
        print(f"rmsprop {command}: error: {err}", file=sys.stderr)
        return 2


# ---------------------------------------------------------------- output

def text_stream(json_target: str | None) -> IO[str]:
    """Where a command prints its tables: stderr when ``--json -`` claims stdout."""
    return sys.stderr if json_target == "-" else sys.stdout


def write_json(data: Any, target: str) -> None:
    """Write ``data`` as indented JSON to the file ``target``, or to stdout for ``-``.
    A regular file is replaced whole (written beside it, then renamed), so a
    process stopped while writing leaves the previous version, never half of
    one; anything else (``/dev/stdout``, a pipe) is written as it is."""
    text = json.dumps(data, indent=1, ensure_ascii=False)
    if target == "-":
        print(text)
    elif os.path.exists(target) and not os.path.isfile(target):
        with open(target, "w") as f:
            f.write(text + "\n")
    else:
        partial = f"{target}.partial"
        with open(partial, "w") as f:
            f.write(text + "\n")
        os.replace(partial, target)


@contextmanager
def line_buffered(stream: IO[str]) -> Iterator[None]:
    """Flush ``stream`` at every newline during the block, then restore its buffering.

    Python block-buffers stdout when it is a pipe or a file, so ``rmsprop demo | tee log``
    would show nothing until 8 KiB had gathered; a command's lines are its progress. A stream
    that cannot be reconfigured (a ``StringIO``) is left alone."""
    before = getattr(stream, "line_buffering", None)
    if before is None or not hasattr(stream, "reconfigure"):
        yield
        return
    stream.reconfigure(line_buffering=True)
    try:
        yield
    finally:
        stream.reconfigure(line_buffering=before)


def require_matplotlib(extra: str = "plot") -> None:
    """Raise ImportError with the fix when matplotlib is missing."""
    try:
        import matplotlib  # noqa: F401
    except ImportError as err:
        raise ImportError(f"--out needs matplotlib, which is not installed: "
                          f"pip install 'rmsprop[{extra}]' (or pip install matplotlib)") from err


def figure(**kwargs: Any) -> Any:
    """A matplotlib ``Figure`` with its own Agg canvas: drawing it touches neither pyplot's
    state nor the global backend (a notebook's inline display keeps working)."""
    require_matplotlib()
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(**kwargs)
    FigureCanvasAgg(fig)
    return fig


def pyplot(extra: str = "plot") -> Any:
    """``matplotlib.pyplot`` on the non-interactive Agg backend, imported now."""
    require_matplotlib(extra)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


@contextmanager
def torch_threads(count: int) -> Iterator[None]:
    """Run the block with ``torch.set_num_threads(count)``, then restore the previous count.

    The picture commands train models far too small to gain from intra-op threads; on a
    busy machine the threads of one op wait on each other (measured here: a digits run
    70x slower with 2 threads than with 1 while another process kept both cores busy)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def save_png(fig: Any, filename: str, dpi: int = 80) -> None:
    """Save a matplotlib figure as a PNG of at most 256 colours (Pillow, which matplotlib
    depends on, picks the palette): line plots lose nothing visible and shrink about 3x."""
    import io

    from PIL import Image

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi)
    buffer.seek(0)
    with Image.open(buffer) as image:
        image.convert("RGB").quantize(colors=256).save(filename, format="PNG", optimize=True)


# ---------------------------------------------------------------- progress

class Progress:
    """A one-line progress bar on a terminal; one line per case elsewhere.

    Args:
        total: how many units of work (calls of the object) make 100%.
        stream: where to draw (default: stderr).
        enabled: False draws nothing (``--no-progress``).
        name: the command's name, at the start of each non-terminal line.
    """

    def __init__(self, total: int, stream: IO[str] | None = None, enabled: bool = True,
                 name: str = "bench"):
        self.total, self.done = max(total, 1), 0
        self.stream = stream or sys.stderr
        self.enabled = enabled
        self.name = name
        self.tty = enabled and hasattr(self.stream, "isatty") and self.stream.isatty()
        self.start = time.perf_counter()
        self.case = ""
        self._shown = False

    def _elapsed(self) -> str:
        seconds = int(time.perf_counter() - self.start)
        return f"{seconds // 60}:{seconds % 60:02d}"

    def start_case(self, index: int, count: int, text: str) -> None:
        self.case = f"[{index}/{count}] {text}"
        if self.enabled and not self.tty:
            print(f"{self.name} {self.case} ({self._elapsed()} elapsed)", file=self.stream, flush=True)
        self._draw("")

    def __call__(self, label: str) -> None:
        self.done += 1
        self._draw(label)

    def _draw(self, label: str) -> None:
        if not self.tty:
            return
        fraction = min(self.done / self.total, 1.0)
        width = 24
        bar = "#" * round(fraction * width) + "." * (width - round(fraction * width))
        text = f"[{bar}] {fraction:4.0%} {self._elapsed()} {self.case} · {label}"
        columns = shutil.get_terminal_size((100, 20)).columns
        self.stream.write("\r" + text[: columns - 1].ljust(columns - 1))
        self.stream.flush()
        self._shown = True

    def clear(self) -> None:
        """Erase the bar (before printing a table line)."""
        if self.tty and self._shown:
            columns = shutil.get_terminal_size((100, 20)).columns
            self.stream.write("\r" + " " * (columns - 1) + "\r")
            self.stream.flush()
            self._shown = False
