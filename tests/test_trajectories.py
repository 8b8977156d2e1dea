"""`rmsprop trajectories`: the paths are the runs they claim to be, and they say what the docs say."""

from __future__ import annotations

import json
import math
import sys

import pytest
import torch

from rmsprop import RMSprop, RMSPropOptimizer
from rmsprop.cli import main
from rmsprop.cliutil import torch_threads
from rmsprop.lineup import DEFAULT_NAMES, LINEUP, make, parse_lrs, resolve_lrs
from rmsprop.trajectories import SURFACES, Run, trace

from cli_helpers import command_json


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """As the commands do: tiny models, and threads that wait on each other on a busy machine."""
    with torch_threads(1):
        yield


RUN_FIELDS = {"optimizer", "label", "lr", "points", "loss", "final_gap", "distance", "reached", "reached_at",
              "diverged"}


def _json(*argv: str) -> dict:
    data, tables = command_json("trajectories", *argv)
    assert "== " in tables  # the tables go to stderr when stdout holds the JSON
    return data


def _runs(function: dict) -> dict[str, dict]:
    return {r["optimizer"]: r for r in function["runs"]}


@pytest.fixture(scope="module")
def quadratic() -> dict:
    """The default command's numbers (the ill-conditioned quadratic, every default optimizer)."""
    return _json()


def test_json_holds_every_path_from_the_same_start(quadratic):
    assert quadratic["schema"] == "rmsprop-trajectories/1"
    function, = quadratic["functions"]
    surface = SURFACES["quadratic"]
    assert function["name"] == "quadratic" and function["start"] == list(surface.start)
    assert [r["optimizer"] for r in function["runs"]] == list(DEFAULT_NAMES)
    for run in function["runs"]:
        assert set(run) == RUN_FIELDS
        assert run["lr"] == surface.lrs[run["optimizer"]]
        assert len(run["points"]) == len(run["loss"]) == surface.steps + 1
        assert run["points"][0] == list(surface.start)
        for point, loss in zip(run["points"][::25], run["loss"][::25]):
            assert loss == pytest.approx(surface.value(point), rel=1e-12)  # the loss is f at that point
        assert run["final_gap"] == pytest.approx(run["loss"][-1] - surface.f_min)
        assert run["distance"] == pytest.approx(math.dist(run["points"][-1], (0, 0)))


def test_paths_are_the_optimizers_they_name():
    """Replay two paths by hand with the optimizers the line-up promises."""
    surface = SURFACES["quadratic"]
    for name, build in (("rmsprop-seed", lambda p: RMSPropOptimizer(p, lr=0.1, gamma=0.9)),
                        ("rmsprop-centered", lambda p: RMSprop(p, lr=0.1, centered=True))):
        xy = torch.tensor(surface.start, dtype=torch.float64, requires_grad=True)
        opt = build([xy])
        for _ in range(20):
            opt.zero_grad()
            surface.f(xy[0], xy[1]).backward()
            opt.step()
        assert trace(surface, name, 0.1, 20).points[-1] == tuple(xy.detach().tolist())


def test_on_the_ill_conditioned_quadratic_rmsprop_reaches_the_minimum_and_sgd_does_not(quadratic):
    runs = _runs(quadratic["functions"][0])
    for name in ("rmsprop", "rmsprop-centered", "rmsprop-momentum", "momentum"):
        assert runs[name]["reached"], name
    assert not runs["sgd"]["reached"]
    assert runs["rmsprop"]["final_gap"] < 1e-6 * runs["sgd"]["final_gap"]
    # SGD's lr is 0.9x its stability limit 2/10: the flat direction's factor is 1 - 0.1 lr per step.
    assert runs["sgd"]["lr"] == pytest.approx(0.9 * 2 / 10)


def test_no_stable_sgd_lr_comes_close_to_rmsprop_on_the_quadratic():
    surface = SURFACES["quadratic"]
    rmsprop_gap = trace(surface, "rmsprop", surface.lrs["rmsprop"], surface.steps).summary(surface, 0.01)
    best_sgd = min(trace(surface, "sgd", 10 ** (k / 4), surface.steps).loss[-1] for k in range(-12, 0))
    assert rmsprop_gap["final_gap"] < 1e-4 * best_sgd


def test_turned_45_degrees_the_advantage_is_gone():
    data = _json("--function", "rotated", "--optimizers", "sgd,rmsprop,momentum")
    runs = _runs(data["functions"][0])
    assert runs["rmsprop"]["final_gap"] > 0.1 * runs["sgd"]["final_gap"]  # same order, not 1e-6
    assert not runs["rmsprop"]["reached"] and runs["momentum"]["reached"]


