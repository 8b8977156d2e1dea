"""Exact identities the maths gives, in optax's spirit: each knob setting that
reduces RMSProp to another optimizer must reproduce it step for step."""

from __future__ import annotations

import pytest
import torch

import rmsprop

from helpers import clone_params, grad_stream, make_params, run

STEPS = 50


def _pair(base, stream, ours_kwargs, other_cls, other_kwargs, transform=None):
    ours, other = clone_params(base), clone_params(base)
    run(rmsprop.RMSprop, ours, stream, **ours_kwargs)
    stream_other = stream if transform is None else [
        [None if g is None else transform(g) for g in grads] for grads in stream
    ]
    run(other_cls, other, stream_other, **other_kwargs)
    return ours, other


@pytest.mark.parametrize("foreach", [False, True], ids=["reference", "foreach"])
@pytest.mark.parametrize("alpha", [0.9, 0.999])
def test_bias_corrected_rmsprop_without_momentum_is_adam_with_beta1_zero(alpha, foreach):
    """v̂ = v/(1 − αᵗ), d = √v̂ + ε: exactly Adam's second moment with β₁ = 0."""
    base = make_params(torch.float64)
    stream = grad_stream(base, STEPS)
    ours, adam = _pair(
        base, stream,
        dict(lr=1e-2, alpha=alpha, eps=1e-8, bias_correction=True, eps_in_sqrt=False, foreach=foreach),
        torch.optim.Adam, dict(lr=1e-2, betas=(0.0, alpha), eps=1e-8, foreach=foreach),
    )
    for a, b in zip(ours, adam):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("foreach", [False, True], ids=["reference", "foreach"])
def test_alpha_zero_eps_zero_is_sign_descent(foreach):
    """v = g², d = |g|: θ ← θ − η·sign(g), i.e. SGD on sign(g)."""
    base = make_params(torch.float64)
    stream = grad_stream(base, STEPS)
    ours, sgd = _pair(base, stream, dict(lr=1e-2, alpha=0.0, eps=0.0, foreach=foreach),
                      torch.optim.SGD, dict(lr=1e-2), transform=torch.sign)
    for a, b in zip(ours, sgd):
        torch.testing.assert_close(a, b, rtol=1e-14, atol=1e-15)


@pytest.mark.parametrize("nesterov", [False, True])
def test_lr_inside_and_outside_the_buffer_agree_while_lr_is_constant(nesterov):
    """b_inside = η·b_outside as long as η never changes."""
    base = make_params(torch.float64)
    stream = grad_stream(base, STEPS)
    knobs = dict(lr=3e-3, momentum=0.9, nesterov=nesterov)
    inside, outside = _pair(base, stream, {**knobs, "lr_in_momentum": True},
                            rmsprop.RMSprop, {**knobs, "lr_in_momentum": False})
    for a, b in zip(inside, outside):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-14)


def test_lr_inside_and_outside_the_buffer_differ_once_lr_changes():
    base = make_params(torch.float64)
    stream = grad_stream(base, STEPS)
    knobs = dict(lr=3e-3, momentum=0.9)
    inside, outside = clone_params(base), clone_params(base)
    run(rmsprop.RMSprop, inside, stream, {25: 1e-2}, lr_in_momentum=True, **knobs)
    run(rmsprop.RMSprop, outside, stream, {25: 1e-2}, lr_in_momentum=False, **knobs)
    assert max((a - b).abs().max().item() for a, b in zip(inside, outside) if a.numel()) > 1e-4


@pytest.mark.parametrize("eps_in_sqrt", [False, True])
def test_centered_with_alpha_zero_divides_by_eps_alone(eps_in_sqrt):
    """With α = 0, v = g² and ḡ = g, so the centered radicand is 0 up to
    rounding (which the clamp keeps from going negative): d is √ε or ε."""
    p = torch.nn.Parameter(torch.tensor([1.0, -2.0], dtype=torch.float64))
    opt = rmsprop.RMSprop([p], lr=0.1, alpha=0.0, eps=1e-3, centered=True, eps_in_sqrt=eps_in_sqrt)
    for sign in (1, -1, 1):
        p.grad = sign * torch.tensor([0.5, 3.0], dtype=torch.float64)
        opt.step()
        assert torch.isfinite(p).all()
    # with α = 0: v = g², ḡ = g, r = 0, so each step moves θ by η·g/√ε or η·g/ε
    d = 1e-3**0.5 if eps_in_sqrt else 1e-3
    expected = torch.tensor([1.0, -2.0], dtype=torch.float64) - 0.1 * torch.tensor(
        [0.5, 3.0], dtype=torch.float64
    ) / d
    torch.testing.assert_close(p.detach(), expected, rtol=1e-9, atol=1e-12)


def test_centered_never_yields_nan_where_pytorch_does():
    """PyTorch's centered form takes sqrt(v − ḡ²) unclamped: rounding can make
    it negative. Ours clamps the radicand and stays finite."""
    g = torch.rand(1000, generator=torch.Generator().manual_seed(0)) * 10
    theirs_p = torch.nn.Parameter(torch.zeros(1000))
    ours_p = torch.nn.Parameter(torch.zeros(1000))
    theirs = torch.optim.RMSprop([theirs_p], lr=1e-3, alpha=0.9, centered=True)
    ours = rmsprop.RMSprop([ours_p], lr=1e-3, alpha=0.9, centered=True)
    saw_nan = False
    for _ in range(200):  # a constant gradient: v − ḡ² → 0 and rounds below it
        theirs_p.grad, ours_p.grad = g.clone(), g.clone()
        theirs.step()
        ours.step()
        saw_nan |= bool(torch.isnan(theirs_p).any())
        assert torch.isfinite(ours_p).all()
    assert saw_nan, "the premise: PyTorch's form produces NaN here"
