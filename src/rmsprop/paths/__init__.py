"""Execution paths for the one update, and the policy that picks one.

- ``reference``: per tensor, calls :func:`rmsprop.engine.rmsprop_update`.
- ``foreach``: multi-tensor ``torch._foreach_*`` ops, grouped by device and dtype.
- ``fused``: the engine's function, traced once and compiled by Inductor over a group.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from torch import Tensor
from torch.nn import Parameter
from torch.optim.optimizer import _default_to_fused_or_foreach

from .foreach import foreach_step
from .fused import fused_step, fused_unavailable_reason
from .grouping import first_repeat
from .reference import reference_step

__all__ = ["PATHS", "AUTO_FUSED_MIN_BYTES", "AUTO_FUSED_MIN_LARGEST", "auto_fused", "step_bytes",
           "choose_path", "foreach_step", "fused_step", "reference_step"]


#: The automatic choice compiles a group from this many bytes moved per step
#: (:func:`step_bytes`) on, per state precision ("param" takes the "fp32" row:
#: measured with fp32 parameters). Fitted to the table of
#: benchmarks/path_choice.py, which docs/paths.md quotes; the tensor count did
#: not move the crossover there (1 to 100 tensors), so it is not in the rule.
AUTO_FUSED_MIN_BYTES: dict[str, int] = {
    "fp32": 1 << 20,  # plain (20 B/element): from 52k elements; centered + momentum (36 B): from 29k
    "bf16": 1 << 20,  # plain (16 B): from 66k; centered + momentum (24 B): from 44k
    "int8": 1 << 20,  # plain (14 B): from 75k; centered + momentum (18 B): from 58k
}

#: ... or from a tensor of this many elements on, at the state precisions listed.
#: Empty: foreach-int8's step on one tensor jumps from 0.25 ms at 3,072 elements
#: to 1.9 ms at 4,096 (docs/paths.md), and {"int8": 4096} here would route round
#: it, but it made int8 groups of a few thousand elements compile (tens of
#: seconds) and step_in_backward's one-parameter plans differ from whole-group
#: steps (tests/test_int8.py): the cliff is to be fixed in foreach-int8.
AUTO_FUSED_MIN_LARGEST: dict[str, int] = {}

#: Bytes per element of one state buffer at each state precision.
_STATE_WIDTH = {"param": 4, "fp32": 4, "bf16": 2, "int8": 1}


def step_bytes(numel: int, state_precision: str = "param", state_buffers: int = 1) -> int:
    """Bytes one step must move for ``numel`` fp32 parameters: θ read and written,
    g read (12 B), each state buffer read and written at its width: 20 B per
    element plain, 36 centered with momentum (3 buffers) at fp32 state."""
    return numel * (12 + 2 * state_buffers * _STATE_WIDTH.get(state_precision, 4))


def auto_fused(numel: int, state_precision: str = "param", state_buffers: int = 1, largest: int = 0) -> bool:
    """Whether a group of ``numel`` elements in all (``largest`` in its largest
    tensor), with ``state_buffers`` state buffers each stored at
    ``state_precision``, is worth compiling when the user did not choose
    (:data:`AUTO_FUSED_MIN_BYTES`, :data:`AUTO_FUSED_MIN_LARGEST`)."""
    least = AUTO_FUSED_MIN_BYTES.get(state_precision, AUTO_FUSED_MIN_BYTES["fp32"])
    if numel > 0 and step_bytes(numel, state_precision, state_buffers) >= least:
        return True
    return state_precision in AUTO_FUSED_MIN_LARGEST and largest >= AUTO_FUSED_MIN_LARGEST[state_precision]


PATHS = {"reference": reference_step, "foreach": foreach_step, "fused": fused_step}

# Tensor types the foreach ops take as they are (subclasses such as DTensor go
# through PyTorch's own policy).
_PLAIN = (Tensor, Parameter)


def choose_path(
    params: Sequence[Tensor], foreach: bool | None, differentiable: bool, fused: bool | None = None,
    state_precision: str = "param", state_buffers: int = 1,
    who: Callable[[int], str] = "parameter {}".format,
) -> str:
    """Pick the path for one param group's step. A pure policy function.

    An explicit choice always wins, and a choice that cannot run raises rather
    than falling back: ``foreach=True`` with ``differentiable=True``, ``fused=True``
    where compiling cannot run (no C++ compiler, an unsupported dtype,
    ``differentiable=True``, ``RMSPROP_DISABLE_COMPILE=1``), and ``foreach=True``
    with ``fused=True`` are errors (``who(i)`` names the ``i``-th parameter
    in them). A group that lists a tensor twice cannot take the fused path: one
    compiled pass writes each tensor once, where the reference and foreach
    paths step it once per listing, as PyTorch's do.

    With ``fused=None, foreach=None``: ``fused`` where :func:`auto_fused` says
    so for the group's size (and, at int8 state, its largest tensor),
    ``state_precision`` and
    ``state_buffers`` (the group's settings: 1 plus one each for momentum,
    centering and an EMA) and compiling can run; otherwise, on CPU for
    plain tensors, ``foreach`` (its cache-blocked loop beats the reference
    path there; ``make bench``) unless the group holds a complex parameter,
    and PyTorch's own choice elsewhere (``foreach`` where the device has
    native multi-tensor kernels, e.g. CUDA); ``reference`` otherwise and
    whenever ``differentiable=True``.

    A group with a complex parameter takes ``reference`` on CPU because that
    is the path PyTorch's default takes there (its for-loop, which the
    reference path equals bit for bit): with weight decay the for-loop adds
    λ·θ in complex arithmetic and the foreach ops on the real views round it
    1 ulp differently, at some step of every seed measured
    (``tests/test_torch_dropin.py``). Without weight decay the two agree; the
    rule does not look at the knobs, so it holds for every preset and for a
    weight decay changed mid-run. A group that lists a tensor twice takes
    ``reference`` on CPU for the same reason: PyTorch's for-loop steps it
    twice in a row, its foreach path line by line, and each of our two paths
    equals PyTorch's own (``tests/test_torch_dropin.py``, ``tests/test_misuse.py``).
    """
    if foreach and fused:
        raise ValueError("`foreach` and `fused` should not both be True.")
    if fused:
        reason = fused_unavailable_reason(list(params), differentiable, who)
        if reason is not None:
            raise ValueError(f"fused=True cannot run: {reason}")
        return "fused"
    if foreach:
        if differentiable:
            raise ValueError("foreach=True cannot run with differentiable=True: "
                             "foreach ops do not support autograd; use foreach=False")
        return "foreach"
    if foreach is None and params and not differentiable:
        if (
            fused is None
            and auto_fused(sum(p.numel() for p in params), state_precision, state_buffers,
                           max(p.numel() for p in params))
            and fused_unavailable_reason(list(params), differentiable) is None
        ):
            return "fused"
        if all(p.is_cpu and type(p) in _PLAIN for p in params):
            where_torch_paths_differ = any(p.is_complex() for p in params) or first_repeat(params) is not None
            return "reference" if where_torch_paths_differ else "foreach"
        _, use_foreach = _default_to_fused_or_foreach(list(params), differentiable, use_fused=False)
        if use_foreach:
            return "foreach"
    return "reference"
