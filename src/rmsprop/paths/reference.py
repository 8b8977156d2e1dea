"""The reference path: one tensor at a time, the seed's loop grown up.

It calls the engine's pure function and writes the results back in place, so
the parameter and state tensors keep their identity (shared memory, hooks and
CUDA graphs see the same storage).
"""

from __future__ import annotations

from torch import Tensor

from ..engine import Hyper, rmsprop_update
from ..precision import load, store_, working_dtype, write_param_
from ..quant import stored_dtype

__all__ = ["reference_step"]


def reference_step(
    params: list[Tensor],
    grads: list[Tensor],
    square_avgs: list[Tensor],
    grad_avgs: list[Tensor],
    momentum_buffers: list[Tensor],
    steps: list[Tensor],
    hyper: Hyper,
    *,
    finite: Tensor | None = None,
    rounding_seed: int | None = None,
) -> None:
    """Apply one step to each tensor; ``grad_avgs`` / ``momentum_buffers`` are
    empty unless the knobs use them (PyTorch's convention). Nothing happens
    where ``finite`` is a False tensor (read on the host)."""
    if finite is not None and not bool(finite):
        return
    centered, use_momentum = hyper.centered, hyper.momentum != 0
    for i, param in enumerate(params):
        grad, square_avg = grads[i], square_avgs[i]
        grad_avg = grad_avgs[i] if centered else None
        buf = momentum_buffers[i] if use_momentum else None
        steps[i] += 1
        work = working_dtype(param.dtype, stored_dtype(square_avg))  # the state's storage (rmsprop.precision)
        new = rmsprop_update(
            param.to(work), grad.to(work), load(square_avg, work),
            None if grad_avg is None else load(grad_avg, work), None if buf is None else load(buf, work),
            steps[i], hyper,
        )

        write_param_(param, new.param, rounding_seed, steps[i], salt=i)
        store_(square_avg, new.square_avg, step=steps[i], stream=0)
        if grad_avg is not None:
            store_(grad_avg, new.grad_avg, step=steps[i], stream=1)
        if buf is not None:
            store_(buf, new.momentum_buffer, step=steps[i], stream=2)
