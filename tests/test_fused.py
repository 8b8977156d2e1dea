"""The fused path: the same update, compiled; held to the reference in fp32
and in fp64.

Compiling is slow here (a few seconds per distinct group structure), so this
file runs the fused path on a pairwise covering subset of the knob table
(every pair of knob values at least once); ``make test-slow`` runs the full
product and the 30-group check. Every test that needs the fused path carries
``needs_fused``: without a C++ compiler it skips, saying why.
"""

from __future__ import annotations

import gc
import os
import subprocess
import sys
import textwrap

import pytest
import torch

import rmsprop
from rmsprop.paths import (
    AUTO_FUSED_MIN_BYTES,
    AUTO_FUSED_MIN_LARGEST,
    auto_fused,
    choose_path,
    fused,
    step_bytes,
)

from cases import MOMENTUM_MODES, every_combination, pairwise_combinations
from helpers import clone_params, grad_stream, make_params, needs_fused

STEPS = 12
# Inductor's generated C++ and ATen's vectorized kernels round differently (FMA
# contraction, reciprocal forms), by about an ulp per step: the worst case
# measured on this table after 12 steps is 2.2e-7 (1.3e-6 under other draws
# of the gradients).
FP32_TOLERANCE = 2e-6
# The same in float64: the worst case measured on the table is 5e-16 (4.1e-15
# under other draws: centered, where v̂ − ḡ̂² cancels). The same groups computed
# in float32 part by 1e-7 and more.
FP64_TOLERANCE = 1e-14


def _relative(a: torch.Tensor, b: torch.Tensor) -> float:
    if a.numel() == 0:
        return 0.0
    a, b = torch.view_as_real(a) if a.is_complex() else a, torch.view_as_real(b) if b.is_complex() else b
    return ((a - b).abs().max() / b.abs().max().clamp_min(1e-30)).item()


def _first_step_is_noise(knobs) -> bool:
    """Centered with bias correction from v₀ = 0: at step 1 the radicand
    v̂ − ḡ̂² is g² − g², exactly 0 in exact arithmetic, so the first update is
    rounding noise over ε and any two correct implementations part by noise/ε
    (2.5e-5 seen even in float64 with ε = 1e-3; up to 9e-2 in float32). Such a
    case takes its first step from the reference and is compared from step 2
    on, where the radicand is a real variance; ε stays the table's 1e-3, far
    below its root here, so the comparison sees the radicand (with v₀ = 1 the
    radicand is α/(1 − α) at step 1: compared from the start)."""
    return knobs["centered"] and knobs["bias_correction"] and knobs["initial_square_avg"] == 0


def _feed(params, grads):
    for p, g in zip(params, grads):
        p.grad = None if g is None else g.clone()


@torch.no_grad()
def _take_step_from(ref_params, ref_opt, params, opt):
    """Give ``params`` (of ``opt``) the values and state that ``ref_params`` have."""
    for p, q in zip(params, ref_params):
        p.copy_(q)
        if q in ref_opt.state:
            opt.state[p] = {key: value.clone() for key, value in ref_opt.state[q].items()}


def _fused_against_reference(knobs, steps=STEPS, tolerance=FP32_TOLERANCE):
    base = make_params(torch.float32)  # complex parameters: in the float64 test below
    stream = grad_stream(base, steps, decades=1)  # 0.1 … 10: comparing code, not conditioning
    ref, fus = clone_params(base), clone_params(base)
    ref_opt = rmsprop.RMSprop(ref, foreach=False, **knobs)
    fus_opt = rmsprop.RMSprop(fus, fused=True, **knobs)
    for t, grads in enumerate(stream):
        if t == steps // 2:
            for group in (*ref_opt.param_groups, *fus_opt.param_groups):
                group["lr"] = 0.003
        _feed(ref, grads)
        ref_opt.step()
        if t == 0 and _first_step_is_noise(knobs):
            _take_step_from(ref, ref_opt, fus, fus_opt)
        else:
            _feed(fus, grads)
            fus_opt.step()
    for i, (a, b) in enumerate(zip(fus, ref)):
        assert _relative(a.detach(), b.detach()) <= tolerance, f"θ{i}"
        assert fus_opt.state[a].keys() == ref_opt.state[b].keys(), f"θ{i}"
        for key, value in ref_opt.state[b].items():
            if key != "step":
                assert _relative(fus_opt.state[a][key], value) <= tolerance, f"θ{i} {key}"
            else:
                assert torch.equal(fus_opt.state[a][key], value)


