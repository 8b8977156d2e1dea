"""Robustness: the non-finite gradient policy (on the host and, forced on
CPU, as decided on an accelerator), capturable's promise never to read lr
back to the host, bit-exact resume in a fresh process, and
load_state_dict's ``knobs=`` modes."""

from __future__ import annotations

import copy
import io
import os
import pickle
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest
import torch

import rmsprop
import rmsprop.finite
from rmsprop.paths import PATHS
from rmsprop.paths.grouping import StepTensors
from rmsprop.settings import hyper_from, saved_defaults

from cases import pairwise_combinations
from helpers import NoHostReads, clone_params, forbid_host_reads, grad_stream, make_params, needs_fused

PATH_ARGS = {"reference": {"foreach": False}, "foreach": {"foreach": True}, "fused": {"fused": True}}
# Every path, the fused one under the shared marker (it needs a C++ compiler).
EVERY_PATH = ["reference", "foreach", pytest.param("fused", marks=needs_fused)]
KNOBS = {"momentum": 0.9, "centered": True, "weight_decay": 0.01}


def _feed(params, grads):
    for p, g in zip(params, grads):
        p.grad = None if g is None else g.clone()


def _snapshot(params, opt):
    return [p.detach().clone() for p in params], copy.deepcopy(opt.state_dict())


def _assert_same(a, b):
    (params_a, sd_a), (params_b, sd_b) = a, b
    for x, y in zip(params_a, params_b):
        assert torch.equal(x, y)
    assert sd_a["param_groups"] == sd_b["param_groups"]
    assert sd_a["state"].keys() == sd_b["state"].keys()
    for k, state in sd_a["state"].items():
        assert state.keys() == sd_b["state"][k].keys()
        for key, value in state.items():
            assert torch.equal(value, sd_b["state"][k][key]), (k, key)


def _poisoned(stream, step, value):
    """``stream`` with one element of one gradient at ``step`` set to ``value``."""
    bad = [[None if g is None else g.clone() for g in grads] for grads in stream]
    bad[step][2].view(-1)[5] = value
    return bad


# ------------------------------------------------------------------ nonfinite policy


def test_nonfinite_must_be_a_known_policy():
    with pytest.raises(ValueError, match="Invalid nonfinite value: 'ignore'"):
        rmsprop.RMSprop([torch.zeros(1, requires_grad=True)], nonfinite="ignore")


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")], ids=["nan", "inf", "-inf"])
@pytest.mark.parametrize("path", EVERY_PATH)
def test_skip_changes_nothing_and_the_run_goes_on_as_without_the_batch(path, bad):
    base = make_params(torch.float32)
    stream = grad_stream(base, 6)
    poisoned = _poisoned(stream, 3, bad)

    clean = clone_params(base)
    ref = rmsprop.RMSprop(clean, **KNOBS, **PATH_ARGS[path])
    for t, grads in enumerate(stream):
        if t != 3:  # the run that never saw the bad batch
            _feed(clean, grads)
            ref.step()

    params = clone_params(base)
    opt = rmsprop.RMSprop(params, **KNOBS, **PATH_ARGS[path], nonfinite="skip")
    for t, grads in enumerate(poisoned):
        _feed(params, grads)
        before = _snapshot(params, opt)
        opt.step()
        if t == 3:
            for group in before[1]["param_groups"]:
                group["skipped_steps"] += 1  # the only change
            _assert_same(_snapshot(params, opt), before)
    assert opt.skipped_steps == 1
    ref_params, ref_sd = _snapshot(clean, ref)
    for group in ref_sd["param_groups"]:
        group["skipped_steps"] = 1
    _assert_same(_snapshot(params, opt), (ref_params, ref_sd))


def test_skip_is_all_or_nothing_across_groups_and_counted_in_every_group():
    a, b = torch.nn.Parameter(torch.ones(3)), torch.nn.Parameter(torch.ones(2))
    opt = rmsprop.RMSprop([{"params": [a]}, {"params": [b], "lr": 0.1}], nonfinite="skip")
    a.grad, b.grad = torch.ones(3), torch.tensor([1.0, float("nan")])
    opt.step()
    assert torch.equal(a, torch.ones(3)) and opt.state[a] == {}  # not even state was created
    assert [g["skipped_steps"] for g in opt.param_groups] == [1, 1]
    c = torch.nn.Parameter(torch.ones(1))
    opt.add_param_group({"params": [c]})
    assert opt.param_groups[2]["skipped_steps"] == 1 and opt.skipped_steps == 1
    b.grad = torch.ones(2)
    opt.step()
    assert not torch.equal(a, torch.ones(3)) and opt.skipped_steps == 1


