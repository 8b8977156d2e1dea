"""Run a markdown page's ```python blocks in order, in one namespace, as a reader would.

The test suite runs docs/tutorial.md this way in a temporary folder (tests/test_tutorial.py), so
the tutorial cannot rot; `make tutorial` runs it in docs/, which rewrites the pictures it shows
(docs/figures/tutorial_*.png).

    python scripts/run_tutorial.py docs/tutorial.md [--cwd docs]
"""

from __future__ import annotations

import argparse
import os
import re
from pathlib import Path

BLOCK = re.compile(r"^```python\n(.*?)^```", re.DOTALL | re.MULTILINE)


def code_blocks(markdown: str) -> list[str]:
    """The page's ```python blocks, in order (other fenced blocks are text)."""
    return [m.group(1) for m in BLOCK.finditer(markdown)]


def run(page: Path, cwd: Path) -> dict:
    """Execute every block of ``page`` with ``cwd`` as the working folder; return the namespace.
    A failing block raises with its number and first line in the message."""
    namespace: dict = {"__name__": "__tutorial__"}
    blocks = code_blocks(page.read_text())
    previous = Path.cwd()
    os.chdir(cwd)
    try:
        for number, source in enumerate(blocks, 1):
            try:
                exec(compile(source, f"{page.name}, block {number}", "exec"), namespace)
            except Exception as err:
                first = source.strip().splitlines()[0] if source.strip() else ""
                raise RuntimeError(f"{page.name}: block {number} ({first!r}) failed: {err!r}") from err
    finally:
        os.chdir(previous)
    return namespace


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("page", type=Path)
    parser.add_argument("--cwd", type=Path, default=Path("."), help="working folder (default: here)")
    args = parser.parse_args()
    run(args.page.resolve(), args.cwd)


if __name__ == "__main__":
    main()
