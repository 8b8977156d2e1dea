"""`rmsprop compare --task a2c-cartpole`: SB3's A2C with each form of RMSProp, on tiny step counts.

What the full run (docs/a2c.md) relies on: each form is the optimizer it names (the torch form is
what A2C builds by default, the sb3 preset is SB3's RMSpropTFLike, bit for bit), evaluating does
not change the training, parallel jobs give the same numbers, and the files agree with each other.
"""

from __future__ import annotations

import csv
import io
import json
import statistics
import subprocess
import sys

import pytest
import torch

from rmsprop import a2c
from rmsprop.cli import main
from rmsprop.cliutil import torch_threads

from cli_helpers import command_json

pytest.importorskip("stable_baselines3", reason="the A2C task needs Stable-Baselines3 (extra 'sb3', in dev)")
pytest.importorskip("gymnasium", reason="the A2C task needs gymnasium (extra 'sb3', in dev)")

# 100 steps = 20 updates, evaluated twice after the start, 2 short episodes each: a few seconds a run.
TINY = ["--task", "a2c-cartpole", "--steps", "100", "--evals", "2", "--eval-episodes", "2", "--no-progress"]


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    with torch_threads(1):
        yield


def _final_parameters(form: str, steps: int = 100, evals: int = 1, seed: int = 0) -> torch.Tensor:
    last: dict[str, torch.Tensor] = {}

    def grab(model) -> None:
        last["theta"] = torch.nn.utils.parameters_to_vector(model.policy.parameters()).detach().clone()

    a2c.train(form, a2c.LR, seed, steps, evals, 1, on_update=grab)
    return last["theta"]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> tuple[dict, dict, str]:
    """One small run through the command line: (stdout JSON, --out JSON, --out CSV)."""
    target = tmp_path_factory.mktemp("a2c") / "a2c.png"
    data, tables = command_json("compare", *TINY, "--forms", "torch,sb3", "--seeds", "0,1",
                                "--out", str(target))
    assert "== a2c-cartpole" in tables and "highest mean final eval return" in tables
    assert target.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    return data, json.loads(target.with_suffix(".json").read_text()), target.with_suffix(".csv").read_text()


def test_json_has_every_run_and_its_statistics(tiny):
    data, _, _ = tiny
    assert data["schema"] == "rmsprop-compare/1" and data["task"]["name"] == "a2c-cartpole"
    settings = data["settings"]
    assert (settings["steps"], settings["epochs"], settings["eval_episodes"]) == (100, 2, 2)
    assert settings["seeds"] == [0, 1] and settings["stable_baselines3"]
    assert [o["name"] for o in data["optimizers"]] == ["torch", "sb3"]
    for opt in data["optimizers"]:
        assert opt["lr"] == a2c.LR and opt["label"] == a2c.FORMS[opt["name"]].label
        returns = [r["curves"]["eval_return"] for r in opt["runs"]]
        assert [len(c) for c in returns] == [3, 3]  # before training, after 50 and 100 steps
        assert all(0 < v <= 500 for c in returns for v in c)  # CartPole-v1: 1 per step, at most 500
        for key, fn in (("mean", statistics.fmean), ("std", statistics.pstdev), ("min", min), ("max", max)):
            assert opt[key]["eval_return"] == pytest.approx([fn(c) for c in zip(*returns)])
        assert opt["final"]["eval_return"]["mean"] == opt["mean"]["eval_return"][-1]


def test_every_form_starts_from_the_same_policy_and_then_differs(tiny):
    torch_form, sb3_form = tiny[0]["optimizers"]
    for a, b in zip(torch_form["runs"], sb3_form["runs"]):
        assert a["curves"]["eval_return"][0] == b["curves"]["eval_return"][0]  # same seed, same init
    assert torch_form["runs"] != sb3_form["runs"]


def test_out_files_agree_with_the_printed_json(tiny):
    data, saved, text = tiny
    assert saved["optimizers"] == data["optimizers"]
    rows = list(csv.DictReader(io.StringIO(text)))
    assert list(rows[0]) == ["optimizer", "lr", "seed", "epoch", "eval_return"]
    for opt in data["optimizers"]:
        for run in opt["runs"]:
            mine = [float(r["eval_return"]) for r in rows if r["optimizer"] == opt["name"]
                    and r["seed"] == str(run["seed"])]
            assert mine == run["curves"]["eval_return"]
        means = [float(r["eval_return"]) for r in rows
                 if r["optimizer"] == opt["name"] and r["seed"] == "mean"]
        assert means == opt["mean"]["eval_return"]


def test_each_curve_is_the_run_it_names_also_from_parallel_jobs(tiny):
    """Two worker processes give the numbers of the in-process runs, and one run by itself too."""
    data, _ = command_json("compare", *TINY, "--forms", "torch,sb3", "--seeds", "0,1", "--jobs", "2")
    assert data["optimizers"] == tiny[0]["optimizers"]
    again = a2c.train("sb3", a2c.LR, 1, 100, 2, 2)
    assert again == tiny[0]["optimizers"][1]["runs"][1]["curves"]


