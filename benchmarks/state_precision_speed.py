"""Step time of the fused path per state_precision: bf16 and int8 state against fp32 state.

    .venv/bin/python benchmarks/state_precision_speed.py [--numel 10000000 --rounds 15]
        [--configs plain,centered+momentum --precisions bf16,int8]

16 fp32 tensors (10M parameters by default), plain and centered with
momentum, ``fused=True``. The optimizers of one configuration step in
interleaved rounds of three steps; each figure is the lower quartile over the
rounds (the machine is shared: quartiles and same-run ratios, not single
timings). Bytes moved per parameter and step, reading and writing θ, reading
g and each buffer: fp32 state 4·2 + 4 + 8·k, bf16 state 12 + 4·k, int8 state
12 + 2·k (+ the scales, 8 bytes per 256), for k buffers (1 plain, 3 centered
with momentum). Both narrow states also draw their stochastic rounding's
random bits in the pass (integer hashing, no memory traffic). Each line also
gives the minor page faults a step takes: memory the step's temporaries are
handed afresh (docs/low-memory.md, "Step time").
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Iterable

import torch
from rounds import lower_quartiles

import rmsprop

PRECISIONS = ("fp32", "bf16", "int8")
# name: (knobs, state buffers)
CONFIGS = {"plain": ({}, 1), "centered+momentum": ({"momentum": 0.9, "centered": True}, 3)}


def _optimizer(numel: int, precision: str, **kwargs) -> rmsprop.RMSprop:
    params = [torch.nn.Parameter(torch.randn(numel // 16)) for _ in range(16)]
    for p in params:
        p.grad = torch.randn_like(p)
    opt = rmsprop.RMSprop(params, lr=1e-3, fused=True, state_precision=precision, **kwargs)
    opt.step()  # state allocated, the fused path compiled
    return opt


def _bytes(precision: str, buffers: int) -> float:
    per = {"fp32": 8, "bf16": 4, "int8": 2 + 8 / 256}[precision]
    return 12 + per * buffers


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--numel", type=int, default=10_000_000)
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--configs", type=_names(CONFIGS), default=list(CONFIGS),
                        help=f"comma-separated, of {','.join(CONFIGS)} (default: all)")
    parser.add_argument("--precisions", type=_names(PRECISIONS[1:]), default=list(PRECISIONS[1:]),
                        help="comma-separated narrow state precisions to set beside fp32 (default: bf16,int8)")
    args = parser.parse_args()
    torch.manual_seed(0)
    print(f"{args.numel:,} fp32 params in 16 tensors, fused path; torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads")
    precisions = ["fp32", *args.precisions]
    for name in args.configs:
        knobs, buffers = CONFIGS[name]
        opts = {precision: _optimizer(args.numel, precision, **knobs) for precision in precisions}
        faults: dict[str, float] = {}
        q = lower_quartiles(opts, args.rounds, faults=faults)
        for precision in precisions:
            moved = _bytes(precision, buffers) * args.numel
            print(f"{name:>18} {precision:>4} state: {q[precision] * 1e3:7.2f} ms  "
                  f"{q[precision] / q['fp32']:5.2f}x fp32 state  "
                  f"({moved / q[precision] / 1e9:5.1f} GB/s of {_bytes(precision, buffers):.1f} B/param)  "
                  f"{faults[precision]:,.0f} page faults a step")


def _names(allowed: Iterable[str]) -> Callable[[str], list[str]]:
    """An argparse type: a comma-separated list of names, each one of ``allowed``."""
    allowed = tuple(allowed)

    def parse(text: str) -> list[str]:
        names = [n for n in text.split(",") if n]
        bad = [n for n in names if n not in allowed]
        if bad or not names:
            raise argparse.ArgumentTypeError(f"{text!r}: choose from {', '.join(allowed)}")
        return names

    return parse


if __name__ == "__main__":
    main()
