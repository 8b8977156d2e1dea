"""rmsprop.param_groups against timm 1.0.31's param_groups_weight_decay and param_groups_layer_decay.

On real timm models (built with pretrained=False, nothing downloaded), both sides must split the
trainable parameters into the same groups and give each parameter the same weight decay and the
same lr scale, exactly. docs/param-groups.md quotes these tests.
"""

from __future__ import annotations

import pytest
import torch

import rmsprop

timm = pytest.importorskip("timm", reason="runs in the integration environment (make integration)")
from timm.models import group_parameters  # noqa: E402
from timm.optim import param_groups_layer_decay, param_groups_weight_decay  # noqa: E402

MODELS = ["resnet18", "vit_tiny_patch16_224"]


@pytest.fixture(scope="module", params=MODELS)
def model(request) -> torch.nn.Module:
    torch.manual_seed(0)
    return timm.create_model(request.param, pretrained=False)


def no_weight_decay_names(model: torch.nn.Module) -> list[str]:
    """The model's own no-weight-decay list (timm's factory passes it), as names it holds.

    ViT lists ``dist_token`` and ``reg_token`` too, which vit_tiny lacks: timm ignores a name that
    matches nothing, ``rmsprop.param_groups`` refuses it (a typo must not pass), so only the names
    the model has are passed to both.
    """
    listed = model.no_weight_decay() if hasattr(model, "no_weight_decay") else set()
    present = {name for name, _ in model.named_parameters()}
    return sorted(name for name in listed if name in present)


def by_parameter(groups: list[dict]) -> dict[int, tuple[float, float]]:
    """id(parameter) → (weight_decay, lr_scale); a parameter in two groups fails."""
    found: dict[int, tuple[float, float]] = {}
    for group in groups:
        for param in group["params"]:
            assert id(param) not in found
            found[id(param)] = (group["weight_decay"], group.get("lr_scale", 1.0))
    return found


def partition(groups: list[dict]) -> set[frozenset[int]]:
    return {frozenset(id(p) for p in group["params"]) for group in groups}


def test_the_models_biases_are_1d_so_both_1d_rules_agree(model):
    # timm's param_groups_weight_decay also exempts any name ending in ".bias"; ours exempts by
    # ndim alone ("*.bias" is a glob away). On these models every bias is 1-D.
    assert all(p.ndim == 1 for n, p in model.named_parameters() if n.endswith(".bias"))


@pytest.mark.parametrize("weight_decay", [0.05, 0.0])
def test_weight_decay_groups_equal_timms(model, weight_decay):
    names = no_weight_decay_names(model)
    theirs = param_groups_weight_decay(model, weight_decay=weight_decay, no_weight_decay_list=names)
    ours = rmsprop.param_groups(model, weight_decay=weight_decay, no_weight_decay=["1-D", *names])
    assert partition(ours) == partition(theirs)
    assert by_parameter(ours) == by_parameter(theirs)
    assert len(ours) == (2 if weight_decay else 1)


@pytest.mark.parametrize("layer_decay", [0.75, 0.65])
def test_layer_decay_groups_equal_timms(model, layer_decay):
    names = no_weight_decay_names(model)
    theirs = param_groups_layer_decay(
        model, weight_decay=0.05, no_weight_decay_list=names, layer_decay=layer_decay
    )
    layers = group_parameters(model, model.group_matcher(coarse=False), reverse=True)
    ours = rmsprop.param_groups(
        model, weight_decay=0.05, no_weight_decay=["1-D", *names], layer_decay=layer_decay, layer_id=layers
    )
    assert partition(ours) == partition(theirs)
    assert by_parameter(ours) == by_parameter(theirs)  # exact: the same power of the same float
    assert len(set(by_parameter(ours).values())) > 10  # many layers, so the check has teeth


def test_frozen_stem_is_left_out_by_both(model):
    stem = next(iter(model.named_children()))[1]
    stem.requires_grad_(False)
    try:
        names = no_weight_decay_names(model)
        theirs = param_groups_layer_decay(model, weight_decay=0.05, no_weight_decay_list=names)
        layers = group_parameters(model, model.group_matcher(coarse=False), reverse=True)
        ours = rmsprop.param_groups(
            model, weight_decay=0.05, no_weight_decay=["1-D", *names], layer_decay=0.75, layer_id=layers
        )
        assert by_parameter(ours) == by_parameter(theirs)
        assert not {id(p) for p in stem.parameters()} & set(by_parameter(ours))
    finally:
        stem.requires_grad_(True)


def test_the_groups_train_a_timm_model_with_rmsprop(model):
    layers = group_parameters(model, model.group_matcher(coarse=False), reverse=True)
    groups = rmsprop.param_groups(model, lr=1e-3, weight_decay=0.05, layer_decay=0.75, layer_id=layers)
    optimizer = rmsprop.RMSprop(groups, lr=1e-3, preset="timm")
    head = list(model.parameters())[-1]
    before = head.detach().clone()
    model.eval()  # BatchNorm statistics stay as they are; the fixture is shared
    model(torch.randn(1, 3, 224, 224)).sum().backward()
    optimizer.step()
    optimizer.zero_grad()
    assert not torch.equal(head, before)
