"""rmsprop.integrations.timm against timm 1.0.31's real optimizer factory and RMSpropTF.

docs/integrations/timm.md quotes these tests. The models run in float64 (agreement to rounding,
rtol 1e-12, Lookahead included) and in float32 (bit for bit: the "timm" preset follows
RMSpropTF's order of operations; the parity goldens, tests/test_parity.py, check it too).
"""

from __future__ import annotations

import copy
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import ROOT

import rmsprop
from rmsprop.integrations.timm import NAMES, register

timm = pytest.importorskip("timm", reason="runs in the integration environment (make integration)")
from timm.optim import create_optimizer_v2  # noqa: E402
from timm.optim._optim_factory import OptimInfo, OptimizerRegistry  # noqa: E402
from timm.optim.lookahead import Lookahead  # noqa: E402
from timm.optim.rmsprop_tf import RMSpropTF  # noqa: E402

register()

ARGS = {"lr": 1e-2, "weight_decay": 1e-4, "momentum": 0.9}
THEIRS = {name: theirs for name, (theirs, _) in NAMES.items()}


def model(dtype=torch.float32) -> torch.nn.Module:
    """timm's own test network (convolutions, batch norm, biases): 100k parameters, random init."""
    torch.manual_seed(0)
    return timm.create_model("test_efficientnet", num_classes=3).to(dtype)


def train(net: torch.nn.Module, opt: torch.optim.Optimizer, steps: int, seed: int = 1) -> None:
    generator = torch.Generator().manual_seed(seed)
    dtype = next(net.parameters()).dtype
    for _ in range(steps):
        x = torch.randn(4, 3, 32, 32, generator=generator, dtype=dtype)
        y = torch.randint(0, 3, (4,), generator=generator)
        opt.zero_grad()
        torch.nn.functional.cross_entropy(net(x), y).backward()
        opt.step()


def base(opt: torch.optim.Optimizer) -> torch.optim.Optimizer:
    return opt._base_optimizer if isinstance(opt, Lookahead) else opt


@pytest.mark.parametrize("name", list(NAMES))
def test_registry_builds_ours_with_timms_groups_and_hyperparameters(name):
    net = model()
    ours = create_optimizer_v2(net, opt=name, **ARGS)
    theirs = create_optimizer_v2(net, opt=THEIRS[name], **ARGS)
    assert type(ours) is rmsprop.RMSprop
    assert ours.param_groups[0]["preset"] == NAMES[name][1]["preset"]
    assert len(ours.param_groups) == len(theirs.param_groups) == 2  # decayed, and biases/norms without
    decoupled = "decoupled_decay" in theirs.param_groups[0]
    for g, t in zip(ours.param_groups, theirs.param_groups):
        assert [id(p) for p in g["params"]] == [id(p) for p in t["params"]]
        for key in ("lr", "weight_decay", "alpha", "eps", "momentum", "centered"):
            assert g[key] == t[key], key
        if decoupled:
            assert g["decoupled_weight_decay"] == t["decoupled_decay"]
    assert {g["weight_decay"] for g in ours.param_groups} == {0.0, ARGS["weight_decay"]}


@pytest.mark.parametrize("name", ["rmsproptfx", "rmsproptfwx", "lookahead_rmsproptfx"])
def test_float64_steps_equal_timms_rmsproptf(name):
    net = model(torch.float64)
    twin = copy.deepcopy(net)
    ours = create_optimizer_v2(net, opt=name, **ARGS)
    theirs = create_optimizer_v2(twin, opt=name.removesuffix("x"), **ARGS)
    assert type(base(ours)) is rmsprop.RMSprop and type(base(theirs)) is RMSpropTF
    assert isinstance(ours, Lookahead) == name.startswith("lookahead_")
    start = [p.detach().clone() for p in net.parameters()]
    train(net, ours, 8)
    train(twin, theirs, 8)
    moved = 0
    for p, q, p0 in zip(net.parameters(), twin.parameters(), start):
        torch.testing.assert_close(p, q, rtol=1e-12, atol=0)
        moved += int(not torch.equal(p, p0))
    assert moved == len(start)  # every parameter took steps: the comparison is not of two idle models


def test_rmspropx_is_timms_rmsprop_bit_for_bit():
    # timm's "rmsprop" is torch.optim.RMSprop with alpha 0.9; ours, in float32, to the bit.
    net = model()
    twin = copy.deepcopy(net)
    ours = create_optimizer_v2(net, opt="rmspropx", **ARGS)
    theirs = create_optimizer_v2(twin, opt="rmsprop", **ARGS)
    assert type(theirs) is torch.optim.RMSprop
    train(net, ours, 8)
    train(twin, theirs, 8)
    for p, q in zip(net.parameters(), twin.parameters()):
        assert torch.equal(p, q)


