"""Mutating ``param_groups`` between steps works on every path.

A training loop may change a group's hyperparameters (a schedule, by hand),
add a group (``add_param_group``, e.g. unfreezing a backbone), or freeze a
parameter (``requires_grad=False``, its gradient set to None). Sequences of
such changes, drawn by ``hypothesis``, run on each path: ours equals
PyTorch's same path bit for bit wherever PyTorch can follow (it cannot switch
momentum or centering on once state exists: a KeyError), and our reference
and foreach paths equal each other bit for bit everywhere. The fused path
runs a fixed script (each structure compiles) against the reference.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import rmsprop
from rmsprop.paths import fused

from hostile import examples

SHAPES = [(3, 4), (5,), (2, 3)]
NEW_SHAPE = (2, 2)

# Changes PyTorch's RMSprop follows too, then ours only.
TORCH_ACTIONS = st.one_of(
    st.just(("step",)),
    st.tuples(st.just("lr"), st.sampled_from([0.0, 1e-3, 0.05])),
    st.tuples(st.just("alpha"), st.sampled_from([0.0, 0.5, 0.9, 1.0])),
    st.tuples(st.just("eps"), st.sampled_from([0.0, 1e-8, 1e-3])),
    st.tuples(st.just("weight_decay"), st.sampled_from([0.0, 0.1])),
    st.tuples(st.just("maximize"), st.booleans()),
    st.tuples(st.just("freeze"), st.integers(0, len(SHAPES) - 1)),
    st.tuples(st.just("unfreeze"), st.integers(0, len(SHAPES) - 1)),
    st.tuples(st.just("add_group"), st.sampled_from([0.0, 0.9])),
)
OUR_ACTIONS = st.one_of(
    TORCH_ACTIONS,
    st.tuples(st.just("momentum"), st.sampled_from([0.0, 0.9])),
    st.tuples(st.just("centered"), st.booleans()),
    st.tuples(st.just("eps_in_sqrt"), st.booleans()),
    st.tuples(st.just("lr_in_momentum"), st.booleans()),
)


class Loop:
    """A training loop's optimizer and parameters, changed by actions."""

    def __init__(self, cls, groups: int = 2, **kwargs: Any):
        gen = torch.Generator().manual_seed(0)
        self.params = [torch.nn.Parameter(torch.randn(s, generator=gen)) for s in SHAPES]
        split = 2 if groups == 2 else len(SHAPES)
        spec = [{"params": self.params[:split]}, {"params": self.params[split:], "lr": 0.02}]
        self.opt = cls(spec[:groups], lr=0.01, **kwargs)
        self.steps = 0

    def apply(self, action: tuple) -> None:
        kind, *arg = action
        if kind == "step":
            gen = torch.Generator().manual_seed(100 + self.steps)
            for p in self.params:
                g = torch.randn(p.shape, generator=gen)
                p.grad = g if p.requires_grad else None
            self.opt.step()
            self.steps += 1
        elif kind in ("freeze", "unfreeze"):
            p = self.params[arg[0]]
            p.requires_grad_(kind == "unfreeze")
            p.grad = None
        elif kind == "add_group":
            gen = torch.Generator().manual_seed(len(self.params))
            p = torch.nn.Parameter(torch.randn(NEW_SHAPE, generator=gen))
            self.params.append(p)
            self.opt.add_param_group({"params": [p], "lr": 0.03, "momentum": arg[0]})
        else:  # a knob, in every group
            for group in self.opt.param_groups:
                group[kind] = arg[0]
                if kind == "momentum" and arg[0] == 0:
                    group["nesterov"] = False

    def tensors(self) -> list[torch.Tensor]:
        out = []
        for p in self.params:
            out.append(p.detach())
            state = self.opt.state.get(p, {})
            out += [state[k] for k in sorted(state)]
        return out


