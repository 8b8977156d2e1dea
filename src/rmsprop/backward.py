"""The step inside backward: each parameter is updated the moment its gradient
is complete, and that gradient is freed at once.

    handle = rmsprop.step_in_backward(optimizer)
    for x, y in data:
        loss_fn(model(x), y).backward()   # steps every parameter; no optimizer.step()
    handle.remove()                       # back to the usual loop

A gradient then lives only from the moment autograd finishes it until its
parameter's update, so a training step never holds all the gradients at once
(PyTorch's "optimizer in backward" idea, built on
``Tensor.register_post_accumulate_grad_hook``).

What it cannot honour, and how each is refused:

- ``optimizer.step()`` (with or without a closure), and so ``GradScaler.step``:
  RuntimeError while attached (the parameters were already stepped).
- ``nonfinite="skip"`` or ``"raise"``: refused when attaching, and setting
  it while attached (deciding on all gradients together needs them all at once).
- ``max_grad_norm=`` (global-norm clipping, line (0)): refused when
  attaching, and setting it while attached; ``agc_clip=`` (per tensor)
  works here.
- Gradient accumulation over several backward calls, and clipping with
  ``clip_grad_norm_`` outside the optimizer: every backward call is one
  step, and after it no gradient is left to clip or to add to. Nothing can
  detect these from inside the optimizer; do not combine them with this mode.

LR schedulers and ``state_dict`` / ``load_state_dict`` work as usual; the
optimizer's step hooks do not run (there is no ``step()`` call).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from .optimizer import _NO_GLOBAL_CLIP_IN_BACKWARD, RMSprop
from .plan import plan_group, run_group

__all__ = ["step_in_backward", "BackwardStepHandle"]


class BackwardStepHandle:
    """Returned by :func:`step_in_backward`; ``remove()`` detaches the hooks.
    Groups added later with ``add_param_group`` are hooked as they come."""

    def __init__(self, optimizer: RMSprop) -> None:
        self.optimizer = optimizer
        self._hooks: list[Any] = []
        # p -> (its group's index, the index of that group's first parameter)
        self._where: dict[Tensor, tuple[int, int]] = {}
        self._layout: tuple = ()
        for group in optimizer.param_groups:
            self.attach(group)

    def attach(self, group: dict[str, Any]) -> None:
        """Hook every parameter of ``group`` that requires grad."""
        for p in group["params"]:
            if p.requires_grad:
                self._hooks.append(p.register_post_accumulate_grad_hook(self._step_one))

    def _locate(self, p: Tensor) -> tuple[int, int]:
        """(group index, offset) of ``p``'s group, found again when the groups changed."""
        groups = self.optimizer.param_groups
        layout = tuple((id(group), id(group["params"]), len(group["params"])) for group in groups)
        if layout != self._layout:
            self._where, offset = {}, 0
            for g, group in enumerate(groups):
                for q in group["params"]:
                    self._where[q] = (g, offset)
                offset += len(group["params"])
            self._layout = layout
        return self._where[p]

    @torch.no_grad()
    def _step_one(self, p: Tensor) -> None:
        opt = self.optimizer
        g, offset = self._locate(p)
        plan = plan_group(opt, g, opt.param_groups[g], offset, only=p)
        if plan is not None:
            run_group(opt, plan)
        p.grad = None
        # LR schedulers warn when they step before the optimizer ever has;
        # here the optimizer steps without step(), so say that it did.
        opt._opt_called = True  # type: ignore[attr-defined]

    def remove(self) -> None:
        for hook in self._hooks:
            hook.remove()
        self._hooks = []
        if self.optimizer._backward_handle is self:
            self.optimizer._backward_handle = None

    def __enter__(self) -> BackwardStepHandle:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.remove()


def step_in_backward(optimizer: RMSprop) -> BackwardStepHandle:
    """Step each parameter of ``optimizer`` inside backward, as soon as its
    gradient is complete, and free that gradient. Returns a handle whose
    ``remove()`` (or ``with`` block) restores the usual ``optimizer.step()``."""
    if not isinstance(optimizer, RMSprop):
        raise TypeError(f"step_in_backward needs an rmsprop.RMSprop, not {type(optimizer).__name__}")
    if optimizer._backward_handle is not None:
        raise RuntimeError("step_in_backward is already attached to this optimizer")
    if optimizer.nonfinite != "propagate":
        raise ValueError(
            f"step_in_backward cannot honour nonfinite={optimizer.nonfinite!r}: it updates each parameter "
            "as its gradient completes, so no decision can wait for all the gradients"
        )
    if optimizer.max_grad_norm is not None:
        raise ValueError(_NO_GLOBAL_CLIP_IN_BACKWARD)
    if any(group["differentiable"] for group in optimizer.param_groups):
        raise ValueError("step_in_backward cannot run differentiable=True groups "
                         "(the step runs inside backward)")
    handle = BackwardStepHandle(optimizer)
    optimizer._backward_handle = handle
    return handle
