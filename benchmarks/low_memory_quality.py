"""Does small state still train? Final loss per state_precision on a fixed task.

    .venv/bin/python benchmarks/low_memory_quality.py [--steps 400] [--seeds 3]

The task: a student MLP (256 → 512 → 256 → 1, tanh; 263k parameters, every
weight matrix quantized under "int8") regresses a fixed random teacher of the
same shape on 2,048 inputs whose 256 features have scales spread over three
decades (10^-2 … 10^1), then is scored on 2,048 held-out inputs. The spread
is what low-precision state can get wrong: a weight row's square averages
then span six decades inside one 256-element block, so a codec with too
little range (a linear map for square_avg, or one scale per tensor) stores
the small ones as 0 or coarsely, and those weights take steps of g/ε.

Fixed hyperparameters: PyTorch's RMSprop form, lr 1e-3, α 0.99, ε 1e-8,
momentum 0.9 (so both code maps are exercised), full batch, ``--steps``
steps. Each configuration runs ``--seeds`` seeds (teacher, data and student
all seeded); the score is the mean final test loss.

Rows: fp32 state (the baseline), bf16 state, int8 state, bf16 parameters
with fp32 state and stochastic rounding (against fp32 parameters), and the
same bf16 parameters rounded to nearest. Then the teeth: deliberately
broken codecs, installed in place of :func:`rmsprop.quant.encode` /
:func:`rmsprop.quant.decode`, must miss the 1% goal.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import statistics
import time
from collections.abc import Iterator

import torch
from torch import Tensor

import rmsprop
from rmsprop import quant

WIDTHS = (256, 512, 256, 1)
SAMPLES = 2048
HYPER = dict(lr=1e-4, alpha=0.99, eps=1e-8, momentum=0.9)


def _mlp(seed: int, dtype: torch.dtype = torch.float32) -> torch.nn.Sequential:
    torch.manual_seed(seed)
    layers: list[torch.nn.Module] = []
    for i, (a, b) in enumerate(zip(WIDTHS, WIDTHS[1:])):
        layers.append(torch.nn.Linear(a, b))
        if i < len(WIDTHS) - 2:
            layers.append(torch.nn.Tanh())
    return torch.nn.Sequential(*layers).to(dtype)


def _data(seed: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    g = torch.Generator().manual_seed(1000 + seed)
    scales = torch.logspace(-2, 1, WIDTHS[0])[torch.randperm(WIDTHS[0], generator=g)]
    teacher = _mlp(2000 + seed)
    x = torch.randn(2 * SAMPLES, WIDTHS[0], generator=g) * scales
    with torch.no_grad():
        y = teacher(x / scales)  # the teacher sees normalised inputs; the student must learn the scales
    return x[:SAMPLES], y[:SAMPLES], x[SAMPLES:], y[SAMPLES:]


def final_loss(state_precision: str, *, steps: int, seed: int, param_dtype: torch.dtype = torch.float32,
               stochastic_rounding: bool = False, **path: bool) -> float:
    """Train one student and return its held-out MSE."""
    x, y, x_test, y_test = _data(seed)
    model = _mlp(seed, param_dtype)
    opt = rmsprop.RMSprop(model.parameters(), **HYPER, state_precision=state_precision,
                          stochastic_rounding=stochastic_rounding, rounding_seed=seed, **path)

    def forward(inputs: Tensor) -> Tensor:  # float32 arithmetic whatever the parameters' storage
        weights = {name: p.float() for name, p in model.named_parameters()}
        return torch.func.functional_call(model, weights, (inputs,))

    schedule = torch.optim.lr_scheduler.LambdaLR(opt, lambda t: 1 - t / steps)
    for _ in range(steps):
        loss = torch.nn.functional.mse_loss(forward(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        schedule.step()
    with torch.no_grad():
        out = torch.nn.functional.mse_loss(forward(x_test), y_test).item()
    return out if math.isfinite(out) else math.inf


# ----------------------------------------------------------------- broken codecs
# Each replaces one piece of rmsprop.quant for the eager paths (the fused
# path's compiled code would keep the real codec).
_ENCODE = quant.encode
BROKEN: dict[str, dict[str, object]] = {
    # y = c/255: every v below absmax/255 reads back as absmax/255 or 0, so those weights barely move
    "linear map for square_avg": {"_U_POWER": 1},
    "square-root map for square_avg": {"_U_POWER": 2},  # y = (c/255)²: reaches down to 1.5e-5 only
    "one scale per tensor": {"_pieces": lambda n: [(0, n, n)]},  # a single block
    "round to nearest": {"encode": lambda x, signed, rounding=None: _ENCODE(x, signed)},
}


@contextlib.contextmanager
def broken_codec(name: str) -> Iterator[None]:
    saved = {key: getattr(quant, key) for key in BROKEN[name]}
    for key, value in BROKEN[name].items():
        setattr(quant, key, value)
    try:
        yield
    finally:
        for key, value in saved.items():
            setattr(quant, key, value)


def mean_loss(precision: str, steps: int, seeds: int, **kwargs) -> float:
    return statistics.fmean(final_loss(precision, steps=steps, seed=s, **kwargs) for s in range(seeds))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--seeds", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(min(torch.get_num_threads(), 2))
    n, s = args.steps, args.seeds
    print(f"teacher-student {'-'.join(map(str, WIDTHS))}, {n} steps, {s} seeds, {HYPER}; "
          f"torch {torch.__version__}")
    start = time.perf_counter()
    base = mean_loss("fp32", n, s)
    print(f"{'fp32 state (baseline)':38s} {base:.5f}")

    def row(label: str, loss: float, ref: float, goal: float) -> None:
        rel = (loss - ref) / ref
        verdict = "meets" if abs(rel) <= goal else "misses"
        print(f"{label:38s} {loss:.5f}  {rel:+8.2%}  ({verdict} ±{goal:.0%})")

    row("bf16 state", mean_loss("bf16", n, s), base, 0.01)
    row("int8 state", mean_loss("int8", n, s), base, 0.01)
    bf16 = dict(param_dtype=torch.bfloat16)
    row("bf16 params, stochastic rounding", mean_loss("fp32", n, s, stochastic_rounding=True, **bf16),
        base, 0.02)
    row("bf16 params, round to nearest", mean_loss("fp32", n, s, **bf16), base, 0.02)
    for name in BROKEN:
        with broken_codec(name):
            row(f"int8, broken: {name}", mean_loss("int8", n, s), base, 0.01)
    print(f"({time.perf_counter() - start:.0f} s)")


if __name__ == "__main__":
    main()
