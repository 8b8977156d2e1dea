"""The recipes in examples/ run (short settings here; `make test-slow` runs them in full) and use the
hyperparameters their docstrings name."""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import pytest
import torch

from rmsprop.cliutil import torch_threads

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def load(name: str):
    spec = importlib.util.spec_from_file_location(f"example_{name}", EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(autouse=True)
def _one_thread(capsys):
    with torch_threads(1):
        yield
    capsys.readouterr()


def test_efficientnet_recipe_is_tf1_rmsprop_with_the_published_numbers():
    example = load("efficientnet_tf_rmsprop")
    result = example.main(["--steps", "3", "--batch-size", "16"])
    decayed, norm = result["optimizer"].param_groups
    for group in (decayed, norm):
        assert group["preset"] == "tf1" and group["initial_square_avg"] == 1.0
        assert group["eps_in_sqrt"] and group["lr_in_momentum"]
        assert (group["alpha"], group["momentum"], group["eps"]) == (0.9, 0.9, 1e-3)
        assert group["initial_lr"] == pytest.approx(0.016 * 16 / 256)
    assert decayed["weight_decay"] == 1e-5 and norm["weight_decay"] == 0.0
    assert all(p.dim() == 1 for p in norm["params"])  # batch norm's weights and biases only
    # Warmup from 0 over 5 epochs (640 images / 16 = 40 steps an epoch): the lr at steps 0, 1, 2.
    assert result["lrs"] == pytest.approx([0.001 * k / 200 for k in range(3)])
    assert len(result["losses"]) == 3 and all(math.isfinite(v) for v in result["losses"])


def test_efficientnet_schedule_is_warmup_then_staircase_decay():
    factor = load("efficientnet_tf_rmsprop").lr_factor
    assert factor(0, 10) == 0 and factor(25, 10) == 0.5
    assert factor(50, 10) == 0.97 ** 2  # step 50 = epoch 5: floor(5 / 2.4) = 2 decays
    assert factor(71, 10) == 0.97 ** 2 and factor(72, 10) == 0.97 ** 3


def test_dqn_recipe_uses_the_dqn_preset_and_learns_from_replay():
    example = load("dqn_toy")
    result = example.main(["--steps", "260"])
    group = result["optimizer"].param_groups[0]
    assert group["preset"] == "dqn" and group["centered"] and group["eps_in_sqrt"]
    assert (group["alpha"], group["eps"]) == (0.95, 0.01)
    assert len(result["losses"]) == 260 - example.LEARN_START
    assert all(math.isfinite(v) for v in result["losses"])


def test_wgan_critic_is_rmsprop_at_5e_5_with_clipped_weights():
    example = load("wgan_critic")
    result = example.main(["--steps", "3"])
    for opt in result["optimizers"]:
        group = opt.param_groups[0]
        assert group["preset"] == "torch" and group["lr"] == 5e-5
    assert len(result["estimates"]) == 3
    assert max(p.abs().max().item() for p in result["critic"].parameters()) <= example.CLIP
    assert any(math.isclose(p.abs().max().item(), example.CLIP, rel_tol=1e-6)  # the clipping bit
               for p in result["critic"].parameters())


@pytest.mark.slow
@pytest.mark.parametrize("name", ["efficientnet_tf_rmsprop", "dqn_toy", "wgan_critic"])
def test_each_recipe_does_its_job_with_default_settings(name):
    result = load(name).main([])
    if name == "efficientnet_tf_rmsprop":
        assert result["ema_accuracy"] > 0.9
    elif name == "dqn_toy":
        assert result["greedy_steps"] == 7  # straight to the end of the chain
    else:
        assert result["mean_gaps"][-1] < 0.5 * result["mean_gaps"][0]
        assert torch.tensor(result["estimates"][-50:]).mean() < torch.tensor(result["estimates"][:50]).mean()
