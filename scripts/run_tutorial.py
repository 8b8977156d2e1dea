"""Run a markdown page's ```python blocks in order, in one namespace, as a reader would.

The test suite runs docs/tutorial.md this way in a temporary folder (tests/test_tutorial.py), so
the tutorial cannot rot; `make tutorial` runs it in docs/, which rewrites the pictures it shows
(docs/figures/tutorial_*.png). tests/test_docs.py runs every other page of the documentation
site and the README the same way, one namespace per page.

The conventions a page follows (docs/development.md says them to a writer):

- A ```python block runs. A block that is deliberately not runnable (it needs a library the
  project does not install, or a file the reader has) is fenced ```py instead: shown as Python,
  never run. Output and formulas are fenced ```text, shell commands ```sh.
- A page whose blocks need the integration environment (`make integration`: timm, Lightning,
  Hugging Face) carries the marker ``<!-- runs-in: integration -->`` on a line of its own; the
  project's tests leave its blocks to that environment.

    python scripts/run_tutorial.py docs/tutorial.md [--cwd docs]
    python scripts/run_tutorial.py --list          # the pages the project's tests run, and why not the others
"""

from __future__ import annotations

import argparse
import os
import re
import textwrap
from pathlib import Path

# A ```python fence at the start of a line or indented inside a list item, up to the closing
# fence at the same indentation.
BLOCK = re.compile(r"^(?P<indent>[ ]*)```python\n(?P<code>.*?)^(?P=indent)```[ ]*$", re.DOTALL | re.MULTILINE)
# Every opening fence's language ('' for a bare fence), to catch a misspelt ```python.
FENCE = re.compile(r"^[ ]*```(?P<lang>[^\s`]*)[^\n]*\n.*?^[ ]*```[ ]*$", re.DOTALL | re.MULTILINE)
#: The marker of a page whose blocks run only in the integration environment.
INTEGRATION_MARKER = "<!-- runs-in: integration -->"
#: The fence languages a page may use: what runs, what is shown as Python but never run, and text.
LANGUAGES = {"python": "runs", "py": "Python, not run", "text": "text", "sh": "shell", "": "text"}

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"


def code_blocks(markdown: str) -> list[str]:
    """The page's ```python blocks, in order, dedented (other fenced blocks are text)."""
    return [textwrap.dedent(m.group("code")) for m in BLOCK.finditer(markdown)]


def fence_languages(markdown: str) -> list[str]:
    """The language of every fenced block of the page, in order ('' for a bare fence)."""
    return [m.group("lang") for m in FENCE.finditer(markdown)]


def needs_integration(markdown: str) -> bool:
    """Whether the page carries :data:`INTEGRATION_MARKER` on a line of its own, outside its
    fenced blocks (a page may quote the marker in a block without carrying it)."""
    prose = FENCE.sub("", markdown)
    return any(line.strip() == INTEGRATION_MARKER for line in prose.splitlines())


def pages(docs: Path = DOCS) -> list[Path]:
    """Every markdown page of the documentation site, sorted by path."""
    return sorted(docs.rglob("*.md"))


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
    parser.add_argument("page", type=Path, nargs="?")
    parser.add_argument("--cwd", type=Path, default=Path("."), help="working folder (default: here)")
    parser.add_argument("--list", action="store_true", help="list the docs pages and how their blocks run")
    args = parser.parse_args()
    if args.list:
        for page in [ROOT / "README.md", *pages()]:
            text = page.read_text()
            where = "make integration" if needs_integration(text) else "make test"
            print(f"{page.relative_to(ROOT)}: {len(code_blocks(text))} python block(s), run by {where}")
        return
    if args.page is None:
        parser.error("a page is needed (or --list)")
    run(args.page.resolve(), args.cwd)


if __name__ == "__main__":
    main()
