"""Functional form, as ``torch.optim`` has one: ``rmsprop.functional.rmsprop``.

Same positional arguments as :func:`torch.optim._functional.rmsprop` (lists of
tensors, the momentum and centered lists empty when unused), plus this
library's semantic knobs as keywords, defaulting to PyTorch's semantics.
"""

from __future__ import annotations

from torch import Tensor
from torch.nn import Parameter

from .engine import Hyper
from .paths import PATHS, choose_path
from .paths.grouping import StepTensors
from .settings import check_group, hyper_from, saved_defaults

__all__ = ["rmsprop", "apply", "local_tensors"]


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
    op_order: str = "torch",
    caution: bool = False,
    agc_clip: float = 0.0,
    fused: bool | None = None,
) -> None:
    """Apply one RMSProp step in place to ``params`` and their state.

    See :class:`rmsprop.RMSprop` for the formula and the meaning of each knob.
    ``state_steps`` holds one 0-d tensor per parameter, incremented here.
    ``has_complex`` is accepted for signature compatibility with PyTorch;
    complex tensors are detected per tensor.

    A tensor ``lr`` is read as a Python number unless ``capturable=True``, as
    PyTorch does; with ``capturable=True`` it stays a tensor (no host read).
    The knobs are validated as :class:`rmsprop.RMSprop` validates a group, and
    the lists' lengths checked, before anything is written.
    """
    del has_complex  # complex tensors are recognised one by one
    if not all(isinstance(t, Tensor) for t in state_steps):
        raise RuntimeError(
            "API has changed, `state_steps` argument must contain a list of singleton tensors"
        )
    group = {**saved_defaults(), "lr": lr, "alpha": alpha, "eps": eps, "weight_decay": weight_decay,
             "momentum": momentum, "centered": centered, "maximize": maximize, "eps_in_sqrt": eps_in_sqrt,
             "lr_in_momentum": lr_in_momentum, "nesterov": nesterov,
             "decoupled_weight_decay": decoupled_weight_decay, "bias_correction": bias_correction,
             "op_order": op_order, "caution": caution, "agc_clip": agc_clip, "capturable": capturable,
             "differentiable": differentiable, "foreach": foreach, "fused": fused}
    check_group(group, "rmsprop.functional.rmsprop's arguments")  # the class's rules (rmsprop.settings)
    n = len(params)
    lists = {"grads": grads, "square_avgs": square_avgs, "state_steps": state_steps}
    if centered:
        lists["grad_avgs"] = grad_avgs
    if momentum != 0:
        lists["momentum_buffer_list"] = momentum_buffer_list
    for name, xs in lists.items():
        if len(xs) != n:
            raise ValueError(f"{name} has {len(xs)} entries for {n} params: one per parameter")
    tensors = StepTensors(params, grads, square_avgs, grad_avgs if centered else [],
                          momentum_buffer_list if momentum != 0 else [], state_steps, list(range(n)))
    path = choose_path(local_tensors(params, differentiable), foreach, differentiable, fused,
                       state_buffers=1 + centered + (momentum != 0))
    apply(tensors, hyper_from(group), path=path)


def apply(t: StepTensors, hyper: Hyper, *, path: str, differentiable: bool = False,
          finite: Tensor | None = None, rounding_seed: int | None = None,
          grad_scale: Tensor | None = None, state_precision: str = "param") -> None:
    """Run path ``path`` (as :func:`rmsprop.paths.choose_path` picked it) on these tensors.

    Everything that can fail was decided before: a path raises no user error.
    ``finite``: a 0-d bool tensor; where it is False the step changes nothing
    (the fused path obeys it on the device, the others read it on the host).
    ``rounding_seed``: write bfloat16 parameters updated at a wider precision
    back with stochastic rounding drawn from this seed (rmsprop.precision).
    ``grad_scale``: line (0)'s factor, a 0-d tensor (``max_grad_norm``).
    ``state_precision``: the group's, which with the state's storage decides
    the dtype the update runs in (:func:`rmsprop.precision.working_dtype`)."""
    if t.params and type(t.params[0]) not in _PLAIN and not differentiable:
        # DTensor parameters (FSDP2): the update is elementwise, so every path
        # runs on each rank's local shards, in place, without gathering.
        t = t._replace(**{name: local_tensors(getattr(t, name), differentiable)
                          for name in ("params", "grads", "square_avgs", "grad_avgs", "momentum_buffers",
                                       "emas", "comps")})
    PATHS[path](t, hyper, finite=finite, rounding_seed=rounding_seed, grad_scale=grad_scale,
                state_precision=state_precision)


_PLAIN = (Tensor, Parameter)


def local_tensors(xs: list, differentiable: bool) -> list:
    """DTensors' local shards (the same storage), other tensors as they are;
    with ``differentiable``, everything as it is (autograd needs the DTensor)."""
    if differentiable or not xs or type(xs[0]) in _PLAIN:
        return xs
    return [x.to_local() if hasattr(x, "to_local") else x for x in xs]