def test_skipped_steps_survive_state_dict_pickle_and_weights_only_loading():
    p = torch.nn.Parameter(torch.ones(2))
    opt = rmsprop.RMSprop([p], nonfinite="skip")
    for g in ([1.0, float("inf")], [1.0, 1.0], [float("nan"), 0.0]):
        p.grad = torch.tensor(g)
        opt.step()
    assert opt.skipped_steps == 2
    buf = io.BytesIO()
    torch.save(opt.state_dict(), buf)
    buf.seek(0)
    fresh = rmsprop.RMSprop([p], nonfinite="skip")
    fresh.load_state_dict(torch.load(buf, weights_only=True))
    assert fresh.skipped_steps == 2
    clone = pickle.loads(pickle.dumps(opt))
    assert clone.skipped_steps == 2 and clone.nonfinite == "skip"


def test_propagate_is_pytorchs_behaviour():
    ours, theirs = torch.nn.Parameter(torch.ones(2)), torch.nn.Parameter(torch.ones(2))
    a, b = rmsprop.RMSprop([ours]), torch.optim.RMSprop([theirs])
    for p, opt in ((ours, a), (theirs, b)):
        p.grad = torch.tensor([1.0, float("nan")])
        opt.step()
    assert torch.equal(ours.isnan(), theirs.isnan()) and ours.isnan().any()
    assert a.skipped_steps == 0


@pytest.mark.parametrize("named", [True, False])
def test_raise_names_the_parameter_and_step_and_changes_nothing(named):
    w, bias = torch.nn.Parameter(torch.ones(2, 2)), torch.nn.Parameter(torch.zeros(2))
    params = [("w", w), ("bias", bias)] if named else [{"params": [w]}, {"params": [bias]}]
    opt = rmsprop.RMSprop(params, nonfinite="raise")
    w.grad, bias.grad = torch.ones(2, 2), torch.ones(2)
    opt.step()
    opt.step()
    before = _snapshot([w, bias], opt)
    bias.grad = torch.tensor([0.0, float("inf")])
    who = "'bias'" if named else "0 of param group 1"
    with pytest.raises(FloatingPointError, match=f"parameter {who} at step 3"):
        opt.step()
    _assert_same(_snapshot([w, bias], opt), before)


@pytest.mark.parametrize("path", EVERY_PATH)
@torch.no_grad()
def test_every_path_obeys_a_false_finite_flag(path):
    """The paths' own contract, used where the decision stays on an accelerator
    (the fused path decides inside its compiled pass: exercised here on CPU)."""
    params = make_params(torch.float32)[:3]
    grads = [torch.randn_like(p) for p in params]
    state = [(torch.rand_like(p), torch.rand_like(p), torch.rand_like(p), torch.tensor(2.0)) for p in params]
    v, m, b, t = ([s[i] for s in state] for i in range(4))
    # every other setting as the table's defaults read (PyTorch's semantics)
    hyper = hyper_from({**saved_defaults(), "lr": 0.1, "alpha": 0.9, "eps": 1e-3, "weight_decay": 0.1,
                        "momentum": 0.9, "centered": True, "bias_correction": True})
    before = [x.clone() for x in (*params, *v, *m, *b, *t)]
    tensors = StepTensors(params, grads, v, m, b, t, list(range(len(params))))
    PATHS[path](tensors, hyper, finite=torch.tensor(False))
    assert all(torch.equal(x, y) for x, y in zip((*params, *v, *m, *b, *t), before))
    PATHS[path](tensors, hyper, finite=torch.tensor(True))
    assert all(float(s) == 3.0 for s in t)
    assert not torch.equal(params[1], before[1])


