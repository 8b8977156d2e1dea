"""The ``torch.optim.Optimizer`` contract, as PyTorch's generic optimizer suite checks it.

PyTorch's ``TestOptimRenewed`` (``test/test_optim.py``) runs a set of generic tests
over every entry of ``torch.testing._internal.common_optimizers.optim_db``. Its test
file is not in the wheel, but its inputs are: the RMSprop configurations
(``optim_inputs_func``, plus ``_get_optim_inputs_including_global_cliquey_kwargs`` for
the ``differentiable`` variants) and error inputs (``optim_error_inputs_func``). The
tests below are our own restatement of each CPU test of that suite, driven by those
imported inputs, and are run against both ``torch.optim.RMSprop`` (id "torch", the
control that proves the test right) and ``rmsprop.RMSprop`` (id "ours").

Where the upstream test is weak we are strict: ``test_tensor_lr`` steps and compares,
the no-grad no-op test asserts the parameters are unchanged, several comparisons are
bitwise. Groups, by the upstream test each mirrors:

- configs and errors: ``test_optim_infos_do_not_specify_global_cliquey_kwargs``,
  ``test_errors``;
- training direction: ``test_forloop_goes_right_direction`` (± contiguous, ± LR
  schedulers), ``test_param_group_with_lrscheduler_goes_right_direction``,
  ``test_param_groups_weight_decay``, ``test_param_groups_lr``;
- numerics: ``test_tensor_lr``, ``test_complex``, ``test_complex_2d``,
  ``test_foreach_matches_forloop``, ``test_step_is_noop_when_params_have_no_grad``,
  ``test_step_is_noop_for_zero_grads``;
- state dicts: ``test_state_dict_deterministic``, ``test_can_load_older_state_dict``,
  ``test_can_load_from_to_named_state_dict``,
  ``test_save_load_equality_with_weights_only``, ``test_load_nontensor_step``;
- hooks: ``test_state_dict_{pre,post,pre_post}_hook``,
  ``test_load_state_dict_pre_hook_and_prepend``, ``test_load_state_dict_{post,pre_post}_hook``,
  ``test_step_{pre,post,all}_hook(s)``;
- the object itself: ``test_optimizer_can_be_printed``,
  ``test_deepcopy_copies_all_public_attrs``, ``test_non_empty_state``;
- ``TestDifferentiableOptimizer.test_rmsprop`` (gradcheck through one step);
- and one of our own: ours against torch's class, bit for bit, over 20 steps.
"""

from __future__ import annotations

import copy
import io
import re
from collections.abc import Callable
from typing import Any

import pytest
import torch
from torch import nn
from torch.optim.lr_scheduler import ReduceLROnPlateau
from torch.optim.optimizer import (
    register_optimizer_step_post_hook,
    register_optimizer_step_pre_hook,
)
from torch.testing._internal.common_optimizers import (
    OptimizerErrorEnum,
    _get_optim_inputs_including_global_cliquey_kwargs,
    optim_db,
)

import rmsprop

INFO = next(o for o in optim_db if o.optim_cls is torch.optim.RMSprop)
GLOBAL_CLIQUEY_FLAGS = ("foreach", "fused", "differentiable")


# --------------------------------------------------------------------------- inputs


def _base_inputs(dtype: torch.dtype) -> list:
    return INFO.optim_inputs_func(device="cpu", dtype=dtype)


def _inputs_without_differentiable(dtype: torch.dtype) -> list:
    return _get_optim_inputs_including_global_cliquey_kwargs("cpu", dtype, INFO, skip=("differentiable",))


def _inputs_all(dtype: torch.dtype) -> list:
    return _get_optim_inputs_including_global_cliquey_kwargs("cpu", dtype, INFO)


def _inputs_complex(dtype: torch.dtype) -> list:
    return _get_optim_inputs_including_global_cliquey_kwargs(
        "cpu", dtype, INFO, skip=("differentiable", "fused")
    )


FAMILIES: dict[str, Callable[[torch.dtype], list]] = {
    "base": _base_inputs,
    "no_differentiable": _inputs_without_differentiable,
    "all": _inputs_all,
    "complex": _inputs_complex,
}


class Config:
    """One optim_db configuration, re-created on every use (tests mutate kwargs)."""

    def __init__(self, family: str, index: int, desc: str) -> None:
        self.family, self.index, self.desc = family, index, desc

    def kwargs(self, dtype: torch.dtype = torch.float32) -> dict[str, Any]:
        optim_input = FAMILIES[self.family](dtype)[self.index]
        assert optim_input.desc == self.desc, "optim_db changed under the test"
        return copy.deepcopy(optim_input.kwargs)

    def __repr__(self) -> str:
        return f"Config({self.family!r}, {self.desc!r})"


def configs(family: str, where: Callable[[dict], bool] = lambda kwargs: True) -> list:
    """pytest params over one family of configs, with readable ids."""
    dtype = torch.complex64 if family == "complex" else torch.float32
    return [
        pytest.param(Config(family, i, oi.desc), id=re.sub(r"\W+", "_", oi.desc).strip("_"))
        for i, oi in enumerate(FAMILIES[family](dtype))
        if where(oi.kwargs)
    ]


def _error_inputs() -> list:
    return INFO.optim_error_inputs_func(device="cpu", dtype=torch.float32)


ERROR_IDS = [re.sub(r"\W+", "_", e.optimizer_error_input.desc).strip("_") for e in _error_inputs()]


