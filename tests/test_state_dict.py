"""State dicts: PyTorch's layout, cross-loading both ways, checks before change,
and how presets resolve into plain values that ``weights_only`` loading accepts."""

from __future__ import annotations

import copy
import io
import pickle

import pytest
import torch

import rmsprop
from rmsprop import PRESETS

from helpers import clone_params, grad_stream, make_params


def _roundtrip(obj):
    buf = io.BytesIO()
    torch.save(obj, buf)
    buf.seek(0)
    return torch.load(buf, weights_only=True)


def _train(opt, params, stream):
    for grads in stream:
        for p, g in zip(params, grads):
            p.grad = None if g is None else g.clone()
        opt.step()


KNOBS = {"momentum": 0.9, "centered": True, "weight_decay": 0.01}


@pytest.mark.parametrize("direction", ["torch->ours", "ours->torch"])
def test_cross_loading_continues_exactly(direction):
    first, second = (
        (torch.optim.RMSprop, rmsprop.RMSprop) if direction == "torch->ours"
        else (rmsprop.RMSprop, torch.optim.RMSprop)
    )
    base = make_params(torch.float32)
    stream = grad_stream(base, 30)
    # uninterrupted run with the first class
    straight = clone_params(base)
    _train(first(straight, **KNOBS), straight, stream)
    # 15 steps with the first class, save, load into the second, 15 more
    resumed = clone_params(base)
    opt = first(resumed, **KNOBS)
    _train(opt, resumed, stream[:15])
    saved = _roundtrip(opt.state_dict())
    other = second(resumed, lr=0.5)  # knobs come from the state dict
    other.load_state_dict(saved)
    _train(other, resumed, stream[15:])
    for a, b in zip(straight, resumed):
        assert torch.equal(a, b)


@pytest.mark.parametrize("preset", ["tf1", "sb3", "torch"])
def test_a_setting_the_file_does_not_state_keeps_the_loading_optimizers_value(preset):
    """A torch.optim.RMSprop state dict states lr, α, ε, λ, μ, centered, maximize and the
    path flags, nothing about ε's place or v₀: those stay what this optimizer was built with
    (SB3's RMSpropTFLike writes groups of the same shape, so its files resume as "sb3")."""
    params = make_params(torch.float64)
    theirs = torch.optim.RMSprop(params, lr=0.03, alpha=0.95, momentum=0.9)
    _train(theirs, params, grad_stream(params, 3))
    ours = rmsprop.RMSprop(params, lr=0.1, preset=preset, fused=False)
    built = dict(ours.param_groups[0])
    ours.load_state_dict(theirs.state_dict())
    group = ours.param_groups[0]
    stated = theirs.state_dict()["param_groups"][0].keys() - {"params"}
    for key in rmsprop.settings.names():
        if key in stated:
            assert group[key] == theirs.param_groups[0][key], key
        elif key == "layout_version":
            assert group[key] == rmsprop.LAYOUT_VERSION
        else:
            assert group[key] == built[key], key
    assert (group["preset"], group["lr"], group["alpha"], group["momentum"]) == (preset, 0.03, 0.95, 0.9)


def test_an_unpickled_group_lacking_a_setting_reads_as_pytorchs():
    """Unpickling has no optimizer of its own to keep values from: PyTorch's semantics."""
    params = make_params(torch.float64)
    opt = rmsprop.RMSprop(params, lr=0.1, preset="tf1")
    state = opt.__getstate__()
    for group in state["param_groups"]:
        del group["eps_in_sqrt"], group["preset"]
    fresh = rmsprop.RMSprop.__new__(rmsprop.RMSprop)
    fresh.__setstate__(state)
    assert fresh.param_groups[0]["eps_in_sqrt"] is False and fresh.param_groups[0]["preset"] == "torch"


def test_state_keys_and_values_are_torchs():
    params = make_params(torch.float32)
    opt = rmsprop.RMSprop(params, momentum=0.9, centered=True)
    _train(opt, params, grad_stream(params, 2))
    sd = opt.state_dict()
    assert set(sd) == {"state", "param_groups"}
    for state in sd["state"].values():
        assert set(state) == {"step", "square_avg", "grad_avg", "momentum_buffer"}
        assert state["step"].dtype == torch.float32 and state["step"].shape == ()


@pytest.mark.parametrize("preset", list(PRESETS))
def test_every_preset_saves_plain_values_that_load_with_weights_only(preset):
    params = make_params(torch.float32)
    opt = rmsprop.RMSprop(params, lr=0.01, preset=preset, momentum=0.5)
    _train(opt, params, grad_stream(params, 2))
    sd = _roundtrip(opt.state_dict())
    for group in sd["param_groups"]:
        assert group["preset"] == preset
        for key, value in group.items():
            assert value is None or isinstance(value, (bool, int, float, str, list, torch.Tensor)), key
    fresh = rmsprop.RMSprop(clone_params(params), lr=0.01, preset=preset)
    fresh.load_state_dict(sd)
    assert fresh.param_groups[0]["momentum"] == 0.5