def test_grad_scaler_skips_before_the_optimizer_sees_the_gradients():
    """GradScaler never calls step() when it found an Inf, so only the steps
    that reach us count as skipped; and what it lets through, nonfinite="skip"
    catches: a NaN made after ``scaler.unscale_`` (clipping to a norm budget
    that came out NaN) reaches step(), which changes nothing and counts it."""
    p = torch.nn.Parameter(torch.ones(2))
    opt = rmsprop.RMSprop([p], nonfinite="skip")
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**4)
    for g in ([1.0, float("inf")], [1.0, 1.0]):
        scaler.scale((p * torch.tensor(g)).sum()).backward()
        scaler.step(opt)
        scaler.update()
        opt.zero_grad()
    assert opt.skipped_steps == 0
    assert opt.state[p]["step"] == 1 and scaler.get_scale() == 2.0**3

    def train_step(param, optimizer, amp, budget):
        amp.scale((param * torch.tensor([3.0, -4.0])).sum()).backward()
        amp.unscale_(optimizer)  # finite: the scaler will call step()
        torch.nn.utils.clip_grad_norm_([param], max_norm=budget)
        nan = bool(param.grad.isnan().all())  # what the scaler did not see
        amp.step(optimizer)
        amp.update()
        optimizer.zero_grad()
        return nan

    twin = torch.nn.Parameter(p.detach().clone())  # the same run without the bad batch
    ref = rmsprop.RMSprop([twin])
    ref.load_state_dict(copy.deepcopy(opt.state_dict()))
    twin_scaler = torch.amp.GradScaler("cpu", init_scale=scaler.get_scale())
    for t, budget in enumerate([1.0, float("nan"), 1.0]):
        before = _snapshot([p], opt)
        assert train_step(p, opt, scaler, budget) == (t == 1)
        if t == 1:
            for group in before[1]["param_groups"]:
                group["skipped_steps"] += 1  # the only change
            _assert_same(_snapshot([p], opt), before)
        else:
            train_step(twin, ref, twin_scaler, budget)
    assert opt.skipped_steps == 1 and scaler.get_scale() == 2.0**3  # the scaler saw nothing wrong
    assert opt.state[p]["step"] == 3 and torch.equal(p.detach(), twin.detach())


# ------------------------------------------------------------ verdicts on an accelerator


class _OnAnAccelerator(torch.Tensor):
    """A CPU tensor that says it is not on the CPU; so do the tensors computed
    from it (``all()``, ``~``, sums)."""

    @property
    def is_cpu(self) -> bool:
        return False


@pytest.fixture
def verdicts_on_an_accelerator(monkeypatch):
    """The non-finite verdict of a step, made to look as if it lived on an
    accelerator: the per-gradient flags that ``rmsprop.finite.finite_flags``
    returns (wherever rmsprop calls it from) come back as _OnAnAccelerator.
    The hook this relies on: the step gets its flags from ``finite_flags``,
    and keeps the verdict as a device tensor where ``is_cpu`` is False."""
    real = rmsprop.finite.finite_flags
    callers = [m for name, m in list(sys.modules.items()) if name.startswith("rmsprop")
               and isinstance(m, ModuleType) and getattr(m, "finite_flags", None) is real]
    assert callers

    def flags(tensors):
        return real(tensors).as_subclass(_OnAnAccelerator)

    for module in callers:
        monkeypatch.setattr(module, "finite_flags", flags)


def _exact_state(params, opt):
    """θ and the state, cloned, without asking the optimizer (``state_dict``
    would settle the skips still on the device)."""
    return ([p.detach().clone() for p in params],
            [{key: value.clone() for key, value in opt.state[p].items()} if p in opt.state else None
             for p in params])


def _assert_same_state(a, b):
    for x, y in zip(a[0], b[0]):
        assert torch.equal(x, y)
    for x, y in zip(a[1], b[1]):
        assert (x is None) == (y is None)
        if x is not None:
            assert x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in x)


@pytest.mark.parametrize("path", ["reference", "foreach"])
def test_skips_decided_on_an_accelerator_are_counted_when_asked(path, verdicts_on_an_accelerator):
    """Where the gradients live on an accelerator, "skip" keeps the verdict on
    the device and reads the count back only when asked (``skipped_steps``,
    ``state_dict``, pickling, a new group): good and bad steps in a row,
    several skips waiting at once, asked twice and counted once. The run is
    the run without the bad batches."""
    base = make_params(torch.float32)
    stream = grad_stream(base, 8)
    bad = {1: float("nan"), 2: float("inf"), 5: -float("inf"), 6: float("nan")}
    poisoned = stream
    for t, value in bad.items():
        poisoned = _poisoned(poisoned, t, value)
    clean = clone_params(base)
    ref = rmsprop.RMSprop(clean, **KNOBS, **PATH_ARGS[path])
    for t, grads in enumerate(stream):
        if t not in bad:
            _feed(clean, grads)
            ref.step()

    params = clone_params(base)
    opt = rmsprop.RMSprop([{"params": params[:3]}, {"params": params[3:], "lr": 0.01}],
                          **KNOBS, **PATH_ARGS[path], nonfinite="skip")
    asked = []
    for t, grads in enumerate(poisoned):
        _feed(params, grads)
        before = _exact_state(params, opt)
        opt.step()
        if t in bad:
            _assert_same_state(_exact_state(params, opt), before)
        if t == 1:  # not read back yet: the count is still on the device
            asked.append([g["skipped_steps"] for g in opt.param_groups])
        if t == 2:  # two skips waiting
            asked.append([g["skipped_steps"] for g in opt.state_dict()["param_groups"]])
        if t == 3:
            asked.append([opt.skipped_steps, opt.skipped_steps])  # asked twice, counted once
        if t == 6:
            clone = pickle.loads(pickle.dumps(opt))
            asked.append([g["skipped_steps"] for g in clone.param_groups])
    extra = torch.nn.Parameter(torch.ones(1))
    opt.add_param_group({"params": [extra]})
    asked.append([g["skipped_steps"] for g in opt.param_groups])
    assert asked == [[0, 0], [2, 2], [2, 2], [4, 4], [4, 4, 4]]
    assert opt.skipped_steps == 4
    for a, b in zip(params, clean):
        assert torch.equal(a, b)