def test_rmsprop_leaves_the_saddle_and_sgd_at_the_same_lr_waits():
    surface = SURFACES["saddle"]
    sgd = trace(surface, "sgd", 0.05, surface.steps)
    rms = trace(surface, "rmsprop-seed", 0.05, surface.steps)
    assert abs(sgd.points[-1][1]) < 0.02  # 1e-4 · 1.05^100 ≈ 0.013: still by the ridge y = 0
    assert rms.summary(surface, 0.01)["reached"]
    assert rms.summary(surface, 0.01)["reached_at"] < surface.steps


def test_on_rosenbrock_momentum_matters_more_than_per_parameter_scaling():
    surface = SURFACES["rosenbrock"]
    momentum = trace(surface, "momentum", surface.lrs["momentum"], surface.steps)
    plain = trace(surface, "rmsprop", surface.lrs["rmsprop"], surface.steps)
    assert surface.distance(momentum.points[-1]) < 0.1 < surface.distance(plain.points[-1])


def test_a_diverging_path_stops_and_says_so():
    surface = SURFACES["quadratic"]
    run = trace(surface, "sgd", 0.3, 500)  # above 2/10: unstable
    assert run.diverged and len(run.points) < 501
    assert not run.summary(surface, 0.01)["reached"]


def test_reached_at_is_where_the_path_stays():
    surface = SURFACES["quadratic"]
    run = Run("sgd", 0.1, [(1.0, 0.0), (0.0, 0.001), (0.5, 0.0), (0.001, 0.0), (0.0, 0.0)], [0.0] * 5, False)
    assert run.summary(surface, 0.01)["reached_at"] == 3  # step 1 was within, but it left again


def test_learning_rates_resolve_in_order():
    assert parse_lrs("0.05") == {"*": 0.05}
    assert parse_lrs("sgd=0.1, adam=3e-3") == {"sgd": 0.1, "adam": 0.003}
    lrs = resolve_lrs(["sgd", "adam"], {"sgd": 1.0, "adam": 2.0}, [parse_lrs("0.05"), parse_lrs("sgd=0.1")])
    assert lrs == {"sgd": 0.1, "adam": 0.05}
    assert resolve_lrs(["sgd"], {"sgd": 1.0}, [parse_lrs("sgd=0.1"), parse_lrs("0.2")]) == {"sgd": 0.2}
    for bad in ("nope=1", "sgd=-1", "sgd=x", "0"):
        with pytest.raises(ValueError):
            parse_lrs(bad)


def test_every_contender_builds_and_steps():
    for name in LINEUP:
        p = torch.nn.Parameter(torch.ones(3))
        opt = make(name, [p], 0.1)
        p.sum().backward()
        opt.step()
        assert (p < 1).all(), name


def test_lr_options_reach_the_runs():
    runs = _runs(_json("--function", "saddle", "--optimizers", "sgd,adam", "--steps", "5",
                       "--lr", "0.02", "--lr", "adam=0.3")["functions"][0])
    assert runs["sgd"]["lr"] == 0.02 and runs["adam"]["lr"] == 0.3
    assert len(runs["sgd"]["points"]) == 6


def test_bad_options_are_refused(capsys):
    for argv in (["--function", "nope"], ["--lr", "turbo=1"], ["--steps", "0"], ["--start", "1"],
                 ["--optimizers", "sgd,lion"]):
        with pytest.raises(SystemExit) as exit_info:
            main(["trajectories", *argv])
        assert exit_info.value.code == 2
    capsys.readouterr()


def test_out_writes_the_picture_and_its_numbers(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    target = tmp_path / "paths.png"
    argv = ["--function", "saddle", "--optimizers", "sgd,rmsprop", "--steps", "12"]
    assert main(["trajectories", *argv, "--out", str(target), "--gif", str(tmp_path / "paths.gif")]) == 0
    assert target.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    beside = json.loads((tmp_path / "paths.json").read_text())
    capsys.readouterr()
    assert beside["functions"] == _json(*argv)["functions"]
    from PIL import Image

    with Image.open(tmp_path / "paths.gif") as gif:
        assert gif.n_frames == 13  # one frame per step when there are fewer than 50
        assert gif.size[0] > 300


def test_out_without_matplotlib_is_a_clear_error(monkeypatch, capsys, tmp_path):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    target = tmp_path / "paths.png"
    assert main(["trajectories", "--out", str(target)]) == 2
    out, err = capsys.readouterr()
    assert "--out needs matplotlib" in err and "pip install 'rmsprop[plot]'" in err
    assert out == "" and not target.exists() and not (tmp_path / "paths.json").exists()


def test_help_lrs_prints_every_default(capsys):
    assert main(["trajectories", "--help-lrs"]) == 0
    out = capsys.readouterr().out
    for name in SURFACES:
        assert name in out
    assert "0.18" in out  # SGD on the quadratic
