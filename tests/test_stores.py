"""rmsprop.paths.stores: the fused path's plain stores of half a vector of
16-bit floats (Inductor's masked store made the bf16-state step 2.2× slower).
The values must be those of the masked store; the wrapper must be gone after
every call, also one that raises."""

from __future__ import annotations

import pytest
import torch
from torch._inductor import config as inductor_config
from torch._inductor.utils import run_and_get_code

import rmsprop
from rmsprop.paths import fused, stores

from helpers import EVERY_BUFFER_KNOBS, grad_stream, needs_fused, train_cast


def _emitter():
    from torch._inductor.codegen.cpp import CppVecKernel
    return CppVecKernel.__dict__["_get_store_line"]


def _isa_bits() -> int:
    from torch._inductor.cpu_vec_isa import pick_vec_isa
    return pick_vec_isa().bit_width()


def _fused_run(monkeypatch, param_dtype, precision, plain: bool):
    """Five fused steps on shapes with whole vectors and a tail (4 × 40 = 10
    vectors of 16; 37 = 2 vectors and a tail of 5), every buffer on, compiled
    afresh (no in-process or on-disk cache): the parameters, the state and
    the generated code."""
    gen = torch.Generator().manual_seed(3)
    params = [torch.nn.Parameter(torch.randn(s, generator=gen).to(param_dtype)) for s in [(4, 40), (37,)]]
    with monkeypatch.context() as m:
        m.setattr(fused, "_COMPILED", {})
        if not plain:
            m.setattr(stores, "_emitter", lambda: None)
        with inductor_config.patch(force_disable_caches=True):
            opt, codes = run_and_get_code(train_cast, params, grad_stream(params, 5),
                                          state_precision=precision, **EVERY_BUFFER_KNOBS, fused=True)
    return params, [opt.state[p] for p in params], "\n".join(codes)


@needs_fused
@pytest.mark.parametrize("param_dtype,precision",
                         [(torch.float32, "bf16"), (torch.float16, "fp32"), (torch.bfloat16, "fp32")])
def test_plain_stores_write_what_the_masked_stores_write(monkeypatch, param_dtype, precision):
    """bf16 state, and fp16 or bf16 parameters with fp32 state: bit for bit
    the same values as Inductor's own kernel (which tests/test_precision.py holds to
    the reference); on an AVX-512 CPU the kernel uses the plain store."""
    params, state, code = _fused_run(monkeypatch, param_dtype, precision, plain=True)
    masked_params, masked_state, masked_code = _fused_run(monkeypatch, param_dtype, precision, plain=False)
    assert "_mm256_storeu_si256" not in masked_code
    for p, q, s, t in zip(params, masked_params, state, masked_state):
        assert torch.equal(p, q)
        assert s.keys() == t.keys() and all(torch.equal(s[k], t[k]) for k in s)
    if not stores.active() or _isa_bits() != 512:
        pytest.skip(f"the plain store is for Inductor's AVX-512 kernels; here: active={stores.active()}, "
                    f"{_isa_bits()}-bit vectors (the values were still compared)")
    assert "_mm256_storeu_si256" in code, "no plain store in the compiled step"
    assert _emitter() is stores._emitter()[1]


def test_the_emitter_is_restored_after_a_call_that_raises():
    if not stores.active():
        pytest.skip("Inductor's store emitter is not the known one: nothing is wrapped")
    seen = []

    def boom():
        seen.append(_emitter())
        raise RuntimeError("inside the compiled call")

    with pytest.raises(RuntimeError, match="inside the compiled call"):
        stores.call(boom)
    assert seen == [stores._plain_store]
    assert _emitter() is stores._emitter()[1]


def test_a_nested_call_leaves_the_outer_wrapping_in_place():
    if not stores.active():
        pytest.skip("Inductor's store emitter is not the known one: nothing is wrapped")
    seen = []
    stores.call(lambda: stores.call(lambda: seen.append(_emitter())) or seen.append(_emitter()))
    assert seen == [stores._plain_store, stores._plain_store]
    assert _emitter() is stores._emitter()[1]


def test_an_unknown_emitter_is_left_alone(monkeypatch):
    """Another PyTorch whose emitter has other parameters: the call runs with
    Inductor's own stores (the same values, only slower)."""
    monkeypatch.setattr(stores, "_emitter", lambda: None)
    before = _emitter()
    seen = []
    stores.call(lambda x: seen.append((x, _emitter())), 5)
    assert seen == [(5, before)] and not stores.active()


@needs_fused
def test_a_step_leaves_inductor_as_it_found_it():
    p = torch.nn.Parameter(torch.randn(48))
    p.grad = torch.randn(48)
    before = _emitter()
    rmsprop.RMSprop([p], fused=True, state_precision="bf16").step()
    assert _emitter() is before
