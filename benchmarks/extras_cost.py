"""What the weights' average and clipping cost on the fused path, against the bytes they add.

    .venv/bin/python benchmarks/extras_cost.py [--numel 33554432 4194304 --rounds 31 --steps 1]

Per size and per base configuration (plain, centered + momentum), six fp32 fused
optimizers over the same 16 tensors' shapes (rows of 1024, so ``agc_clip``'s
units are rows): the plain fused step; ``ema_decay=0.999``; ``max_grad_norm=1.0``;
``nonfinite="skip"``; both of those; ``agc_clip=0.01``. Each is warmed up (state
allocated, compiled, pages touched), then they step in interleaved rounds
(benchmarks/rounds.py's pattern; one step each by default, the order rotating
from round to round). The machine is shared and its memory bandwidth varies
several-fold from second to second, so each variant's time is divided by the
plain step's time in the same round, and the table gives the median of these
paired ratios with their quartiles, beside the median time (ratios, not
single timings).

The byte model: a step is memory traffic. Per fp32 parameter the plain step
reads θ, g, v and writes θ, v (20 B), centered + momentum adds ḡ and b (36 B).
The average e is read and written (+8 B); the global norm, or the non-finite
check, reads every gradient once more (+4 B; both together share that read),
outside the compiled pass. AGC's unit norms need θ and g before the update can
use them, but a unit here is a row of 4 KB: Inductor computes both norms and
the update row by row in one loop nest (read in its generated code), so the
row is still in cache when the update reads it again (+0 B; a 1-D tensor,
one unit of millions of elements, would need +8 B). "byte ratio" is the
variant's bytes over the plain step's: what the variant would cost if it ran
at the plain step's bandwidth.
"""

from __future__ import annotations

import argparse
import gc
import os
import platform
import statistics
import time
from collections.abc import Callable

# Before torch loads OpenMP: on the shared 2-vCPU VM this was measured on, OpenMP's default
# (spin-waiting) made a 4.2M-parameter fused step take 37-77 ms instead of 6 ms, one thread
# or passive waiting alike, and drowned every difference; OMP_WAIT_POLICY=ACTIVE restores it.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402

import rmsprop  # noqa: E402

ROW = 1024
BASES = {"plain": ({}, 20), "centered+momentum": ({"centered": True, "momentum": 0.9}, 36)}
# name: (knobs, bytes per parameter beyond the base step's)
VARIANTS = {
    "fused step": ({}, 0),
    "ema_decay=0.999": ({"ema_decay": 0.999}, 8),
    "max_grad_norm=1": ({"max_grad_norm": 1.0}, 4),
    'nonfinite="skip"': ({"nonfinite": "skip"}, 4),
    "max_grad_norm + skip": ({"max_grad_norm": 1.0, "nonfinite": "skip"}, 4),
    "agc_clip=0.01": ({"agc_clip": 0.01}, 0),  # rows: the norms and the update share one pass
}


def _stepper(numel: int, gen: torch.Generator, **knobs) -> Callable[[], None]:
    """A warmed-up optimizer's step (state allocated, compiled, every page
    touched) that alternates between two sets of gradients: with one constant
    gradient, centered's v − ḡ² would cancel towards subnormal numbers, whose
    arithmetic is far slower on x86 and would time something else."""
    shape = (numel // 16 // ROW, ROW)
    params = [torch.nn.Parameter(torch.randn(shape, generator=gen)) for _ in range(16)]
    grads = [[torch.randn(shape, generator=gen) for _ in params] for _ in range(2)]
    opt = rmsprop.RMSprop(params, lr=1e-3, fused=True, **knobs)
    turn = [0]

    def step() -> None:
        turn[0] ^= 1
        for p, g in zip(params, grads[turn[0]]):
            p.grad = g
        opt.step()

    for _ in range(3):
        step()
    return step


def _rounds(steppers: dict[str, Callable[[], None]], rounds: int, steps: int) -> dict[str, list[float]]:
    """Seconds per step of each stepper in each of ``rounds`` interleaved
    rounds of ``steps`` steps; the order within a round rotates, so that no
    variant always follows the same one."""
    names = list(steppers)
    times: dict[str, list[float]] = {k: [] for k in names}
    for r in range(rounds):
        for key in names[r % len(names):] + names[:r % len(names)]:
            start = time.perf_counter()
            for _ in range(steps):
                steppers[key]()
            times[key].append((time.perf_counter() - start) / steps)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--numel", type=int, nargs="+", default=[2**25])
    parser.add_argument("--rounds", type=int, default=31)
    parser.add_argument("--steps", type=int, default=1, help="steps per variant and round")
    args = parser.parse_args()
    print(f"# {platform.machine()}, {torch.get_num_threads()} threads, OMP_WAIT_POLICY="
          f"{os.environ['OMP_WAIT_POLICY']}, torch {torch.__version__}; "
          f"fused path, fp32, 16 tensors of rows of {ROW}; {args.rounds} rounds of {args.steps} step(s)")
    for numel in args.numel:
        for base, (base_knobs, base_bytes) in BASES.items():
            gen = torch.Generator().manual_seed(0)
            steppers = {name: _stepper(numel, gen, **base_knobs, **knobs)
                        for name, (knobs, _) in VARIANTS.items()}
            times = _rounds(steppers, args.rounds, args.steps)
            plain = times["fused step"]
            print(f"\n{numel / 1e6:.1f}M params, {base} ({base_bytes} B/param)")
            print("| variant | B/param | byte ratio | median ms | measured ratio | quartiles of the ratio |")
            print("|---|---|---|---|---|---|")
            for name, (_, extra) in VARIANTS.items():
                ratios = sorted(t / p for t, p in zip(times[name], plain))  # paired: the same round
                q1, q2, q3 = statistics.quantiles(ratios, n=4)
                print(f"| {name} | {base_bytes + extra} | {(base_bytes + extra) / base_bytes:.2f} | "
                      f"{statistics.median(times[name]) * 1e3:.1f} | {q2:.2f} | {q1:.2f}–{q3:.2f} |")
            del steppers
            gc.collect()


if __name__ == "__main__":
    main()
