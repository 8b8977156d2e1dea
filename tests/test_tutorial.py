"""docs/tutorial.md runs: every ```python block, in order, in a fresh folder; its asserts check its claims."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
PAGE = ROOT / "docs" / "tutorial.md"

spec = importlib.util.spec_from_file_location("run_tutorial", ROOT / "scripts" / "run_tutorial.py")
run_tutorial = importlib.util.module_from_spec(spec)
spec.loader.exec_module(run_tutorial)


def test_tutorial_runs_and_draws_every_picture_it_shows(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    pytest.importorskip("sklearn")
    threads = torch.get_num_threads()
    try:
        namespace = run_tutorial.run(PAGE, tmp_path)
    finally:
        torch.set_num_threads(threads)  # the tutorial sets 1 for its reader
    out = capsys.readouterr().out
    shown = re.findall(r"!\[[^\]]*\]\((figures/[^)]+\.png)\)", PAGE.read_text())
    assert len(shown) == 3
    for picture in shown:
        assert (tmp_path / picture).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", picture
        assert (ROOT / "docs" / picture).is_file(), f"{picture}: run `make tutorial` and commit it"
    assert "RMSProp: 2.9726 2.5525" in out  # the notebook's losses, replayed
    assert namespace["seed_sgd"][-1] < namespace["seed_rmsprop"][-1]


def test_code_blocks_are_found_in_order():
    page = "text\n```python\na = 1\n```\n```\nnot code\n```\n```python\nb = a\n```\n"
    blocks = run_tutorial.code_blocks(page)
    assert blocks == ["a = 1\n", "b = a\n"]
