"""`rmsprop compare`: the curves are the runs they claim to be, the files agree, the verdicts are true."""

from __future__ import annotations

import csv
import json
import statistics
import sys

import pytest
import torch

from rmsprop import compare, demo
from rmsprop.cli import main
from rmsprop.cliutil import torch_threads

from cli_helpers import command_json

pytest.importorskip("sklearn")

@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """As the commands do: tiny models, and threads that wait on each other on a busy machine."""
    with torch_threads(1):
        yield


SHORT = ["--optimizers", "sgd,rmsprop", "--seeds", "0,1", "--epochs", "2", "--no-progress"]
NOTEBOOK_PRINTED = [f"{loss:.4f}" for loss in demo.NOTEBOOK_LOSSES]  # the notebook's printout


def _json(*argv: str) -> dict:
    data, tables = command_json("compare", *argv)
    assert "== " in tables  # the tables go to stderr when stdout holds the JSON
    return data


@pytest.fixture(scope="module")
def short_digits() -> dict:
    return _json(*SHORT)


def test_digits_json_has_every_run_with_full_curves(short_digits):
    data = short_digits
    assert data["schema"] == "rmsprop-compare/1" and data["task"]["name"] == "digits"
    assert data["settings"]["seeds"] == [0, 1] and data["settings"]["epochs"] == 2
    assert [o["name"] for o in data["optimizers"]] == ["sgd", "rmsprop"]
    for opt in data["optimizers"]:
        assert opt["lr"] == compare.TASKS["digits"].lrs[opt["name"]]
        assert [r["seed"] for r in opt["runs"]] == [0, 1]
        for run in opt["runs"]:
            assert set(run["curves"]) == set(compare.DIGITS_METRICS)
            assert all(len(c) == 3 for c in run["curves"].values())  # before training + 2 epochs
            assert all(0 <= a <= 1 for a in run["curves"]["test_accuracy"])
            assert run["curves"]["train_loss"][-1] < run["curves"]["train_loss"][0]  # it learns
        for metric in compare.DIGITS_METRICS:
            columns = list(zip(*(r["curves"][metric] for r in opt["runs"])))
            assert opt["mean"][metric] == pytest.approx([statistics.fmean(c) for c in columns])
            assert opt["min"][metric] == [min(c) for c in columns]
            assert opt["max"][metric] == [max(c) for c in columns]
            assert opt["final"][metric]["mean"] == opt["mean"][metric][-1]


def test_each_curve_is_the_run_it_names(short_digits):
    """Rerun one (optimizer, seed) by itself: the same numbers, bit for bit."""
    rmsprop = short_digits["optimizers"][1]
    again = compare.train_digits("rmsprop", rmsprop["lr"], 1, 2, 64)
    assert again == rmsprop["runs"][1]["curves"]
    assert rmsprop["runs"][0]["curves"] != rmsprop["runs"][1]["curves"]  # seeds differ


def test_for_a_seed_every_optimizer_starts_from_the_same_model(short_digits):
    sgd, rmsprop = short_digits["optimizers"]
    for a, b in zip(sgd["runs"], rmsprop["runs"]):
        assert {m: c[0] for m, c in a["curves"].items()} == {m: c[0] for m, c in b["curves"].items()}
        assert a["curves"]["train_loss"][1] != b["curves"]["train_loss"][1]


def test_for_a_seed_every_optimizer_sees_the_same_minibatches(monkeypatch):
    orders = {}
    randperm = torch.randperm

    def recording(*args, **kwargs):
        perm = randperm(*args, **kwargs)
        orders.setdefault(name, []).append(perm)
        return perm

    monkeypatch.setattr(torch, "randperm", recording)
    for name in ("sgd", "adam"):
        compare.train_digits(name, 0.01, 5, 2, 64)
    assert len(orders["sgd"]) == 2 and all(map(torch.equal, orders["sgd"], orders["adam"]))
    assert not torch.equal(orders["sgd"][0], orders["sgd"][1])  # reshuffled every epoch


def test_rmsprop_learns_digits_in_a_few_epochs():
    curves = compare.train_digits("rmsprop", compare.TASKS["digits"].lrs["rmsprop"], 0, 3, 64)
    assert curves["test_accuracy"][0] < 0.2 and curves["test_accuracy"][-1] > 0.6  # chance: 0.1


