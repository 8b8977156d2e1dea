"""Step time of the fused path per state_precision: bf16 and int8 state against fp32 state.

    .venv/bin/python benchmarks/state_precision_speed.py [--numel 10000000 --rounds 15]

16 fp32 tensors (10M parameters by default), plain and centered with
momentum, ``fused=True``. The optimizers of one configuration step in
interleaved rounds of three steps; each figure is the lower quartile over the
rounds (the machine is shared: quartiles and same-run ratios, not single
timings). Bytes moved per parameter and step, reading and writing θ, reading
g and each buffer: fp32 state 4·2 + 4 + 8·k, bf16 state 12 + 4·k, int8 state
12 + 2·k (+ the scales, 8 bytes per 256), for k buffers (1 plain, 3 centered
with momentum). Both narrow states also draw their stochastic rounding's
random bits in the pass (integer hashing, no memory traffic).
"""

from __future__ import annotations

import argparse

import torch
from rounds import lower_quartiles

import rmsprop

PRECISIONS = ("fp32", "bf16", "int8")


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
    args = parser.parse_args()
    torch.manual_seed(0)
    print(f"{args.numel:,} fp32 params in 16 tensors, fused path; torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads")
    for name, knobs, buffers in (("plain", {}, 1),
                                 ("centered+momentum", {"momentum": 0.9, "centered": True}, 3)):
        opts = {precision: _optimizer(args.numel, precision, **knobs) for precision in PRECISIONS}
        q = lower_quartiles(opts, args.rounds)
        for precision in PRECISIONS:
            moved = _bytes(precision, buffers) * args.numel
            print(f"{name:>18} {precision:>4} state: {q[precision] * 1e3:7.2f} ms  "
                  f"{q[precision] / q['fp32']:5.2f}x fp32 state  "
                  f"({moved / q[precision] / 1e9:5.1f} GB/s of {_bytes(precision, buffers):.1f} B/param)")


if __name__ == "__main__":
    main()