def _assert_same(a: Loop, b: Loop, where: str) -> None:
    ta, tb = a.tensors(), b.tensors()
    assert len(ta) == len(tb), where
    for i, (x, y) in enumerate(zip(ta, tb)):
        torch.testing.assert_close(x, y, rtol=0, atol=0, equal_nan=True,
                                   msg=lambda m, i=i: f"{where} {i}: {m}")


def _run_side_by_side(actions, loops: dict[str, Loop], pairs: list[tuple[str, str]]) -> None:
    for n, action in enumerate(actions):
        for loop in loops.values():
            loop.apply(action)
        for a, b in pairs:
            _assert_same(loops[a], loops[b], f"{a} vs {b} after {actions[:n + 1]}")


@examples(40)
@given(st.lists(TORCH_ACTIONS, min_size=1, max_size=12))
def test_changes_torch_can_follow_match_torchs_same_path(actions):
    loops = {
        "ours-reference": Loop(rmsprop.RMSprop, foreach=False),
        "ours-foreach": Loop(rmsprop.RMSprop, foreach=True),
        "torch-forloop": Loop(torch.optim.RMSprop, foreach=False),
        "torch-foreach": Loop(torch.optim.RMSprop, foreach=True),
    }
    _run_side_by_side(actions + [("step",)], loops,
                      [("ours-reference", "torch-forloop"), ("ours-foreach", "torch-foreach")])


@examples(40)
@given(st.lists(OUR_ACTIONS, min_size=1, max_size=12))
def test_every_change_keeps_reference_and_foreach_equal(actions):
    loops = {"reference": Loop(rmsprop.RMSprop, foreach=False),
             "foreach": Loop(rmsprop.RMSprop, foreach=True)}
    _run_side_by_side(actions + [("step",)], loops, [("reference", "foreach")])


def test_torch_cannot_switch_momentum_on_later_and_we_can():
    script = [("step",), ("momentum", 0.9), ("step",)]
    with pytest.raises(KeyError, match="momentum_buffer"):
        _run_side_by_side(script, {"torch": Loop(torch.optim.RMSprop)}, [])
    ours = Loop(rmsprop.RMSprop)
    _run_side_by_side(script, {"ours": ours}, [])
    assert all(torch.isfinite(t).all() for t in ours.tensors())


# Each structure compiles, so one group: lr through 0 and back (a runtime
# value: nothing recompiles), a new group, a frozen then unfrozen parameter;
# `make test-slow` also switches momentum on.
FUSED_SCRIPT = [("step",), ("lr", 0.0), ("step",), ("lr", 0.05), ("step",), ("add_group", 0.0), ("step",),
                ("freeze", 1), ("step",), ("unfreeze", 1), ("step",)]


@pytest.mark.skipif(fused.fused_unavailable_reason([torch.zeros(1)], False) is not None,
                    reason="fused path unavailable: no C++ compiler")
@pytest.mark.parametrize("script", [FUSED_SCRIPT, pytest.param(
    FUSED_SCRIPT + [("momentum", 0.9), ("step",), ("centered", True), ("step",)], marks=pytest.mark.slow)],
    ids=["schedule-group-freeze", "and-momentum-centered"])
def test_the_fused_path_follows_every_change(script):
    ours, ref = Loop(rmsprop.RMSprop, groups=1, fused=True), Loop(rmsprop.RMSprop, groups=1, foreach=False)
    graphs = []
    for action in script:
        ours.apply(action)
        ref.apply(action)
        if action[0] == "step":
            graphs.append(fused.compiled_structures())
        for x, y in zip(ours.tensors(), ref.tensors(), strict=True):
            torch.testing.assert_close(x, y, rtol=2e-6, atol=1e-7, msg=lambda m, a=action: f"after {a}: {m}")
    # lr 0.01 → 0 → 0.05: the same graph runs (steps 1-3 compile nothing new)
    assert graphs[1] == graphs[0] and graphs[2] == graphs[0], graphs