@needs_fused
@pytest.mark.parametrize("name,knobs", pairwise_combinations(), ids=[n for n, _ in pairwise_combinations()])
def test_fused_equals_reference_fp32_pairwise(name, knobs):
    _fused_against_reference(knobs)


@needs_fused
@pytest.mark.parametrize("momentum", ["momentum", "lr-in-momentum-nesterov"])
def test_fused_cautious_equals_reference_fp32(momentum):
    """(15) inside the compiled pass: the per-tensor mean of the mask is a reduction the
    compiled code does per tensor, like the reference."""
    _fused_against_reference({**MOMENTUM_MODES[momentum], "lr": 0.01, "alpha": 0.9, "eps": 1e-3,
                              "caution": True, "maximize": True, "centered": False,
                              "bias_correction": False, "initial_square_avg": 0.0})


@pytest.mark.slow
@needs_fused
@pytest.mark.parametrize("name,knobs", every_combination(), ids=[n for n, _ in every_combination()])
def test_fused_equals_reference_fp32_every_combination(name, knobs):
    _fused_against_reference(knobs)


def _compiled_region_ran(opt) -> bool:
    """One more step runs compiled code: code fused_step looked up, none compiled."""
    ran = []
    real = fused._run

    def spy(args, quantized):
        ran.append(fused._lookup(*fused._key(args)) is not None)
        real(args, quantized)

    compiled = fused.compiled_structures()
    with pytest.MonkeyPatch.context() as m:
        m.setattr(fused, "_run", spy)
        opt.step()
    return bool(ran) and all(ran) and fused.compiled_structures() == compiled


@needs_fused
def test_the_compiled_graph_runs_and_a_schedule_never_recompiles():
    params = [torch.nn.Parameter(torch.randn(8, 4)), torch.nn.Parameter(torch.randn(4))]
    opt = rmsprop.RMSprop(params, fused=True, momentum=0.9, centered=True, weight_decay=0.01)
    scheduler = torch.optim.lr_scheduler.ExponentialLR(opt, gamma=0.9)
    for p in params:
        p.grad = torch.randn_like(p)
    opt.step()
    graphs = fused.compiled_structures()
    for i in range(6):  # lr, alpha, eps, momentum and weight decay all change
        scheduler.step()
        group = opt.param_groups[0]
        group["alpha"], group["eps"] = 0.9 + i / 100, 1e-8 * (i + 1)
        group["momentum"], group["weight_decay"] = 0.5 + i / 20, 0.01 * (i + 1)
        opt.step()
    assert fused.compiled_structures() == graphs, "a hyperparameter change recompiled"
    assert _compiled_region_ran(opt)


# The first rows of the pairwise table (the greedy covering array puts the rows
# that cover most first): every knob value and 130 of its 135 pairs, in one
# group each: ten structures compiled side by side in one optimizer.
FP64_ROWS = pairwise_combinations()[:10]