def test_seed_task_replays_the_notebook_and_sgd_ends_lower():
    data = _json("--task", "seed", "--optimizers", "sgd,rmsprop-seed", "--no-progress")
    sgd, seed = ({r["seed"]: r["curves"]["train_loss"] for r in o["runs"]} for o in data["optimizers"])
    assert list(seed) == ["notebook"] and data["settings"]["epochs"] == 10
    assert [f"{v:.4f}" for v in seed["notebook"][:10]] == NOTEBOOK_PRINTED  # the notebook's printout
    assert f"{sgd['notebook'][9]:.4f}" == "0.2977"
    assert sgd["notebook"][-1] < seed["notebook"][-1]


def test_seed_task_integer_seeds_are_demos_random_starts():
    data = _json("--task", "seed", "--optimizers", "rmsprop-seed", "--seeds", "notebook,3",
                 "--no-progress")
    runs = {r["seed"]: r["curves"]["train_loss"] for r in data["optimizers"][0]["runs"]}
    assert runs[3][:10] == demo.seed_losses(seed=3)
    assert runs["notebook"][:10] == demo.seed_losses()


def test_out_writes_picture_csv_and_json_that_agree(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    target = tmp_path / "curves.png"
    assert main(["compare", *SHORT, "--out", str(target)]) == 0
    out = capsys.readouterr().out
    assert "lowest mean final test loss:" in out and str(target) in out
    assert target.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    data = json.loads((tmp_path / "curves.json").read_text())
    rows = list(csv.DictReader((tmp_path / "curves.csv").open()))
    assert len(rows) == 2 * (2 + 4) * 3  # optimizers × (seeds + mean/std/min/max) × points
    for opt in data["optimizers"]:
        for run in opt["runs"]:
            mine = [r for r in rows if r["optimizer"] == opt["name"] and r["seed"] == str(run["seed"])]
            assert [float(r["test_loss"]) for r in mine] == run["curves"]["test_loss"]
        means = [r for r in rows if r["optimizer"] == opt["name"] and r["seed"] == "mean"]
        assert [float(r["test_accuracy"]) for r in means] == opt["mean"]["test_accuracy"]


def test_table_reports_the_final_numbers(short_digits, capsys):
    assert main(["compare", *SHORT]) == 0
    out = capsys.readouterr().out
    for opt in short_digits["optimizers"]:
        line = next(x for x in out.splitlines() if x.startswith(opt["name"] + " "))
        final = opt["final"]["test_loss"]
        assert f"{final['mean']:.4f} [{final['min']:.4f}–{final['max']:.4f}]" in line


def test_progress_lines_name_each_run(capsys):
    assert main(["compare", *SHORT[:-1], "--optimizers", "sgd", "--epochs", "1"]) == 0
    err = capsys.readouterr().err
    assert "compare [1/2] digits · sgd · seed 0" in err and "compare [2/2] digits · sgd · seed 1" in err


def test_mistakes_are_clear_errors(monkeypatch, capsys, tmp_path):
    assert main(["compare", "--seeds", "notebook", "--no-progress"]) == 2
    assert "--seeds notebook is the seed task's start" in capsys.readouterr().err
    for argv in (["--task", "mnist"], ["--seeds", "0,0"], ["--seeds", "x"], ["--epochs", "0"]):
        with pytest.raises(SystemExit) as exit_info:
            main(["compare", *argv])
        assert exit_info.value.code == 2
    capsys.readouterr()
    for name in ("sklearn", "sklearn.datasets", "sklearn.model_selection"):
        monkeypatch.setitem(sys.modules, name, None)  # importing it now raises ImportError
    compare.digits_data.cache_clear()
    try:
        assert main(["compare", *SHORT]) == 2
    finally:
        compare.digits_data.cache_clear()
    err = capsys.readouterr().err
    assert "--task digits needs scikit-learn" in err and "Traceback" not in err
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    assert main(["compare", *SHORT, "--out", str(tmp_path / "x.png")]) == 2
    assert "--out needs matplotlib" in capsys.readouterr().err
    assert not list(tmp_path.iterdir())