def test_state_dict_round_trip_resumes_bit_exactly():
    net = model()
    opt = create_optimizer_v2(net, opt="rmsproptfx", **ARGS)
    train(net, opt, 3)
    saved = copy.deepcopy((net.state_dict(), opt.state_dict()))
    train(net, opt, 3, seed=2)  # uninterrupted
    again = model()
    again.load_state_dict(saved[0])
    resumed = create_optimizer_v2(again, opt="rmsproptfx", **ARGS)
    resumed.load_state_dict(saved[1])
    train(again, resumed, 3, seed=2)
    for p, q in zip(net.parameters(), again.parameters()):
        assert torch.equal(p, q)


def test_a_timm_rmsproptf_checkpoint_continues_in_ours():
    # A model trained with timm's RMSpropTF, its optimizer state loaded into rmsproptfx.
    net = model(torch.float64)
    theirs = create_optimizer_v2(net, opt="rmsproptf", **ARGS)
    train(net, theirs, 3)
    twin = copy.deepcopy(net)
    ours = create_optimizer_v2(twin, opt="rmsproptfx", **ARGS)
    ours.load_state_dict(copy.deepcopy(theirs.state_dict()))
    assert ours.param_groups[0]["preset"] == "timm"
    train(net, theirs, 3, seed=2)
    train(twin, ours, 3, seed=2)
    for p, q in zip(net.parameters(), twin.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-12, atol=0)


def test_register_is_idempotent_and_refuses_what_it_cannot_do():
    assert register() == list(NAMES)
    assert register(["RMSpropTFx"]) == ["rmsproptfx"]
    with pytest.raises(ValueError, match="unknown"):
        register(["rmsprop_ours"])
    registry = OptimizerRegistry()
    registry.register(OptimInfo(name="rmsproptfx", opt_class=RMSpropTF))
    with pytest.raises(ValueError, match="already holds 'rmsproptfx'"):
        register(registry=registry)
    assert registry.list_optimizers() == ["rmsproptfx"]  # decided before writing: nothing added
    assert register(["rmspropx"], registry=registry) == ["rmspropx"]
    assert registry.get_optimizer_info("rmspropx").opt_class is rmsprop.RMSprop


def test_train_py_wrapper_from_the_docs_builds_ours(tmp_path):
    """The page's wrapper, run as a script around a stand-in for timm's train.py that reads
    --opt and builds the optimizer as train.py does (timm.optim.create_optimizer_v2)."""
    page = (ROOT / "docs" / "integrations" / "timm.md").read_text()
    blocks = [b.split("```")[0] for b in page.split("```py\n")[1:]]  # shown, not run by the docs test
    wrapper = next(b for b in blocks if b.startswith("# timm_train.py"))
    (tmp_path / "timm_train.py").write_text(wrapper)
    (tmp_path / "train.py").write_text(
        "import argparse, torch, timm.optim\n"
        "p = argparse.ArgumentParser(); p.add_argument('--opt'); p.add_argument('--lr', type=float)\n"
        "args = p.parse_args()\n"
        "opt = timm.optim.create_optimizer_v2(torch.nn.Linear(2, 1), opt=args.opt, lr=args.lr)\n"
        "print(type(opt).__module__, type(opt).__name__, opt.param_groups[0]['preset'])\n"
    )
    # The stand-in torchvision (conftest.py) loads first through a sitecustomize, as timm needs it.
    (tmp_path / "sitecustomize.py").write_text(
        f"import sys\nsys.path.insert(0, {str(Path(__file__).parent)!r})\nimport conftest\n"
    )
    done = subprocess.run(
        [sys.executable, "timm_train.py", "train.py", "--opt", "rmsproptfx", "--lr", "0.016"],
        cwd=tmp_path, capture_output=True, text=True, env={"PYTHONPATH": str(tmp_path)}, check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["rmsprop.optimizer", "RMSprop", "timm"]


@pytest.mark.parametrize("name", ["rmsproptfx", "rmsproptfwx"])
def test_float32_steps_equal_timms_rmsproptf_bit_for_bit(name):
    # The "timm" preset follows RMSpropTF's order of operations (op_order="tf"), so the float32
    # bits agree too; the parity goldens check the same on their own problems.
    net = model()
    twin = copy.deepcopy(net)
    ours = create_optimizer_v2(net, opt=name, **ARGS)
    theirs = create_optimizer_v2(twin, opt=name.removesuffix("x"), **ARGS)
    train(net, ours, 8)
    train(twin, theirs, 8)
    for p, q in zip(net.parameters(), twin.parameters()):
        assert torch.equal(p, q), f"differ by {(p - q).abs().max().item():.3g}"