def _bits(t: torch.Tensor) -> tuple:
    """A tensor as exactly what it holds: dtype, shape, device and every byte."""
    return t.dtype, tuple(t.shape), t.device, t.detach().contiguous().reshape(-1).view(torch.uint8).tolist()


def _everything(opt, params):
    """All an optimizer holds that a load could touch: every parameter, and its
    whole state dict (param_groups as they are, every state tensor bitwise)."""
    sd = opt.state_dict()
    state = {k: {key: _bits(value) if torch.is_tensor(value) else value for key, value in s.items()}
             for k, s in sd["state"].items()}
    return [_bits(p) for p in params], copy.deepcopy(sd["param_groups"]), state


def _trained():
    params = make_params(torch.float32)
    opt = rmsprop.RMSprop(params, momentum=0.9)
    _train(opt, params, grad_stream(params, 2))
    return params, opt


def _another_run():
    """The state dict of another run over parameters of the same shapes: other
    values, other step counts, other lr and knobs, and one more buffer
    (centered): applied even in part, it would show."""
    params = make_params(torch.float32, seed=7)
    opt = rmsprop.RMSprop(params, lr=0.05, alpha=0.95, momentum=0.5, centered=True, weight_decay=0.1)
    _train(opt, params, grad_stream(params, 5, seed=8))
    return copy.deepcopy(opt.state_dict())


@pytest.mark.parametrize(
    "corrupt,message",
    [
        (lambda sd: sd["param_groups"].append(dict(sd["param_groups"][0])),
         "different number of parameter groups: 2 saved, 1 in this optimizer"),
        (lambda sd: sd["param_groups"][0]["params"].pop(), "group 0 has 5 parameters saved, 6 here"),
        (lambda sd: sd.pop("param_groups"), "must be a dict with 'state' and 'param_groups'"),
        (lambda sd: sd["state"][0].__setitem__("exp_avg", torch.zeros(())), r"unknown keys \['exp_avg'\]"),
        (lambda sd: sd["state"][0].pop("square_avg"), r"parameter 0 of group 0 lacks \['square_avg'\]"),
        (lambda sd: sd["state"][0].__setitem__("step", torch.tensor(-1.0)), "has step -1.0"),
        (lambda sd: sd["state"][0].__setitem__("step", torch.tensor(float("nan"))), "has step nan"),
        (lambda sd: sd["state"][1].__setitem__("square_avg", torch.zeros(7, dtype=torch.complex64)),
         "square_avg of dtype torch.complex64, the parameter is torch.float32"),
        (lambda sd: sd["state"][1].__setitem__("momentum_buffer", torch.zeros(7, dtype=torch.int64)),
         "momentum_buffer of dtype torch.int64"),
        (lambda sd: sd["state"][0].__setitem__("square_avg", torch.zeros(4)), "square_avg for parameter 0"),
        (lambda sd: sd["state"][2].__setitem__("momentum_buffer", torch.zeros(4, 3)), "momentum_buffer"),
        (lambda sd: sd["param_groups"][0].__setitem__("layout_version", 99), "layout_version 99"),
        (lambda sd: sd["param_groups"][0].__setitem__("alpha", 2.0), "Invalid alpha value: 2.0"),
        (lambda sd: sd["param_groups"][0].__setitem__("nesterov", True) or
         sd["param_groups"][0].__setitem__("momentum", 0.0), "nesterov value: True requires momentum"),
        # the same faults in the last parameter's state, after four good ones
        (lambda sd: sd["state"][4].__setitem__("exp_avg", torch.zeros(())), r"unknown keys \['exp_avg'\]"),
        (lambda sd: sd["state"][4].pop("square_avg"), r"parameter 4 of group 0 lacks \['square_avg'\]"),
        (lambda sd: sd["state"][4].__setitem__("step", torch.tensor(-1.0)), "has step -1.0"),
    ],
    ids=["groups", "param-count", "no-groups", "alien-key", "missing-key", "negative-step", "nan-step",
         "complex-state", "integer-state", "shape", "buffer-shape", "layout", "bad-knob", "bad-combination",
         "last-alien-key", "last-missing-key", "last-negative-step"],
)
def test_mismatched_state_dict_raises_before_anything_changes(corrupt, message):
    """A state dict of another run, with one thing wrong: the load raises, and
    the optimizer holds exactly what it held (so a load that applied part of
    the file before finding the fault would fail here)."""
    params, opt = _trained()
    before = _everything(opt, params)
    bad = _another_run()
    corrupt(bad)
    with pytest.raises(ValueError, match=message):
        opt.load_state_dict(bad)
    assert _everything(opt, params) == before


