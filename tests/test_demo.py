"""Tests for ``rmsprop demo``: the notebook replay, the SGD comparison and the scaling case."""

from __future__ import annotations

import contextlib
import copy
import io
import re
import subprocess
import sys

import pytest
import torch

from rmsprop import RMSPropOptimizer, demo
from rmsprop.cli import main

# Printed by the seed notebook (rmsprop_from_scratch.md, cell 2): the external fact.
NOTEBOOK_PRINTED = ["2.9726", "2.5525", "2.2779", "2.0650", "1.8882",
                    "1.7356", "1.6008", "1.4799", "1.3700", "1.2694"]
EPOCH_LINE = re.compile(r"Epoch (\d+), Loss = (\d+\.\d{4})")


def _run_demo(capsys: pytest.CaptureFixture[str], *argv: str) -> list[str]:
    assert main(["demo", *argv]) == 0
    return capsys.readouterr().out.splitlines()


@pytest.fixture(scope="module")
def default_output() -> str:
    """What ``rmsprop demo`` prints with the default options (run once for the module)."""
    with contextlib.redirect_stdout(io.StringIO()) as out:
        assert main(["demo"]) == 0
    return out.getvalue()


def _epoch_lines(lines: list[str]) -> list[str]:
    return [line for line in lines if line.startswith("Epoch")]


def test_default_losses_match_the_notebook() -> None:
    assert [f"{loss:.4f}" for loss in demo.seed_losses()] == NOTEBOOK_PRINTED


def test_cli_prints_the_notebooks_lines(capsys: pytest.CaptureFixture[str]) -> None:
    epoch_lines = _epoch_lines(_run_demo(capsys))
    matches = [EPOCH_LINE.fullmatch(line) for line in epoch_lines]
    assert all(matches), epoch_lines
    assert [int(m.group(1)) for m in matches] == list(range(1, 11))
    assert [m.group(2) for m in matches] == NOTEBOOK_PRINTED


def _seed_formulas_step(params: list[torch.Tensor], avg_sq_grads: list[torch.Tensor],
                        lr: float, gamma: float, eps: float) -> None:
    """The notebook's RMSPropOptimizer.step, restated independently."""
    for p, avg_sq in zip(params, avg_sq_grads, strict=True):
        g = p.grad
        avg_sq.mul_(gamma).addcmul_(g, g, value=1 - gamma)
        p.data.addcdiv_(g, torch.sqrt(avg_sq + eps), value=-lr)


@pytest.mark.parametrize("seed", [None, 0])
def test_optimizer_follows_the_seed_formulas_exactly(seed: int | None) -> None:
    lr, gamma, eps = 0.01, 0.9, 1e-8
    ours = demo.initial_model(seed)
    reference = copy.deepcopy(ours)
    optimizer = RMSPropOptimizer(ours.parameters(), lr=lr, gamma=gamma, eps=eps)
    ref_params = list(reference.parameters())
    avg_sq_grads = [torch.zeros_like(p) for p in ref_params]
    x, y = demo.notebook_data()
    criterion = torch.nn.MSELoss()
    for _ in range(10):
        optimizer.zero_grad()
        loss = criterion(ours(x), y)
        loss.backward()
        optimizer.step()
        reference.zero_grad()
        ref_loss = criterion(reference(x), y)
        ref_loss.backward()
        _seed_formulas_step(ref_params, avg_sq_grads, lr, gamma, eps)
        assert loss.item() == ref_loss.item()
        for p, q in zip(ours.parameters(), ref_params, strict=True):
            assert torch.equal(p, q)