@pytest.fixture(
    params=[torch.optim.RMSprop, rmsprop.RMSprop],
    ids=["torch", "ours"],
)
def optim_cls(request):
    return request.param


@pytest.fixture(autouse=True)
def _seeded():
    torch.manual_seed(0)


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """Every tensor here is tiny; intra-op threads only add wake-up latency (tens of ms
    per conv/batch-norm backward on a busy machine)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# -------------------------------------------------------------------------- helpers


def assert_identical(a: Any, b: Any, where: str = "value") -> None:
    """Recursive exact equality: tensors bitwise (and same dtype/shape), containers
    key by key, everything else by ==."""
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        assert isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor), (
            f"{where}: {type(a).__name__} vs {type(b).__name__}"
        )
        assert a.dtype == b.dtype, f"{where}: dtype {a.dtype} vs {b.dtype}"
        assert a.shape == b.shape, f"{where}: shape {tuple(a.shape)} vs {tuple(b.shape)}"
        assert torch.equal(a, b), f"{where}: {a} vs {b}"
    elif isinstance(a, dict):
        assert isinstance(b, dict), f"{where}: dict vs {type(b).__name__}"
        assert a.keys() == b.keys(), f"{where}: keys {sorted(map(str, a))} vs {sorted(map(str, b))}"
        for key in a:
            assert_identical(a[key], b[key], f"{where}[{key!r}]")
    elif isinstance(a, (list, tuple)):
        assert isinstance(b, (list, tuple)) and len(a) == len(b), f"{where}: {a!r} vs {b!r}"
        for i, (x, y) in enumerate(zip(a, b)):
            assert_identical(x, y, f"{where}[{i}]")
    else:
        assert a == b, f"{where}: {a!r} vs {b!r}"


def assert_near(actual: Any, expected: Any, where: str) -> None:
    """torch.testing.assert_close at the default tolerance of the dtype (upstream's
    assertEqual), with ``where`` in the message."""
    torch.testing.assert_close(actual, expected, msg=lambda detail: f"{where}: {detail}")


def linear_problem(dtype=torch.float32, contiguous=True):
    """weight (10, 5), bias (10), input (5): the suite's small least-squares problem."""
    if contiguous:
        weight = nn.Parameter(torch.randn(10, 5, dtype=dtype))
        bias = nn.Parameter(torch.randn(10, dtype=dtype))
    else:
        weight = nn.Parameter(torch.randn(10, 5, 2, dtype=dtype)[..., 0])
        bias = nn.Parameter(torch.randn(10, 2, dtype=dtype)[..., 0])
        assert not weight.is_contiguous() and not bias.is_contiguous()
    x = torch.randn(5, dtype=dtype)
    return weight, bias, x


def make_closure(optimizer, weight, bias, x):
    def closure():
        optimizer.zero_grad()
        loss = (weight.mv(x) + bias).pow(2).sum()
        loss.backward()
        return loss

    return closure


def assert_moved(kwargs: dict, initial: float, final: float) -> None:
    if kwargs.get("maximize", False):
        assert final > initial, f"maximize: loss went from {initial} to {final}"
    else:
        assert final < initial, f"loss went from {initial} to {final}"


def step_schedulers(schedulers, loss) -> None:
    for scheduler in schedulers:
        if isinstance(scheduler, ReduceLROnPlateau):
            scheduler.step(loss.detach())
        else:
            scheduler.step()


def conv_bn_model():
    torch.manual_seed(1)
    model = nn.Sequential(nn.Conv2d(4, 2, 1, stride=2), nn.BatchNorm2d(2, eps=1e-05, momentum=0.1))
    x = torch.rand(1, 4, 16, 16)
    return model, x


def forward_backward(optimizer, model, x):
    optimizer.zero_grad()
    loss = model(x).sum()
    loss.backward()
    return loss


def named(params, is_named: bool):
    return [(f"name{i}", p) for i, p in enumerate(params)] if is_named else list(params)


def without_param_names(state_dict: dict) -> dict:
    out = copy.deepcopy(state_dict)
    for group in out["param_groups"]:
        group.pop("param_names", None)
    return out


# ----------------------------------------------------------------- configs and errors


def test_optim_db_configs_specify_no_global_cliquey_kwargs():
    """Mirrors test_optim_infos_do_not_specify_global_cliquey_kwargs (pure data, no class)."""
    for optim_input in _base_inputs(torch.float32):
        assert not set(GLOBAL_CLIQUEY_FLAGS) & optim_input.kwargs.keys(), optim_input.desc


@pytest.mark.parametrize("index", range(len(ERROR_IDS)), ids=ERROR_IDS)
def test_errors(optim_cls, index):
    error_input = _error_inputs()[index]
    optim_input = error_input.optimizer_error_input
    params, kwargs = optim_input.params, optim_input.kwargs
    if issubclass(error_input.error_type, Warning):
        expect = pytest.warns(error_input.error_type, match=error_input.error_regex)
    else:
        expect = pytest.raises(error_input.error_type, match=error_input.error_regex)
    if error_input.error_on == OptimizerErrorEnum.CONSTRUCTION_ERROR:
        with expect:
            optim_cls(params, **kwargs)
    else:
        optimizer = optim_cls(params, **kwargs)
        with expect:
            optimizer.step()


# ------------------------------------------------------------------ training direction


