"""Functional form, as ``torch.optim`` has one: ``rmsprop.functional.rmsprop``.

Same positional arguments as :func:`torch.optim._functional.rmsprop` (lists of
tensors, the momentum and centered lists empty when unused), plus this
library's semantic knobs as keywords, defaulting to PyTorch's semantics.
"""

from __future__ import annotations

from typing import Any

from torch import Tensor
from torch.nn import Parameter

from .engine import Hyper
from .paths import PATHS, choose_path

__all__ = ["rmsprop", "make_hyper", "apply"]


def rmsprop(
    params: list[Tensor],
    grads: list[Tensor],
    square_avgs: list[Tensor],
    grad_avgs: list[Tensor],
    momentum_buffer_list: list[Tensor],
    state_steps: list[Tensor],
    foreach: bool | None = None,
    maximize: bool = False,
    differentiable: bool = False,
    capturable: bool = False,
    has_complex: bool = False,
    *,
    lr: float | Tensor,
    alpha: float,
    eps: float,
    weight_decay: float,
    momentum: float,
    centered: bool,
    eps_in_sqrt: bool = False,
    lr_in_momentum: bool = False,
    nesterov: bool = False,
    decoupled_weight_decay: bool = False,
    bias_correction: bool = False,
    fused: bool | None = None,
) -> None:
    """Apply one RMSProp step in place to ``params`` and their state.

    See :class:`rmsprop.RMSprop` for the formula and the meaning of each knob.
    ``state_steps`` holds one 0-d tensor per parameter, incremented here.
    ``has_complex`` is accepted for signature compatibility with PyTorch;
    complex tensors are detected per tensor.

    A tensor ``lr`` is read as a Python number unless ``capturable=True``, as
    PyTorch does; with ``capturable=True`` it stays a tensor (no host read).
    """
    del has_complex  # complex tensors are recognised one by one
    if not all(isinstance(t, Tensor) for t in state_steps):
        raise RuntimeError(
            "API has changed, `state_steps` argument must contain a list of singleton tensors"
        )
    hyper = make_hyper(
        lr, capturable,
        alpha=alpha,
        eps=eps,
        weight_decay=weight_decay,
        momentum=momentum,
        centered=centered,
        maximize=maximize,
        eps_in_sqrt=eps_in_sqrt,
        lr_in_momentum=lr_in_momentum,
        nesterov=nesterov,
        decoupled_weight_decay=decoupled_weight_decay,
        bias_correction=bias_correction,
    )
    apply(params, grads, square_avgs, grad_avgs, momentum_buffer_list, state_steps, hyper,
          foreach=foreach, differentiable=differentiable, fused=fused)


def make_hyper(lr: float | Tensor, capturable: bool, **knobs: Any) -> Hyper:
    """The engine's hyperparameters. A tensor ``lr`` is read as a Python number
    unless ``capturable=True``, as PyTorch does; then it stays a tensor."""
    if isinstance(lr, Tensor):
        lr = lr.reshape(()) if capturable else lr.item()
    return Hyper(lr=lr, **knobs)


def apply(
    params: list[Tensor],
    grads: list[Tensor],
    square_avgs: list[Tensor],
    grad_avgs: list[Tensor],
    momentum_buffers: list[Tensor],
    steps: list[Tensor],
    hyper: Hyper,
    *,
    foreach: bool | None,
    differentiable: bool,
    fused: bool | None,
    finite: Tensor | None = None,
    rounding_seed: int | None = None,
) -> None:
    """Pick the path for these tensors (:func:`rmsprop.paths.choose_path`) and run it.

    ``finite``: a 0-d bool tensor; where it is False the step changes nothing
    (the fused path obeys it on the device, the others read it on the host).
    ``rounding_seed``: write bfloat16 parameters updated at a wider precision
    back with stochastic rounding drawn from this seed (rmsprop.precision)."""
    if params and type(params[0]) not in _PLAIN and not differentiable:
        # DTensor parameters (FSDP2): the update is elementwise, so every path
        # runs on each rank's local shards, in place, without gathering.
        params, grads, square_avgs, grad_avgs, momentum_buffers = (
            [local_tensor(x) for x in xs] for xs in (params, grads, square_avgs, grad_avgs, momentum_buffers)
        )
    path = choose_path(params, foreach, differentiable, fused)
    PATHS[path](params, grads, square_avgs, grad_avgs, momentum_buffers, steps, hyper,
                finite=finite, rounding_seed=rounding_seed)


_PLAIN = (Tensor, Parameter)


def local_tensor(x: Tensor) -> Tensor:
    """A DTensor's local shard (the same storage), any other tensor as it is."""
    to_local = getattr(x, "to_local", None)
    return to_local() if to_local is not None else x