# ------------------------------------------------------------------- capturable


@pytest.mark.parametrize("path", ["reference", "foreach"])
def test_capturable_never_reads_lr_back_to_the_host(path):
    """A capturable step keeps a tensor lr on its device: no value of it, or
    of anything computed from it, comes back to the host during step()
    (``item``, ``tolist``, ``float``, ``int``, ``bool``, ``__index__``, …:
    helpers.NoHostReads), on CPU too; the result is the float lr's."""
    base = make_params(torch.float64)
    stream = grad_stream(base, 6)
    plain, captured = clone_params(base), clone_params(base)
    ref = rmsprop.RMSprop(plain, lr=0.01, momentum=0.9, **PATH_ARGS[path])
    lr = torch.tensor(0.01, dtype=torch.float64).as_subclass(NoHostReads)
    opt = rmsprop.RMSprop(captured, lr=lr, momentum=0.9, capturable=True, **PATH_ARGS[path])
    for t, grads in enumerate(stream):
        if t == 3:  # a schedule writes the tensor in place
            with torch.no_grad():
                lr.fill_(0.003)
            for group in ref.param_groups:
                group["lr"] = 0.003
        _feed(plain, grads)
        _feed(captured, grads)
        ref.step()
        with forbid_host_reads():
            opt.step()
    for a, b in zip(plain, captured):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-15)
    assert all(opt.state[p]["step"].device == p.device for p in captured if p in opt.state)


# ---------------------------------------------------------------- resume in a new process

RESUME_CHILD = Path(__file__).with_name("resume_child.py")
FUSED_RESUME_CASES = ("no-momentum-no-wd-v0=0",)


def _resume_cases(paths, fused_names=FUSED_RESUME_CASES):
    combos = dict(pairwise_combinations())
    combos["no-momentum-no-wd-v0=0"] = {"lr": 0.01, "alpha": 0.9, "eps": 1e-3}
    names = {path: list(combos) for path in paths}
    if "fused" in names and fused_names is not None:
        names["fused"] = list(fused_names)
    return [(f"{path}/{name}", path, combos[name]) for path in paths for name in names[path]]


@pytest.mark.parametrize("paths", [("reference", "foreach"), pytest.param(("fused",), marks=needs_fused)],
                         ids=["reference+foreach", "fused"])
def test_resume_in_a_fresh_process_is_bit_exact(tmp_path, paths):
    """N steps, torch.save, torch.load(weights_only=True) in another process,
    M more steps there: the same bits as N + M steps without a break, for every
    path and a covering set of knob combinations (the fused path: one here,
    every one in the slow test below, since each compiles)."""
    _check_resume(tmp_path, _resume_cases(paths))


@pytest.mark.slow
@needs_fused
def test_resume_in_a_fresh_process_is_bit_exact_fused_every_pair(tmp_path):
    _check_resume(tmp_path, _resume_cases(("fused",), fused_names=None))


def _check_resume(tmp_path, cases):
    n, m = 4, 3
    jobs, expected = [], {}
    for name, path, knobs in cases:
        base = make_params(torch.float32, complex_too=path != "fused")
        stream = grad_stream(base, n + m)
        straight = clone_params(base)
        opt = rmsprop.RMSprop(straight, **knobs, **PATH_ARGS[path])
        for grads in stream:
            _feed(straight, grads)
            opt.step()
        expected[name] = _snapshot(straight, opt)

        resumed = clone_params(base)
        opt = rmsprop.RMSprop(resumed, **knobs, **PATH_ARGS[path])
        for grads in stream[:n]:
            _feed(resumed, grads)
            opt.step()
        jobs.append({"name": name, "path_args": PATH_ARGS[path], "params": [p.detach() for p in resumed],
                     "requires_grad": [p.requires_grad for p in resumed],
                     "optimizer": opt.state_dict(), "stream": stream[n:]})
    torch.save(jobs, tmp_path / "jobs.pt")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    subprocess.run([sys.executable, str(RESUME_CHILD), str(tmp_path / "jobs.pt"), str(tmp_path / "out.pt")],
                   check=True, env=env, timeout=600)
    results = torch.load(tmp_path / "out.pt", weights_only=True)
    assert sorted(results) == sorted(expected)
    for name, (params, sd) in results.items():
        _assert_same((params, sd), expected[name])