@pytest.mark.parametrize("with_lrsched", [False, True], ids=["no_sched", "lrsched"])
@pytest.mark.parametrize("contiguous", [True, False], ids=["contiguous", "strided"])
@pytest.mark.parametrize("config", configs("base"))
def test_forloop_goes_right_direction(optim_cls, config, contiguous, with_lrsched):
    kwargs = config.kwargs()
    kwargs["foreach"] = False
    weight, bias, x = linear_problem(contiguous=contiguous)
    optimizer = optim_cls([weight, bias], **kwargs)
    schedulers = [make(optimizer) for make in INFO.scheduler_inputs[0]] if with_lrsched else []
    closure = make_closure(optimizer, weight, bias, x)

    initial = closure().item()
    for _ in range(20):
        loss = closure()
        optimizer.step()
        step_schedulers(schedulers, loss)
    assert_moved(kwargs, initial, closure().item())


def test_param_group_with_lrscheduler_goes_right_direction(optim_cls):
    weight, bias, x = linear_problem()
    optimizer = optim_cls([{"params": [weight]}, {"params": [bias], "lr": 0.01}])
    schedulers = [make(optimizer) for make in INFO.scheduler_inputs[0]]
    closure = make_closure(optimizer, weight, bias, x)

    initial = closure().item()
    for _ in range(20):
        loss = optimizer.step(closure)
        step_schedulers(schedulers, loss)
    assert closure().item() < initial


@pytest.mark.parametrize("config", configs("no_differentiable"))
def test_param_groups_weight_decay(optim_cls, config):
    weight_kwargs = config.kwargs()
    bias_kwargs = {**copy.deepcopy(weight_kwargs), "weight_decay": 0.0}
    weight, bias, x = linear_problem()
    optimizer = optim_cls([{"params": [weight], **weight_kwargs}, {"params": [bias], **bias_kwargs}])
    closure = make_closure(optimizer, weight, bias, x)

    initial = closure().item()
    for _ in range(20):
        loss = closure()
        optimizer.step()
    assert_moved(weight_kwargs, initial, loss.item())


@pytest.mark.parametrize("config", configs("no_differentiable"))
def test_param_groups_lr(optim_cls, config):
    kwargs = config.kwargs()
    if kwargs.get("lr", 0) == 0:
        kwargs["lr"] = 1e-3
    weight, bias, x = linear_problem()
    irrelevant = nn.Parameter(torch.randn(2))
    irrelevant_before = irrelevant.detach().clone()
    optimizer = optim_cls([{"params": [weight, bias], **kwargs}, {"params": [irrelevant]}], lr=1e-28)
    closure = make_closure(optimizer, weight, bias, x)

    initial = closure().item()
    for _ in range(20):
        loss = closure()
        irrelevant.grad = torch.rand_like(irrelevant)
        optimizer.step()
    assert_moved(kwargs, initial, loss.item())
    assert optimizer.param_groups[1]["lr"] == 1e-28
    # lr 1e-28 moves nothing at float32 precision: bitwise unchanged.
    assert_identical(irrelevant.detach(), irrelevant_before, "irrelevant")


# -------------------------------------------------------------------------- numerics


@pytest.mark.parametrize("shape", [(), (1,), (1, 1)], ids=["0d", "1", "1x1"])
@pytest.mark.parametrize("config", configs("no_differentiable"))
def test_tensor_lr(optim_cls, config, shape):
    """A 1-element tensor lr steps exactly as the float it holds (and, within the
    default tolerance, as the float literal it was made from); upstream never steps."""
    base = config.kwargs()
    base.pop("lr", None)
    lr_tensor = torch.full(shape, 1e-3)
    weight, bias, x = linear_problem()
    runs = {}
    for name, lr in (("literal", 1e-3), ("held", lr_tensor.item()), ("tensor", lr_tensor)):
        w = weight.detach().clone().requires_grad_()
        b = bias.detach().clone().requires_grad_()
        optimizer = optim_cls([w, b], **{**copy.deepcopy(base), "lr": lr})
        runs[name] = (w, b, optimizer, make_closure(optimizer, w, b, x))

    assert runs["tensor"][2].param_groups[0]["lr"] is lr_tensor
    for step in range(5):
        for _, _, optimizer, closure in runs.values():
            closure()
            optimizer.step()
        tw, tb = runs["tensor"][0], runs["tensor"][1]
        assert_identical(tw.detach(), runs["held"][0].detach(), f"weight after step {step}")
        assert_identical(tb.detach(), runs["held"][1].detach(), f"bias after step {step}")
        assert_near(tw, runs["literal"][0], f"weight vs lr=1e-3 after step {step}")
        assert_near(tb, runs["literal"][1], f"bias vs lr=1e-3 after step {step}")
    assert not torch.equal(tw.detach(), weight.detach()), "the tensor-lr optimizer never moved"


