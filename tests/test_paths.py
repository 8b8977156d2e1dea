"""Every path equals the reference path in float64, for every knob combination.

The reference path calls the engine's pure function; the foreach path restates
the maths with multi-tensor ops. 20 steps, parameters of every shape (scalar,
vector, matrix, 0-size, complex), gradients that are missing at some steps, a
frozen parameter, and a learning rate that changes mid-run.
"""

from __future__ import annotations

import pytest
import torch

import rmsprop

from cases import MOMENTUM_MODES, WEIGHT_DECAY_MODES, every_combination
from helpers import clone_params, grad_stream, make_params, run

STEPS = 20
CASES = every_combination()


def _cases_for(momentum_mode: str, wd_mode: str):
    prefix = f"{momentum_mode}-{wd_mode}-"
    return [(name, kw) for name, kw in CASES if name.startswith(prefix)]


@pytest.mark.parametrize("wd_mode", list(WEIGHT_DECAY_MODES))
@pytest.mark.parametrize("momentum_mode", list(MOMENTUM_MODES))
def test_foreach_equals_reference_float64(momentum_mode, wd_mode):
    cases = _cases_for(momentum_mode, wd_mode)
    assert len(cases) == 96  # 2⁴ switches × 2 initial values × 3 orders of operations
    base = make_params(torch.float64, complex_too=True)
    stream = grad_stream(base, STEPS)
    for name, knobs in cases:
        ref_params, fe_params = clone_params(base), clone_params(base)
        ref = run(rmsprop.RMSprop, ref_params, stream, {10: 0.003}, foreach=False, **knobs)
        fe = run(rmsprop.RMSprop, fe_params, stream, {10: 0.003}, foreach=True, **knobs)
        for i, (a, b) in enumerate(zip(ref_params, fe_params)):
            torch.testing.assert_close(
                b, a, rtol=1e-12, atol=1e-15, msg=lambda m, where=f"{name} θ{i}": f"{where}: {m}"
            )
            assert ref.state[a].keys() == fe.state[b].keys(), name
            for key, value in ref.state[a].items():
                torch.testing.assert_close(
                    fe.state[b][key], value, rtol=1e-12, atol=1e-15,
                    msg=lambda m, where=f"{name} θ{i} {key}": f"{where}: {m}",
                )


@pytest.mark.parametrize("momentum_mode", [m for m in MOMENTUM_MODES if m != "no-momentum"])
def test_cautious_foreach_equals_reference_float64(momentum_mode):
    """(15) on every momentum form, with the switches that change the step's sign (maximize,
    centered) and decoupled decay (L2 on a complex parameter rounds apart by path, as in
    PyTorch: tests/test_hostile.py): foreach is the reference bit for bit in float64, and
    caution does change the trajectory (the mask is not all ones)."""
    cases = [(name, kw) for name, kw in _cases_for(momentum_mode, "decoupled")
             if "order=torch-" not in name][::5]
    base = make_params(torch.float64, complex_too=True)
    stream = grad_stream(base, STEPS)
    for name, knobs in cases:
        ref_params, fe_params, plain = clone_params(base), clone_params(base), clone_params(base)
        ref = run(rmsprop.RMSprop, ref_params, stream, {10: 0.003}, foreach=False, caution=True, **knobs)
        fe = run(rmsprop.RMSprop, fe_params, stream, {10: 0.003}, foreach=True, caution=True, **knobs)
        run(rmsprop.RMSprop, plain, stream, {10: 0.003}, foreach=False, **knobs)
        for a, b in zip(ref_params, fe_params):
            assert torch.equal(a, b), name
            for key, value in ref.state[a].items():
                assert torch.equal(fe.state[b][key], value), f"{name} {key}"
        changed = any(not torch.equal(a, c) for a, c in zip(ref_params, plain))
        assert changed, f"{name}: caution changed nothing"


def test_the_table_covers_every_combination():
    names = {name for name, _ in CASES}
    assert len(names) == len(CASES) == 5 * 3 * 16 * 2 * 3