def test_torch_form_is_what_a2c_builds_by_default():
    sb3 = a2c.require_sb3()
    default = sb3.A2C("MlpPolicy", a2c.ENV_ID, seed=0, device="cpu")
    assert type(default.policy.optimizer) is torch.optim.RMSprop
    default.learn(100)
    theta = torch.nn.utils.parameters_to_vector(default.policy.parameters()).detach()
    assert torch.equal(_final_parameters("torch"), theta)


def test_drop_in_forms_are_bit_identical_and_the_tf_like_form_is_not_torchs():
    torch_form = _final_parameters("torch")
    assert torch.equal(_final_parameters("rmsprop"), torch_form)  # our torch preset
    sb3_form = _final_parameters("sb3")
    assert torch.equal(_final_parameters("tflike"), sb3_form)  # SB3's RMSpropTFLike
    assert not torch.equal(sb3_form, torch_form)
    for alone in ("eps-in-sqrt", "v0-1"):  # each difference by itself changes the run too
        assert not torch.equal(_final_parameters(alone), torch_form)


def test_rmsproptflike_without_optimizer_kwargs_runs_with_its_own_eps_not_a2cs():
    """The trap the sb3-eps1e-8 form stands for: A2C's rms_prop_eps reaches only its own optimizer."""
    sb3 = a2c.require_sb3()
    from stable_baselines3.common.sb2_compat.rmsprop_tf_like import RMSpropTFLike

    model = sb3.A2C("MlpPolicy", a2c.ENV_ID, seed=0, device="cpu",
                    policy_kwargs={"optimizer_class": RMSpropTFLike})
    assert model.policy.optimizer.defaults["eps"] == 1e-8
    model.learn(100)
    theta = torch.nn.utils.parameters_to_vector(model.policy.parameters()).detach()
    assert torch.equal(_final_parameters("sb3-eps1e-8"), theta)


def test_evaluating_does_not_change_the_training():
    assert torch.equal(_final_parameters("sb3", evals=1), _final_parameters("sb3", evals=4))


def test_a_line_up_entry_builds_the_forms_optimizer():
    from rmsprop.compare import A2C_LINEUP

    params = [torch.nn.Parameter(torch.ones(3))]
    opt = A2C_LINEUP["sb3"].build(params, 0.1)
    assert opt.defaults["eps"] == a2c.EPS and opt.defaults["alpha"] == a2c.ALPHA and opt.defaults["lr"] == 0.1
    assert opt.defaults["eps_in_sqrt"] is True and opt.defaults["initial_square_avg"] == 1.0


@pytest.mark.parametrize(("argv", "message"), [
    ([*TINY, "--steps", "101"], "--steps must be a multiple of 5 × --evals = 10"),
    ([*TINY, "--optimizers", "sgd"], "takes --forms (not --optimizers)"),
    ([*TINY, "--epochs", "3"], "--steps/--evals (not --epochs)"),
    (["--task", "digits", "--forms", "torch"], "--forms, --steps and --evals belong to --task a2c-cartpole"),
    ([*TINY, "--seeds", "notebook"], "--task a2c-cartpole takes integers"),
    ([*TINY, "--lr", "sgd=0.1"], "--lr sgd: not an optimizer of --task a2c-cartpole"),
    (["--task", "digits", "--lr", "0.1,sb3=0.1"], "--lr sb3: not an optimizer of --task digits"),
])
def test_usage_errors_are_refused_before_any_run(argv, message, capsys):
    assert main(["compare", *argv]) == 2
    assert message in capsys.readouterr().err


def test_a_missing_stable_baselines3_names_the_extra(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "stable_baselines3", None)  # importing it now raises ImportError
    with pytest.raises(ImportError, match=r"pip install 'rmsprop\[sb3\]'"):
        a2c.require_sb3()
    assert main(["compare", *TINY]) == 2
    assert "pip install 'rmsprop[sb3]'" in capsys.readouterr().err


def test_importing_the_task_loads_neither_stable_baselines3_nor_gymnasium():
    check = ("import sys, rmsprop, rmsprop.a2c, rmsprop.compare, rmsprop.cli; rmsprop.cli.build_parser(); "
             "print(sorted({m.split('.')[0] for m in sys.modules} & {'stable_baselines3', 'gymnasium'}))")
    completed = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True, check=True)
    assert completed.stdout.strip() == "[]"


def test_lr_may_name_a_form_and_a_typo_is_refused_by_the_parser(capsys):
    data, _ = command_json("compare", *TINY, "--forms", "torch,sb3", "--seeds", "0",
                           "--lr", "1e-3", "--lr", "sb3=2.1e-3")
    assert data["settings"]["lrs"] == {"torch": 1e-3, "sb3": 2.1e-3}
    assert {o["name"]: o["lr"] for o in data["optimizers"]} == {"torch": 1e-3, "sb3": 2.1e-3}
    with pytest.raises(SystemExit):
        main(["compare", *TINY, "--lr", "sbb3=0.1"])
    assert "'sbb3' is not one of" in capsys.readouterr().err