@pytest.mark.parametrize("config", configs("complex"))
def test_complex(optim_cls, config):
    """A complex parameter steps as its view_as_real twin, mixed with a real one: bit
    for bit without weight decay, within the default tolerance with it (torch's class
    adds λ·θ in complex arithmetic, whose multiply-add rounds unlike the real one)."""
    kwargs = config.kwargs(torch.complex64)
    exact = kwargs.get("weight_decay", 0) == 0
    complex_params = [
        torch.randn(10, 5, dtype=torch.complex64, requires_grad=True),
        torch.randn(10, dtype=torch.complex64, requires_grad=True),
        torch.randn(10, 5, dtype=torch.float32, requires_grad=True),  # real, mixed in
    ]
    real_params = [
        (torch.view_as_real(p) if p.is_complex() else p).detach().clone().requires_grad_()
        for p in complex_params
    ]
    complex_opt = optim_cls(complex_params, **kwargs)
    real_opt = optim_cls(real_params, **copy.deepcopy(kwargs))

    def check(actual, expected, where):
        if exact:
            assert_identical(actual, expected, where)
        else:
            assert_near(actual, expected, where)

    for step in range(3):
        for cp, rp in zip(complex_params, real_params):
            grad = torch.randn_like(rp)
            rp.grad = grad
            cp.grad = torch.view_as_complex(grad.clone()) if cp.is_complex() else grad.clone()
        complex_opt.step()
        real_opt.step()
        for i, (cp, rp) in enumerate(zip(complex_params, real_params)):
            as_real = torch.view_as_real(cp) if cp.is_complex() else cp
            check(as_real.detach(), rp.detach(), f"param {i} after step {step}")
            c_state, r_state = complex_opt.state[cp], real_opt.state[rp]
            assert c_state.keys() == r_state.keys()
            for key, value in c_state.items():
                if value.is_complex():
                    value = torch.view_as_real(value)
                check(value, r_state[key], f"state[{i}][{key!r}] after step {step}")


def rosenbrock(t):
    x, y = t
    return (1 - x) ** 2 + 100 * (y - x**2) ** 2


@pytest.mark.parametrize("config", configs("complex"))
def test_complex_2d(optim_cls, config):
    """One complex 2-vector on |rosenbrock| steps as its real and imaginary parts split
    into two real parameters. As upstream's TensorTracker does, the loss, params and grads
    are checked and the split side is then reset to the complex side's values, so autograd's
    rounding cannot compound; the steps themselves must then agree bit for bit without
    weight decay (with it, torch's class adds λ·θ in complex arithmetic: default tolerance)."""
    kwargs = config.kwargs(torch.complex64)
    check = assert_identical if kwargs.get("weight_decay", 0) == 0 else assert_near
    a1 = torch.randn(2, dtype=torch.complex64, requires_grad=True)
    a1_real = a1.real.detach().clone().requires_grad_()
    a1_imag = a1.imag.detach().clone().requires_grad_()
    optim1 = optim_cls([a1], **kwargs)
    optim2 = optim_cls([a1_real, a1_imag], **copy.deepcopy(kwargs))

    for step in range(3):
        optim1.zero_grad()
        optim2.zero_grad()
        loss1 = rosenbrock(a1).abs()
        loss1.backward()
        with torch.no_grad():
            assert_near(a1_real, a1.real, f"real part before step {step}")
            assert_near(a1_imag, a1.imag, f"imaginary part before step {step}")
            a1_real.copy_(a1.real)
            a1_imag.copy_(a1.imag)
        loss2 = rosenbrock(torch.complex(a1_real, a1_imag)).abs()
        loss2.backward()
        assert_near(loss2, loss1, f"loss at step {step}")
        assert_near(a1_real.grad, a1.grad.real, f"real grad at step {step}")
        assert_near(a1_imag.grad, a1.grad.imag, f"imaginary grad at step {step}")
        a1_real.grad.copy_(a1.grad.real)
        a1_imag.grad.copy_(a1.grad.imag)

        optim1.step()
        optim2.step()
        check(a1.real.detach(), a1_real.detach(), f"real part after step {step}")
        check(a1.imag.detach(), a1_imag.detach(), f"imaginary part after step {step}")


@pytest.mark.parametrize("config", configs("base"))
def test_foreach_matches_forloop(optim_cls, config):
    """foreach=True against foreach=False in float64, every param and every state
    tensor after every iteration; a 0-d extra param, a layer frozen for iterations
    3-4, and an iteration (2) with no grads at all, which must change nothing."""
    dtype = torch.float64
    x = torch.tensor([0.1, 0.2, 0.3, 0.4, 0.5, 0.6], dtype=dtype).reshape(3, 2)
    runs = []
    for foreach in (False, True):
        torch.manual_seed(1)
        model = nn.Sequential(nn.Linear(2, 3), nn.Sigmoid(), nn.Linear(3, 1), nn.Sigmoid())
        model.to(dtype=dtype)
        scalar = torch.empty((), dtype=dtype, requires_grad=True)
        with torch.no_grad():
            scalar.fill_(0.5)
        params = [*model.parameters(), scalar]
        optimizer = optim_cls(params, **{**config.kwargs(dtype), "foreach": foreach})
        runs.append((model, scalar, params, optimizer))

    for i in range(7):
        scalar_grad = torch.rand((), dtype=dtype)
        before = [[p.detach().clone() for p in run[2]] for run in runs]
        for model, scalar, _, optimizer in runs:
            optimizer.zero_grad()
            if i == 3:
                model[2].requires_grad_(False)
            if i == 5:
                model[2].requires_grad_(True)
            if i != 2:
                model(x).sum().backward()
                scalar.grad = scalar_grad.clone()
            optimizer.step()

        (_, _, ref_params, ref_opt), (_, _, params, opt) = runs
        if i == 2:  # no grads anywhere: a no-op
            for run, old in zip(runs, before):
                for j, (p, q) in enumerate(zip(run[2], old)):
                    assert_identical(p.detach(), q, f"param {j} moved without a grad")
        for j, (ref, p) in enumerate(zip(ref_params, params)):
            assert_near(p, ref, f"iter {i} param {j}")
            assert ref_opt.state[ref].keys() == opt.state[p].keys(), f"iter {i} param {j}"
            for key, ref_value in ref_opt.state[ref].items():
                assert_near(opt.state[p][key], ref_value, f"iter {i} param {j} state {key!r}")
                opt.state[p][key].copy_(ref_value)  # no compounding, as TensorTracker
            with torch.no_grad():
                p.copy_(ref)
    # the frozen layer was not stepped on iterations 3 and 4 (nor 2): 4 steps of 7
    last_layer = runs[1][0][2].weight
    assert runs[1][3].state[last_layer]["step"].item() == 4


