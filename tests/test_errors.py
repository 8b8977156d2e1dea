"""Bad input gets a clear error, never a silent wrong answer."""

from __future__ import annotations

import re
import warnings

import pytest
import torch

import rmsprop


def _params():
    return [torch.nn.Parameter(torch.randn(3))]


@pytest.mark.parametrize(
    "kwargs,message",
    [
        ({"lr": -0.1}, "Invalid learning rate: -0.1"),
        ({"lr": torch.tensor([0.1, 0.2])}, "Tensor lr must be 1-element"),
        ({"eps": -1e-8}, "Invalid epsilon value: -1e-08"),
        ({"alpha": -0.5}, "Invalid alpha value: -0.5"),
        ({"alpha": 1.5}, "Invalid alpha value: 1.5"),  # tighter than PyTorch, on purpose
        ({"momentum": -1.0}, "Invalid momentum value: -1.0"),
        ({"weight_decay": -0.1}, "Invalid weight_decay value: -0.1"),
        ({"initial_square_avg": -1.0}, "Invalid initial_square_avg value: -1.0"),
        ({"nesterov": True}, "nesterov value: True requires momentum > 0"),
        ({"momentum": 0.0, "nesterov": True}, "nesterov value: True requires momentum > 0"),
        ({"alpha": 1.0, "bias_correction": True}, "Invalid alpha value: 1.0 with bias_correction=True"),
        ({"centered": "yes"}, "Invalid centered value: 'yes'"),
        ({"preset": "tf2"}, "Unknown preset 'tf2'; valid presets are 'seed', 'torch', 'tf1'"),
        ({"preset": "tf1"}, "preset 'tf1' has no default lr; pass lr="),
        ({"preset": "optax"}, "preset 'optax' has no default lr; pass lr="),
    ],
)
def test_invalid_hyperparameter_raises_value_error_naming_it(kwargs, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        rmsprop.RMSprop(_params(), **kwargs)


def test_invalid_value_in_a_param_group_raises_and_leaves_the_optimizer_unchanged():
    opt = rmsprop.RMSprop(_params(), lr=0.1)
    before = [dict(g) for g in opt.param_groups]
    with pytest.raises(ValueError, match="Invalid momentum value: -2"):
        opt.add_param_group({"params": [torch.nn.Parameter(torch.randn(2))], "momentum": -2})
    assert opt.param_groups == before


def test_group_preset_without_lr_needs_one():
    with pytest.raises(ValueError, match="preset 'tf1' has no default lr"):
        rmsprop.RMSprop([{"params": _params(), "preset": "tf1"}])
    opt = rmsprop.RMSprop([{"params": _params(), "preset": "tf1"}], lr=0.1)
    assert opt.param_groups[0]["lr"] == 0.1


def test_unknown_group_preset():
    with pytest.raises(ValueError, match="Unknown preset 'nope'"):
        rmsprop.RMSprop([{"params": _params(), "preset": "nope"}])


def test_sparse_gradients_raise():
    emb = torch.nn.Embedding(10, 3, sparse=True)
    emb(torch.tensor([1, 2])).sum().backward()
    for foreach in (False, True):
        opt = rmsprop.RMSprop(emb.parameters(), foreach=foreach)
        with pytest.raises(RuntimeError, match="RMSprop does not support sparse gradients"):
            opt.step()


def test_duplicate_parameters_warn_within_a_group_and_fail_across_groups():
    p = torch.nn.Parameter(torch.randn(2))
    with pytest.warns(UserWarning, match="duplicate parameters"):
        rmsprop.RMSprop([p, p])
    with pytest.raises(ValueError, match="some parameters appear in more than one parameter group"):
        rmsprop.RMSprop([{"params": [p]}, {"params": [p]}])


def test_foreach_with_differentiable_raises_instead_of_falling_back():
    p = torch.randn(3, dtype=torch.float64, requires_grad=True).clone()
    p.grad = torch.randn(3, dtype=torch.float64)
    opt = rmsprop.RMSprop([p], foreach=True, differentiable=True)
    with pytest.raises(ValueError, match="foreach=True cannot run with differentiable=True"):
        opt.step()


def test_valid_edges_are_accepted():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        rmsprop.RMSprop(_params(), lr=0.0, alpha=0.0, eps=0.0, momentum=0.0, weight_decay=0.0)
        rmsprop.RMSprop(_params(), alpha=1.0)
        rmsprop.RMSprop(_params(), preset="tf1", lr=0.1, momentum=0.9, nesterov=True)
