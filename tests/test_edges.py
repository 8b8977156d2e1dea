"""Trust at the edges: settings validated when used, steps that plan before
they write, checkpoints that load only what a step can run, and stochastic
rounding salted by a parameter's identity. Each test here failed before its fix."""

from __future__ import annotations

import copy
import math

import pytest
import torch

import rmsprop
from rmsprop import functional
from rmsprop.paths.fused import fused_unavailable_reason

requires_fused = pytest.mark.skipif(fused_unavailable_reason([torch.zeros(1)], False) is not None,
                                    reason="the fused path cannot run here (no C++ compiler, or turned off)")

PATHS = {"reference": {"foreach": False}, "foreach": {"foreach": True},
         "fused": pytest.param({"fused": True}, marks=requires_fused)}
PATH_IDS = list(PATHS)


def _two_groups(**kwargs):
    a = torch.nn.Parameter(torch.randn(4, 3))
    b = torch.nn.Parameter(torch.randn(5))
    opt = rmsprop.RMSprop([{"params": [a]}, {"params": [b]}], lr=0.01, **kwargs)
    return opt, [a, b]


def _grads(params, seed=0):
    gen = torch.Generator().manual_seed(seed)
    for p in params:
        p.grad = torch.randn(p.shape, generator=gen, dtype=p.dtype)


def _snapshot(opt, params):
    """Everything a step could change: parameters, every state tensor, every group value."""
    state = {i: {k: v.clone() if torch.is_tensor(v) else v for k, v in opt.state[p].items()}
             for i, p in enumerate(params) if p in opt.state}
    groups = [{k: v for k, v in g.items() if k != "params"} for g in opt.param_groups]
    return [p.detach().clone() for p in params], state, copy.deepcopy(groups)


def _assert_unchanged(opt, params, before):
    values, state, groups = _snapshot(opt, params)
    assert all(torch.equal(x, y) for x, y in zip(values, before[0]))
    assert state.keys() == before[1].keys()
    for i in state:
        assert state[i].keys() == before[1][i].keys()
        for key, value in state[i].items():
            old = before[1][i][key]
            assert torch.equal(value, old) if torch.is_tensor(value) else value == old
    assert groups == before[2]


