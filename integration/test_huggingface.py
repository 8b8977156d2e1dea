"""rmsprop.RMSprop in Hugging Face's Trainer (transformers 5.23) and Accelerate (1.15), on CPU.

docs/integrations/huggingface.md quotes these tests. The model is a plain torch module that
returns {"loss": ...}, as Trainer accepts; nothing is downloaded.
"""

from __future__ import annotations

import pytest
import torch

import rmsprop

pytest.importorskip("transformers", reason="runs in the integration environment (make integration)")
from accelerate import Accelerator  # noqa: E402
from accelerate.optimizer import AcceleratedOptimizer  # noqa: E402
from transformers import Trainer, TrainingArguments  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning", "ignore::UserWarning")

STEPS_PER_EPOCH = 8


class Regression(torch.nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        # 512 hidden units: the first weight (4,096 elements) is large enough for int8 state
        self.net = torch.nn.Sequential(torch.nn.Linear(8, 512), torch.nn.Tanh(), torch.nn.Linear(512, 1))

    def forward(self, x, labels=None):
        out = self.net(x)
        return {"loss": torch.nn.functional.mse_loss(out, labels), "logits": out}


def dataset(nan_at: int | None = None) -> list[dict]:
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(16 * STEPS_PER_EPOCH, 8, generator=generator)
    y = x[:, :1] * 2 - x[:, 1:2]
    if nan_at is not None:
        x[nan_at] = float("nan")  # one bad sample: the batch that holds it has NaN gradients
    return [{"x": x[i], "labels": y[i]} for i in range(len(x))]


def ours(**knobs):
    return lambda params: rmsprop.RMSprop(params, lr=1e-2, momentum=0.9, **knobs)


def theirs(params):
    return torch.optim.RMSprop(params, lr=1e-2, momentum=0.9)


def train(tmp_path, make_optimizer, steps=2 * STEPS_PER_EPOCH, resume=None, nan_at=None):
    model = Regression()
    optimizer = make_optimizer(model.parameters())
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1 - step / 40)
    args = TrainingArguments(
        output_dir=str(tmp_path), max_steps=steps, per_device_train_batch_size=16, save_steps=STEPS_PER_EPOCH,
        report_to="none", use_cpu=True, seed=0, logging_steps=4, disable_tqdm=True,
    )  # max_grad_norm=1.0 (the default): Trainer clips every gradient before the step
    trainer = Trainer(model=model, args=args, train_dataset=dataset(nan_at),
                      optimizers=(optimizer, scheduler))
    trainer.train(resume_from_checkpoint=resume)
    return model, trainer


def assert_same(a: torch.nn.Module, b: torch.nn.Module) -> None:
    for p, q in zip(a.parameters(), b.parameters()):
        assert torch.equal(p, q), f"differ by {(p - q).abs().max().item():.3g}"


def test_trainer_drop_in_for_torch_rmsprop_bit_for_bit(tmp_path):
    reference, _ = train(tmp_path / "torch", theirs)
    model, trainer = train(tmp_path / "ours", ours())
    assert isinstance(trainer.optimizer, AcceleratedOptimizer)  # Trainer wraps what it is given
    assert type(trainer.optimizer.optimizer) is rmsprop.RMSprop
    assert not torch.equal(model.net[0].weight, Regression().net[0].weight)
    assert_same(model, reference)


@pytest.mark.parametrize("precision", ["param", "int8"])
def test_trainer_resume_from_checkpoint_is_bit_exact(tmp_path, precision):
    straight, _ = train(tmp_path, ours(state_precision=precision))  # saves checkpoint-8 on the way
    resumed, trainer = train(tmp_path, ours(state_precision=precision),
                             resume=str(tmp_path / f"checkpoint-{STEPS_PER_EPOCH}"))
    assert trainer.state.global_step == 2 * STEPS_PER_EPOCH
    stored = {t.dtype for s in trainer.optimizer.optimizer.state_dict()["state"].values() for t in s.values()}
    assert (torch.uint8 in stored) == (precision == "int8")
    assert_same(straight, resumed)


def test_trainer_nan_batch_is_skipped_where_torch_rmsprop_ends_nan(tmp_path):
    model, trainer = train(tmp_path / "ours", ours(nonfinite="skip"), steps=STEPS_PER_EPOCH, nan_at=5)
    assert trainer.optimizer.optimizer.skipped_steps == 1
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert not torch.equal(model.net[0].weight, Regression().net[0].weight)
    reference, _ = train(tmp_path / "torch", theirs, steps=STEPS_PER_EPOCH, nan_at=5)
    assert all(torch.isnan(p).all() for p in reference.parameters())


def accelerated(precision: str):
    accelerator = Accelerator(cpu=True)
    model = Regression()
    model, optimizer = accelerator.prepare(model, ours(state_precision=precision)(model.parameters()))
    return accelerator, model, optimizer


def steps(accelerator, model, optimizer, batches) -> None:
    for x in batches:
        optimizer.zero_grad()
        accelerator.backward(model.net(x).pow(2).mean())
        optimizer.step()


@pytest.mark.parametrize("precision", ["param", "bf16", "int8"])
def test_accelerate_save_state_load_state_round_trip(tmp_path, precision):
    batches = torch.randn(8, 16, 8, generator=torch.Generator().manual_seed(2))
    accelerator, model, optimizer = accelerated(precision)
    assert isinstance(optimizer, AcceleratedOptimizer) and type(optimizer.optimizer) is rmsprop.RMSprop
    steps(accelerator, model, optimizer, batches[:4])
    accelerator.save_state(str(tmp_path))
    steps(accelerator, model, optimizer, batches[4:])  # uninterrupted
    accelerator2, model2, optimizer2 = accelerated(precision)
    accelerator2.load_state(str(tmp_path))
    assert optimizer2.optimizer.param_groups[0]["state_precision"] == precision
    steps(accelerator2, model2, optimizer2, batches[4:])
    assert_same(model, model2)
    a, b = optimizer.optimizer.state_dict()["state"], optimizer2.optimizer.state_dict()["state"]
    for sa, sb in zip(a.values(), b.values()):
        assert sa.keys() == sb.keys()
        for key in sa:
            assert torch.equal(sa[key], sb[key]), key
