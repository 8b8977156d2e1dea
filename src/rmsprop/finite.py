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
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, cast

import torch
from torch import Tensor

if TYPE_CHECKING:
    from torch.distributed.tensor import DTensor

    from .optimizer import RMSprop
    from .plan import GroupPlan

__all__ = ["POLICIES", "finite_flags", "check_policy", "verdict"]

POLICIES = ("propagate", "skip", "raise")


def check_policy(nonfinite: object) -> None:
    if not isinstance(nonfinite, str) or nonfinite not in POLICIES:
        raise ValueError(f"Invalid nonfinite value: {nonfinite!r} (one of {', '.join(map(repr, POLICIES))})")


def verdict(opt: RMSprop, plans: list[GroupPlan]) -> bool | Tensor:
    """Apply the optimizer's policy to a planned step, before anything changes.

    Returns True (go on), False (skip this step; counted in every group) or,
    where the gradients live on an accelerator and the policy is "skip", a
    0-d bool tensor that the paths obey without a host sync (its count is
    added to ``opt._pending_skips``). Raises FloatingPointError for "raise".
    """
    if opt.nonfinite == "propagate":
        return True
    grads = [grad for plan in plans for grad in plan.grads]
    if not grads:
        return True
    flags = finite_flags(grads)
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
    flags = torch.stack([s.to(home, non_blocking=True) for s in sums]).isfinite()
    if home.type == "cpu" and not bool(flags.all()):
        flags = torch.tensor([bool(ok) or not bool(t.mul(0).sum().isnan()) for ok, t in zip(flags, tensors)])
    return flags
