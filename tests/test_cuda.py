"""CUDA checks: they run where a GPU is present and skip cleanly elsewhere
(this project's CI has no GPU; a session that borrows one runs them)."""

from __future__ import annotations

import pytest
import torch

import rmsprop

from helpers import clone_params, grad_stream, make_params, needs_fused, run

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def _cuda(params):
    return [torch.nn.Parameter(p.detach().cuda(), requires_grad=p.requires_grad) for p in params]


@pytest.mark.parametrize(
    "path", [{"foreach": True}, pytest.param({"fused": True}, marks=needs_fused), {}],
    ids=["foreach", "fused", "default"],
)
def test_cuda_paths_equal_the_cpu_reference(path):
    base = make_params(torch.float32, complex_too=True)
    stream = grad_stream(base, 10, decades=1)
    cpu = clone_params(base)
    run(rmsprop.RMSprop, cpu, stream, foreach=False, momentum=0.9, centered=True)
    gpu = _cuda(base)
    run(rmsprop.RMSprop, gpu, [[None if g is None else g.cuda() for g in gs] for gs in stream],
        momentum=0.9, centered=True, **path)
    for a, b in zip(gpu, cpu):
        torch.testing.assert_close(a.detach().cpu(), b.detach(), rtol=2e-6, atol=1e-6)


@needs_fused
def test_capturable_fused_step_never_syncs_with_the_host():
    params = [torch.nn.Parameter(torch.randn(64, 32, device="cuda"))]
    opt = rmsprop.RMSprop(params, lr=torch.tensor(0.01, device="cuda"), fused=True, capturable=True,
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


@needs_fused
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
    gpu = _cuda(base)
    opt = rmsprop.RMSprop(gpu, fused=True, nonfinite="skip", momentum=0.9, centered=True)
    for t, grads in enumerate(stream):
        grads = [None if g is None else g.cuda() for g in grads]
        if t in bad:
            grads[2].view(-1)[5] = float("nan")
        for p, g in zip(gpu, grads):
            p.grad = g
        torch.cuda.synchronize()
        if t > 0:  # the first step compiles and allocates outside the check
            torch.cuda.set_sync_debug_mode("error")
        try:
            opt.step()
        finally:
            torch.cuda.set_sync_debug_mode("default")
    assert opt.skipped_steps == len(bad)
    for a, b in zip(gpu, cpu):
        torch.testing.assert_close(a.detach().cpu(), b.detach(), rtol=2e-6, atol=1e-6)