@needs_fused
@pytest.mark.parametrize("rows", [
    pytest.param(FP64_ROWS, id="pairwise-rows"),
    pytest.param(every_combination()[::15][:30], id="30-groups", marks=pytest.mark.slow),
])
def test_fused_equals_reference_fp64_one_group_per_row(rows):
    """float64 is computed in float64: one optimizer whose groups are rows of
    the knob table, each a float64 and a complex128 parameter (updated as its
    float64 real view), 12 steps (lr changed half-way), within a few ulps of
    the reference. Each group is a distinct structure, each compiled."""
    gen = torch.Generator().manual_seed(0)
    groups, refs = [], []
    for i, (_, knobs) in enumerate(rows):
        values = [torch.randn((i % 4 + 2, 3), generator=gen, dtype=torch.float64),
                  torch.randn(5, generator=gen, dtype=torch.complex128)]
        groups.append({"params": [torch.nn.Parameter(v.clone()) for v in values], **knobs})
        refs.append({"params": [torch.nn.Parameter(v.clone()) for v in values], **knobs})
    opt = rmsprop.RMSprop(groups, fused=True)
    ref = rmsprop.RMSprop(refs, foreach=False)
    pairs = [(p, q, knobs) for g, r, (_, knobs) in zip(groups, refs, rows)
             for p, q in zip(g["params"], r["params"])]
    for t in range(STEPS):
        if t == STEPS // 2:
            for group in (*opt.param_groups, *ref.param_groups):
                group["lr"] = 0.003
        for p, q, knobs in pairs:
            q.grad = torch.randn(q.shape, generator=gen, dtype=q.dtype) * 10.0 ** (t % 3 - 1)
            p.grad = None if t == 0 and _first_step_is_noise(knobs) else q.grad.clone()
        ref.step()
        opt.step()
        for p, q, knobs in pairs:
            if t == 0 and _first_step_is_noise(knobs):
                _take_step_from([q], ref, [p], opt)
    for i, (p, q, _) in enumerate(pairs):
        where = f"group {i // 2}, {p.dtype}"
        assert opt.state[p].keys() == ref.state[q].keys(), where
        assert _relative(p.detach(), q.detach()) <= FP64_TOLERANCE, f"{where} θ"
        for key, value in ref.state[q].items():
            assert opt.state[p][key].dtype == value.dtype, f"{where} {key}"
            if key != "step":
                assert _relative(opt.state[p][key], value) <= FP64_TOLERANCE, f"{where} {key}"
            else:
                assert torch.equal(opt.state[p][key], value)
    assert _compiled_region_ran(opt)


@needs_fused
def test_warm_up_compiles_ahead_and_changes_nothing():
    params = [torch.nn.Parameter(torch.randn(6, 5)), torch.nn.Parameter(torch.randn(5))]
    before = [p.detach().clone() for p in params]
    opt = rmsprop.RMSprop(params, fused=True, momentum=0.7, nesterov=True, bias_correction=True)
    opt.warm_up()
    assert all(torch.equal(p, b) for p, b in zip(params, before)) and not opt.state
    graphs = fused.compiled_structures()
    for p in params:
        p.grad = torch.randn_like(p)
    opt.step()
    assert fused.compiled_structures() == graphs  # the first step compiled nothing


# The compiled code is called directly, looked up by fused._key: every fact it
# was compiled for must be in the key, or a later call runs code built for
# other tensors. A hostile user changes what the code assumes between steps.
def _layouts(shape, gen):
    """The same values three ways: contiguous, transposed (other strides), and
    a strided slice of a larger tensor (gaps between rows)."""
    value = torch.randn(shape, generator=gen)
    wide = torch.zeros(shape[0], shape[1] * 2)
    wide[:, ::2] = value
    return [value, value.t().contiguous().t(), wide[:, ::2]]


@needs_fused
def test_a_gradient_with_other_strides_gets_code_for_its_strides():
    gen = torch.Generator().manual_seed(5)
    shape = (6, 5)
    ours = torch.nn.Parameter(torch.randn(shape, generator=gen))
    ref = torch.nn.Parameter(ours.detach().clone())
    opt = rmsprop.RMSprop([ours], fused=True, centered=True, momentum=0.5)
    twin = rmsprop.RMSprop([ref], foreach=False, centered=True, momentum=0.5)
    compiled = fused.compiled_structures()
    for t in range(6):
        grad = _layouts(shape, gen)[t % 3]
        ours.grad, ref.grad = grad, grad.contiguous()
        opt.step()
        twin.step()
        assert _relative(ours.detach(), ref.detach()) <= 1e-6, f"step {t}, grad strides {grad.stride()}"
    assert fused.compiled_structures() == compiled + 3  # one per layout, then reused


