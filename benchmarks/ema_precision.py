"""How precisely must the weights' average be stored? An EMA kept at each precision, against float64.

    .venv/bin/python benchmarks/ema_precision.py [--steps 2000] [--seed 0]

The trajectory: a student MLP (32 → 128 → 128 → 1, tanh; 21k parameters)
regresses a fixed random teacher on minibatches of 64 drawn from 4,096
inputs, trained with ``rmsprop.RMSprop`` (PyTorch's form, lr 1e-3, α 0.99)
for ``--steps`` steps, so the weights keep moving with the minibatch noise,
which is what an average is for. Along it, the average of line (16)
(e ← e + w·(θ − e), w = 1 at step 1, then 1 − δ) runs for δ = 0.99, 0.999
and 0.9999, the same float32 weights feeding every copy, stored as:

- float64: the truth;
- float32: what ``RMSprop(ema_decay=δ)`` keeps (checked bit for bit against
  the optimizer's own ``state["ema"]`` for δ = 0.999 on the way);
- bfloat16 rounded to nearest, and bfloat16 rounded stochastically (as
  timm's ``ModelEmaV3`` does for a bfloat16 average;
  :func:`rmsprop.precision.stochastic_round_`);
- 8-bit block-wise (:func:`rmsprop.quant.encode` / ``decode``, the signed
  map, per tensor), to nearest and stochastically.

Each low-precision copy is read back to float32, moved by (16) in float32 and
stored again, every step. The table gives, at the end, ‖e − e₆₄‖ against
three sizes: ‖e₆₄‖ (the relative error of the weights one would evaluate),
‖e₆₄ − θ₁‖ (how far the average travelled since it started: 1 means a copy
that never moved), and ‖θ − e₆₄‖ (how far the average is from the raw
weights: the difference the average is kept for; 1 or more means the
stored average is no better an average than the raw weights are).
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Sequence

import torch
from torch import Tensor

import rmsprop
from rmsprop import quant
from rmsprop.precision import stochastic_round_

WIDTHS = (32, 128, 128, 1)
SAMPLES, BATCH = 4096, 64
DECAYS = (0.99, 0.999, 0.9999)
CHECKED = 0.999  # the δ whose float32 copy must equal the optimizer's own average
FORMS = ("float64", "float32", "bfloat16, to nearest", "bfloat16, stochastic", "8-bit block-wise, to nearest",
         "8-bit block-wise, stochastic")


def _mlp(seed: int) -> torch.nn.Sequential:
    torch.manual_seed(seed)
    layers: list[torch.nn.Module] = []
    for i, (a, b) in enumerate(zip(WIDTHS, WIDTHS[1:])):
        layers.append(torch.nn.Linear(a, b))
        if i < len(WIDTHS) - 2:
            layers.append(torch.nn.Tanh())
    return torch.nn.Sequential(*layers)


class Average:
    """One δ's average of every parameter, stored in one form."""

    def __init__(self, form: str, decay: float, salt: int) -> None:
        self.form, self.decay, self.salt = form, decay, salt
        self.stored: list[Tensor | quant.Blockwise] = []

    def read(self, i: int) -> Tensor:
        buf = self.stored[i]
        if isinstance(buf, quant.Blockwise):
            return quant.decode(buf)
        return buf.float() if buf.dtype == torch.bfloat16 else buf

    def update(self, params: Sequence[Tensor], t: int) -> None:
        """Line (16) after step ``t`` (counted from 1)."""
        if t == 1:  # the average starts from the weights after the first step
            self.stored = [self._store(p.detach().clone(), t, i) for i, p in enumerate(params)]
            return
        for i, p in enumerate(params):
            e = self.read(i)
            self.stored[i] = self._store(torch.lerp(e, p.detach().to(e.dtype), 1.0 - self.decay), t, i)

    def _store(self, value: Tensor, t: int, i: int) -> Tensor | quant.Blockwise:
        step, salt = torch.tensor(t), self.salt * 64 + i
        if self.form == "float64":
            return value.double()
        if self.form == "float32":
            return value
        if self.form == "bfloat16, to nearest":
            return value.to(torch.bfloat16)
        if self.form == "bfloat16, stochastic":
            out = torch.empty_like(value, dtype=torch.bfloat16)
            stochastic_round_(out, value, 0x5EED, step, salt)
            return out
        if self.form == "8-bit block-wise, to nearest":
            return quant.encode(value, signed=True)
        assert self.form == "8-bit block-wise, stochastic", self.form
        return quant.encode(value, signed=True, rounding=(step, salt))


def _flat(tensors: Sequence[Tensor]) -> Tensor:
    return torch.cat([t.detach().reshape(-1).double() for t in tensors])


def run(steps: int, seed: int) -> dict[float, dict[str, tuple[float, float, float]]]:
    """Train once, averaging along the way; per δ and form, the three relative errors."""
    torch.set_num_threads(1)  # small tensors: threads only contend on a shared machine
    g = torch.Generator().manual_seed(1000 + seed)
    teacher, student = _mlp(2000 + seed), _mlp(seed)
    x = torch.randn(SAMPLES, WIDTHS[0], generator=g)
    with torch.no_grad():
        y = teacher(x)
    params = list(student.parameters())
    opt = rmsprop.RMSprop(params, lr=1e-3, alpha=0.99, ema_decay=CHECKED)
    averages = {d: [Average(form, d, salt) for salt, form in enumerate(FORMS)] for d in DECAYS}
    start: dict[float, Tensor] = {}
    for t in range(1, steps + 1):
        batch = torch.randint(SAMPLES, (BATCH,), generator=g)
        loss = torch.nn.functional.mse_loss(student(x[batch]), y[batch])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        for d in DECAYS:
            for avg in averages[d]:
                avg.update(params, t)
        if t == 1:
            start = {d: _flat(params) for d in DECAYS}
    mine = averages[CHECKED][FORMS.index("float32")]
    assert all(torch.equal(opt.state[p]["ema"], mine.read(i)) for i, p in enumerate(params)), \
        "the float32 copy is not what RMSprop(ema_decay=...) keeps"
    theta = _flat(params)
    out: dict[float, dict[str, tuple[float, float, float]]] = {}
    for d in DECAYS:
        n = len(params)
        truth = _flat([averages[d][0].read(i) for i in range(n)])
        sizes = (truth.norm(), (truth - start[d]).norm(), (theta - truth).norm())
        out[d] = {}
        for avg in averages[d][1:]:
            err = (_flat([avg.read(i) for i in range(n)]) - truth).norm()
            rel, travel, gap = (float(err / size) for size in sizes)
            out[d][avg.form] = (rel, travel, gap)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=2000)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    table = run(args.steps, args.seed)
    weights = sum(p.numel() for p in _mlp(0).parameters())
    print(f"EMA storage precision: {weights:,} weights, {args.steps} steps, seed {args.seed}; "
          f"‖e − e₆₄‖ at the end divided by each size ({time.perf_counter() - t0:.0f} s)\n")
    print("| δ | stored as | ÷ ‖e₆₄‖ | ÷ ‖e₆₄ − θ₁‖ (travel) | ÷ ‖θ − e₆₄‖ (to the raw weights) |")
    print("|---|---|---|---|---|")
    for d, rows in table.items():
        for form, (rel, travel, gap) in rows.items():
            print(f"| {d:g} | {form} | {rel:.1e} | {travel:.1e} | {gap:.1e} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
