"""rmsprop.RMSprop inside PyTorch Lightning's real Trainer (CPU, a tiny regression model).

docs/integrations/lightning.md quotes these tests. Data are fixed tensors in a fixed order
(no shuffling) and the model starts from a fixed seed, so two fits that compute the same
float32 numbers end with the same parameters, bit for bit.
"""

from __future__ import annotations

import csv
import math

import pytest
import torch

import rmsprop

pl = pytest.importorskip("pytorch_lightning", reason="runs in the integration environment (make integration)")
from pytorch_lightning.callbacks import ModelCheckpoint  # noqa: E402
from pytorch_lightning.loggers import CSVLogger  # noqa: E402

from rmsprop.integrations.lightning import SkippedSteps, skipped_steps  # noqa: E402

BATCHES = 8  # optimizer steps per epoch

# Lightning's own notices: its pytree helper on this torch, and a resumed run writing its
# checkpoints to another folder than the one it resumed from.
pytestmark = pytest.mark.filterwarnings(
    "ignore:.*treespec", "ignore:.*torch.jit.script_method", "ignore:The dirpath has changed"
)


class Regression(pl.LightningModule):
    def __init__(self, make_optimizer, nan_at_step: int | None = None, schedule: bool = True):
        super().__init__()
        torch.manual_seed(0)
        # 512 hidden units: the first weight (4,096 elements) is large enough for int8 state
        self.net = torch.nn.Sequential(torch.nn.Linear(8, 512), torch.nn.Tanh(), torch.nn.Linear(512, 1))
        self.make_optimizer = make_optimizer
        self.nan_at_step = nan_at_step
        self.schedule = schedule

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = torch.nn.functional.mse_loss(self.net(x), y)
        if self.global_step == self.nan_at_step:
            loss = loss * float("nan")  # one bad batch: every gradient of this step is NaN
        self.log("loss", loss)
        return loss

    def configure_optimizers(self):
        optimizer = self.make_optimizer(self.parameters())
        if not self.schedule:
            return optimizer
        scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=0.7)  # per epoch
        return {"optimizer": optimizer, "lr_scheduler": scheduler}


def data() -> torch.utils.data.DataLoader:
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(BATCHES * 16, 8, generator=generator)
    y = x[:, :1] * 2 - x[:, 1:2] + 0.1 * torch.randn(len(x), 1, generator=generator)
    return torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=16, shuffle=False)


def fit(tmp_path, module, epochs: int, ckpt_path=None, **trainer) -> pl.Trainer:
    trainer = pl.Trainer(
        max_epochs=epochs, accelerator="cpu", devices=1, default_root_dir=tmp_path,
        logger=CSVLogger(tmp_path, name="logs"), log_every_n_steps=1,
        enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=True,
        callbacks=[ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True), SkippedSteps()],
        **trainer,
    )
    trainer.fit(module, data(), ckpt_path=ckpt_path)
    return trainer


def ours(**knobs):
    return lambda params: rmsprop.RMSprop(params, lr=1e-2, momentum=0.9, **knobs)


def parameters(module) -> list[torch.Tensor]:
    return [p.detach().clone() for p in module.parameters()]


def logged(trainer, column: str) -> list[float]:
    with open(trainer.logger.experiment.metrics_file_path) as f:
        return [float(row[column]) for row in csv.DictReader(f) if row.get(column)]


@pytest.mark.parametrize("precision", ["32-true", "bf16-mixed"])
def test_drop_in_for_torch_rmsprop_bit_for_bit(tmp_path, precision):
    torch_fit = Regression(lambda p: torch.optim.RMSprop(p, lr=1e-2, momentum=0.9))
    our_fit = Regression(ours())
    fit(tmp_path / "torch", torch_fit, 2, precision=precision)
    fit(tmp_path / "ours", our_fit, 2, precision=precision)
    assert type(our_fit.optimizers().optimizer) is rmsprop.RMSprop
    start = parameters(Regression(ours()))
    for p, q, p0 in zip(our_fit.parameters(), torch_fit.parameters(), start):
        assert p.dtype == torch.float32  # bf16-mixed: bfloat16 compute under autocast, float32 parameters
        assert not torch.equal(p, p0)
        assert torch.equal(p, q)