@needs_fused
def test_a_parameter_whose_data_is_replaced_gets_code_for_its_new_layout():
    """``p.data = ...`` keeps the Parameter object and changes its strides:
    the same objects as at the last step, other memory."""
    gen = torch.Generator().manual_seed(6)
    shape = (4, 7)
    ours = torch.nn.Parameter(torch.randn(shape, generator=gen))
    ref = torch.nn.Parameter(ours.detach().clone())
    opt = rmsprop.RMSprop([ours], fused=True)
    twin = rmsprop.RMSprop([ref], foreach=False)
    for t in range(4):
        if t == 2:
            ours.data = _layouts(shape, gen)[2].copy_(ours.detach())  # the same values, strided
            assert ours.stride() != ref.stride()
        grad = torch.randn(shape, generator=gen)
        ours.grad, ref.grad = grad, grad.clone()
        opt.step()
        twin.step()
        assert _relative(ours.detach(), ref.detach()) <= 1e-6, f"step {t}"


@needs_fused
def test_one_gradient_shared_by_two_parameters():
    """Two parameters whose .grad is the same tensor (inputs that alias, read only)."""
    gen = torch.Generator().manual_seed(7)
    ours = [torch.nn.Parameter(torch.randn(9, generator=gen)) for _ in range(2)]
    refs = [torch.nn.Parameter(p.detach().clone()) for p in ours]
    opt, twin = rmsprop.RMSprop(ours, fused=True), rmsprop.RMSprop(refs, foreach=False)
    for _ in range(3):
        shared = torch.randn(9, generator=gen)
        for p in ours:
            p.grad = shared
        for q in refs:
            q.grad = shared.clone()
        opt.step()
        twin.step()
    for p, q in zip(ours, refs):
        assert _relative(p.detach(), q.detach()) <= 1e-6


@needs_fused
def test_a_small_group_compiles_single_threaded(monkeypatch):
    """Under fused.SERIAL_BELOW elements a group's kernel opens no OpenMP
    region (waking a second thread cost more than the RL net's whole update);
    from there on its loops run on every thread."""
    from torch._inductor import config as inductor_config
    from torch._inductor.utils import run_and_get_code

    if torch.get_num_threads() < 2:
        pytest.skip("one torch thread: Inductor writes no parallel region at any size")

    def code(total: int) -> str:
        params = [torch.nn.Parameter(torch.randn(n)) for n in split_sizes(total, 4)]
        for p in params:
            p.grad = torch.randn_like(p)
        opt = rmsprop.RMSprop(params, fused=True)
        with monkeypatch.context() as m, inductor_config.patch(force_disable_caches=True):
            m.setattr(fused, "_COMPILED", {})
            _, codes = run_and_get_code(opt.step)
        return "\n".join(codes)

    assert "#pragma omp parallel" not in code(fused.SERIAL_BELOW - 1)
    assert "#pragma omp parallel" in code(fused.SERIAL_BELOW)


@needs_fused
def test_the_compiled_code_keeps_no_tensor_of_the_call_alive():
    """The compiled step outlives every optimizer (shared by structure): it must
    not keep the memory of the tensors it was compiled with."""
    from torch.multiprocessing.reductions import StorageWeakRef

    params = [torch.nn.Parameter(torch.randn(123, 3)), torch.nn.Parameter(torch.randn(11))]
    opt = rmsprop.RMSprop(params, fused=True, momentum=0.3, centered=True)
    for p in params:
        p.grad = torch.randn_like(p)
    compiled = fused.compiled_structures()
    opt.step()
    assert fused.compiled_structures() == compiled + 1
    refs = [StorageWeakRef(t.untyped_storage()) for t in
            [*params, *(p.grad for p in params), *(v for s in opt.state.values() for v in s.values())]]
    del opt, params, p
    gc.collect()
    assert all(ref.expired() for ref in refs)


@needs_fused
def test_step_inside_a_users_compiled_training_step():
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 2)
    twin = torch.nn.Linear(4, 2)
    twin.load_state_dict(model.state_dict())
    opt = rmsprop.RMSprop(model.parameters(), fused=True, momentum=0.9)
    ref = rmsprop.RMSprop(twin.parameters(), foreach=False, momentum=0.9)
    x, y = torch.randn(16, 4), torch.randn(16, 2)

    def train_step(m, o):
        o.zero_grad()
        torch.nn.functional.mse_loss(m(x), y).backward()
        o.step()

    compiled = torch.compile(train_step)
    for _ in range(3):
        compiled(model, opt)
        train_step(twin, ref)
    for a, b in zip(model.parameters(), twin.parameters()):
        assert _relative(a.detach(), b.detach()) <= 1e-5


