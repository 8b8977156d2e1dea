"""CUDA checks: they run where a GPU is present and skip cleanly elsewhere
(this project's CI has no GPU; `make gpu-check` runs them, scripts/gpu_check.py).

What they hold on the device: the fused path (Triton through Inductor) equals
the reference path for fp32, bf16 and fp16 parameters at every state precision;
a capturable fused step replays in a CUDA graph with the learning rate read
from its tensor at every replay; nonfinite="skip" never syncs with the host, at
fp32, bf16 and 8-bit state; FSDP2 on one GPU trains as the plain model does.
"""

from __future__ import annotations

import copy
import datetime

import pytest
import torch

import rmsprop
from rmsprop.paths.fused import fused_unavailable_reason
from rmsprop.precision import get_buffer, load

from helpers import EVERY_BUFFER_KNOBS, clone_params, grad_stream, make_params, run

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

DEVICE = "cuda"
KNOBS = EVERY_BUFFER_KNOBS
PARAM_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
PRECISIONS = ("param", "fp32", "bf16", "int8")
BUFFERS = ("square_avg", "grad_avg", "momentum_buffer")
# Two tensors large enough for 8-bit codes (rmsprop.quant.MIN_NUMEL), two that keep float32 state.
SHAPES = [(64, 80), (5000,), (7,), (3, 4)]

# Largest difference between the fused and the reference path, over the largest magnitude of the
# tensor compared (lr 0.02: six steps move θ by about 0.12, 3% of its largest value). The two paths
# round differently (Inductor's generated kernels against ATen's) by about an ulp of the stored
# dtype per step. fp32: 1e-5 (tests/test_fused.py holds the CPU kernels to 2e-6; room for Triton's
# division and square root). A narrow value whose float32 results straddle a rounding boundary
# lands an ulp apart, and where the state is narrow too the next steps carry it on (through the
# momentum buffer most): narrow θ to 8 ulps of its dtype and narrow state to 16 (on CPU, Inductor's
# C++ against ATen, fp16 parted by 3.8 ulps in θ and 3.4 in the momentum buffer at lr 0.05, 1.2
# and 3.4 at lr 0.01); fp32 state for narrow θ is the fp32 update rounded once: θ to 2 ulps. With
# 8-bit state a code can land one step of its grid apart where the float32 values straddle a
# boundary, and the update that divides by it moves by a part of that step: θ to 1e-3, the decoded
# state to two grid steps (2/127 of its block's maximum). The fp32 parameters, at every state
# precision, are where an error in the formula shows: at 1e-2 and more.
LR = 0.02
ULP = {torch.float32: 2**-23, torch.bfloat16: 2**-7, torch.float16: 2**-10}
FP32_TOLERANCE = 1e-5
NARROW_STATE_PARAM_TOLERANCE = 1e-4
INT8_PARAM_TOLERANCE = 1e-3
INT8_STATE_TOLERANCE = 2 / 127


def _cuda_fused_unavailable() -> str | None:
    if not torch.cuda.is_available():
        return "needs a CUDA device"
    return fused_unavailable_reason([torch.zeros(1, device=DEVICE)], False)


_FUSED_REASON = _cuda_fused_unavailable()
needs_cuda_fused = pytest.mark.skipif(_FUSED_REASON is not None,
                                      reason=f"needs the fused path: {_FUSED_REASON}")


def _cuda(params):
    return [torch.nn.Parameter(p.detach().to(DEVICE), requires_grad=p.requires_grad) for p in params]