# ---------------------------------------------------------------- 1: param_groups edited between steps
@pytest.mark.parametrize("path", PATHS.values(), ids=PATH_IDS)
@pytest.mark.parametrize("key,value,error,message", [
    ("alpha", 1.5, ValueError, "Invalid alpha value: 1.5 (must lie in [0, 1]) in param group 1"),
    ("centered", "False", ValueError, "Invalid centered value: 'False' (must be True or False) in param"),
    ("lr", math.nan, ValueError, "Invalid learning rate: nan"),
    ("lr", "0.1", TypeError, "lr must be a real number, not str '0.1' in param group 1"),
    ("eps", -1e-8, ValueError, "Invalid epsilon value: -1e-08"),
    ("momentum", -0.5, ValueError, "Invalid momentum value: -0.5"),
    ("momentum", math.inf, ValueError, "Invalid momentum value: inf"),
    ("nesterov", True, ValueError, "Invalid nesterov value: True requires momentum > 0 in param group 1"),
    ("state_precision", "fp8", ValueError, "Invalid state_precision value: 'fp8'"),
])
def test_a_group_edited_between_steps_is_validated_before_anything_changes(path, key, value, error, message):
    opt, params = _two_groups(**path)
    _grads(params)
    opt.step()
    opt.param_groups[1][key] = value
    _grads(params, seed=1)
    before = _snapshot(opt, params)
    with pytest.raises(error, match=message.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[")):
        opt.step()
    _assert_unchanged(opt, params, before)


def test_validation_is_cached_until_a_value_changes(monkeypatch):
    opt, params = _two_groups()
    calls = []
    real = rmsprop.plan.check_group
    monkeypatch.setattr(rmsprop.plan, "check_group", lambda *a, **k: calls.append(a[1]) or real(*a, **k))
    for seed in range(3):
        _grads(params, seed)
        opt.step()
    assert calls == ["param group 0", "param group 1"]  # once each, at the first step
    opt.param_groups[1]["lr"] = 0.5
    opt.step()
    assert calls[2:] == ["param group 1"]


def test_renaming_a_groups_preset_is_refused():
    opt, params = _two_groups()
    _grads(params)
    opt.step()
    opt.param_groups[0]["preset"] = "tf1"
    with pytest.raises(ValueError, match="param group 0's preset changed from 'torch' to 'tf1'"):
        opt.step()


def test_nonfinite_is_checked_when_set():
    opt, _ = _two_groups()
    with pytest.raises(ValueError, match="Invalid nonfinite value: 'ignore'"):
        opt.nonfinite = "ignore"
    assert opt.nonfinite == "propagate"
    handle = rmsprop.step_in_backward(opt)
    with pytest.raises(ValueError, match="while step_in_backward is attached"):
        opt.nonfinite = "skip"
    handle.remove()
    opt.nonfinite = "skip"


# ---------------------------------------------------------------- 2: refusals before any write
@pytest.mark.parametrize("path", PATHS.values(), ids=PATH_IDS)
def test_fp16_with_stochastic_rounding_switched_on_later_changes_nothing(path):
    bf = torch.nn.Parameter(torch.randn(6, dtype=torch.bfloat16))
    half = torch.nn.Parameter(torch.randn(6, dtype=torch.float16))
    opt = rmsprop.RMSprop([bf, half], lr=0.01, state_precision="fp32", **path)
    _grads([bf, half])
    opt.step()
    opt.param_groups[0]["stochastic_rounding"] = True
    before = _snapshot(opt, [bf, half])
    with pytest.raises(ValueError, match="parameter 1 of param group 0: stochastic_rounding supports bfloat"):
        opt.step()
    _assert_unchanged(opt, [bf, half], before)


@pytest.mark.parametrize("path", PATHS.values(), ids=PATH_IDS)
@pytest.mark.parametrize("precision", ["bf16", "int8"])
def test_complex_parameters_with_narrow_state_are_refused_before_anything_changes(path, precision):
    real = torch.nn.Parameter(torch.randn(4))
    cplx = torch.nn.Parameter(torch.randn(4, dtype=torch.complex64))
    with pytest.raises(ValueError, match=f"parameter 0 of param group 1: state_precision='{precision}'"):
        rmsprop.RMSprop([{"params": [real]}, {"params": [cplx], "state_precision": precision}], **path)
    opt = rmsprop.RMSprop([{"params": [real]}, {"params": [cplx]}], **path)
    _grads([real, cplx])
    opt.step()
    opt.param_groups[1]["state_precision"] = precision
    before = _snapshot(opt, [real, cplx])
    with pytest.raises(ValueError, match=f"parameter 0 of param group 1: state_precision='{precision}'"):
        opt.step()  # a ValueError on the fused path too, never Dynamo's Unsupported
    _assert_unchanged(opt, [real, cplx], before)


@pytest.mark.parametrize("path", PATHS.values(), ids=PATH_IDS)
def test_bad_gradients_in_a_later_group_change_nothing(path):
    opt, params = _two_groups(**path)
    _grads(params)
    opt.step()
    cases = [
        (lambda: torch.randn(5).to_sparse(), rmsprop.plan.SparseGradientError,
         r"RMSprop does not support sparse gradients \(parameter 0 of param group 1\)"),
        (lambda: torch.randn(6), ValueError, r"parameter 0 of param group 1 has shape \(5,\)"),
        (lambda: torch.randn(5, dtype=torch.complex64), ValueError, "its gradient has shape"),
    ]
    for make, error, message in cases:
        _grads(params, seed=3)
        grad = make()
        if grad.is_sparse:
            params[1].grad = grad
        else:
            params[1].grad.data = grad  # `.data` skips the check that `.grad =` makes
        before = _snapshot(opt, params)
        with pytest.raises(error, match=message):
            opt.step()
        _assert_unchanged(opt, params, before)
    assert issubclass(rmsprop.plan.SparseGradientError, RuntimeError)  # PyTorch's error type, kept


def test_a_parameter_whose_data_changed_shape_changes_nothing():
    opt, params = _two_groups()
    _grads(params)
    opt.step()
    params[1].data = torch.randn(7)
    _grads(params, seed=1)
    before = _snapshot(opt, params)
    with pytest.raises(ValueError, match=r"parameter 0 of param group 1 has shape \(7,\) but its square_avg"):
        opt.step()
    _assert_unchanged(opt, params, before)


# ---------------------------------------------------------------- 4, 5: step_in_backward
def test_a_group_added_while_stepping_in_backward_steps_in_backward():
    first, second = torch.nn.Linear(3, 3), torch.nn.Linear(3, 1)
    opt = rmsprop.RMSprop(first.parameters(), lr=0.1)
    with rmsprop.step_in_backward(opt):
        opt.add_param_group({"params": second.parameters()})
        before = second.weight.detach().clone()
        second(first(torch.randn(4, 3))).sum().backward()
        assert not torch.equal(second.weight, before)
        assert second.weight.grad is None  # stepped, and its gradient freed


def _bf16_params(seed=0):
    gen = torch.Generator().manual_seed(seed)
    values = [torch.randn(shape, generator=gen) for shape in ((8, 4), (8, 4), (4,), (8, 4))]
    return [torch.nn.Parameter(v.to(torch.bfloat16)) for v in values]


def _sr_grads(params, step):
    gen = torch.Generator().manual_seed(100 + step)
    return [torch.randn(p.shape, generator=gen).to(p.dtype) for p in params]


@pytest.mark.parametrize("path", PATHS.values(), ids=PATH_IDS)
def test_stochastic_rounding_in_backward_draws_the_usual_loops_bits(path):
    knobs = dict(lr=1e-3, state_precision="fp32", stochastic_rounding=True, rounding_seed=7, **path)
    usual, inside = _bf16_params(), _bf16_params()
    opt = rmsprop.RMSprop(usual, **knobs)
    opt_b = rmsprop.RMSprop(inside, **knobs)
    handle = rmsprop.step_in_backward(opt_b)
    for step in range(3):
        grads = _sr_grads(usual, step)
        for p, g in zip(usual, grads):
            p.grad = g
        opt.step()
        sum((p.float() * g.float()).sum() for p, g in zip(inside, grads)).backward()
    handle.remove()
    assert all(torch.equal(p, q) for p, q in zip(usual, inside))


def test_same_shaped_tensors_get_their_own_rounding_noise():
    params = [torch.nn.Parameter(torch.full((4096,), 1.0, dtype=torch.bfloat16)) for _ in range(2)]
    opt = rmsprop.RMSprop(params, lr=1e-3, state_precision="fp32", stochastic_rounding=True)
    with rmsprop.step_in_backward(opt):
        sum(p.float().sum() for p in params).backward()
    assert not torch.equal(params[0], params[1])


def test_reference_equals_foreach_with_mixed_dtypes_and_stochastic_rounding():
    def run(foreach):
        gen = torch.Generator().manual_seed(0)
        params = [torch.nn.Parameter(torch.randn(16, generator=gen).to(dtype))
                  for dtype in (torch.float32, torch.bfloat16, torch.float32, torch.bfloat16)]
        opt = rmsprop.RMSprop(params, lr=1e-3, state_precision="fp32", stochastic_rounding=True,
                              foreach=foreach)
        for step in range(3):
            for p, g in zip(params, _sr_grads(params, step)):
                p.grad = g
            opt.step()
        return params

    assert all(torch.equal(p, q) for p, q in zip(run(False), run(True)))


# ---------------------------------------------------------------- 6: warm_up compiles what step runs
@requires_fused
def test_warm_up_compiles_the_structures_step_runs():
    from rmsprop.paths.fused import compiled_structures

    base = torch.randn(16, 12)
    strided = torch.nn.Parameter(base[:, ::2].clone().t().contiguous().t())  # non-contiguous, dense
    sparse_view = torch.nn.Parameter(torch.randn(10, 8)[:, ::2])  # a leaf that is not dense
    rounded = torch.nn.Parameter(torch.randn(40).to(torch.bfloat16))
    opt = rmsprop.RMSprop([{"params": [strided, sparse_view]},
                           {"params": [rounded], "state_precision": "fp32", "stochastic_rounding": True}],
                          lr=0.01, fused=True)
    opt.warm_up()
    assert not opt.state
    compiled = compiled_structures()
    for p in (strided, sparse_view, rounded):
        p.grad = torch.ones_like(p)
    opt.step()
    assert compiled_structures() == compiled


# ---------------------------------------------------------------- 7: what load_state_dict accepts, step runs
def _trained(seed=0, **kwargs):
    torch.manual_seed(seed)
    params = [torch.nn.Parameter(torch.randn(6)), torch.nn.Parameter(torch.randn(3, 2))]
    opt = rmsprop.RMSprop(params, lr=0.01, momentum=0.9, **kwargs)
    for s in range(2):
        _grads(params, seed + s)
        opt.step()
    return opt, params


def _tampered(edit):
    sd = copy.deepcopy(_trained(seed=5)[0].state_dict())
    edit(sd)
    return sd


@pytest.mark.parametrize("name,edit,message", [
    ("bool step", lambda sd: sd["state"][0].update(step=torch.tensor(True)), "a step count is one real"),
    ("negative square_avg", lambda sd: sd["state"][0]["square_avg"].neg_(), "negative values in square_avg"),
    ("NaN square_avg", lambda sd: sd["state"][0]["square_avg"].fill_(math.nan), "NaN in square_avg"),
    ("NaN momentum", lambda sd: sd["state"][1]["momentum_buffer"].fill_(math.nan), "NaN in momentum_buffer"),
    ("sparse buffer", lambda sd: sd["state"][0].update(square_avg=sd["state"][0]["square_avg"].to_sparse()),
     "layout torch.sparse_coo"),
    ("stride-0 buffer", lambda sd: sd["state"][0].update(square_avg=torch.ones(1).expand(6)),
     "overlapping memory"),
    ("meta buffer", lambda sd: sd["state"][0].update(square_avg=torch.empty(6, device="meta")), "meta"),
    ("None buffer", lambda sd: sd["state"][0].update(momentum_buffer=None), "NoneType as momentum_buffer"),
    ("None state", lambda sd: sd["state"].update({0: None}), "is a NoneType, not a dict"),
    ("infinite momentum", lambda sd: sd["param_groups"][0].update(momentum=math.inf), "momentum value: inf"),
    ("missing lr", lambda sd: sd["param_groups"][0].pop("lr"), "lacks the setting 'lr'"),
    ("string alpha", lambda sd: sd["param_groups"][0].update(alpha="0.9"), "alpha must be a real number"),
])
def test_a_tampered_state_dict_from_another_run_is_refused_whole(name, edit, message):
    opt, params = _trained()
    before = _snapshot(opt, params)
    with pytest.raises((ValueError, TypeError), match=message):
        opt.load_state_dict(_tampered(edit))
    _assert_unchanged(opt, params, before)


@pytest.mark.parametrize("path", PATHS.values(), ids=PATH_IDS)
def test_an_integer_step_loads_and_steps_on(path):
    opt, params = _trained(**path)
    sd = opt.state_dict()
    for s in sd["state"].values():
        s["step"] = s["step"].to(torch.int64)
    opt.load_state_dict(sd)
    _grads(params, 9)
    opt.step()
    steps = [opt.state[p]["step"] for p in params]
    assert all(step.dtype == torch.float32 and float(step) == 3 for step in steps)


@pytest.mark.parametrize("numel", [4, 4096], ids=["small (float32 state)", "large (8-bit state)"])
def test_a_complex_parameter_cannot_load_into_an_int8_group(numel):
    cplx = torch.nn.Parameter(torch.randn(numel, dtype=torch.complex64))
    source = rmsprop.RMSprop([cplx])
    cplx.grad = torch.randn_like(cplx)
    source.step()
    target = rmsprop.RMSprop([torch.nn.Parameter(torch.randn(numel))], state_precision="int8")
    target.param_groups[0]["params"] = [cplx]
    with pytest.raises(ValueError, match="state_precision='int8' needs real parameters"):
        target.load_state_dict(source.state_dict())
    assert not target.state


# ---------------------------------------------------------------- 10: knobs="strict"
@pytest.mark.parametrize("key,value", [("stochastic_rounding", True), ("rounding_seed", 3),
                                       ("kahan_summation", True), ("capturable", True)])
def test_strict_refuses_every_setting_that_changes_the_numbers(key, value):
    params = [torch.nn.Parameter(torch.randn(4).to(torch.bfloat16))]
    opt = rmsprop.RMSprop(params, state_precision="fp32")
    other = rmsprop.RMSprop(params, state_precision="fp32", **{key: value})
    with pytest.raises(ValueError, match=f"group 0 {key}: saved"):
        opt.load_state_dict(other.state_dict(), knobs="strict")


# ---------------------------------------------------------------- 12: the functional form
@pytest.mark.parametrize("foreach", [False, True])
@pytest.mark.parametrize("which", ["grads", "square_avgs", "state_steps", "momentum_buffer_list"])
def test_functional_lists_of_other_lengths_raise_before_anything(foreach, which):
    params = [torch.randn(3) for _ in range(3)]
    lists = {"grads": [torch.randn(3) for _ in params], "square_avgs": [torch.zeros(3) for _ in params],
             "grad_avgs": [], "momentum_buffer_list": [torch.zeros(3) for _ in params],
             "state_steps": [torch.tensor(0.0) for _ in params]}
    lists[which] = lists[which][:2]
    before = [p.clone() for p in params]
    with pytest.raises(ValueError, match=f"{which} has 2 entries for 3 params"):
        functional.rmsprop(params, lists["grads"], lists["square_avgs"], lists["grad_avgs"],
                           lists["momentum_buffer_list"], lists["state_steps"], foreach=foreach,
                           lr=0.1, alpha=0.9, eps=1e-8, weight_decay=0, momentum=0.9, centered=False)
    assert all(torch.equal(p, q) for p, q in zip(params, before))
    assert all(float(t) == 0 for t in lists["state_steps"])


# ---------------------------------------------------------------- 13: smaller
def test_buffers_created_after_share_memory_are_shared():
    opt, params = _two_groups()
    opt.share_memory()
    opt.param_groups[0]["momentum"] = 0.9
    opt.param_groups[0]["centered"] = True
    _grads(params)
    opt.step()
    state = opt.state[params[0]]
    assert state["momentum_buffer"].is_shared() and state["grad_avg"].is_shared()


@pytest.mark.parametrize("path", PATHS.values(), ids=PATH_IDS)
def test_a_changed_state_precision_converts_the_state(path):
    opt, params = _two_groups(**path)
    _grads(params)
    opt.step()
    v = opt.state[params[1]]["square_avg"].clone()
    opt.param_groups[1]["state_precision"] = "bf16"
    _grads(params, 1)
    opt.step()
    assert opt.state[params[1]]["square_avg"].dtype == torch.bfloat16
    assert opt.state[params[0]]["square_avg"].dtype == torch.float32
    expected = 0.99 * v.to(torch.bfloat16).float() + 0.01 * params[1].grad ** 2
    torch.testing.assert_close(opt.state[params[1]]["square_avg"].float(), expected, rtol=1e-2, atol=0)


def test_translate_accepts_every_setting_a_user_may_pass():
    assert rmsprop.translate("keras", fused=True, state_precision="bf16")["fused"] is True
    with pytest.raises(ValueError, match="has no counterpart"):
        rmsprop.translate("keras", skipped_steps=3)


@pytest.mark.parametrize("knob,value,error", [("alpha", torch.tensor(0.9), TypeError),
                                              ("momentum", -1.0, ValueError), ("eps", math.nan, ValueError)])
def test_functional_knobs_are_validated_as_a_groups_are(knob, value, error):
    params, grads = [torch.randn(3)], [torch.randn(3)]
    knobs = dict(lr=0.1, alpha=0.9, eps=1e-8, weight_decay=0.0, momentum=0.0, centered=False) | {knob: value}
    before = params[0].clone()
    with pytest.raises(error, match=f"{knob}.* in rmsprop.functional.rmsprop's arguments"):
        functional.rmsprop(params, grads, [torch.zeros(3)], [], [torch.zeros(3)], [torch.tensor(0.0)],
                           **knobs)
    assert torch.equal(params[0], before)


def test_caution_refuses_a_sharded_parameter_before_anything_changes(tmp_path):
    """(15) divides by the mean of a mask over the whole tensor, which an FSDP2 rank holding a
    shard cannot see: refused with the parameter named, nothing written (a single-rank mesh:
    the placement, not the world size, is what is refused)."""
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import Shard, distribute_tensor

    dist.init_process_group("gloo", init_method=f"file://{tmp_path}/store", rank=0, world_size=1)
    try:
        mesh = init_device_mesh("cpu", (1,))
        p = torch.nn.Parameter(distribute_tensor(torch.randn(4, 3), mesh, [Shard(0)]))
        p.grad = distribute_tensor(torch.randn(4, 3), mesh, [Shard(0)])
        opt = rmsprop.RMSprop([p], lr=0.1, momentum=0.9, caution=True)
        before = p.detach().full_tensor().clone()
        with pytest.raises(ValueError, match=r"parameter 0 of param group 0 is sharded .*caution=True"):
            opt.step()
        assert torch.equal(p.detach().full_tensor(), before) and not opt.state
        opt.param_groups[0]["caution"] = False
        opt.step()
        assert not torch.equal(p.detach().full_tensor(), before)
    finally:
        dist.destroy_process_group()


def test_clipping_and_the_average_are_differentiable_through_a_step():
    """differentiable=True: gradients flow through (0), (0') (whose limit reads θ, which the
    step then overwrites in place) and (16) to the parameter, its gradient and the average."""
    dtype = torch.float64
    p = torch.rand(3, 4, dtype=dtype, requires_grad=True)
    grad = torch.rand(3, 4, dtype=dtype, requires_grad=True)
    ema = torch.rand(3, 4, dtype=dtype, requires_grad=True)

    def one_step(p, grad, ema):
        p = p.clone()
        p.grad = grad
        opt = rmsprop.RMSprop([p], lr=0.1, differentiable=True, agc_clip=0.05, max_grad_norm=0.5,
                              ema_decay=0.9)
        opt.state[p] = {"step": torch.ones((), dtype=dtype), "square_avg": torch.full_like(p, 0.1),
                        "ema": ema.clone()}
        opt.step()
        assert float(opt.grad_norm) > 0.5  # (0) clipped
        return p, opt.state[p]["ema"]

    assert torch.autograd.gradcheck(one_step, (p, grad, ema))
