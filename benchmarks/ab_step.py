"""A/B of the fused step between two checkouts: one workload, interleaved rounds of separate processes.

    .venv/bin/python benchmarks/ab_step.py --other /path/to/older/checkout/src rl fp32 '{}' --rounds 5
    .venv/bin/python benchmarks/ab_step.py --other ../old/src 10k fp32 '{"centered": true, "momentum": 0.9}'

Workloads: ``rl`` (the RL MLP), ``resnet`` (ResNet-50's shapes), ``10k``, ``100k``, ``1m``, ``10m``
and ``32m`` (that many fp32 parameters in 16 tensors) and ``4m1`` (2**22 in one tensor); then the
state precision (fp32, bf16, int8) and the knobs as JSON. Each round runs one process per
checkout (alternating which goes first, ``OMP_WAIT_POLICY=PASSIVE``); a process steps
``rmsprop.RMSprop(..., fused=True)`` with two alternating gradient sets, times blocks of steps
lasting about 0.3 s and prints the second-best block's mean step time and its first step
(compiling, or loading from Inductor's cache). The figure to quote is the ratio of the medians,
with the spread of the per-round ratios: on a shared machine a single round can be off by 2x.
``benchmarks/plan_overhead.py`` is the same for the RL net at one thread, in CPU time.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys

INNER = r'''
import json, sys, time, torch
import rmsprop
from rmsprop.bench.workloads import resnet50_shapes, rl_mlp_shapes, split
work, precision, knobs = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
shapes = {"rl": rl_mlp_shapes(), "resnet": resnet50_shapes(), "10k": split(10**4, 16),
          "100k": split(10**5, 16), "1m": split(2**20, 16), "10m": split(10**7, 16),
          "32m": split(2**25, 16), "4m1": [(2**22,)]}[work]
gen = torch.Generator().manual_seed(0)
ps = [torch.nn.Parameter(torch.randn(s, generator=gen)) for s in shapes]
gs = [[torch.randn(s, generator=gen) for s in shapes] for _ in range(2)]
opt = rmsprop.RMSprop(ps, lr=1e-3, fused=True, state_precision=precision, **knobs)
def step(i):
    for p, g in zip(ps, gs[i % 2]):
        p.grad = g
    opt.step()
start = time.perf_counter(); step(0); first = time.perf_counter() - start
for i in range(5):
    step(i)
start = time.perf_counter(); step(0); one = time.perf_counter() - start
reps = max(3, min(3000, int(0.3 / one)))
blocks = []
for _ in range(5):
    start = time.perf_counter()
    for i in range(reps):
        step(i)
    blocks.append((time.perf_counter() - start) / reps)
print(json.dumps({"step": sorted(blocks)[1], "first": first}))
'''


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("workload")
    parser.add_argument("precision", nargs="?", default="fp32")
    parser.add_argument("knobs", nargs="?", default="{}")
    parser.add_argument("--other", required=True, help="the src/ folder of the checkout to compare with")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    here = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "src")
    trees = {"this": here, "other": args.other}
    steps: dict[str, list[float]] = {k: [] for k in trees}
    firsts: dict[str, list[float]] = {k: [] for k in trees}
    for r in range(args.rounds):
        for key in (list(trees) if r % 2 == 0 else list(reversed(trees))):
            env = {**os.environ, "PYTHONPATH": trees[key], "OMP_WAIT_POLICY": "PASSIVE"}
            done = subprocess.run([sys.executable, "-c", INNER, args.workload, args.precision, args.knobs],
                                  env=env, capture_output=True, text=True, check=False)
            if done.returncode:
                raise SystemExit(done.stderr[-2000:])
            result = json.loads(done.stdout.strip().splitlines()[-1])
            steps[key].append(result["step"])
            firsts[key].append(result["first"])
    med = {k: statistics.median(v) for k, v in steps.items()}
    ratios = sorted(a / b for a, b in zip(steps["this"], steps["other"]))
    print(f"{args.workload} {args.precision} {args.knobs}: this {med['this'] * 1e3:.3f} ms, "
          f"other {med['other'] * 1e3:.3f} ms, this/other {med['this'] / med['other']:.3f} "
          f"(rounds {ratios[0]:.3f}-{ratios[-1]:.3f}); first step this "
          f"{statistics.median(firsts['this']):.1f} s, other {statistics.median(firsts['other']):.1f} s")


if __name__ == "__main__":
    main()