def test_loading_onto_float32_params_casts_the_state_as_pytorch_does():
    wide = make_params(torch.float64)
    stream = grad_stream(wide, 3)
    saved = {}
    for cls in (rmsprop.RMSprop, torch.optim.RMSprop):
        params = clone_params(wide)
        opt = cls(params, momentum=0.9)
        for grads in stream:
            _feed(params, grads)
            opt.step()
        narrow = [torch.nn.Parameter(p.detach().float(), requires_grad=p.requires_grad) for p in params]
        fresh = cls(narrow, momentum=0.9)
        fresh.load_state_dict(opt.state_dict())
        saved[cls] = fresh.state_dict()["state"]
    ours, theirs = saved[rmsprop.RMSprop], saved[torch.optim.RMSprop]
    assert ours.keys() == theirs.keys()
    for k in ours:
        for key in ours[k]:
            assert ours[k][key].dtype == theirs[k][key].dtype, (k, key)
            assert torch.equal(ours[k][key], theirs[k][key])
        assert ours[k]["square_avg"].dtype == torch.float32 and ours[k]["step"].dtype == torch.float32


# ------------------------------------------------------------------- knobs= on loading


def _saved_torch_state():
    params = make_params(torch.float64)
    theirs = torch.optim.RMSprop(params, lr=0.05, momentum=0.9)
    stream = grad_stream(params, 3)
    for grads in stream:
        _feed(params, grads)
        theirs.step()
    return params, theirs.state_dict()


def test_knobs_saved_takes_the_values_the_file_states():
    params, sd = _saved_torch_state()
    opt = rmsprop.RMSprop(params, lr=0.1, preset="tf1", momentum=0.5)
    opt.load_state_dict(sd)  # the default is "saved"
    group = opt.param_groups[0]
    got = (group["preset"], group["lr"], group["momentum"], group["eps_in_sqrt"])
    assert got == ("tf1", 0.05, 0.9, True)  # PyTorch's file states lr and μ, not ε's place


def test_knobs_current_keeps_ours_and_takes_only_the_state():
    params, sd = _saved_torch_state()
    opt = rmsprop.RMSprop(params, lr=0.1, preset="tf1", momentum=0.5)
    before = dict(opt.param_groups[0])
    opt.load_state_dict(sd, knobs="current")
    assert opt.param_groups[0] == before
    assert torch.equal(opt.state[params[0]]["square_avg"], sd["state"][0]["square_avg"])


def test_knobs_strict_names_every_difference_and_changes_nothing():
    params, sd = _saved_torch_state()
    opt = rmsprop.RMSprop(params, lr=0.1, preset="tf1", momentum=0.5)
    before = copy.deepcopy(opt.state_dict())
    differences = r"group 0 alpha: saved 0.99, current 0.9.*group 0 momentum: saved 0.9"
    with pytest.raises(ValueError, match=differences):
        opt.load_state_dict(sd, knobs="strict")
    assert opt.state_dict() == before
    same = rmsprop.RMSprop(params, lr=0.1, momentum=0.9)  # lr may differ: schedules change it
    same.load_state_dict(sd, knobs="strict")
    assert same.param_groups[0]["lr"] == 0.05


def test_knobs_must_be_a_known_mode():
    params, sd = _saved_torch_state()
    with pytest.raises(ValueError, match="Invalid knobs value: 'mine'"):
        rmsprop.RMSprop(params).load_state_dict(sd, knobs="mine")


def test_the_finite_check_is_exact_at_the_edges():
    """Huge but finite gradients (whose norm overflows), fp16 sums past 65504,
    empty and complex tensors: only a real NaN or ±Inf counts."""
    from rmsprop.finite import finite_flags

    cases = [
        (torch.tensor([3e38, 3e38]), True),
        (torch.tensor([6e4, 6e4], dtype=torch.float16), True),
        (torch.tensor([1e-45, 0.0]), True),
        (torch.zeros(0), True),
        (torch.tensor([1.0, float("nan")]), False),
        (torch.tensor([1.0, -float("inf")], dtype=torch.bfloat16), False),
        (torch.tensor([1 + 1j, complex(float("inf"), 0)]), False),
    ]
    assert finite_flags([t for t, _ in cases]).tolist() == [ok for _, ok in cases]
