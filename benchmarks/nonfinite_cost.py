"""What nonfinite="skip" costs: the step with and without the gradient check.

    .venv/bin/python benchmarks/nonfinite_cost.py [--numel 10000000 --rounds 15]

16 fp32 tensors (10M parameters by default), plain and centered with
momentum, foreach and fused paths. The four optimizers step in interleaved
rounds of three steps; each figure is the lower quartile over the rounds (the
machine is shared: quartiles and same-run ratios, not single timings). The
check is one extra read of the gradients, so the expected cost is about
4 / 20 bytes = 20% of the plain step's traffic and 4 / 36 = 11% of the
centered-with-momentum step's, if a read alone ran at the step's bandwidth.
It does not on every machine, so the same rounds also time that read alone
("one read of g": a sum per gradient, the check's own work without the
verdict) and print the check's cost against it: the floor on this machine.
"""

from __future__ import annotations

import argparse
from typing import cast

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


class _ReadOnce:
    """Steps by reading every gradient once (a sum per tensor): the floor of any check."""

    def __init__(self, opt: torch.optim.Optimizer) -> None:
        self.grads = [p.grad for group in opt.param_groups for p in group["params"]]

    def step(self) -> None:
        for g in self.grads:
            g.sum()


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
        opts["read"] = cast("torch.optim.Optimizer", _ReadOnce(opts["fused"]))
        q = lower_quartiles(opts, args.rounds)
        for path in ("foreach", "fused"):
            plain, guarded = q[path], q[f"{path}+skip"]
            print(f"{name:>18} {path:>7}: {plain * 1e3:6.2f} ms, with the check {guarded * 1e3:6.2f} ms "
                  f"(+{(guarded - plain) * 1e3:.2f} ms, +{guarded / plain - 1:.0%}; one read of g alone: "
                  f"{q['read'] * 1e3:.2f} ms, +{q['read'] / plain:.0%})")


if __name__ == "__main__":
    main()
