"""EfficientNet / MobileNet training recipe with TF-style RMSProp, on a small network and synthetic images.

The recipe is Google's for EfficientNet (tensorflow/tpu models/official/efficientnet: main.py
flags and utils.build_optimizer), which MobileNetV2/V3 and MnasNet share apart from the
numbers; timm reproduces it with `--opt rmsproptf --opt-eps .001`:

- tf.compat.v1.train.RMSPropOptimizer(lr, decay=0.9, momentum=0.9, epsilon=0.001): the
  accumulator starts at 1, eps sits inside the square root and lr inside the momentum
  buffer. Here: rmsprop.RMSprop(preset="tf1", alpha=0.9, momentum=0.9, eps=1e-3).
  (preset="timm" is the same update; PyTorch's own RMSprop with these numbers is not:
  eps=1e-3 outside the root of an accumulator that starts at 0 takes far larger first steps.)
- lr = 0.016 per 256 images (base_learning_rate, scaled by batch/256), warmed up linearly
  from 0 over 5 epochs, then multiplied by 0.97 every 2.4 epochs (staircase).
- weight decay 1e-5 as an L2 term in the loss, on every variable except batch norm's:
  TF adds 1e-5 * sum(w^2)/2, whose gradient 1e-5 * w is weight_decay=1e-5 in the L2 form.
- label smoothing 0.1; batch norm momentum 0.99 (PyTorch: momentum=0.01), epsilon 1e-3;
  an exponential moving average of the weights, decay 0.9999, evaluated instead of the weights
  (TF's ExponentialMovingAverage with num_updates: decay min(0.9999, (1 + t)/(10 + t))).

The network is EfficientNet-shaped (stem, MBConv blocks with depthwise convolutions,
squeeze-and-excitation and SiLU, 1x1 head), a few thousand times smaller than B0, and the
data are synthetic 32x32 images (a fixed random template per class plus noise), so the
whole recipe runs on a CPU in seconds. "Epoch" means one pass over those images.

    python examples/efficientnet_tf_rmsprop.py [--steps 150] [--batch-size 64]
"""

from __future__ import annotations

import argparse
import math
from statistics import mean

import torch
from torch import nn

import rmsprop

# The recipe (tensorflow/tpu models/official/efficientnet).
BASE_LR_PER_256 = 0.016
DECAY, MOMENTUM, EPSILON = 0.9, 0.9, 1e-3
WARMUP_EPOCHS = 5
LR_DECAY_FACTOR, LR_DECAY_EPOCHS = 0.97, 2.4
WEIGHT_DECAY = 1e-5
LABEL_SMOOTHING = 0.1
BN_MOMENTUM_TF, BN_EPSILON = 0.99, 1e-3
EMA_DECAY = 0.9999

CLASSES, IMAGES, HELD_OUT, SIZE = 10, 640, 320, 32


def batch_norm(channels: int) -> nn.BatchNorm2d:
    """TF's momentum 0.99 (the running average keeps 0.99) is PyTorch's momentum 0.01."""
    return nn.BatchNorm2d(channels, momentum=1 - BN_MOMENTUM_TF, eps=BN_EPSILON)


