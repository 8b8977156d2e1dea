"""``rmsprop.param_groups``: the rules, the errors, determinism, and groups any optimizer takes.

The same rules are checked against timm's own functions on timm models in
integration/test_groups_timm.py.
"""

from __future__ import annotations

import copy

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import rmsprop


class Tiny(nn.Module):
    """A ViT-like layout: a class token on the root, an embedding, two blocks with norms, a head."""

    def __init__(self) -> None:
        super().__init__()
        self.cls_token = nn.Parameter(torch.zeros(1, 4))
        self.embed = nn.Linear(3, 4)
        self.blocks = nn.Sequential(
            nn.Sequential(nn.LayerNorm(4), nn.Linear(4, 4)), nn.Sequential(nn.LayerNorm(4), nn.Linear(4, 4))
        )
        self.act = nn.ReLU()
        self.head = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.act(self.blocks(self.embed(x)) + self.cls_token))


def settings_by_name(model: nn.Module, groups: list[dict]) -> dict[str, tuple]:
    """Each parameter's name → the group settings it got (every key but "params")."""
    names = {param: name for name, param in model.named_parameters()}
    found: dict[str, tuple] = {}
    for group in groups:
        rest = tuple(sorted((k, v) for k, v in group.items() if k != "params"))
        for param in group["params"]:
            assert names[param] not in found, f"{names[param]} in two groups"
            found[names[param]] = rest
    return found


def test_default_rule_takes_weight_decay_off_every_1d_parameter():
    model = Tiny()
    got = settings_by_name(model, rmsprop.param_groups(model, weight_decay=0.1))
    for name, param in model.named_parameters():
        assert got[name] == (("weight_decay", 0.0 if param.ndim <= 1 else 0.1),), name
    assert got["cls_token"] == (("weight_decay", 0.1),)  # 2-D: decayed, unless a rule names it


def test_names_types_and_1d_combine():
    model = Tiny()
    groups = rmsprop.param_groups(model, weight_decay=0.1, no_weight_decay=["cls_token", nn.LayerNorm])
    got = settings_by_name(model, groups)
    no_decay = {name for name, s in got.items() if s == (("weight_decay", 0.0),)}
    norms = {f"blocks.{i}.0.{kind}" for i in (0, 1) for kind in ("weight", "bias")}
    assert no_decay == {"cls_token"} | norms
    # one string alone is one rule, not a sequence of characters
    alone = settings_by_name(model, rmsprop.param_groups(model, weight_decay=0.1, no_weight_decay="*.bias"))
    assert {n for n, s in alone.items() if s == (("weight_decay", 0.0),)} == {
        n for n, _ in model.named_parameters() if n.endswith(".bias")
    }
    everything = rmsprop.param_groups(model, weight_decay=0.1, no_weight_decay=())
    assert len(everything) == 1 and everything[0]["weight_decay"] == 0.1


def test_layer_decay_over_top_level_children_and_lr_scale_multiply():
    model = Tiny()
    groups = rmsprop.param_groups(
        model, lr=1.0, layer_decay=0.5, lr_scale={"blocks.1.*": 3.0}, no_weight_decay=()
    )
    got = settings_by_name(model, groups)
    # layers: embed 0 (cls_token on the root joins it), blocks 1, head 2; act holds nothing
    expected = {"cls_token": 0.25, "embed": 0.25, "blocks.0": 0.5, "blocks.1": 1.5, "head": 1.0}
    for name, _ in model.named_parameters():
        scale = next(v for k, v in expected.items() if name.startswith(k))
        assert got[name] == (("lr", scale), ("lr_scale", scale), ("weight_decay", 0.0)), name


def test_layer_id_as_a_function_or_a_dict():
    model = Tiny()
    names = [n for n, _ in model.named_parameters()]
    depth = {n: (2 if n.startswith("head") else 0) for n in names}
    by_dict = rmsprop.param_groups(model, layer_decay=0.1, layer_id=depth, no_weight_decay=())
    by_function = rmsprop.param_groups(model, layer_decay=0.1, layer_id=depth.__getitem__, no_weight_decay=())
    assert settings_by_name(model, by_dict) == settings_by_name(model, by_function)
    got = settings_by_name(model, by_dict)
    assert got["head.weight"] == (("lr_scale", 1.0), ("weight_decay", 0.0))
    assert got["embed.weight"] == (("lr_scale", pytest.approx(0.01)), ("weight_decay", 0.0))


def test_without_lr_groups_carry_lr_scale_only_and_without_scales_neither():
    model = Tiny()
    assert all("lr" not in g for g in rmsprop.param_groups(model, layer_decay=0.5))
    assert all(set(g) == {"params", "weight_decay"} for g in rmsprop.param_groups(model))
    assert all(set(g) == {"params", "weight_decay", "lr"} for g in rmsprop.param_groups(model, lr=0.1))