@pytest.mark.parametrize(
    "kwargs,message",
    [
        ({"fused": True, "foreach": True}, "`foreach` and `fused` should not both be True"),
        ({"fused": True, "differentiable": True}, "fused=True cannot run: differentiable=True"),
    ],
)
def test_fused_where_it_cannot_run_raises(kwargs, message, monkeypatch):
    monkeypatch.delenv(fused.DISABLE_ENV, raising=False)  # else that reason comes first; no compiler needed
    p = torch.randn(3, requires_grad=True)
    if kwargs.get("differentiable"):
        p = p.clone()  # differentiable steps run on non-leaf tensors
    p.grad = torch.randn(3)
    with pytest.raises(ValueError, match=message):  # foreach with fused: refused by the constructor
        rmsprop.RMSprop([p], **kwargs).step()


def test_fused_refuses_without_a_compiler_or_when_turned_off(monkeypatch):
    params = [torch.zeros(3)]
    monkeypatch.setenv("RMSPROP_DISABLE_COMPILE", "1")
    with pytest.raises(ValueError, match="turned off by RMSPROP_DISABLE_COMPILE=1"):
        choose_path(params, None, False, True)
    big = [torch.empty(2**25)]
    assert choose_path(big, None, False, None) == "foreach"  # compiling is off: never picked
    monkeypatch.delenv("RMSPROP_DISABLE_COMPILE")
    monkeypatch.delenv("CXX", raising=False)
    monkeypatch.setattr(fused.shutil, "which", lambda name: None)
    fused._cpp_compiler.cache_clear()  # the lookup is cached: redo it without a compiler
    try:
        with pytest.raises(ValueError, match="no C\\+\\+ compiler"):
            choose_path(params, None, False, True)
    finally:
        fused._cpp_compiler.cache_clear()
    with pytest.raises(ValueError, match="parameter 0 has dtype torch.int64, which is not supported"):
        choose_path([torch.zeros(3, dtype=torch.int64)], None, False, True)


def split_sizes(total: int, count: int) -> list[int]:
    """``total`` elements as ``count`` sizes that differ by at most one."""
    return [total // count + (i < total % count) for i in range(count)]


def smallest_fused(precision: str, buffers: int) -> int:
    """The fewest elements the rule compiles, found by search (not by the rule's formula)."""
    lo, hi = 0, 1 << 40
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if auto_fused(mid, precision, buffers) else (mid, hi)
    return hi


#: Where the fitted rule starts compiling, in elements (docs/paths.md quotes these):
#: (precision, state buffers) -> the smallest group that takes the fused path.
FITTED = {("fp32", 1): 52429, ("fp32", 3): 29128, ("bf16", 1): 65536, ("bf16", 3): 43691,
          ("int8", 1): 74899, ("int8", 3): 58255}


@pytest.mark.parametrize("precision,buffers", sorted(FITTED))
def test_the_automatic_rule_compiles_from_its_thresholds_on(precision, buffers):
    width = {"fp32": 4, "bf16": 2, "int8": 1}[precision]
    assert step_bytes(1, precision, buffers) == 12 + 2 * buffers * width
    assert smallest_fused(precision, buffers) == FITTED[precision, buffers]
    assert not auto_fused(0, precision, buffers)


def test_the_fitted_rule_on_named_workloads():
    from rmsprop.bench.workloads import Workload, resnet50_shapes, rl_mlp_shapes

    resnet, rl = Workload("", resnet50_shapes()).numel, Workload("", rl_mlp_shapes()).numel
    for precision in ("param", "fp32", "bf16", "int8"):
        for buffers in (1, 3):
            assert not auto_fused(rl, precision, buffers, 4096)  # the RL net (largest tensor 64x64)
            assert not auto_fused(10**4, precision, buffers, 625)  # 10k in 16 tensors
            assert not auto_fused(10**4, precision, buffers, 4095)
            assert auto_fused(resnet, precision, buffers) and auto_fused(10**6, precision, buffers)
    assert all(auto_fused(10**5, precision, 1) for precision in ("fp32", "bf16", "int8"))  # 100k: fused
    assert not AUTO_FUSED_MIN_LARGEST  # no precision compiles for one large tensor alone (docs/paths.md)


def test_more_state_compiles_sooner_and_param_follows_fp32():
    for precision in AUTO_FUSED_MIN_BYTES:
        assert smallest_fused(precision, 3) < smallest_fused(precision, 1)
    for numel in (1, 10**5, 2 * 10**5, 10**7):
        assert auto_fused(numel, "param") == auto_fused(numel, "fp32")


@needs_fused
@pytest.mark.parametrize("precision", sorted(AUTO_FUSED_MIN_BYTES))
def test_automatic_choice_compiles_only_where_the_rule_says(precision):
    at = smallest_fused(precision, 1)
    big = [torch.empty(n) for n in split_sizes(at, 32)]
    assert choose_path(big, None, False, None, precision) == "fused"
    assert choose_path(big, None, False, False, precision) == "foreach"  # fused=False: never compile
    assert choose_path(big, False, False, None, precision) == "reference"  # an explicit choice wins
    small = [torch.empty(n) for n in split_sizes(at - 1, 32)]  # every tensor under 4,096 elements
    assert choose_path(small, None, False, None, precision) == "foreach"
    assert choose_path(small, None, False, None, precision, state_buffers=3) == "fused"  # more bytes a step



@needs_fused
def test_a_second_process_reuses_the_on_disk_cache(tmp_path):
    script = textwrap.dedent("""
        import torch, rmsprop
        from torch._dynamo.utils import counters
        p = [torch.nn.Parameter(torch.ones(7, 3))]
        p[0].grad = torch.ones(7, 3)
        rmsprop.RMSprop(p, fused=True, centered=True).step()
        print(counters["inductor"]["fxgraph_cache_hit"], counters["inductor"]["fxgraph_cache_miss"])
    """)
    env = {**os.environ, "TORCHINDUCTOR_CACHE_DIR": str(tmp_path)}
    runs = [subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True,
                           check=True).stdout.split() for _ in range(2)]
    (hit1, miss1), (hit2, miss2) = [tuple(map(int, r[-2:])) for r in runs]
    assert miss1 >= 1 and hit2 >= 1 and miss2 == 0, runs


