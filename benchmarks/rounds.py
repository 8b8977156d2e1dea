"""Timing shared by the benchmark scripts: optimizers stepped in interleaved rounds.

The machine is shared and noisy, so every optimizer of a comparison steps in
the same rounds, one after another, and each is scored by the lower quartile
of its rounds: ratios measured in one run, never single timings.
"""

from __future__ import annotations

import math
import statistics
import time

import torch


def lower_quartiles(opts: dict[str, torch.optim.Optimizer], rounds: int, steps: int = 3,
                    faults: dict[str, float] | None = None) -> dict[str, float]:
    """Seconds per ``step()`` of each optimizer: ``rounds`` interleaved rounds
    of ``steps`` steps each, the lower quartile over the rounds. With a
    ``faults`` dict, each optimizer's median minor page faults per step (memory
    the process maps afresh: each fault is a 4 KiB page the kernel hands over
    zeroed) are written into it."""
    times: dict[str, list[float]] = {k: [] for k in opts}
    counts: dict[str, list[float]] = {k: [] for k in opts}
    for _ in range(rounds):
        for key, opt in opts.items():
            before = _minor_faults()
            start = time.perf_counter()
            for _ in range(steps):
                opt.step()
            times[key].append((time.perf_counter() - start) / steps)
            counts[key].append((_minor_faults() - before) / steps)
    if faults is not None:
        faults.update({k: statistics.median(v) for k, v in counts.items()})
    return {k: sorted(v)[len(v) // 4] for k, v in times.items()}


def _minor_faults() -> float:
    """The process's minor page faults so far (NaN where the OS does not say)."""
    try:
        import resource
    except ImportError:  # not on Windows
        return math.nan
    return float(resource.getrusage(resource.RUSAGE_SELF).ru_minflt)
