"""What a step does with NaN or ±Inf gradients: ``RMSprop(..., nonfinite=)``.

- ``"propagate"`` (default): PyTorch's behaviour; the values flow into θ and
  the state.
- ``"skip"``: if any gradient of the step holds a NaN or ±Inf, the step changes
  nothing at all (no parameter, no state, no step count), across the whole
  optimizer, and ``optimizer.skipped_steps`` counts it.
- ``"raise"``: ``FloatingPointError`` naming the first offending parameter and
  the step it was at, raised before anything changes.

The check reads every gradient once more (a sum per tensor), before any
update starts.

The same read serves global-norm clipping (``RMSprop(..., max_grad_norm=)``,
line (0)): with it on, the read computes each gradient's L2 norm instead of
its sum, as ``torch.nn.utils.clip_grad_norm_`` does (a non-finite element
makes the norm non-finite too), so clipping and ``nonfinite="skip"`` together
read the gradients once, not twice. The factor min(1, c/(‖g‖ + 10⁻⁶)) stays
on the device; the paths multiply each gradient by it inside the update.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, cast

import torch
from torch import Tensor

from .engine import CLIP_EPS

if TYPE_CHECKING:
    from torch.distributed.tensor import DTensor

    from .optimizer import RMSprop
    from .plan import GroupPlan

__all__ = ["POLICIES", "finite_flags", "grad_norms", "check_policy", "check_max_norm", "verdict"]

POLICIES = ("propagate", "skip", "raise")


def check_policy(nonfinite: object) -> None:
    if not isinstance(nonfinite, str) or nonfinite not in POLICIES:
        raise ValueError(f"Invalid nonfinite value: {nonfinite!r} (one of {', '.join(map(repr, POLICIES))})")


def check_max_norm(value: object) -> None:
    """``max_grad_norm``: None (off) or a positive finite real number."""
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"max_grad_norm must be a real number or None, not {type(value).__name__} {value!r}")
    if not 0 < value < math.inf:
        raise ValueError(f"Invalid max_grad_norm value: {value} (must be > 0 and finite, or None)")


def verdict(opt: RMSprop, plans: list[GroupPlan]) -> tuple[bool | Tensor, Tensor | None]:
    """Apply the optimizer's policy to a planned step, before anything
    changes, and compute line (0)'s clipping factor: one read of the gradients.

    Returns the decision and the factor (None without ``max_grad_norm``). The
    decision is True (go on), False (skip this step; counted in every group)
    or, where the gradients live on an accelerator and the policy is "skip",
    a 0-d bool tensor that the paths obey without a host sync (its count is
    added to ``opt._pending_skips``). Raises FloatingPointError for "raise".
    The global norm is kept, on the device, as ``opt.grad_norm``: the norm of
    this step's gradients (0 for a step without any, as ``clip_grad_norm_``
    returns), unless the step raised.
    """
    clip = opt.max_grad_norm
    if opt.nonfinite == "propagate" and clip is None:
        return True, None
    grads = [grad for plan in plans for grad in plan.grads]
    if not grads:
        if clip is not None:
            opt._grad_norm = torch.zeros(())
        return True, None
    if clip is None:
        return _decide(opt, plans, finite_flags(grads)), None
    norms = grad_norms(grads)
    total = torch.linalg.vector_norm(_as_torch_stacks_them(norms, grads))
    scale = (clip / (total + CLIP_EPS)).clamp(max=1.0)  # (0), as clip_grad_norm_ computes it
    decision: bool | Tensor = True
    if opt.nonfinite != "propagate":
        flags = norms.isfinite()
        if not any(hasattr(t, "device_mesh") for t in grads):  # (sharded: every rank must agree)
            flags = _recheck(flags, grads)
        decision = _decide(opt, plans, flags)  # may raise: then nothing, the norm included, is kept
    opt._grad_norm = total
    return decision, scale


def _decide(opt: RMSprop, plans: list[GroupPlan], flags: Tensor) -> bool | Tensor:
    if opt.nonfinite == "raise":
        if not bool(flags.all()):
            from .plan import who

            first = int((~flags).nonzero()[0])
            for plan in plans:
                if first < len(plan.params):
                    break
                first -= len(plan.params)
            p = plan.params[first]
            step = int(opt.state[p]["step"]) + 1 if opt.state.get(p) else 1
            raise FloatingPointError(
                f"non-finite gradient (NaN or Inf) for {who(plan, first)} at step {step}; "
                "nothing was changed (nonfinite='raise')"
            )
        return True
    finite = flags.all()
    if finite.is_cpu:
        if bool(finite):
            return True
        for group in opt.param_groups:
            group["skipped_steps"] += 1
        return False
    skipped = (~finite).to(torch.int64)
    opt._pending_skips = skipped if opt._pending_skips is None else opt._pending_skips + skipped
    return finite


def _as_torch_stacks_them(norms: Tensor, tensors: Sequence[Tensor]) -> Tensor:
    """The per-tensor norms in the order ``clip_grad_norm_`` stacks them
    (grouped by device and dtype, by PyTorch's own grouping), so that their
    total sums, and rounds, as PyTorch's does."""
    if all(t.dtype == tensors[0].dtype and t.device == tensors[0].device for t in tensors):
        return norms
    from torch.utils._foreach_utils import _group_tensors_by_device_and_dtype

    groups = _group_tensors_by_device_and_dtype([[_local(t) for t in tensors]], with_indices=True)
    order = [i for _, indices in groups.values() for i in indices]
    return norms[torch.tensor(order, device=norms.device)]


def _local(t: Tensor) -> Tensor:
    return cast("DTensor", t).to_local() if hasattr(t, "device_mesh") else t


def grad_norms(tensors: Sequence[Tensor]) -> Tensor:
    """Each tensor's L2 norm, stacked on the first tensor's device, computed
    as ``torch.nn.utils.clip_grad_norm_`` computes them (``_foreach_norm``
    where the device has multi-tensor kernels, else one norm per tensor). For
    sharded tensors (DTensor: FSDP2) each rank takes its shards' norms and
    their squares are summed over the mesh (one all-reduce)."""
    from torch.utils._foreach_utils import _get_foreach_kernels_supported_devices

    home = tensors[0].device
    local = [_local(t) for t in tensors]
    if local[0].device.type in _get_foreach_kernels_supported_devices() and all(
            t.device == local[0].device and t.dtype == local[0].dtype for t in local):
        norms = list(torch._foreach_norm(local, 2.0))
    else:
        norms = [torch.linalg.vector_norm(t, 2.0) for t in local]
    stacked = torch.stack([n.to(home, non_blocking=True) for n in norms])
    sharded = [i for i, t in enumerate(tensors) if any(p.is_shard() for p in getattr(t, "placements", ()))]
    if sharded:
        import torch.distributed as dist

        meshes = [cast("DTensor", tensors[i]).device_mesh for i in sharded]
        mesh = meshes[0]
        if mesh.ndim != 1 or any(other != mesh for other in meshes):  # (equal: the same ranks)
            raise ValueError("max_grad_norm supports sharded parameters on one 1-D device mesh (FSDP2)")
        index = torch.tensor(sharded, device=stacked.device)
        squares = stacked.index_select(0, index).double().square()
        dist.all_reduce(squares, op=dist.ReduceOp.SUM, group=mesh.get_group(0))
        stacked = stacked.index_copy(0, index, squares.sqrt().to(stacked.dtype))
    return stacked


def finite_flags(tensors: Sequence[Tensor]) -> Tensor:
    """One bool per tensor, True where every element is finite, on the first
    tensor's device (no value is read back to the host). For sharded tensors
    (DTensor: FSDP2) each rank checks its own shards and the flags are
    all-reduced over the mesh, so every rank reaches the same verdict."""
    if not tensors:
        return torch.ones(0, dtype=torch.bool)
    meshes = {id(t.device_mesh): t.device_mesh for t in tensors if hasattr(t, "device_mesh")}
    if meshes:
        import torch.distributed as dist

        local = [cast("DTensor", t).to_local() if hasattr(t, "device_mesh") else t for t in tensors]
        bad = (~_local_flags(local)).to(torch.int32)
        for mesh in meshes.values():
            for dim in range(mesh.ndim):
                dist.all_reduce(bad, op=dist.ReduceOp.MAX, group=mesh.get_group(dim))
        return bad == 0
    return _local_flags(tensors)


def _local_flags(tensors: Sequence[Tensor]) -> Tensor:
    # One sum per tensor (one read of the gradients, at full bandwidth): a NaN
    # or ±Inf makes it non-finite. (PyTorch's norm kernels, foreach or not,
    # run at a fraction of the bandwidth on CPU.) Narrow dtypes sum in
    # float32. A finite gradient whose sum overflows (past 3.4e38) is then
    # re-checked exactly on CPU, where reading the verdict is free; on an
    # accelerator it counts as non-finite, to stay off the host.
    home = tensors[0].device
    sums = [t.sum(dtype=torch.float32) if t.dtype in (torch.float16, torch.bfloat16) else t.sum()
            for t in tensors]
    return _recheck(torch.stack([s.to(home, non_blocking=True) for s in sums]).isfinite(), tensors)


def _recheck(flags: Tensor, tensors: Sequence[Tensor]) -> Tensor:
    """The flags, with a tensor whose sum or norm overflowed (finite
    elements, a total past the dtype's range) re-checked exactly on CPU."""
    if flags.is_cpu and not bool(flags.all()):
        flags = torch.tensor([bool(ok) or not bool(t.mul(0).sum().isnan()) for ok, t in zip(flags, tensors)])
    return flags