class MBConv(nn.Module):
    """Inverted residual: 1x1 expand, depthwise kxk, squeeze-and-excitation, 1x1 project."""

    def __init__(self, cin: int, cout: int, expand: int, stride: int):
        super().__init__()
        mid = cin * expand
        self.expand = nn.Sequential(nn.Conv2d(cin, mid, 1, bias=False), batch_norm(mid), nn.SiLU())
        self.depthwise = nn.Sequential(nn.Conv2d(mid, mid, 3, stride, 1, groups=mid, bias=False),
                                       batch_norm(mid), nn.SiLU())
        self.se = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(mid, max(1, cin // 4), 1), nn.SiLU(),
                                nn.Conv2d(max(1, cin // 4), mid, 1), nn.Sigmoid())
        self.project = nn.Sequential(nn.Conv2d(mid, cout, 1, bias=False), batch_norm(cout))
        self.residual = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.depthwise(self.expand(x))
        h = self.project(h * self.se(h))
        return x + h if self.residual else h


def tiny_efficientnet() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(3, 16, 3, 2, 1, bias=False), batch_norm(16), nn.SiLU(),
        MBConv(16, 16, 1, 1), MBConv(16, 24, 4, 2), MBConv(24, 24, 4, 1), MBConv(24, 40, 4, 2),
        nn.Conv2d(40, 96, 1, bias=False), batch_norm(96), nn.SiLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(0.2), nn.Linear(96, CLASSES),
    )


def synthetic_images(seed: int = 0) -> tuple[torch.Tensor, ...]:
    """Per class a smooth random template; each image is its class's template plus noise.
    Returns training images and labels, then held-out ones (same templates, new noise)."""
    g = torch.Generator().manual_seed(seed)
    templates = nn.functional.interpolate(torch.randn(CLASSES, 3, 4, 4, generator=g), size=SIZE,
                                          mode="bilinear", align_corners=False)
    labels = torch.arange(IMAGES + HELD_OUT) % CLASSES
    images = templates[labels] + 1.5 * torch.randn(len(labels), 3, SIZE, SIZE, generator=g)
    return images[:IMAGES], labels[:IMAGES], images[IMAGES:], labels[IMAGES:]


def optimizer_for(model: nn.Module, batch_size: int) -> rmsprop.RMSprop:
    """TF1's RMSProp with the recipe's numbers; L2 decay on all but batch norm's parameters."""
    norm = {id(p) for m in model.modules() if isinstance(m, nn.BatchNorm2d) for p in m.parameters()}
    decayed = [p for p in model.parameters() if id(p) not in norm]
    not_decayed = [p for p in model.parameters() if id(p) in norm]
    return rmsprop.RMSprop(
        [{"params": decayed, "weight_decay": WEIGHT_DECAY}, {"params": not_decayed, "weight_decay": 0.0}],
        lr=BASE_LR_PER_256 * batch_size / 256, preset="tf1", alpha=DECAY, momentum=MOMENTUM, eps=EPSILON)


def lr_factor(step: int, steps_per_epoch: int) -> float:
    """utils.build_learning_rate: linear warmup from 0, then 0.97 every 2.4 epochs (staircase)."""
    warmup = int(WARMUP_EPOCHS * steps_per_epoch)
    if step < warmup:
        return step / warmup
    return LR_DECAY_FACTOR ** math.floor(step / (LR_DECAY_EPOCHS * steps_per_epoch))


@torch.no_grad()
def update_ema(ema: nn.Module, model: nn.Module, step: int) -> None:
    decay = min(EMA_DECAY, (1 + step) / (10 + step))
    for e, p in zip(ema.state_dict().values(), model.state_dict().values()):
        if e.dtype.is_floating_point:
            e.mul_(decay).add_(p, alpha=1 - decay)
        else:
            e.copy_(p)  # batch norm's counter


@torch.no_grad()
def recalibrate_batch_norm(model: nn.Module, images: torch.Tensor, batch_size: int) -> None:
    """Recompute batch norm's running statistics as plain averages over ``images``.

    With TF's momentum 0.99 they need thousands of steps to settle; this short run has a
    few hundred, so evaluating with them would measure the lag, not the weights."""
    norms = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative average
    model.train()
    for start in range(0, len(images), batch_size):
        model(images[start:start + batch_size])
    for m in norms:
        m.momentum = 1 - BN_MOMENTUM_TF
    model.eval()


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=150, help="optimizer steps (default: %(default)s)")
    parser.add_argument("--batch-size", type=int, default=64, help="(default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    torch.manual_seed(args.seed)
    images, labels, held_out, held_out_labels = synthetic_images(args.seed)
    model = tiny_efficientnet()
    ema = tiny_efficientnet()
    ema.load_state_dict(model.state_dict())
    opt = optimizer_for(model, args.batch_size)
    steps_per_epoch = IMAGES // args.batch_size
    schedule = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: lr_factor(step, steps_per_epoch))
    loss_fn = nn.CrossEntropyLoss(label_smoothing=LABEL_SMOOTHING)
    print(opt)
    losses, lrs = [], []
    for step in range(args.steps):
        if step % steps_per_epoch == 0:
            order = torch.randperm(IMAGES)
        batch = order[(step % steps_per_epoch) * args.batch_size:][:args.batch_size]
        model.train()
        loss = loss_fn(model(images[batch]), labels[batch])
        opt.zero_grad()
        loss.backward()
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        schedule.step()
        update_ema(ema, model, step)
        losses.append(loss.item())
        if (step + 1) % steps_per_epoch == 0 or step + 1 == args.steps:
            print(f"step {step + 1:4d}  epoch {(step + 1) / steps_per_epoch:5.2f}  lr {lrs[-1]:.5f}  "
                  f"loss {mean(losses[-steps_per_epoch:]):.4f}")
    recalibrate_batch_norm(ema, images, args.batch_size)
    with torch.no_grad():
        accuracy = (ema(held_out).argmax(1) == held_out_labels).float().mean().item()
    print(f"held-out accuracy of the EMA weights after {args.steps} steps: {accuracy:.3f}")
    return {"losses": losses, "lrs": lrs, "ema_accuracy": accuracy, "optimizer": opt}


if __name__ == "__main__":
    main()