@pytest.mark.parametrize("config", configs("all"))
def test_step_is_noop_when_params_have_no_grad(optim_cls, config):
    params = [torch.randn(2, 3, requires_grad=False) for _ in range(2)]
    before = [p.clone() for p in params]
    optimizer = optim_cls(params, **config.kwargs())
    loss = torch.tensor([1.0])
    assert optimizer.step(lambda: loss) is loss
    for i, (p, old) in enumerate(zip(params, before)):
        assert_identical(p, old, f"param {i}")
    assert len(optimizer.state) == 0


@pytest.mark.parametrize("config", configs("all", where=lambda kwargs: kwargs.get("weight_decay", 0) == 0))
def test_step_is_noop_for_zero_grads(optim_cls, config):
    kwargs = config.kwargs()
    param = torch.randn(5, 1, requires_grad=True)
    before = param.detach().clone()
    params = [param.clone()] if kwargs.get("differentiable", False) else [param]
    optimizer = optim_cls(params, **kwargs)
    params[0].grad = torch.zeros_like(params[0])
    optimizer.step(lambda: torch.tensor([1.0]))
    assert_identical(params[0].detach(), before, "param")


# ------------------------------------------------------------------------ the object


@pytest.mark.parametrize("config", configs("all"))
def test_optimizer_can_be_printed(optim_cls, config):
    kwargs = config.kwargs()
    params = [nn.Parameter(torch.randn(2, 3)) for _ in range(2)]
    text = repr(optim_cls(params, **kwargs))
    assert text.startswith(f"{optim_cls.__name__} (")
    assert "Parameter Group 0" in text
    for key, value in kwargs.items():
        assert f"    {key}: {value}" in text, f"{key} missing from {text}"


@pytest.mark.parametrize("config", configs("no_differentiable"))
def test_deepcopy_copies_all_public_attrs(optim_cls, config):
    params = [nn.Parameter(torch.randn(2, 3)) for _ in range(2)]
    for p in params:
        p.grad = torch.rand_like(p)
    optimizer = optim_cls(params, **config.kwargs())
    for _ in range(3):
        optimizer.step()

    def public(obj):
        return {k for k in obj.__dict__ if not k.startswith("_")}

    clone = copy.deepcopy(optimizer)
    assert public(optimizer) == public(clone)
    assert_identical(optimizer.state_dict(), clone.state_dict(), "state_dict")


@pytest.mark.parametrize("config", configs("base"))
def test_non_empty_state(optim_cls, config):
    kwargs = config.kwargs()
    model = nn.Linear(5, 5)
    optimizer = optim_cls(model.parameters(), **kwargs)
    optimizer.zero_grad()
    model(torch.rand(2, 5)).sum().backward()
    optimizer.step()

    expected = {"step", "square_avg"}
    if kwargs.get("momentum", 0) > 0:
        expected.add("momentum_buffer")
    if kwargs.get("centered", False):
        expected.add("grad_avg")
    assert len(optimizer.state) == 2
    for state in optimizer.state.values():
        assert set(state) == expected


# ------------------------------------------------------------------------ state dicts


@pytest.mark.parametrize("named1", [False, True], ids=["plain1", "named1"])
@pytest.mark.parametrize("named0", [False, True], ids=["plain0", "named0"])
@pytest.mark.parametrize("config", configs("no_differentiable"))
def test_state_dict_deterministic(optim_cls, config, named0, named1):
    kwargs = config.kwargs()
    weight = nn.Parameter(torch.randn(2, 3))
    bias = nn.Parameter(torch.randn(2))
    x = torch.randn(3, requires_grad=True)
    optimizer = optim_cls(named([weight, bias], named0), **kwargs)
    closure = make_closure(optimizer, weight, bias, x)
    for _ in range(10):
        closure()
        optimizer.step()

    with torch.no_grad():
        weight_c = nn.Parameter(weight.clone())
        bias_c = nn.Parameter(bias.clone())
    optimizer_c = optim_cls(named([weight_c, bias_c], named1), **copy.deepcopy(kwargs))
    closure_c = make_closure(optimizer_c, weight_c, bias_c, x)
    optimizer_c.load_state_dict(copy.deepcopy(optimizer.state_dict()))

    for step in range(10):
        closure()
        closure_c()
        optimizer.step()
        optimizer_c.step()
        assert_identical(weight.detach(), weight_c.detach(), f"weight after step {step}")
        assert_identical(bias.detach(), bias_c.detach(), f"bias after step {step}")

    assert_identical(
        without_param_names(optimizer.state_dict()),
        without_param_names(optimizer_c.state_dict()),
        "state_dict",
    )
    # A repeated param keeps one id in the packed groups (pytorch#36831).
    optimizer_c.param_groups.extend(optimizer_c.param_groups)
    assert_identical(
        without_param_names(optimizer.state_dict())["param_groups"][-1],
        without_param_names(optimizer_c.state_dict())["param_groups"][-1],
        "repeated group",
    )