def test_frozen_parameters_are_left_out_but_keep_the_layer_count():
    model = Tiny()
    model.embed.requires_grad_(False)
    groups = rmsprop.param_groups(model, layer_decay=0.5, no_weight_decay=())
    got = settings_by_name(model, groups)
    assert "embed.weight" not in got and "embed.bias" not in got
    assert got["blocks.0.1.weight"] == (("lr_scale", 0.5), ("weight_decay", 0.0))
    # a rule that selects only a frozen parameter is no typo: no error
    rmsprop.param_groups(model, no_weight_decay=["embed.weight"])


def test_equal_settings_share_a_group_in_first_appearance_order():
    model = Tiny()
    groups = rmsprop.param_groups(model, weight_decay=0.1)
    order = {param: i for i, (_, param) in enumerate(model.named_parameters())}
    firsts = [order[g["params"][0]] for g in groups]
    assert firsts == sorted(firsts)
    for group in groups:
        positions = [order[p] for p in group["params"]]
        assert positions == sorted(positions)
    assert len({(g["weight_decay"],) for g in groups}) == len(groups) == 2


def test_the_same_model_gives_the_same_groups():
    torch.manual_seed(0)
    model = Tiny()
    twin = copy.deepcopy(model)
    kwargs = dict(lr=0.1, weight_decay=0.1, layer_decay=0.7, lr_scale={"head.*": 2.0})
    first = rmsprop.param_groups(model, **kwargs)
    again = rmsprop.param_groups(model, **kwargs)
    assert [[id(p) for p in g["params"]] for g in first] == [[id(p) for p in g["params"]] for g in again]
    names = {id(p): n for n, p in model.named_parameters()}
    twin_names = {id(p): n for n, p in twin.named_parameters()}
    assert [[names[id(p)] for p in g["params"]] for g in first] == [
        [twin_names[id(p)] for p in g["params"]] for g in rmsprop.param_groups(twin, **kwargs)
    ]


def test_tied_weights_are_one_parameter_matched_under_any_name():
    model = nn.Sequential(nn.Embedding(5, 3), nn.Linear(3, 5, bias=False))
    model[1].weight = model[0].weight
    groups = rmsprop.param_groups(model, lr=1.0, lr_scale={"1.weight": 0.5})
    assert len(groups) == 1 and groups[0]["params"] == [model[0].weight] and groups[0]["lr"] == 0.5


def test_named_gives_torch_its_param_names():
    model = Tiny()
    groups = rmsprop.param_groups(model, weight_decay=0.1, named=True)
    optimizer = torch.optim.AdamW(groups, lr=1e-3)
    recorded = [n for g in optimizer.param_groups for n in g["param_names"]]
    assert sorted(recorded) == sorted(n for n, _ in model.named_parameters())


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(no_weight_decay=["nothing.*"]), "no parameter of the model matches 'nothing.*'"),
        (dict(no_weight_decay=[nn.BatchNorm2d]), "matches BatchNorm2d"),
        (dict(lr_scale={"head.*": 2.0, "typo*": 1.0}), "matches 'typo\\*'"),
        (dict(lr_scale={"head.*": 2.0, "*.weight": 3.0}), "'head.weight' matches lr_scale patterns"),
        (dict(lr_scale={"head.*": 0.0}), "lr_scale\\['head.\\*'\\] must be a finite number > 0"),
        (dict(lr_scale={"head.*": float("nan")}), "must be a finite number > 0"),
        (dict(layer_decay=-0.5), "layer_decay must be a finite number > 0"),
        (dict(layer_decay=0.0), "layer_decay must be"),
        (dict(weight_decay=-1.0), "weight_decay must be a finite number >= 0"),
        (dict(lr=float("inf")), "lr must be"),
        (dict(layer_decay=0.5, layer_id={"head.weight": 1}), "layer_id has no layer for parameter 'cls_tok"),
        (dict(layer_decay=0.5, layer_id=lambda name: -1), "layer -1: not an integer >= 0"),
        (dict(layer_decay=0.5, layer_id=lambda name: 1.0), "layer 1.0: not an integer"),
    ],
)
def test_a_rule_that_cannot_hold_raises_naming_it(kwargs, message):
    with pytest.raises(ValueError, match=message):
        rmsprop.param_groups(Tiny(), **kwargs)


def test_two_patterns_with_the_same_factor_agree():
    model = Tiny()
    scales = {"head.*": 2.0, "*.weight": 2.0}
    groups = rmsprop.param_groups(model, lr=1.0, lr_scale=scales, no_weight_decay=())
    got = settings_by_name(model, groups)
    assert got["head.weight"][0] == ("lr", 2.0) and got["embed.bias"][0] == ("lr", 1.0)


