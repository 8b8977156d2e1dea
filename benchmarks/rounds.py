"""Timing shared by the benchmark scripts: optimizers stepped in interleaved rounds.

The machine is shared and noisy, so every optimizer of a comparison steps in
the same rounds, one after another, and each is scored by the lower quartile
of its rounds: ratios measured in one run, never single timings.
"""

from __future__ import annotations

import time

import torch


def lower_quartiles(opts: dict[str, torch.optim.Optimizer], rounds: int, steps: int = 3) -> dict[str, float]:
    """Seconds per ``step()`` of each optimizer: ``rounds`` interleaved rounds
    of ``steps`` steps each, the lower quartile over the rounds."""
    times: dict[str, list[float]] = {k: [] for k in opts}
    for _ in range(rounds):
        for key, opt in opts.items():
            start = time.perf_counter()
            for _ in range(steps):
                opt.step()
            times[key].append((time.perf_counter() - start) / steps)
    return {k: sorted(v)[len(v) // 4] for k, v in times.items()}