@pytest.mark.parametrize("config", configs("no_differentiable"))
def test_can_load_older_state_dict(optim_cls, config):
    model, x = conv_bn_model()
    optimizer = optim_cls(model.parameters(), **config.kwargs())
    for _ in range(3):
        forward_backward(optimizer, model, x)
        optimizer.step()

    old = copy.deepcopy(optimizer.state_dict())
    for group in old["param_groups"]:
        for flag in INFO.not_og_supported_flags:
            group.pop(flag, None)
    built = copy.deepcopy(optimizer.param_groups)
    optimizer.load_state_dict(old)

    # An absent flag reads as: PyTorch, its class default; ours, the loading optimizer's own
    # value (a file says nothing about a setting it lacks; docs/compatibility.md's checkpoint rule).
    torch_defaults = {"foreach": None, "differentiable": False, "maximize": False}
    for group, before in zip(optimizer.param_groups, built):
        for flag in INFO.not_og_supported_flags:
            assert flag in group, f"{flag} not restored"
        for flag, value in torch_defaults.items():
            expected = value if optim_cls is torch.optim.RMSprop else before[flag]
            assert group[flag] == expected, f"{flag}={group[flag]!r}"
        assert group["capturable"] is False
    before = [p.detach().clone() for p in model.parameters()]
    forward_backward(optimizer, model, x)
    optimizer.step()
    assert any(not torch.equal(p, q) for p, q in zip(model.parameters(), before))


@pytest.mark.parametrize("named1", [False, True], ids=["plain1", "named1"])
@pytest.mark.parametrize("named0", [False, True], ids=["plain0", "named0"])
@pytest.mark.parametrize("config", configs("no_differentiable"))
def test_can_load_from_to_named_state_dict(optim_cls, config, named0, named1):
    kwargs = config.kwargs()
    model, x = conv_bn_model()
    params = model.named_parameters() if named0 else model.parameters()
    optimizer = optim_cls(params, **kwargs)
    for _ in range(3):
        forward_backward(optimizer, model, x)
        optimizer.step()

    saved = copy.deepcopy(optimizer.state_dict())
    params2 = model.named_parameters() if named1 else model.parameters()
    optimizer2 = optim_cls(params2, **copy.deepcopy(kwargs))
    optimizer2.load_state_dict(saved)
    assert_identical(
        without_param_names(optimizer2.state_dict())["state"],
        without_param_names(optimizer.state_dict())["state"],
        "loaded state",
    )
    forward_backward(optimizer2, model, x)
    optimizer2.step()
    if named0 or named1:
        names = optimizer2.state_dict()["param_groups"][0]["param_names"]
        assert names == ["0.weight", "0.bias", "1.weight", "1.bias"]


@pytest.mark.parametrize("is_named", [False, True], ids=["plain", "named"])
@pytest.mark.parametrize("config", configs("no_differentiable"))
def test_save_load_equality_with_weights_only(optim_cls, config, is_named):
    weight = nn.Parameter(torch.randn(2, 3))
    bias = nn.Parameter(torch.randn(2))
    x = torch.randn(3, requires_grad=True)
    optimizer = optim_cls(named([weight, bias], is_named), **config.kwargs())
    closure = make_closure(optimizer, weight, bias, x)
    for _ in range(3):
        optimizer.step(closure)

    state_dict = optimizer.state_dict()
    buffer = io.BytesIO()
    torch.save(state_dict, buffer)
    buffer.seek(0)
    assert_identical(torch.load(buffer, weights_only=False), state_dict, "torch.load")
    buffer.seek(0)
    assert_identical(torch.load(buffer, weights_only=True), state_dict, "weights_only")


@pytest.mark.parametrize("config", configs("no_differentiable"))
def test_load_nontensor_step(optim_cls, config):
    """A state dict whose ``step`` values are Python floats loads (as tensors) and the
    optimizer then steps exactly as one that never went through the round trip."""
    kwargs = config.kwargs()
    params = [nn.Parameter(torch.randn(2, 3)) for _ in range(2)]
    twins = [nn.Parameter(p.detach().clone()) for p in params]
    for p, q in zip(params, twins):
        p.grad = torch.rand_like(p)
        q.grad = p.grad.clone()
    optimizer = optim_cls(params, **kwargs)
    twin_opt = optim_cls(twins, **copy.deepcopy(kwargs))
    for _ in range(3):
        optimizer.step()
        twin_opt.step()

    state_dict = copy.deepcopy(optimizer.state_dict())
    for p_state in state_dict["state"].values():
        p_state["step"] = p_state["step"].item()
    optimizer.load_state_dict(state_dict)
    for p in params:
        step = optimizer.state[p]["step"]
        assert torch.is_tensor(step) and step.dtype == torch.float32 and step.item() == 3.0

    optimizer.step()
    twin_opt.step()
    for i, (p, q) in enumerate(zip(params, twins)):
        assert_identical(p.detach(), q.detach(), f"param {i}")
        assert_identical(optimizer.state[p], twin_opt.state[q], f"state {i}")


# ------------------------------------------------------------------------------ hooks


def _put_test_key(optimizer):
    optimizer.state["test"] = 1


def _note_pre_hook(optimizer, state_dict):
    state_dict["ran_state_dict_pre_hook"] = "test" in state_dict["state"]
    state_dict["state"].pop("test", None)
    return state_dict