def test_seed_option_starts_from_pytorchs_random_init(
        capsys: pytest.CaptureFixture[str], default_output: str) -> None:
    torch.manual_seed(0)
    expected = torch.nn.Linear(2, 1)
    model = demo.initial_model(0)
    assert torch.equal(model.weight, expected.weight)
    assert torch.equal(model.bias, expected.bias)
    seeded = _epoch_lines(_run_demo(capsys, "--seed", "0"))
    default = _epoch_lines(default_output.splitlines())
    assert len(seeded) == 10
    assert seeded[0] != default[0]
    assert demo.seed_losses(seed=0)[0] != demo.seed_losses()[0]


def test_sgd_ends_lower_on_one_sample_and_the_demo_says_so(default_output: str) -> None:
    rmsprop, sgd = demo.seed_losses(), demo.sgd_losses()
    assert sgd[0] == rmsprop[0]  # same start
    assert sgd[-1] < rmsprop[-1]
    assert f"{sgd[-1]:.4f}" == "0.2977"
    part2 = default_output.split("== 2.")[1].split("== 3.")[0]
    assert f"final loss: RMSProp {rmsprop[-1]:.4f}, SGD {sgd[-1]:.4f}" in part2
    assert f"SGD ends lower: {sgd[-1]:.4f} vs RMSProp's {rmsprop[-1]:.4f}." in part2


def test_comparison_names_rmsprop_when_sgds_lr_is_unstable(
        capsys: pytest.CaptureFixture[str]) -> None:
    # One sample's MSE Hessian 2 a a^T (a = [1, 2, 1]) has lambda_max 12: SGD diverges above 1/6.
    rmsprop, sgd = demo.seed_losses(lr=0.2), demo.sgd_losses(lr=0.2)
    assert rmsprop[-1] < sgd[-1]
    part2 = "\n".join(_run_demo(capsys, "--lr", "0.2")).split("== 2.")[1].split("== 3.")[0]
    assert f"RMSProp ends lower: {rmsprop[-1]:.4f} vs SGD's {sgd[-1]:.4f}." in part2
    assert "not uniformly better" not in part2


def test_lower_message_follows_the_numbers() -> None:
    assert demo.lower_message("SGD", 2.0, "RMSProp", 1.0).startswith("RMSProp ends lower")
    assert demo.lower_message("SGD", 1.0, "RMSProp", 2.0).startswith("SGD ends lower")
    assert "end level" in demo.lower_message("SGD", 1.00001, "RMSProp", 1.00002)


def test_rmsprop_beats_sgd_at_its_largest_stable_lr_on_badly_scaled_data(
        default_output: str) -> None:
    result = demo.compare_on_badly_scaled_data()
    assert result.sgd_lr < result.stability_limit
    assert result.rmsprop.losses[-1] < result.sgd.losses[-1]
    assert result.best_loss < result.rmsprop.losses[-1]
    out = default_output
    assert f"lr = 0.9 x that = {result.sgd_lr:.4e}" in out
    assert (f"RMSProp ends lower: {result.rmsprop.losses[-1]:.4f} "
            f"vs SGD's {result.sgd.losses[-1]:.4f}") in out


def test_stability_limit_is_where_full_batch_sgd_starts_to_diverge() -> None:
    x, y = demo.badly_scaled_data()
    limit = demo.sgd_stability_limit(x)

    def final_loss(lr: float) -> float:
        model = torch.nn.Linear(2, 1)
        torch.nn.init.zeros_(model.weight)
        torch.nn.init.zeros_(model.bias)
        return demo.train(model, torch.optim.SGD(model.parameters(), lr=lr), x, y, 100)[-1]

    assert final_loss(0.9 * limit) < final_loss(0.0)
    assert final_loss(1.1 * limit) > 1e6 * final_loss(0.0)


def test_help_mentions_every_option() -> None:
    completed = subprocess.run([sys.executable, "-m", "rmsprop", "demo", "--help"],
                               capture_output=True, text=True, check=False)
    assert completed.returncode == 0, completed.stderr
    for option in ("--epochs", "--lr", "--gamma", "--seed"):
        assert option in completed.stdout
    assert "reproduces the notebook" in completed.stdout