def _relative(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.detach().double(), b.detach().double()
    if b.numel() == 0:
        return 0.0
    return ((a - b).abs().max() / b.abs().max().clamp_min(1e-30)).item()


def _params(dtype: torch.dtype, seed: int = 0) -> list[torch.nn.Parameter]:
    gen = torch.Generator().manual_seed(seed)
    return [torch.nn.Parameter(torch.randn(s, generator=gen).to(DEVICE, dtype)) for s in SHAPES]


def _stream(steps: int, seed: int = 1) -> list[list[torch.Tensor]]:
    """Float32 gradients (0.1 … 10) on the device; each step casts them to its parameter's dtype."""
    gen = torch.Generator().manual_seed(seed)
    return [[(torch.randn(s, generator=gen) * 10.0 ** (t % 3 - 1)).to(DEVICE) for s in SHAPES]
            for t in range(steps)]


def _feed(params, grads) -> None:
    for p, g in zip(params, grads):
        p.grad = g.to(p.dtype)


def _train(params, stream, **kwargs) -> rmsprop.RMSprop:
    opt = rmsprop.RMSprop(params, **{**KNOBS, "lr": LR, **kwargs})
    for grads in stream:
        _feed(params, grads)
        opt.step()
    return opt


def _errors(ours, opt, ref, opt_ref) -> dict[str, float]:
    """The largest relative difference of θ and of every decoded buffer, over the parameters."""
    worst: dict[str, float] = {}
    for a, b in zip(ours, ref):
        worst["param"] = max(worst.get("param", 0.0), _relative(a, b))
        for key in BUFFERS:
            want = get_buffer(opt_ref.state[b], key)
            got = get_buffer(opt.state[a], key)
            assert (got is None) == (want is None), key
            if want is not None:
                err = _relative(load(got, torch.float64), load(want, torch.float64))
                worst[key] = max(worst.get(key, 0.0), err)
    return worst


def _bounds(dtype: torch.dtype, precision: str) -> dict[str, float]:
    """The tolerance of θ and of the state for parameters of ``dtype`` at ``precision``."""
    narrow = dtype != torch.float32
    if precision == "int8":
        return {"param": max(INT8_PARAM_TOLERANCE, 8 * ULP[dtype]),
                "state": max(INT8_STATE_TOLERANCE, 16 * ULP[dtype])}
    stored = {"param": dtype, "fp32": torch.float32, "bf16": torch.bfloat16}[precision]
    if stored == torch.float32:
        # float32 maths and state; narrow θ rounded once per step (the θ that weight decay reads)
        return {"param": 2 * ULP[dtype] if narrow else FP32_TOLERANCE,
                "state": max(FP32_TOLERANCE, 4 * ULP[dtype] * KNOBS["weight_decay"])}
    param = 8 * ULP[dtype] if narrow else NARROW_STATE_PARAM_TOLERANCE
    return {"param": param, "state": 16 * ULP[stored]}


def _assert_within(errors: dict[str, float], bounds: dict[str, float]) -> None:
    for key, err in errors.items():
        bound = bounds["param" if key == "param" else "state"]
        assert err <= bound, f"{key}: the paths part by {err:.3g} of the largest value (bound {bound:.3g})"


@pytest.mark.parametrize(
    "path", [{"foreach": True}, pytest.param({"fused": True}, marks=needs_cuda_fused), {}],
    ids=["foreach", "fused", "default"],
)
def test_cuda_paths_equal_the_cpu_reference(path):
    base = make_params(torch.float32, complex_too=True)
    stream = grad_stream(base, 10, decades=1)
    cpu = clone_params(base)
    run(rmsprop.RMSprop, cpu, stream, foreach=False, momentum=0.9, centered=True)
    gpu = _cuda(base)
    run(rmsprop.RMSprop, gpu, [[None if g is None else g.to(DEVICE) for g in gs] for gs in stream],
        momentum=0.9, centered=True, **path)
    for a, b in zip(gpu, cpu):
        torch.testing.assert_close(a.detach().cpu(), b.detach(), rtol=2e-6, atol=1e-6)


@needs_cuda_fused
@pytest.mark.parametrize("precision", PRECISIONS)
@pytest.mark.parametrize("dtype", PARAM_DTYPES.values(), ids=PARAM_DTYPES.keys())
def test_fused_equals_the_reference_on_cuda_at_every_state_precision(dtype, precision):
    stream = _stream(6)
    ref, ours = _params(dtype), _params(dtype)
    opt_ref = _train(ref, stream, state_precision=precision, foreach=False)
    opt = _train(ours, stream, state_precision=precision, fused=True)
    for p in ours:
        assert p.dtype == dtype and p.is_cuda
    if precision == "int8":  # the two large tensors hold codes on both paths
        assert opt.state[ours[0]]["square_avg_codes"].dtype == torch.uint8
        assert opt_ref.state[ref[0]]["square_avg_codes"].dtype == torch.uint8
    _assert_within(_errors(ours, opt, ref, opt_ref), _bounds(dtype, precision))


@needs_cuda_fused
def test_capturable_fused_step_never_syncs_with_the_host():
    params = [torch.nn.Parameter(torch.randn(64, 32, device=DEVICE))]
    opt = rmsprop.RMSprop(params, lr=torch.tensor(0.01, device=DEVICE), fused=True, capturable=True,
                          momentum=0.9)
    params[0].grad = torch.randn_like(params[0])
    opt.step()  # compile and allocate state outside the check
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        opt.step()
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert opt.state[params[0]]["step"].device.type == "cuda"


@needs_cuda_fused
def test_a_captured_capturable_step_replays_with_the_lr_its_tensor_holds():
    """Warm up on a side stream, capture one fused step in a CUDA graph, then
    replay it under a changing tensor lr (0 among them) and fresh gradients
    copied into the same .grad tensors: the same result as eager steps with
    the same learning rates; a replay at lr 0 leaves θ alone, the next moves it."""
    gen = torch.Generator().manual_seed(0)
    base = [torch.randn(s, generator=gen).to(DEVICE) for s in [(256, 33), (1000,), (7,)]]
    warm = [[torch.randn(b.shape, generator=gen).to(DEVICE) for b in base] for _ in range(3)]
    lrs = [0.01, 0.003, 0.0, 0.02, 0.005]
    grads = [[torch.randn(b.shape, generator=gen).to(DEVICE) for b in base] for _ in lrs]

    def build():
        params = [torch.nn.Parameter(b.clone()) for b in base]
        for p in params:
            p.grad = torch.zeros_like(p)
        lr = torch.tensor(lrs[0], device=DEVICE)
        opt = rmsprop.RMSprop(params, lr=lr, fused=True, capturable=True, momentum=0.9, centered=True,
                              weight_decay=0.01)
        return params, lr, opt

    def feed(params, gs):
        for p, g in zip(params, gs):
            p.grad.copy_(g)

    eager, lr_eager, opt_eager = build()
    for gs in warm:
        feed(eager, gs)
        opt_eager.step()
    for value, gs in zip(lrs, grads):
        lr_eager.fill_(value)
        feed(eager, gs)
        opt_eager.step()

    replayed, lr_graph, opt_graph = build()
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # compile and create the state outside the capture
        for gs in warm:
            feed(replayed, gs)
            opt_graph.step()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        opt_graph.step()
    before = after = None
    for value, gs in zip(lrs, grads):
        lr_graph.fill_(value)
        feed(replayed, gs)
        snapshot = [p.detach().clone() for p in replayed]
        graph.replay()
        if value == 0.0:
            before, after = snapshot, [p.detach().clone() for p in replayed]
    torch.cuda.synchronize()

    assert before is not None and after is not None
    assert all(torch.equal(a, b) for a, b in zip(before, after)), "a replay at lr 0 moved θ"
    moved = [p.detach() for p in replayed]
    assert not all(torch.equal(a, b) for a, b in zip(after, moved)), "the replays after lr 0 did not move θ"
    for a, b in zip(replayed, eager):
        torch.testing.assert_close(a.detach(), b.detach(), rtol=1e-6, atol=1e-7)
        assert opt_graph.state[a].keys() == opt_eager.state[b].keys()
        for key, value in opt_eager.state[b].items():
            torch.testing.assert_close(opt_graph.state[a][key], value, rtol=1e-6, atol=1e-7, msg=key)
        assert int(opt_graph.state[a]["step"]) == len(warm) + len(lrs)


@needs_cuda_fused
def test_skip_on_the_device_never_syncs_and_counts_when_asked():
    """nonfinite="skip" with CUDA gradients on the fused path: the verdict
    stays on the device, obeyed inside the compiled pass, so a step, bad or
    good, never syncs with the host; skipped_steps reads the count back when
    asked, and the run is the run without the bad batches."""
    base = make_params(torch.float32)
    stream = grad_stream(base, 6, decades=1)
    bad = {2, 4}
    cpu = clone_params(base)
    run(rmsprop.RMSprop, cpu, [g for t, g in enumerate(stream) if t not in bad], foreach=False,
        momentum=0.9, centered=True)
    # a twin takes the run first, unchecked: it compiles every structure the run meets (a parameter
    # without a gradient at some step is another structure), since compiling may sync
    twin, gpu = _cuda(base), _cuda(base)
    for params, checked in ((twin, False), (gpu, True)):
        opt = rmsprop.RMSprop(params, fused=True, nonfinite="skip", momentum=0.9, centered=True)
        for t, grads in enumerate(stream):
            grads = [None if g is None else g.to(DEVICE) for g in grads]
            if t in bad:
                grads[2].view(-1)[5] = float("nan")
            for p, g in zip(params, grads):
                p.grad = g
            _step_checking_syncs(opt, checked=checked and t > 0)  # the first step allocates the state
    assert opt.skipped_steps == len(bad)
    for a, b in zip(gpu, cpu):
        torch.testing.assert_close(a.detach().cpu(), b.detach(), rtol=2e-6, atol=1e-6)


@needs_cuda_fused
@pytest.mark.parametrize("precision", ["bf16", "int8"])
def test_skip_with_narrow_state_never_syncs_and_equals_the_run_without_the_bad_batches(precision):
    """The same with bf16 and 8-bit state, against the reference path on the
    device that never saw the bad batches."""
    stream = _stream(6)
    bad = {2, 4}
    ref, ours = _params(torch.float32), _params(torch.float32)
    opt_ref = _train(ref, [g for t, g in enumerate(stream) if t not in bad], state_precision=precision,
                     foreach=False)
    opt = rmsprop.RMSprop(ours, **{**KNOBS, "lr": LR}, state_precision=precision, fused=True,
                          nonfinite="skip")
    for t, grads in enumerate(stream):
        grads = [g.clone() for g in grads]
        if t in bad:
            grads[0].view(-1)[5] = float("nan")  # in a tensor that holds codes at int8
        _feed(ours, grads)
        _step_checking_syncs(opt, checked=t > 0)  # the first step compiles and allocates outside the check
    assert opt.skipped_steps == len(bad)
    _assert_within(_errors(ours, opt, ref, opt_ref), _bounds(torch.float32, precision))


def _step_checking_syncs(opt: torch.optim.Optimizer, checked: bool) -> None:
    """One step; with ``checked``, any host sync inside it raises (CUDA's sync debug mode)."""
    torch.cuda.synchronize()
    if checked:
        torch.cuda.set_sync_debug_mode("error")
    try:
        opt.step()
    finally:
        torch.cuda.set_sync_debug_mode("default")


def _mlp() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.Tanh(), torch.nn.Linear(32, 4)).to(DEVICE)