def _set_lr_in_place(optimizer, state_dict):
    state_dict["param_groups"][0]["lr"] = 0.002


def _return_copy_with_lr(optimizer, state_dict):
    replacement = copy.deepcopy(state_dict)
    replacement["param_groups"][0]["lr"] = 0.003
    return replacement


def _record_load(optimizer):
    optimizer.state["saw_lr_0.003"] = optimizer.param_groups[0]["lr"] == 0.003
    optimizer.state["ran_load_post_hook"] = True


def _one_param_optimizer(optim_cls, config):
    return optim_cls([torch.rand(2, 3, requires_grad=True)], **config.kwargs())


@pytest.mark.parametrize("config", configs("all"))
def test_state_dict_pre_hook(optim_cls, config):
    optimizer = _one_param_optimizer(optim_cls, config)
    optimizer.register_state_dict_pre_hook(_put_test_key)
    assert optimizer.state_dict()["state"]["test"] == 1


@pytest.mark.parametrize("config", configs("all"))
def test_state_dict_post_hook(optim_cls, config):
    optimizer = _one_param_optimizer(optim_cls, config)
    optimizer.register_state_dict_post_hook(_note_pre_hook)
    assert optimizer.state_dict()["ran_state_dict_pre_hook"] is False


@pytest.mark.parametrize("config", configs("all"))
def test_state_dict_pre_post_hook(optim_cls, config):
    optimizer = _one_param_optimizer(optim_cls, config)
    optimizer.register_state_dict_pre_hook(_put_test_key)
    optimizer.register_state_dict_post_hook(_note_pre_hook)
    state_dict = optimizer.state_dict()
    assert "test" not in state_dict["state"]
    assert state_dict["ran_state_dict_pre_hook"] is True


@pytest.mark.parametrize("config", configs("all"))
def test_load_state_dict_pre_hook_and_prepend(optim_cls, config):
    optimizer = _one_param_optimizer(optim_cls, config)
    state_dict = optimizer.state_dict()
    optimizer.register_load_state_dict_pre_hook(_set_lr_in_place)
    optimizer.load_state_dict(state_dict)
    assert optimizer.param_groups[0]["lr"] == 0.002
    # Prepended, the copying hook runs first and the in-place one then edits its copy.
    optimizer.register_load_state_dict_pre_hook(_return_copy_with_lr, prepend=True)
    optimizer.load_state_dict(state_dict)
    assert optimizer.param_groups[0]["lr"] == 0.002


@pytest.mark.parametrize("config", configs("all"))
def test_load_state_dict_post_hook(optim_cls, config):
    optimizer = _one_param_optimizer(optim_cls, config)
    optimizer.register_load_state_dict_post_hook(_record_load)
    optimizer.load_state_dict(optimizer.state_dict())
    assert optimizer.state["saw_lr_0.003"] is False
    assert optimizer.state["ran_load_post_hook"] is True


@pytest.mark.parametrize("config", configs("all"))
def test_load_state_dict_pre_post_hook(optim_cls, config):
    optimizer = _one_param_optimizer(optim_cls, config)
    optimizer.register_load_state_dict_pre_hook(_return_copy_with_lr)
    optimizer.register_load_state_dict_post_hook(_record_load)
    optimizer.load_state_dict(optimizer.state_dict())
    assert optimizer.state["saw_lr_0.003"] is True
    assert optimizer.state["ran_load_post_hook"] is True


@pytest.mark.parametrize("register", ["register_step_pre_hook", "register_step_post_hook"])
@pytest.mark.parametrize("config", configs("all"))
def test_step_pre_and_post_hook(optim_cls, config, register):
    optimizer = optim_cls([torch.tensor([1.0, 1.0])], **config.kwargs())
    calls = []
    handle = getattr(optimizer, register)(lambda opt, args, kwargs: calls.append(opt))
    optimizer.step()
    optimizer.step()
    assert calls == [optimizer, optimizer]
    handle.remove()
    optimizer.step()
    assert len(calls) == 2


@pytest.mark.parametrize("config", configs("all"))
def test_step_all_hooks(optim_cls, config):
    """Global pre, local pre, local post, global post, for ours and for an SGD alike."""
    params = [torch.tensor([1.0, 1.0])]
    optimizer = optim_cls(params, **config.kwargs())
    sgd = torch.optim.SGD(params)
    order: list[str] = []

    def hook(tag):
        return lambda opt, args, kwargs: order.append(tag)

    handles = [
        register_optimizer_step_pre_hook(hook("global_pre")),
        register_optimizer_step_post_hook(hook("global_post")),
    ]
    try:
        for opt in (optimizer, sgd):
            handles.append(opt.register_step_pre_hook(hook("pre")))
            handles.append(opt.register_step_post_hook(hook("post")))
        one_step = ["global_pre", "pre", "post", "global_post"]
        optimizer.step()
        assert order == one_step
        sgd.step()
        assert order == one_step * 2
        optimizer.step()
        assert order == one_step * 3
    finally:
        for handle in handles:
            handle.remove()
    optimizer.step()
    sgd.step()
    assert order == one_step * 3


