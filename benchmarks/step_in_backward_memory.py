"""Peak memory of one training step with and without ``rmsprop.step_in_backward``.

    .venv/bin/python benchmarks/step_in_backward_memory.py [--width 2048 --depth 12]

A stack of ``depth`` square Linear layers (2048 × 12: 50.4M parameters, 201 MB
of fp32 weights and as much again of gradients) on a batch of 8. Both runs
start with the optimizer's state already allocated (one warm-up step) and
the gradients set to None, then measure one forward + backward
(+ step) with the CPU allocator's events from the torch profiler (the same
method as ``rmsprop bench``'s "peak extra"). The saving should be the
gradients' size less the largest single gradient, which is all that
step_in_backward ever holds at once.
"""

from __future__ import annotations

import argparse

import torch

import rmsprop
from rmsprop.bench.measure import peak_extra_bytes


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--width", type=int, default=2048)
    parser.add_argument("--depth", type=int, default=12)
    args = parser.parse_args()

    torch.manual_seed(0)
    model = torch.nn.Sequential(*(torch.nn.Linear(args.width, args.width) for _ in range(args.depth)))
    params = list(model.parameters())
    n = sum(p.numel() for p in params)
    x = torch.randn(8, args.width)
    opt = rmsprop.RMSprop(params, lr=1e-5)

    def usual() -> None:
        model(x).square().mean().backward()
        opt.step()
        opt.zero_grad()

    def inside() -> None:
        model(x).square().mean().backward()

    usual()  # the state exists before anything is measured
    results = {}
    for name, step in (("usual loop", usual), ("step_in_backward", inside)):
        handle = rmsprop.step_in_backward(opt) if step is inside else None
        results[name] = peak_extra_bytes(step, torch.device("cpu"))
        if handle is not None:
            handle.remove()

    grads = 4 * n
    largest = 4 * max(p.numel() for p in params)
    print(f"model: {args.depth} × Linear({args.width}, {args.width}), {n / 1e6:.1f}M fp32 params; "
          f"gradients {grads / 2**20:.0f} MiB, largest one {largest / 2**20:.0f} MiB; "
          f"torch {torch.__version__}")
    for name, peak in results.items():
        print(f"{name:>18}: peak extra {peak / 2**20:7.1f} MiB")
    saved = results["usual loop"] - results["step_in_backward"]
    print(f"{'saved':>18}: {saved / 2**20:7.1f} MiB = {saved / grads:.0%} of the gradients' size "
          f"(at most {(grads - largest) / grads:.0%}: the largest gradient exists either way)")


if __name__ == "__main__":
    main()