def test_torch_itself_accepts_a_wrong_shape_silently():
    """Why the shape check exists: PyTorch loads it without a word."""
    p = [torch.nn.Parameter(torch.randn(3))]
    opt = torch.optim.RMSprop(p)
    sd = {"state": {0: {"step": torch.tensor(1.0), "square_avg": torch.zeros(5)}},
          "param_groups": [dict(opt.state_dict()["param_groups"][0])]}
    opt.load_state_dict(sd)  # no error
    assert opt.state[p[0]]["square_avg"].shape == (5,)


def test_explicit_arguments_beat_the_preset_and_group_presets():
    a, b = torch.nn.Parameter(torch.randn(2)), torch.nn.Parameter(torch.randn(2))
    opt = rmsprop.RMSprop([{"params": [a]}, {"params": [b], "preset": "tf1", "alpha": 0.8}],
                          lr=0.1, eps=1e-3, preset="keras")
    keras, tf1 = opt.param_groups
    assert (keras["preset"], keras["lr"], keras["eps"], keras["alpha"]) == ("keras", 0.1, 1e-3, 0.9)
    assert keras["decoupled_weight_decay"] is True
    assert (tf1["preset"], tf1["lr"], tf1["eps"], tf1["alpha"]) == ("tf1", 0.1, 1e-3, 0.8)
    assert tf1["initial_square_avg"] == 1.0 and tf1["decoupled_weight_decay"] is False


def test_a_group_preset_trains_like_that_preset_alone():
    base = make_params(torch.float64)[:3]
    stream = grad_stream(base, 10)
    mixed = clone_params(base)
    opt = rmsprop.RMSprop([{"params": mixed[:1]}, {"params": mixed[1:], "preset": "tf1"}],
                          lr=0.01, momentum=0.9)
    _train(opt, mixed, stream)
    alone = clone_params(base)
    _train(rmsprop.RMSprop(alone[1:], lr=0.01, momentum=0.9, preset="tf1"), alone[1:],
           [g[1:] for g in stream])
    _train(rmsprop.RMSprop(alone[:1], lr=0.01, momentum=0.9), alone[:1], [g[:1] for g in stream])
    for x, y in zip(mixed, alone):
        assert torch.equal(x, y)


def test_pickle_and_deepcopy_keep_the_explicit_arguments():
    p = torch.nn.Parameter(torch.randn(2))
    opt = rmsprop.RMSprop([p], lr=0.2, preset="keras")
    for clone in (copy.deepcopy(opt), pickle.loads(pickle.dumps(opt))):
        clone.add_param_group({"params": [torch.nn.Parameter(torch.randn(1))], "preset": "tf1"})
        assert clone.param_groups[1]["lr"] == 0.2


def test_repr_shows_the_resolved_update():
    p = torch.nn.Parameter(torch.randn(2))
    text = repr(rmsprop.RMSprop([p], lr=0.1, preset="tf1", momentum=0.9))
    assert "update: [tf1]" in text
    assert "√(v + 1e-10)" in text and "b ← 0.9·b + lr·g/" in text and "v₀ = 1" in text
    text = repr(rmsprop.RMSprop([p]))
    assert "θ ← θ − lr·g/(√(v) + 1e-08)" in text


def test_load_pre_hooks_run_before_the_checks():
    """A pre-hook may repair a state dict, as in PyTorch: we check what it returns."""
    params, opt = _trained()
    bad = copy.deepcopy(opt.state_dict())
    good_avg = bad["state"][0]["square_avg"].clone()
    bad["state"][0]["square_avg"] = torch.zeros(9)

    def repair(optimizer, state_dict):
        state_dict["state"][0]["square_avg"] = good_avg
        return state_dict

    opt.register_load_state_dict_pre_hook(repair)
    opt.load_state_dict(bad)
    assert torch.equal(opt.state[params[0]]["square_avg"], good_avg)


@pytest.mark.parametrize("capturable", [False, True])
def test_a_step_count_lives_where_pytorchs_fused_and_capturable_optimizers_keep_it(capturable):
    """On the CPU for a CPU parameter (PyTorch's layout), on the parameter's device for one on an
    accelerator (here the meta device stands for one: CI has none), so that a step there never
    copies it to or from the host (tests/test_cuda.py checks that with CUDA's sync debug mode)."""
    from rmsprop.plan import new_step, step_device

    group = {"capturable": capturable}
    assert step_device(torch.zeros(2), group) == torch.device("cpu")
    assert step_device(torch.zeros(2, device="meta"), group) == torch.device("meta")
    step = new_step(torch.zeros(2, device="meta"), group, 3.0)
    assert (step.device.type, step.dtype, step.shape) == ("meta", torch.float32, ())
    assert float(new_step(torch.zeros(2), group, 3.0)) == 3.0
