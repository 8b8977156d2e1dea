"""What nonfinite="skip" costs: the step with and without the gradient check.

    .venv/bin/python benchmarks/nonfinite_cost.py [--numel 10000000 --rounds 15]

16 fp32 tensors (10M parameters by default), plain and centered with
momentum, foreach and fused paths. The four optimizers step in interleaved
rounds of three steps; each figure is the lower quartile over the rounds (the
machine is shared: quartiles and same-run ratios, not single timings). The
check is one extra read of the gradients, so the expected cost is about
4 / 20 bytes = 20% of the plain step's traffic and 4 / 36 = 11% of the
centered-with-momentum step's.
"""

from __future__ import annotations

import argparse

import torch
from rounds import lower_quartiles

import rmsprop


def _optimizer(numel: int, **kwargs) -> rmsprop.RMSprop:
    params = [torch.nn.Parameter(torch.randn(numel // 16)) for _ in range(16)]
    for p in params:
        p.grad = torch.randn_like(p)
    opt = rmsprop.RMSprop(params, lr=1e-3, **kwargs)
    opt.step()  # state allocated, fused path compiled
    return opt


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--numel", type=int, default=10_000_000)
    parser.add_argument("--rounds", type=int, default=15)
    args = parser.parse_args()
    torch.manual_seed(0)
    print(f"{args.numel:,} fp32 params in 16 tensors; torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads")
    for name, knobs in (("plain", {}), ("centered+momentum", {"momentum": 0.9, "centered": True})):
        opts = {f"{path}{tag}": _optimizer(args.numel, **knobs, **choice, nonfinite=policy)
                for path, choice in (("foreach", {"foreach": True}), ("fused", {"fused": True}))
                for tag, policy in (("", "propagate"), ("+skip", "skip"))}
        q = lower_quartiles(opts, args.rounds)
        for path in ("foreach", "fused"):
            plain, guarded = q[path], q[f"{path}+skip"]
            print(f"{name:>18} {path:>7}: {plain * 1e3:6.2f} ms, with the check {guarded * 1e3:6.2f} ms "
                  f"(+{(guarded - plain) * 1e3:.2f} ms, +{guarded / plain - 1:.0%})")


if __name__ == "__main__":
    main()