@needs_cuda_fused
@pytest.mark.parametrize("path", [{"foreach": True}, {"fused": True}], ids=["foreach", "fused"])
def test_fsdp2_on_one_gpu_trains_as_the_plain_model(tmp_path, path):
    """World size 1 in this process (NCCL, a file store): fully_shard's DTensor
    parameters and state, stepped by our path, against the plain model stepped
    by the reference path."""
    dist = pytest.importorskip("torch.distributed")
    if not dist.is_available() or not dist.is_nccl_available():
        pytest.skip("needs torch.distributed with NCCL")
    if dist.is_initialized():
        pytest.skip("a process group already exists in this process")
    from torch.distributed.fsdp import fully_shard
    from torch.distributed.tensor import DTensor

    torch.cuda.set_device(0)
    # a bounded wait: a hung NCCL start-up must fail this test, not the check's whole time limit
    dist.init_process_group("nccl", init_method=f"file://{tmp_path}/store", rank=0, world_size=1,
                            timeout=datetime.timedelta(seconds=60))
    try:
        model = _mlp()
        plain = copy.deepcopy(model)
        for layer in model:
            if isinstance(layer, torch.nn.Linear):
                fully_shard(layer)
        fully_shard(model)
        opt = rmsprop.RMSprop(model.parameters(), **KNOBS, **path)
        opt_plain = rmsprop.RMSprop(plain.parameters(), **KNOBS, foreach=False)
        gen = torch.Generator().manual_seed(1)
        for _ in range(4):
            x, y = torch.randn(8, 16, generator=gen).to(DEVICE), torch.randn(8, 4, generator=gen).to(DEVICE)
            for m, o in ((model, opt), (plain, opt_plain)):
                o.zero_grad()
                torch.nn.functional.mse_loss(m(x), y).backward()
                o.step()
        first = next(iter(model.parameters()))
        assert isinstance(first, DTensor) and isinstance(opt.state[first]["square_avg"], DTensor)
        for a, b in zip(model.parameters(), plain.parameters()):
            assert _relative(a.full_tensor(), b) <= FP32_TOLERANCE
    finally:
        dist.destroy_process_group()
