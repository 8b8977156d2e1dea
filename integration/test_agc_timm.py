"""Clipping inside the step against timm 1.0.31, live, on a timm model in float32.

``agc_clip=κ`` (line (0')) against ``timm.utils.adaptive_clip_grad(params, κ)`` called before
the step, and ``max_grad_norm=c`` (line (0)) against ``timm.utils.dispatch_clip_grad(params, c,
mode="norm")``, each on resnet10t's real parameters (1-D norm weights and biases, 4-D
convolutions, the 2-D head; random initialisation, nothing downloaded), trained for a few
steps on a fixed batch, each side computing its own gradients. The head is left unclipped by
AGC as timm's train script leaves it (``model_parameters(model, exclude_head=True)``): a
group of its own with ``agc_clip=0``.

The reference and foreach paths train the whole model and give timm's bits. The fused path
compiles code per tensor (minutes for resnet10t's 44 on a 2-core machine), so it trains seven
of the model's tensors (FUSED_BODY and the head; the gradients still come through the whole
network). It computes AGC's unit norms inside its
compiled pass, where Inductor's reductions round differently, so there it is held to a
relative tolerance; ``max_grad_norm``'s norm is computed outside the pass, as PyTorch
computes it, and the fused path gives timm's bits there.
"""

from __future__ import annotations

import copy

import pytest
import torch

import rmsprop

pytest.importorskip("timm", reason="runs in the integration environment (make integration)")
import timm  # noqa: E402
from timm.models import model_parameters  # noqa: E402
from timm.utils import adaptive_clip_grad, dispatch_clip_grad  # noqa: E402
from timm.utils.agc import unitwise_norm  # noqa: E402

STEPS = 4
KNOBS = {"preset": "timm", "lr": 0.01, "momentum": 0.9, "weight_decay": 1e-5}
# What the fused path trains: convolutions and norm parameters whose units timm's AGC clips
# at STEPS' first step (all, none, most rows), a zero-initialised bias (its limit is the 1e-3
# floor); and the head, unclipped.
FUSED_BODY = ("conv1.0.weight", "conv1.1.bias", "layer1.0.conv1.weight", "layer1.0.bn1.weight",
              "layer4.0.downsample.1.weight")
PATHS = {"reference": {"foreach": False}, "foreach": {"foreach": True}, "fused": {"fused": True}}
# Fused against timm with AGC, after STEPS steps of a real network (each side's gradients
# come from its own weights, so a last-bit difference in a unit norm travels through the
# later steps): worst seen 3.9e-7; the bound is tests/test_fused.py's for fused against
# the reference in float32.
FUSED_AGC_TOLERANCE = 2e-6


def _model() -> torch.nn.Module:
    torch.manual_seed(0)
    return timm.create_model("resnet10t", pretrained=False, num_classes=10)


def _batch():
    gen = torch.Generator().manual_seed(1)
    return torch.randn(8, 3, 32, 32, generator=gen), torch.randint(0, 10, (8,), generator=gen)


def _train(model, opt, clip=None):
    x, y = _batch()
    for _ in range(STEPS):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        if clip is not None:
            clip(model)
        opt.step()


def _relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).abs().max() / b.abs().max().clamp_min(1e-30)).item()


def _trained(model, path) -> tuple[list[torch.nn.Parameter], list[torch.nn.Parameter]]:
    """(body, head): the parameters the optimizer trains, split where timm's AGC stops."""
    body = model_parameters(model, exclude_head=True)
    head = list(model.parameters())[len(body):]
    if path == "fused":
        named = dict(model.named_parameters())
        body = [named[name] for name in FUSED_BODY]
    return body, head


def _agc_groups(model, path, factor):
    """timm's AGC set (everything but the head) clipped at ``factor``, the head not."""
    body, head = _trained(model, path)
    return [{"params": body, "agc_clip": factor}, {"params": head, "agc_clip": 0.0}]


def _clipped_share(params, factor) -> float:
    """The share of units (per adaptive_clip_grad) that timm's clipping rescales now."""
    clipped = total = 0
    for p in params:
        limit = unitwise_norm(p.detach()).clamp(min=1e-3) * factor
        above = unitwise_norm(p.grad) >= limit
        clipped, total = clipped + int(above.sum()), total + above.numel()
    return clipped / total


@pytest.mark.parametrize("path", PATHS)
def test_agc_clip_is_timms_adaptive_clip_grad(path):
    factor = 0.01
    theirs, ours = _model(), _model()
    shares = []

    def timm_agc(model):
        body, _ = _trained(model, path)
        shares.append(_clipped_share(body, factor))
        adaptive_clip_grad(body, clip_factor=factor)

    _train(theirs, rmsprop.RMSprop(sum(_trained(theirs, path), []), **KNOBS, **PATHS[path]), timm_agc)
    _train(ours, rmsprop.RMSprop(_agc_groups(ours, path, factor), **KNOBS, **PATHS[path]))
    assert 0 < min(shares) and max(shares) < 1, f"units on both sides of the limit: {shares}"
    pairs = list(zip(ours.parameters(), theirs.parameters()))
    if path == "fused":
        assert max(_relative(a.detach(), b.detach()) for a, b in pairs) <= FUSED_AGC_TOLERANCE
        return  # (the clipped shares above say that clipping acted; a plain run would compile again)
    assert all(torch.equal(a, b) for a, b in pairs)
    plain = _model()
    _train(plain, rmsprop.RMSprop(sum(_trained(plain, path), []), **KNOBS, **PATHS[path]))
    assert not all(torch.equal(a, b) for a, b in zip(plain.parameters(), theirs.parameters())), \
        "clipping changed nothing"


@pytest.mark.parametrize("path", PATHS)
def test_max_grad_norm_is_timms_dispatch_clip_grad_norm(path):
    clip, norms = 1.0, []

    def timm_norm(model):
        trained = sum(_trained(model, path), [])
        norms.append(torch.nn.utils.get_total_norm([p.grad for p in trained]))
        dispatch_clip_grad(trained, clip, mode="norm")

    theirs, ours = _model(), _model()
    _train(theirs, rmsprop.RMSprop(sum(_trained(theirs, path), []), **KNOBS, **PATHS[path]), timm_norm)
    opt = rmsprop.RMSprop(sum(_trained(ours, path), []), max_grad_norm=clip, **KNOBS, **PATHS[path])
    _train(ours, opt)
    assert max(norms) > clip, f"the norm must exceed the limit: {norms}"
    assert torch.equal(opt.grad_norm, norms[-1])
    assert all(torch.equal(a, b) for a, b in zip(ours.parameters(), theirs.parameters()))


def test_agc_clip_in_ours_equals_timms_in_torchs_rmsprop():
    """The same, with PyTorch's own RMSprop behind timm's clipping (our torch preset, reference path)."""
    factor = 0.02
    theirs, ours = _model(), copy.deepcopy(_model())
    _train(theirs, torch.optim.RMSprop(theirs.parameters(), lr=0.01, momentum=0.9),
           lambda model: adaptive_clip_grad(model_parameters(model, exclude_head=True), clip_factor=factor))
    _train(ours, rmsprop.RMSprop(_agc_groups(ours, "reference", factor), lr=0.01, momentum=0.9,
                                 foreach=False))
    assert all(torch.equal(a, b) for a, b in zip(ours.parameters(), theirs.parameters()))
