"""Time one optimizer step of each path against torch.optim.RMSprop on this machine.

Usage: python benchmarks/bench_paths.py [--repeats N]

Prints the median time per step (ms) over interleaved repeats, and each
path's ratio to torch's for-loop measured in the same run (the machines here
are shared and noisy: compare ratios, not absolute times). This is what
``foreach=None`` is decided from on CPU.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time

import torch

import rmsprop

WORKLOADS = {
    # name: list of parameter shapes
    "rl-small (5 tensors, ~5k params)": [(64, 8), (64,), (64, 64), (64,), (4, 64)],
    "mlp (16 tensors, 4M params)": [(512, 512)] * 8 + [(512,)] * 8 + [],
    "large (16 tensors, 32M params)": [(2048, 1024)] * 16,
}
CONFIGS = {"plain": {}, "centered+momentum": {"centered": True, "momentum": 0.9}}
IMPLS = {
    "torch forloop": (torch.optim.RMSprop, {"foreach": False}),
    "torch foreach": (torch.optim.RMSprop, {"foreach": True}),
    "rmsprop reference": (rmsprop.RMSprop, {"foreach": False}),
    "rmsprop foreach": (rmsprop.RMSprop, {"foreach": True}),
}


def time_steps(opt: torch.optim.Optimizer, steps: int) -> float:
    for _ in range(3):  # state allocation and first-touch page faults are not a step
        opt.step()
    start = time.perf_counter()
    for _ in range(steps):
        opt.step()
    return (time.perf_counter() - start) / steps


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--only", default=None, help="run only workloads whose name contains this")
    args = parser.parse_args()
    print(f"# {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, "
          f"torch {torch.__version__}")
    for wname, shapes in WORKLOADS.items():
        if args.only and args.only not in wname:
            continue
        numel = sum(torch.Size(s).numel() for s in shapes)
        steps = max(10, min(200, int(4e8 // max(numel, 1) // 20)))
        for cname, knobs in CONFIGS.items():
            optimizers = {}
            for iname, (cls, extra) in IMPLS.items():
                params = [torch.nn.Parameter(torch.randn(s)) for s in shapes]
                for p in params:
                    p.grad = torch.randn_like(p)
                optimizers[iname] = cls(params, lr=1e-3, **knobs, **extra)
            times: dict[str, list[float]] = {name: [] for name in IMPLS}
            for _ in range(args.repeats):  # interleaved, so drift hits every impl alike
                for iname, opt in optimizers.items():
                    times[iname].append(time_steps(opt, steps))
            base = statistics.median(times["torch forloop"])
            print(f"\n{wname}, {cname}  ({steps} steps x {args.repeats} repeats)")
            for iname, ts in times.items():
                med = statistics.median(ts)
                print(f"  {iname:20s} {med * 1e3:9.3f} ms/step   x{med / base:5.2f} of torch forloop")


if __name__ == "__main__":
    main()
