"""The reference path: one tensor at a time, the seed's loop grown up.

It calls the engine's pure function and writes the results back in place, so
the parameter and state tensors keep their identity (shared memory, hooks and
CUDA graphs see the same storage).
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..engine import Hyper, rmsprop_update
from ..precision import kahan_read, kahan_write_, load, store_, working_dtype, write_param_
from ..quant import stored_dtype
from .grouping import StepTensors

__all__ = ["reference_step"]


def reference_step(t: StepTensors, hyper: Hyper, *, finite: Tensor | None = None,
                   rounding_seed: int | None = None, grad_scale: Tensor | None = None,
                   state_precision: str = "param") -> None:
    """Apply one step to each tensor. Nothing happens where ``finite`` is a
    False tensor (read on the host)."""
    if finite is not None and not bool(finite):
        return
    centered, use_momentum = hyper.centered, hyper.momentum != 0
    for i, param in enumerate(t.params):
        grad, square_avg, step, ident = t.grads[i], t.square_avgs[i], t.steps[i], t.idents[i]
        grad_avg = t.grad_avgs[i] if centered else None
        buf = t.momentum_buffers[i] if use_momentum else None
        comp = t.comps[i] if t.comps else None  # Kahan: x = θ + c
        step += 1
        # the state's storage (rmsprop.precision)
        work = working_dtype(param.dtype, stored_dtype(square_avg), state_precision, comp is not None)
        theta = kahan_read(param, comp, work)
        if theta is param and param.requires_grad and torch.is_grad_enabled():
            # differentiable: (0') saves θ for its backward, and θ is written in place below
            theta = param.clone()
        new = rmsprop_update(
            theta, grad.to(work), load(square_avg, work),
            None if grad_avg is None else load(grad_avg, work), None if buf is None else load(buf, work),
            step, hyper, t.emas[i] if t.emas else None, grad_scale,
        )

        if comp is not None:
            kahan_write_(param, comp, new.param)
        else:
            write_param_(param, new.param, rounding_seed, step, ident)
        store_(square_avg, new.square_avg, rounding=(step, ident), key="square_avg")
        if grad_avg is not None:
            assert new.grad_avg is not None  # centered: the update returns ḡ
            store_(grad_avg, new.grad_avg, rounding=(step, ident), key="grad_avg")
        if buf is not None:
            assert new.momentum_buffer is not None  # momentum: the update returns b
            store_(buf, new.momentum_buffer, rounding=(step, ident), key="momentum_buffer")
        if new.ema is not None and new.ema is not t.emas[i]:
            t.emas[i].copy_(new.ema)