@pytest.mark.parametrize("foreach", [False, True], ids=["reference", "foreach"])
@pytest.mark.parametrize("name,knobs", [c for c in CASES if "maximize" in c[0] and "l2" in c[0]][::8])
def test_grads_are_never_written_and_params_without_grads_are_skipped(name, knobs, foreach):
    params = make_params(torch.float64, complex_too=True)
    frozen = params[-1].detach().clone()
    opt = rmsprop.RMSprop(params, foreach=foreach, **knobs)
    for grads in grad_stream(params, 3):
        for p, g in zip(params, grads):
            p.grad = g
        opt.step()
        for p, g in zip(params, grads):
            assert p.grad is g
            assert g is None or g._version == 0, name  # no in-place write ever touched it
    assert torch.equal(params[-1], frozen) and params[-1] not in opt.state


@pytest.mark.parametrize("chunk_numel", [1, 8, 20])
def test_cpu_cache_blocking_changes_nothing(monkeypatch, chunk_numel):
    """The foreach path steps CPU tensors in cache-sized chunks; with tiny
    chunks every split point is exercised and the result must not move."""
    from rmsprop.paths import foreach

    assert foreach._chunks(make_params()[:3]) == [slice(0, 3)]  # small groups stay whole
    monkeypatch.setattr(foreach, "CPU_CHUNK_NUMEL", chunk_numel)
    chunks = foreach._chunks(make_params())
    assert len(chunks) > 1 and chunks[0].start == 0 and chunks[-1].stop == len(make_params())
    base = make_params(torch.float64, complex_too=True)
    stream = grad_stream(base, 5)
    for name, knobs in CASES[::37]:
        ref_params, fe_params = clone_params(base), clone_params(base)
        run(rmsprop.RMSprop, ref_params, stream, foreach=False, **knobs)
        run(rmsprop.RMSprop, fe_params, stream, foreach=True, **knobs)
        for a, b in zip(ref_params, fe_params):
            torch.testing.assert_close(b, a, rtol=1e-12, atol=1e-15, msg=lambda m, n=name: f"{n}: {m}")


class _Subclass(torch.Tensor):
    pass


@pytest.mark.parametrize(
    "params,foreach,differentiable,expected",
    [
        ([torch.zeros(2)], None, False, "foreach"),  # measured faster on CPU
        ([torch.zeros(2)], False, False, "reference"),
        ([torch.zeros(2)], True, False, "foreach"),
        ([torch.zeros(2)], None, True, "reference"),
        # complex on CPU: PyTorch's default there, its for-loop, which only the reference path equals
        ([torch.zeros(2, dtype=torch.complex64)], None, False, "reference"),
        ([torch.zeros(2), torch.zeros(2, dtype=torch.complex128)], None, False, "reference"),
        ([torch.zeros(2, dtype=torch.complex64)], True, False, "foreach"),  # an explicit choice wins
        ([torch.zeros(2).as_subclass(_Subclass)], None, False, "reference"),
        ([], None, False, "reference"),
    ],
)
def test_dispatch_policy(params, foreach, differentiable, expected):
    from rmsprop.paths import choose_path

    assert choose_path(params, foreach, differentiable) == expected


def test_an_explicit_choice_that_cannot_run_raises():
    from rmsprop.paths import choose_path

    with pytest.raises(ValueError, match="foreach=True cannot run with differentiable=True"):
        choose_path([torch.zeros(2)], True, True)


@pytest.mark.parametrize("precision", ["param", "fp32", "bf16", "int8"])
def test_the_groups_state_precision_and_buffers_reach_the_path_policy(monkeypatch, precision):
    import rmsprop.plan
    from rmsprop.paths import choose_path

    seen = []

    def spy(params, foreach, differentiable, fused=None, state_precision="param", state_buffers=1, *names):
        seen.append((state_precision, state_buffers))
        return choose_path(params, foreach, differentiable, fused, state_precision, state_buffers, *names)

    monkeypatch.setattr(rmsprop.plan, "choose_path", spy)
    for knobs, buffers in (({}, 1), ({"centered": True, "momentum": 0.9}, 3)):
        seen.clear()
        p = torch.nn.Parameter(torch.ones(3))
        p.grad = torch.ones(3)
        rmsprop.RMSprop([p], lr=0.1, state_precision=precision, **knobs).step()
        assert seen == [(precision, buffers)]
