"""What planning a step costs on a small model: the RL MLP's step (4,996
parameters in 6 tensors, PyTorch's defaults, our default path), this checkout
against another one, in interleaved rounds of separate processes.

    python benchmarks/plan_overhead.py --other /path/to/an/older/checkout/src

Each round runs one process per checkout (alternating which goes first); a
process times ``--steps`` steps after a warm-up and prints µs per step. The
machine is shared and noisy, so the figure to quote is the ratio of the
medians over the rounds, with its spread. ``--inner`` times one checkout
in-process (what each round runs).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time


def inner(steps: int) -> float:
    import torch

    import rmsprop
    from rmsprop.bench.workloads import rl_mlp_shapes

    torch.set_num_threads(1)
    gen = torch.Generator().manual_seed(0)
    params = [torch.nn.Parameter(torch.randn(shape, generator=gen)) for shape in rl_mlp_shapes()]
    for p in params:
        p.grad = torch.randn(p.shape, generator=gen)
    opt = rmsprop.RMSprop(params, lr=1e-4)
    for _ in range(200):
        opt.step()
    times = []
    for _ in range(7):
        start = time.process_time()  # CPU time: a descheduled process is not charged
        for _ in range(steps):
            opt.step()
        times.append((time.process_time() - start) / steps)
    return sorted(times)[1] * 1e6  # a low order statistic of 7 blocks


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--other", help="the src/ folder of the checkout to compare with")
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--steps", type=int, default=500)
    parser.add_argument("--inner", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.inner:
        print(json.dumps(inner(args.steps)))
        return
    here = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "src")
    checkouts = {"this": here, "other": args.other}
    results: dict[str, list[float]] = {k: [] for k in checkouts}
    for r in range(args.rounds):
        order = list(checkouts) if r % 2 == 0 else list(reversed(checkouts))
        for key in order:
            env = {**os.environ, "PYTHONPATH": checkouts[key], "OMP_NUM_THREADS": "1"}
            out = subprocess.run([sys.executable, __file__, "--inner", "--steps", str(args.steps)],
                                 env=env, capture_output=True, text=True, check=True)
            results[key].append(json.loads(out.stdout))
    med = {k: statistics.median(v) for k, v in results.items()}
    ratios = sorted(a / b for a, b in zip(results["this"], results["other"]))
    for key, values in results.items():
        print(f"{key:6s} median {med[key]:7.1f} µs/step  (rounds: {', '.join(f'{x:.1f}' for x in values)})")
    print(f"this / other: {med['this'] / med['other']:.3f} (per-round ratios {ratios[0]:.3f}–{ratios[-1]:.3f})")


if __name__ == "__main__":
    main()
