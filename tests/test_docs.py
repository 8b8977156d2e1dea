"""The documentation site and the README: the site builds with warnings as errors, every ```python
block of every page runs, every relative link leads to a file, and the landing page keeps its promises.

docs/tutorial.md is run by tests/test_tutorial.py, not here; pages marked
``<!-- runs-in: integration -->`` run in `make integration` (scripts/run_tutorial.py says both rules).
"""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

import rmsprop

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
README = ROOT / "README.md"

spec = importlib.util.spec_from_file_location("run_tutorial", ROOT / "scripts" / "run_tutorial.py")
run_tutorial = importlib.util.module_from_spec(spec)
spec.loader.exec_module(run_tutorial)

# The pages whose blocks this file runs: every page but the tutorial (tests/test_tutorial.py) and
# those marked for the integration environment, and only pages that have a block to run.
ALL_PAGES = [README, *run_tutorial.pages(DOCS)]
RUN_HERE = [
    page
    for page in ALL_PAGES
    if page.name != "tutorial.md"
    and not run_tutorial.needs_integration(page.read_text())
    and run_tutorial.code_blocks(page.read_text())
]


def _ids(pages: list[Path]) -> list[str]:
    return [str(page.relative_to(ROOT)) for page in pages]


def test_the_site_builds_with_warnings_as_errors(tmp_path):
    pytest.importorskip("mkdocs", reason="mkdocs comes with the dev extras; `make test` installs it")
    pytest.importorskip("mkdocstrings", reason="mkdocstrings comes with the dev extras")
    site = tmp_path / "site"
    done = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(site)],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    api = (site / "api" / "index.html").read_text()
    assert 'id="rmsprop.RMSprop"' in api and "(14) θ ← θ − b" in api  # generated from the docstring
    # the docstrings' Sphinx roles read as code, linked to their entry (scripts/mkdocs_hooks.py)
    assert not re.search(r":(class|mod|func|meth|attr|data|exc):", api)
    assert '<a href="#rmsprop.RMSprop"><code>rmsprop.RMSprop</code></a>' in api
    assert (site / "figures" / "trajectories.png").is_file()


@pytest.mark.parametrize("page", RUN_HERE, ids=_ids(RUN_HERE))
def test_every_python_block_of_the_page_runs_in_order(page, tmp_path):
    threads = torch.get_num_threads()
    try:
        namespace = run_tutorial.run(page, tmp_path)
    finally:
        torch.set_num_threads(threads)
    assert namespace.get("rmsprop") is rmsprop  # the page ran, and ran this project


def test_the_pages_run_here_are_the_ones_with_code():
    assert {README, DOCS / "index.md", DOCS / "migration.md"} <= set(RUN_HERE)
    assert DOCS / "tutorial.md" not in RUN_HERE


def test_a_page_marked_for_the_integration_environment_is_left_to_it():
    marked = f"# A framework\n\n{run_tutorial.INTEGRATION_MARKER}\n\n```python\nimport timm\n```\n"
    assert run_tutorial.needs_integration(marked)
    assert not run_tutorial.needs_integration("# A page\n\nmentions <!-- runs-in: integration --> inline\n")
    quoted = f"# Writing\n\n```text\n{run_tutorial.INTEGRATION_MARKER}\n```\n"
    assert not run_tutorial.needs_integration(quoted)


def test_an_indented_block_inside_a_list_runs_dedented():
    page = "- a step:\n\n  ```python\n  a = 1\n  if a:\n      b = 2\n  ```\n"
    assert run_tutorial.code_blocks(page) == ["a = 1\nif a:\n    b = 2\n"]


@pytest.mark.parametrize("page", ALL_PAGES, ids=_ids(ALL_PAGES))
def test_every_fence_names_a_known_language(page):
    """A misspelt ```python (```Python, ```python3) would silently not run: only the known fences pass."""
    languages = run_tutorial.fence_languages(page.read_text())
    unknown = [lang for lang in languages if lang not in run_tutorial.LANGUAGES]
    assert not unknown, f"{page.name}: fences {unknown}; use one of {sorted(run_tutorial.LANGUAGES)}"


LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")