@pytest.mark.parametrize(
    "knobs",
    [{}, {"state_precision": "bf16"}, {"state_precision": "int8"}, {"preset": "sb3", "centered": True},
     {"fused": True}],
    ids=["param", "bf16", "int8", "sb3-centered", "fused"],
)
def test_ckpt_path_resumes_bit_exactly(tmp_path, knobs):
    uninterrupted = Regression(ours(**knobs))
    fit(tmp_path / "straight", uninterrupted, 4)
    first = Regression(ours(**knobs))
    fit(tmp_path / "halves", first, 2)
    resumed = Regression(ours(**knobs))
    trainer = fit(tmp_path / "resumed", resumed, 4, ckpt_path=tmp_path / "halves" / "ckpt" / "last.ckpt")
    assert trainer.global_step == 4 * BATCHES
    assert resumed.optimizers().optimizer.param_groups[0]["lr"] == pytest.approx(1e-2 * 0.7**4)
    for p, q in zip(resumed.parameters(), uninterrupted.parameters()):
        assert torch.equal(p, q)
    a = uninterrupted.optimizers().optimizer.state_dict()["state"]
    b = resumed.optimizers().optimizer.state_dict()["state"]
    stored = {t.dtype for s in b.values() for k, t in s.items() if k.startswith("square_avg")}
    precision = knobs.get("state_precision", "param")
    assert {"param": torch.float32, "bf16": torch.bfloat16, "int8": torch.uint8}[precision] in stored
    for sa, sb in zip(a.values(), b.values()):
        for key in sa:
            assert torch.equal(sa[key], sb[key]), key


def test_nan_loss_is_skipped_and_logged_where_torch_rmsprop_ends_nan(tmp_path):
    skip = Regression(ours(nonfinite="skip"), nan_at_step=3)
    trainer = fit(tmp_path / "ours", skip, 2)
    assert trainer.global_step == 2 * BATCHES  # a skipped step is still a step for Lightning
    assert all(torch.isfinite(p).all() for p in skip.parameters())
    assert skip.optimizers().optimizer.skipped_steps == 1
    counts = logged(trainer, "skipped_steps")
    assert len(counts) == 2 * BATCHES  # one row per step (log_every_n_steps=1)
    assert counts[:3] == [0.0] * 3 and counts[3:] == [1.0] * (2 * BATCHES - 3)
    assert math.isnan(logged(trainer, "loss")[3])

    plain = Regression(lambda p: torch.optim.RMSprop(p, lr=1e-2, momentum=0.9), nan_at_step=3)
    fit(tmp_path / "torch", plain, 2)
    assert all(torch.isnan(p).all() for p in plain.parameters())

    with pytest.raises(FloatingPointError):
        fit(tmp_path / "raise", Regression(ours(nonfinite="raise"), nan_at_step=3), 2)


def test_skipped_steps_counts_per_optimizer_and_in_total():
    a = rmsprop.RMSprop([torch.zeros(2, requires_grad=True)], nonfinite="skip")
    b = rmsprop.RMSprop([torch.zeros(2, requires_grad=True)], nonfinite="skip")
    a.param_groups[0]["params"][0].grad = torch.full((2,), float("nan"))
    a.step()
    other = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1)
    assert skipped_steps(a) == {"skipped_steps": 1}
    assert skipped_steps([a, other, b]) == {"skipped_steps/0": 1, "skipped_steps/2": 0, "skipped_steps": 1}
    assert skipped_steps([other]) == {}
    with pytest.raises(ValueError, match="every_n_steps"):
        SkippedSteps(every_n_steps=0)