@pytest.mark.parametrize("precision", ["fp32", "bf16", "int8"])
def test_the_pass_under_an_on_device_verdict_never_leaves_the_device(precision):
    """nonfinite="skip" on an accelerator: the verdict stays on the device and the pass writes every
    value under it, the step counts included, so no value may cross to the host. Traced here on the
    meta device, which stands for an accelerator (CI has none): every value of the traced pass is on
    it. With the counts on the CPU, as they were, the trace cannot even be made: the pass copies a
    device value into a host tensor (tests/test_cuda.py checks the same with CUDA's sync debug mode)."""
    from torch.fx.experimental.proxy_tensor import make_fx

    from rmsprop.plan import new_state
    from rmsprop.precision import get_buffer
    from rmsprop.settings import hyper_from

    group = rmsprop.RMSprop([torch.nn.Parameter(torch.zeros(1))], momentum=0.9, centered=True,
                            state_precision=precision).param_groups[0]
    params = [torch.empty(4099, device="meta"), torch.empty(8, 4, device="meta")]  # int8: one quantized
    states = [new_state(p, group) for p in params]
    buffers = [[get_buffer(s, key) for s in states] for key in ("square_avg", "grad_avg", "momentum_buffer")]
    steps = [s["step"] for s in states]
    finite = torch.empty((), dtype=torch.bool, device="meta")

    def one_pass(params, grads, steps, finite):
        fused._step_group(params, grads, *buffers, steps, (0, 1), hyper_from(group), torch.float32, finite,
                          None, [], None, False, [], [], True)

    grads = [torch.empty_like(p) for p in params]
    graph = make_fx(one_pass)(params, grads, steps, finite)
    values = [n.meta["val"] for n in graph.graph.nodes if isinstance(n.meta.get("val"), torch.Tensor)]
    assert len(values) > 20 and {v.device.type for v in values} == {"meta"}
    with pytest.raises(NotImplementedError, match="Cannot copy out of meta tensor"):
        make_fx(one_pass)(params, grads, [torch.zeros(()) for _ in params], finite)  # counts on the host
