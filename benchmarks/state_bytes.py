"""Serialized optimizer-state bytes per parameter and buffer, per state_precision.

    .venv/bin/python benchmarks/state_bytes.py

One fp32 parameter of 2**22 elements, centered with momentum (three buffers:
square_avg, grad_avg, momentum_buffer), one step, then ``torch.save`` of the
optimizer's state dict: the file's size divided by (parameters × buffers).
The small remainder above the buffer dtype's size is the file's own framing,
the step count and the param group.
"""

from __future__ import annotations

import io

import torch

import rmsprop
from rmsprop.precision import PRECISIONS


def main() -> None:
    n, buffers = 1 << 22, 3
    print(f"{n:,} fp32 parameters, {buffers} state buffers (centered, momentum); torch {torch.__version__}")
    for precision in PRECISIONS:
        p = torch.nn.Parameter(torch.randn(n))
        p.grad = torch.randn(n)
        opt = rmsprop.RMSprop([p], momentum=0.9, centered=True, state_precision=precision)
        opt.step()
        buf = io.BytesIO()
        torch.save(opt.state_dict(), buf)
        per = buf.tell() / (n * buffers)
        print(f"state_precision={precision!r:>8}: {per:.4f} bytes per parameter per buffer")


if __name__ == "__main__":
    main()
