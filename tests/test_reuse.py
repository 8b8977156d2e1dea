"""A step reuses the last step's plan of a group only while nothing it was
made from changed (``rmsprop.plan._Reusable``): every hostile edit between
two steps leads to what planning afresh does, the same error or the same
bits.

Twin optimizers over equal parameters take equal gradients and edits
(``hostile.REUSE_EDITS``); one forgets its plan after every step, so it
plans every step in full, as before plans were kept. After each step both
have raised the same error or hold the same parameters and state, bit for
bit (both run the same path on the same tensors).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import rmsprop
from rmsprop import guards
from rmsprop import plan as planning

from helpers import needs_fused
from hostile import REUSE_EDITS, examples

SHAPES = [(3, 4), (4, 2), (5,)]
WARM = 3  # steps before the edit: the first makes the state, the second the plan kept, the third reuses it


@dataclass
class _Twin:
    opt: rmsprop.RMSprop
    params: list[torch.Tensor]
    reuses: bool
    gen: torch.Generator = field(default_factory=lambda: torch.Generator().manual_seed(1))
    reused: int = 0

    def step(self) -> tuple[type, str] | None:
        """One step on fresh gradients; the error it raised, if any."""
        try:
            self.opt.step()
        except Exception as error:  # noqa: BLE001 (compared with the twin's)
            return type(error), str(error)
        finally:
            if not self.reuses:
                for checked in self.opt._checked.values():
                    checked.last = None
        return None

    def new_grads(self) -> None:
        for p in self.params:
            if p.requires_grad:
                p.grad = torch.randn(p.shape, generator=self.gen, dtype=p.dtype)


def _twins(knobs: dict) -> list[_Twin]:
    """Two groups: the first parameter alone, then the others."""
    gen = torch.Generator().manual_seed(0)
    dtype = knobs.pop("dtype", torch.float32)
    base = [torch.randn(shape, generator=gen).to(dtype) for shape in SHAPES]
    twins = []
    for reuses in (True, False):
        params = [torch.nn.Parameter(b.clone()) for b in base]
        groups = [{"params": params[:1]}, {"params": params[1:]}]
        twins.append(_Twin(rmsprop.RMSprop(groups, lr=0.01, **knobs), params, reuses))
    return twins


def _same(ours: _Twin, fresh: _Twin, where: str) -> None:
    assert len(ours.params) == len(fresh.params), where
    for p, q in zip(ours.params, fresh.params):
        assert (p.dtype, p.shape, p.stride()) == (q.dtype, q.shape, q.stride()) and torch.equal(p, q), where
        mine, theirs = ours.opt.state.get(p, {}), fresh.opt.state.get(q, {})
        assert mine.keys() == theirs.keys(), where
        for key, value in theirs.items():
            assert (mine[key].dtype, mine[key].shape) == (value.dtype, value.shape), f"{where}: {key}"
            assert torch.equal(mine[key], value), f"{where}: {key}"


# bfloat16 parameters written with stochastic rounding: each parameter's
# noise is salted with its index in the optimizer, which an edit of an
# earlier group moves.
KNOBS = {"plain": {}, "centered-momentum": {"centered": True, "momentum": 0.9, "weight_decay": 0.01},
         "bf16-rounding": {"dtype": torch.bfloat16, "stochastic_rounding": True, "state_precision": "fp32"}}
CASES = [pytest.param(edit, {"foreach": True, **knobs}, id=f"foreach-{name}-{edit}")
         for name, knobs in KNOBS.items() for edit in REUSE_EDITS]
CASES += [pytest.param(edit, {"fused": True, **KNOBS["centered-momentum"]}, id=f"fused-{edit}",
                       marks=needs_fused) for edit in REUSE_EDITS]


@pytest.mark.parametrize("edit,knobs", CASES)
def test_an_edit_between_steps_does_what_planning_afresh_does(edit, knobs, monkeypatch):
    twins = _twins(knobs)
    reused = []
    real = planning._reuse
    monkeypatch.setattr(planning, "_reuse", lambda *a: reused.append(real(*a)) or reused[-1])
    for t in range(WARM + 3):
        outcomes = []
        for twin in twins:
            twin.new_grads()
            if t == WARM:
                REUSE_EDITS[edit](twin.opt, twin.params, twin.gen)
            outcomes.append(twin.step())
        where = f"{edit}, step {t + 1}"
        assert outcomes[0] == outcomes[1], where
        _same(*twins, where)
        if t == WARM - 1:  # the twin that keeps its plan reused it: the edit meets a kept plan
            assert reused and reused[-1] is not None, "the plan was not reused before the edit"


# Any sequence of edits, one or none before each step, in any configuration.
@pytest.mark.parametrize("n_examples", [pytest.param(60, id="60"),
                                        pytest.param(600, id="600", marks=pytest.mark.slow)])
def test_any_sequence_of_edits_does_what_planning_afresh_does(n_examples):
    names = sorted(REUSE_EDITS)

    @examples(n_examples)
    @given(config=st.sampled_from(sorted(KNOBS)),
           edits=st.lists(st.sampled_from(names), min_size=1, max_size=6))
    def check(config, edits):
        twins = _twins({"foreach": True, **KNOBS[config]})
        for t, edit in enumerate(["nothing"] * (WARM - 1) + edits + ["nothing"]):
            outcomes = []
            for twin in twins:
                twin.new_grads()
                try:  # an edit may not apply after the ones before (a parameter gone, a refused
                    REUSE_EDITS[edit](twin.opt, twin.params, twin.gen)  # load): the same for both
                except Exception as error:  # noqa: BLE001 (its type compared: messages may hold ids)
                    outcomes.append(type(error))
                outcomes.append(twin.step())
            where = f"{config}: {edits}, step {t + 1}"
            assert outcomes[:len(outcomes) // 2] == outcomes[len(outcomes) // 2:], where
            _same(*twins, where)

    check()


def test_the_guard_refuses_every_fact_it_guards():
    x = torch.zeros(2, 3)
    guard = guards.layout_guard([x])
    assert guard is not None and guard.check(torch.ones(2, 3))
    others = {"strides": torch.zeros(3, 2).t(), "gaps": torch.zeros(2, 6)[:, ::2], "shape": torch.zeros(3, 2),
              "dtype": torch.zeros(2, 3, dtype=torch.float64), "rank": torch.zeros(2, 3, 1),
              "type": torch.nn.Parameter(torch.zeros(2, 3)),
              "requires_grad": torch.zeros(2, 3, requires_grad=True),
              "sparse": torch.zeros(2, 3).to_sparse()}
    for what, other in others.items():
        assert not guard.check(other), what
    assert guards.layout_guard([x, x]) is None  # a tensor passed twice never passes: no guard


def test_without_guards_every_step_plans_in_full_and_steps_the_same(monkeypatch):
    """Where PyTorch has no usable TensorGuards nothing is kept between steps,
    and the steps are the same."""
    monkeypatch.setattr(guards, "_works", lambda: False)
    assert guards.layout_guard([torch.zeros(2)]) is None
    twins = _twins({"foreach": True})
    for t in range(WARM + 1):
        for twin in twins:
            twin.new_grads()
            assert twin.step() is None
        _same(*twins, f"step {t + 1}")
    assert all(checked.last is None for checked in twins[0].opt._checked.values())
