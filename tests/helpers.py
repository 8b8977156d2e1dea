"""Small shared helpers for the tests: parameters, gradient streams, runners."""

from __future__ import annotations

from typing import Any

import pytest
import torch

import rmsprop
from rmsprop.paths import choose_path

SHAPES = [(), (7,), (3, 4), (0,), (2, 0, 3)]


def make_params(dtype: torch.dtype = torch.float64, seed: int = 0, complex_too: bool = False):
    """Parameters of several shapes (scalar, vector, matrix, 0-size) and a frozen one."""
    gen = torch.Generator().manual_seed(seed)
    params = [torch.randn(s, generator=gen, dtype=dtype) for s in SHAPES]
    if complex_too:
        cdtype = torch.complex128 if dtype == torch.float64 else torch.complex64
        params.append(torch.randn(5, generator=gen, dtype=cdtype))
    frozen = torch.randn(3, generator=gen, dtype=dtype)  # never gets a gradient
    params = [torch.nn.Parameter(p) for p in params]
    params.append(torch.nn.Parameter(frozen, requires_grad=False))
    return params


def grad_stream(params, steps: int, seed: int = 1, decades: int = 3):
    """Per step, one gradient per parameter (or None): large, tiny and mixed-sign
    values (magnitudes from 10**-decades to 10**decades), with the second
    parameter skipping every third step and the last (frozen) parameter never
    receiving one."""
    gen = torch.Generator().manual_seed(seed)
    stream = []
    for t in range(steps):
        grads = []
        for i, p in enumerate(params):
            if not p.requires_grad or (i == 1 and t % 3 == 2):
                grads.append(None)
                continue
            g = torch.randn(p.shape, generator=gen, dtype=p.dtype)
            scale = 10.0 ** ((t + i) % (2 * decades + 1) - decades)
            grads.append(g * scale)
        stream.append(grads)
    return stream


def run(
    cls: type[torch.optim.Optimizer],
    params,
    stream,
    lr_changes: dict[int, float] | None = None,
    **kwargs: Any,
) -> torch.optim.Optimizer:
    """Train ``params`` in place over ``stream`` with ``cls(params, **kwargs)``;
    ``lr_changes`` maps a step index to a new learning rate."""
    opt = cls(params, **kwargs)
    for t, grads in enumerate(stream):
        if lr_changes and t in lr_changes:
            for group in opt.param_groups:
                group["lr"] = lr_changes[t]
        for p, g in zip(params, grads):
            p.grad = None if g is None else g.clone()
        opt.step()
    return opt


def train_cast(params, stream, **kwargs) -> rmsprop.RMSprop:
    """``rmsprop.RMSprop(params, **kwargs)`` stepped over ``stream``, each
    gradient cast to its parameter's dtype (narrow parameters, one stream)."""
    opt = rmsprop.RMSprop(params, **kwargs)
    for grads in stream:
        for p, g in zip(params, grads):
            p.grad = None if g is None else g.to(p.dtype)
        opt.step()
    return opt


#: Knobs that use every buffer (centered, momentum, decay): the low-precision tests' default.
EVERY_BUFFER_KNOBS = {"lr": 0.01, "alpha": 0.9, "eps": 1e-3, "momentum": 0.9, "centered": True,
                      "weight_decay": 0.01}


def clone_params(params):
    return [torch.nn.Parameter(p.detach().clone(), requires_grad=p.requires_grad) for p in params]


def state_of(opt: torch.optim.Optimizer, params) -> list[dict[str, torch.Tensor]]:
    return [dict(opt.state[p]) for p in params]


def _fused_unavailable() -> str | None:
    """Why ``fused=True`` cannot run on CPU tensors here (no C++ compiler on
    ``CXX`` or PATH, ``RMSPROP_DISABLE_COMPILE=1``), or None: asked of the
    policy function that ``fused=True`` goes through, so a test skips exactly
    where the fused path would raise."""
    try:
        choose_path([torch.zeros(1)], None, False, True)
    except ValueError as e:
        return str(e)
    return None


FUSED_UNAVAILABLE = _fused_unavailable()

#: The one marker for every test that runs the fused path (or asks the policy
#: to pick it): without a compiler such a test skips, saying why; it never fails.
needs_fused = pytest.mark.skipif(FUSED_UNAVAILABLE is not None,
                                 reason=f"needs the fused path: {FUSED_UNAVAILABLE}")


class NoHostReads(torch.Tensor):
    """A tensor that fails a test when a value of it, or of anything computed
    from it, is read back to the host while :attr:`armed` (see
    :func:`forbid_host_reads`). Derived tensors keep the type, so ``float(2 * lr)``
    is caught as well as ``lr.item()``."""

    armed = False


def _refuse(name: str):
    base = getattr(torch.Tensor, name)

    def method(self, *args, **kwargs):
        if NoHostReads.armed:
            raise AssertionError(f"host read: Tensor.{name} of a tensor that must stay on its device")
        return base(self, *args, **kwargs)

    method.__name__ = name
    return method


HOST_READS = ("item", "tolist", "numpy", "__float__", "__int__", "__index__", "__bool__", "__complex__",
              "__array__", "__format__")
for _name in HOST_READS:
    setattr(NoHostReads, _name, _refuse(_name))


class forbid_host_reads:
    """``with forbid_host_reads():`` any host read of a :class:`NoHostReads`
    tensor (or one derived from it) inside the block fails the test."""

    def __enter__(self):
        NoHostReads.armed = True
        return self

    def __exit__(self, *exc):
        NoHostReads.armed = False
        return False


__all__ = ["SHAPES", "make_params", "grad_stream", "run", "clone_params", "state_of", "rmsprop",
           "FUSED_UNAVAILABLE", "needs_fused", "NoHostReads", "forbid_host_reads", "HOST_READS"]