def test_a_rule_of_the_wrong_kind_is_a_type_error():
    with pytest.raises(TypeError, match="not 3"):
        rmsprop.param_groups(Tiny(), no_weight_decay=[3])
    with pytest.raises(TypeError, match="not <class 'int'>"):
        rmsprop.param_groups(Tiny(), no_weight_decay=[int])
    with pytest.raises(TypeError, match="lr_scale's keys are parameter-name globs"):
        rmsprop.param_groups(Tiny(), lr_scale={nn.Linear: 2.0})


def _train(optimizer: torch.optim.Optimizer, model: nn.Module, steps: int) -> None:
    torch.manual_seed(1)
    for _ in range(steps):
        optimizer.zero_grad()
        model(torch.randn(5, 3)).square().mean().backward()
        optimizer.step()


@pytest.mark.parametrize("make", [torch.optim.AdamW, rmsprop.RMSprop], ids=["AdamW", "rmsprop"])
def test_groups_train_with_an_optimizer_and_its_state_dict_round_trips(make):
    torch.manual_seed(0)
    model = Tiny()
    groups = rmsprop.param_groups(model, lr=1e-2, weight_decay=0.1, layer_decay=0.5)
    optimizer = make(groups, lr=1e-2)
    assert [g["lr"] for g in optimizer.param_groups] == [g["lr"] for g in groups]
    assert [g["weight_decay"] for g in optimizer.param_groups] == [g["weight_decay"] for g in groups]
    _train(optimizer, model, 3)
    # a copy resumed from the state dict continues exactly as the original
    twin = copy.deepcopy(model)
    resumed = make(rmsprop.param_groups(twin, lr=1e-2, weight_decay=0.1, layer_decay=0.5), lr=1e-2)
    resumed.load_state_dict(copy.deepcopy(optimizer.state_dict()))
    assert [g["lr_scale"] for g in resumed.param_groups] == [g["lr_scale"] for g in groups]
    _train(optimizer, model, 2)
    _train(resumed, twin, 2)
    for a, b in zip(model.parameters(), twin.parameters(), strict=True):
        assert torch.equal(a, b)


def test_a_frozen_layer_stays_put_while_the_rest_trains():
    torch.manual_seed(0)
    model = Tiny()
    model.embed.requires_grad_(False)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    optimizer = rmsprop.RMSprop(rmsprop.param_groups(model, lr=1e-2, weight_decay=0.1), lr=1e-2)
    _train(optimizer, model, 1)
    for name, param in model.named_parameters():
        assert torch.equal(param, before[name]) == name.startswith("embed."), name


@st.composite
def models(draw) -> nn.Module:
    """A random small model: nested children, some without bias, some frozen, maybe tied weights."""
    root = nn.Module()
    for i in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from(["linear", "norm", "nested", "relu", "param"]))
        if kind == "linear":
            child: nn.Module = nn.Linear(2, draw(st.integers(1, 3)), bias=draw(st.booleans()))
        elif kind == "norm":
            child = nn.LayerNorm(2)
        elif kind == "nested":
            child = nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2))
        elif kind == "relu":
            child = nn.ReLU()
        else:
            root.register_parameter(f"p{i}", nn.Parameter(torch.zeros(draw(st.sampled_from([(2,), (2, 2)])))))
            continue
        root.add_module(f"c{i}", child)
    params = list(root.parameters())
    if len(params) >= 2 and draw(st.booleans()):
        linears = [m for m in root.modules() if isinstance(m, nn.Linear)]
        if len(linears) >= 2 and linears[0].weight.shape == linears[1].weight.shape:
            linears[1].weight = linears[0].weight
    for param in root.parameters():
        param.requires_grad_(draw(st.booleans()))
    return root


@settings(max_examples=60, deadline=None)
@given(
    model=models(),
    layer_decay=st.one_of(st.none(), st.floats(0.1, 1.0)),
    weight_decay=st.sampled_from([0.0, 0.05]),
    rules=st.lists(st.sampled_from(["1-D", nn.LayerNorm, nn.Linear]), max_size=2, unique=True),
)
def test_every_trainable_parameter_is_in_exactly_one_group(model, layer_decay, weight_decay, rules):
    try:
        groups = rmsprop.param_groups(
            model, lr=0.1, weight_decay=weight_decay, layer_decay=layer_decay, no_weight_decay=rules
        )
    except ValueError as error:  # a module type the drawn model lacks: the only error it may raise
        assert "no parameter of the model matches" in str(error)
        assert any(not any(isinstance(m, r) for m in model.modules()) for r in rules if isinstance(r, type))
        return
    placed = [id(p) for g in groups for p in g["params"]]
    assert len(placed) == len(set(placed))
    assert set(placed) == {id(p) for p in model.parameters() if p.requires_grad}
    keys = [(g["weight_decay"], g["lr"]) for g in groups]
    assert len(keys) == len(set(keys))  # equal settings were merged
    assert all(g["params"] for g in groups)