def _relative_links(page: Path) -> list[str]:
    text = re.sub(r"^[ ]*```.*?^[ ]*```", "", page.read_text(), flags=re.DOTALL | re.MULTILINE)
    text = re.sub(r"`[^`\n]*`", "", text)  # code spans are not links
    return [t for t in LINK.findall(text) if not re.match(r"[a-z][a-z0-9+.-]*:", t)]


def _anchor(heading: str) -> str:
    """GitHub's and mkdocs' anchor of a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[`*_]", "", heading.strip().lower())
    return re.sub(r"\s", "-", re.sub(r"[^\w\s-]", "", text))


@pytest.mark.parametrize("page", ALL_PAGES, ids=_ids(ALL_PAGES))
def test_every_relative_link_leads_to_a_file(page):
    """Files for every page; anchors for the README's links (mkdocs --strict checks the docs' anchors,
    those of the API page's generated headings included)."""
    broken = []
    for target in _relative_links(page):
        path, _, anchor = target.partition("#")
        file = (page.parent / path).resolve() if path else page
        if not file.exists():
            broken.append(target)
        elif anchor and page == README and file.suffix == ".md":
            headings = re.findall(r"^#+ (.+)$", file.read_text(), flags=re.MULTILINE)
            if anchor not in {_anchor(h) for h in headings}:
                broken.append(target)
    assert not broken, f"{page.relative_to(ROOT)}: broken links {broken}"


def test_the_link_check_catches_a_broken_link(tmp_path):
    page = tmp_path / "page.md"
    page.write_text("[gone](nowhere.md) `[code](span.md)` [web](https://example.org) ![pic](x.png)\n")
    assert _relative_links(page) == ["nowhere.md", "x.png"]


def test_the_readme_quotes_the_two_set_up_commands_the_makefile_has():
    readme = README.read_text()
    assert "```sh\nmake demo   # creates .venv, installs the project into it, runs `rmsprop demo`\n" in readme
    assert "\nmake test   # the same set-up, then the whole test suite\n```" in readme
    makefile = (ROOT / "Makefile").read_text()
    assert re.search(r"^demo:", makefile, re.MULTILINE) and re.search(r"^test:", makefile, re.MULTILINE)


def test_the_readme_is_a_landing_page():
    readme = README.read_text()
    assert len(readme.splitlines()) <= 250
    assert re.search(r"!\[[^\]]+\]\(docs/figures/[^)]+\.png\)", readme)  # one picture
    assert "(docs/index.md)" in readme


def _formula(text: str) -> str:
    """The numbered lines (0)…(16): from the first line starting "(0)" to the first starting "(16)"."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.lstrip().startswith("(0) "))
    end = next(i for i, line in enumerate(lines) if line.lstrip().startswith("(16)"))
    return textwrap.dedent("\n".join(lines[start:end + 1]))


def test_the_update_rule_page_carries_the_class_docstrings_formula():
    page = (DOCS / "update.md").read_text()
    assert _formula(page) == _formula(rmsprop.RMSprop.__doc__)
    assert len(_formula(page).splitlines()) == 24  # all of (0)…(16), not a fragment


def _lists_glued_to_a_paragraph(markdown: str) -> list[str]:
    """Lines that open a list right under a paragraph line: GitHub renders a list there, mkdocs'
    Markdown a paragraph with dashes in it (it needs a blank line first)."""
    text = re.sub(r"^[ ]*```.*?^[ ]*```", "", markdown, flags=re.DOTALL | re.MULTILINE)
    glued, previous = [], ""
    for line in text.splitlines():
        opens = re.match(r"(- |\* |\d+\. )", line)
        in_text = previous.strip() and not re.match(r"\s*(- |\* |\d+\. |\||#|<!--)", previous)
        if opens and in_text and not previous.startswith(" "):
            glued.append(line)
        previous = line
    return glued


@pytest.mark.parametrize("page", run_tutorial.pages(DOCS), ids=_ids(run_tutorial.pages(DOCS)))
def test_every_list_starts_after_a_blank_line(page):
    glued = _lists_glued_to_a_paragraph(page.read_text())
    assert not glued, f"{page.relative_to(ROOT)}: put a blank line before {glued}"


def test_a_list_glued_to_its_paragraph_is_found():
    assert _lists_glued_to_a_paragraph("Say:\n- one\n- two\n\nSay:\n\n- three\n") == ["- one"]
