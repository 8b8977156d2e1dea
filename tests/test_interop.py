"""Carrying state over from other libraries: timm's state dicts and raw moments."""

from __future__ import annotations

import pytest
import torch

import rmsprop
from rmsprop.interop import import_moments

from helpers import clone_params, grad_stream, make_params


def _timm_layout_state_dict(**group):
    """A state dict in the layout timm's RMSpropTF writes (its group keys, an int step)."""
    keys = dict(lr=0.01, momentum=0.9, alpha=0.9, eps=1e-10, centered=False, weight_decay=0.0,
                decoupled_decay=False, lr_in_momentum=True, caution=False)
    return {
        "state": {0: {"step": 5, "square_avg": torch.full((3,), 2.0),
                      "momentum_buffer": torch.full((3,), 0.1)}},
        "param_groups": [{**keys, **group, "params": [0]}],
    }


def test_a_timm_state_dict_reads_as_the_timm_preset():
    p = torch.nn.Parameter(torch.randn(3))
    opt = rmsprop.RMSprop([p])  # even from a torch-preset optimizer: the saved knobs win
    opt.load_state_dict(_timm_layout_state_dict(decoupled_decay=True, weight_decay=0.01))
    group = opt.param_groups[0]
    assert group["preset"] == "timm" and group["decoupled_weight_decay"] is True
    assert (group["eps_in_sqrt"], group["initial_square_avg"], group["lr_in_momentum"]) == (True, 1.0, True)
    assert "decoupled_decay" not in group and "caution" not in group
    assert opt.state[p]["step"].dtype == torch.float32 and opt.state[p]["step"].item() == 5


@pytest.mark.parametrize("option", ["caution", "corrected_weight_decay"])
def test_timm_options_we_do_not_implement_are_refused(option):
    p = torch.nn.Parameter(torch.randn(3))
    opt = rmsprop.RMSprop([p], preset="timm")
    before = opt.state_dict()["param_groups"][0].copy()
    with pytest.raises(ValueError, match=f"timm's RMSpropTF with {option}=True"):
        opt.load_state_dict(_timm_layout_state_dict(**{option: True}))
    assert opt.state_dict()["param_groups"][0] == before


@pytest.mark.parametrize("preset,knobs", [("keras", {"momentum": 0.9, "centered": True}),
                                          ("optax", {"lr": 0.01, "bias_correction": True}),
                                          ("tf1", {"lr": 0.01, "momentum": 0.9})])
def test_imported_moments_continue_exactly(preset, knobs):
    base = make_params(torch.float64)[:3]
    # A gradient for every parameter at every step, as in Keras and optax, whose
    # step count is one for all variables.
    stream = [[torch.zeros_like(p) if g is None else g for p, g in zip(base, grads)]
              for grads in grad_stream(base, 20)]
    straight = clone_params(base)
    opt = rmsprop.RMSprop(straight, preset=preset, **knobs)
    for t, grads in enumerate(stream):
        if t == 10:  # hand the moments over as a foreign library would keep them: plain arrays
            moments = [{k: v.numpy().copy() for k, v in opt.state[p].items() if k != "step"}
                       for p in straight]
            resumed = [torch.nn.Parameter(p.detach().clone()) for p in straight]
            other = rmsprop.RMSprop(resumed, preset=preset, **knobs)
            import_moments(other, moments, step=10)
        for p, g in zip(straight, grads):
            p.grad = g
        opt.step()
        if t >= 10:
            for p, g in zip(resumed, grads):
                p.grad = g
            other.step()
    for a, b in zip(straight, resumed):
        assert torch.equal(a, b)


@pytest.mark.parametrize(
    "moments,message",
    [
        ([{"square_avg": torch.ones(2)}], "got moments for 1 parameters, the optimizer has 2"),
        ([{"square_avg": torch.ones(2)}, {"velocity": torch.ones(3)}], "unknown moment names"),
        ([{"square_avg": torch.ones(2)}, {"grad_avg": torch.ones(3)}], "square_avg is required"),
        ([{"square_avg": torch.ones(2)}, {"square_avg": torch.ones(4)}], "has shape (4,)"),
    ],
)
def test_import_moments_checks_before_it_changes_anything(moments, message):
    params = [torch.nn.Parameter(torch.zeros(2)), torch.nn.Parameter(torch.zeros(3))]
    opt = rmsprop.RMSprop(params)
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        import_moments(opt, moments, step=3)
    assert len(opt.state) == 0
