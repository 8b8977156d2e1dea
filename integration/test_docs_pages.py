"""The integration pages' ```python blocks run as written, in the integration environment.

The project's own test suite (tests/test_docs.py) runs the pages that need only the project's
environment; these pages carry the marker ``<!-- runs-in: integration -->`` and run here, each
in a fresh folder, with scripts/run_tutorial.py's ``run`` (one namespace per page, in order).
"""

from __future__ import annotations

import importlib.util

import pytest
from conftest import ROOT

PAGES = ["timm", "lightning", "huggingface"]
MARKER = "<!-- runs-in: integration -->"


def runner():
    spec = importlib.util.spec_from_file_location("run_tutorial", ROOT / "scripts" / "run_tutorial.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.run


@pytest.mark.filterwarnings("ignore:.*treespec")  # Lightning's pytree helper on this torch
@pytest.mark.parametrize("name", PAGES)
def test_page_runs(tmp_path, name):
    page = ROOT / "docs" / "integrations" / f"{name}.md"
    text = page.read_text()
    assert MARKER in text.splitlines()  # so the project's own docs test leaves the page to us
    assert "```python\n" in text  # a page with a recipe to run
    runner()(page, tmp_path)