def test_step_pre_hook_may_replace_the_arguments(optim_cls):
    optimizer = optim_cls([torch.tensor([1.0, 1.0])])
    called = []
    # The hooks see step's own arguments, the optimizer first.
    optimizer.register_step_pre_hook(lambda opt, args, kwargs: ((opt, lambda: called.append(1) or 2.0), {}))
    assert optimizer.step() == 2.0
    assert called == [1]
    optimizer.register_step_pre_hook(lambda opt, args, kwargs: "not a pair")
    with pytest.raises(RuntimeError, match="must return None or a tuple"):
        optimizer.step()


def test_step_is_a_profiler_range(optim_cls):
    """The step shows in a profile under PyTorch's name for it."""
    p = torch.tensor([1.0, 1.0], requires_grad=True)
    p.grad = torch.ones_like(p)
    optimizer = optim_cls([p])
    with torch.profiler.profile() as prof:
        optimizer.step()
    assert f"Optimizer.step#{optim_cls.__name__}.step" in {event.name for event in prof.events()}


def test_a_compiled_training_step_breaks_only_where_the_step_runs():
    """A user's torch.compile of a whole training step: the step is one eager region (a
    graph break at its call, hooks and profiler query included), never a break of its own
    inside the wrapper, and a schedule changing lr never recompiles the user's graphs."""
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    counters.clear()
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 2)
    optimizer = rmsprop.RMSprop(model.parameters(), lr=0.01)
    before = [p.detach().clone() for p in model.parameters()]
    x = torch.randn(8, 4)

    @torch.compile(backend="eager")
    def train_step(x):
        loss = model(x).pow(2).mean()
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        return loss

    train_step(x)
    graphs = counters["stats"]["unique_graphs"]
    for lr in (0.02, 0.005, 0.001):
        optimizer.param_groups[0]["lr"] = lr
        train_step(x)
    assert counters["stats"]["unique_graphs"] == graphs, "an lr change recompiled the user's graph"
    reasons = [reason.splitlines()[0] for reason in counters["graph_break"]]
    ours = [r for r in reasons if "backward" not in r and "disable" not in r and "skipped" not in r]
    assert not ours, f"graph breaks of the step wrapper's own: {ours}"
    assert all(not torch.equal(a, b) for a, b in zip(before, model.parameters()))


# ------------------------------------------------------------------ differentiability


def test_differentiable_step_passes_gradcheck(optim_cls):
    """TestDifferentiableOptimizer.test_rmsprop: gradients flow through one step to the
    param, its grad and every state buffer (float64, centered, momentum, maximize, wd)."""
    dtype = torch.float64
    p = torch.rand(10, dtype=dtype, requires_grad=True)
    grad = torch.rand(10, dtype=dtype, requires_grad=True)
    square_avg = torch.rand(10, dtype=dtype, requires_grad=True)
    momentum_buffer = torch.rand(10, dtype=dtype, requires_grad=True)
    grad_avg = (1e-2 * torch.rand(10, dtype=dtype)).requires_grad_()
    kwargs = dict(lr=0.9, maximize=True, momentum=0.9, differentiable=True, centered=True, weight_decay=0.1)

    def one_step(p, grad, square_avg, momentum_buffer, grad_avg):
        p = p.clone()
        p.grad = grad
        optimizer = optim_cls([p], **kwargs)
        optimizer.state[p] = {
            "step": torch.zeros((), dtype=dtype),
            "square_avg": square_avg.clone(),
            "momentum_buffer": momentum_buffer.clone(),
            "grad_avg": grad_avg.clone(),
        }
        optimizer.step()
        state = optimizer.state[p]
        return p, state["square_avg"], state["momentum_buffer"], state["grad_avg"]

    assert torch.autograd.gradcheck(one_step, (p, grad, square_avg, momentum_buffer, grad_avg))


# ------------------------------------------------------------------- ours == torch's


@pytest.mark.parametrize("foreach", [False, True], ids=["forloop", "foreach"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["fp32", "fp64"])
@pytest.mark.parametrize("config", configs("base"))
def test_ours_matches_torch_bitwise(config, dtype, foreach):
    """Same init, same grads, 20 steps, same path: params and every state tensor
    bit for bit. (The path is named on both sides: with foreach=None the two
    libraries pick different loops on CPU, and PyTorch's own for-loop and
    foreach paths round complex weight decay differently;
    tests/test_torch_dropin.py checks the defaults against each other.)"""
    kwargs = {**config.kwargs(dtype), "foreach": foreach}
    complex_dtype = torch.complex64 if dtype == torch.float32 else torch.complex128
    gen = torch.Generator().manual_seed(1234)
    inits = [
        torch.randn(10, 5, dtype=dtype, generator=gen),
        torch.randn(10, dtype=dtype, generator=gen),
        torch.randn((), dtype=dtype, generator=gen),
        torch.randn(3, 2, dtype=complex_dtype, generator=gen),
    ]
    theirs = [t.clone().requires_grad_() for t in inits]
    ours = [t.clone().requires_grad_() for t in inits]
    their_opt = torch.optim.RMSprop(theirs, **kwargs)
    our_opt = rmsprop.RMSprop(ours, **copy.deepcopy(kwargs))

    for step in range(20):
        for t, o in zip(theirs, ours):
            t.grad = torch.randn(t.shape, dtype=t.dtype, generator=gen)
            o.grad = t.grad.clone()
        their_opt.step()
        our_opt.step()
        for i, (t, o) in enumerate(zip(theirs, ours)):
            assert_identical(o.detach(), t.detach(), f"param {i} after step {step}")
            assert_identical(our_opt.state[o], their_opt.state[t], f"state {i} after step {step}")
