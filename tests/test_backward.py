"""rmsprop.step_in_backward: each parameter stepped inside backward, its gradient freed."""

from __future__ import annotations

import warnings

import pytest
import torch

import rmsprop


def _model(seed=0):
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 2))


def _batches(n):
    gen = torch.Generator().manual_seed(1)
    return [(torch.randn(5, 4, generator=gen), torch.randn(5, 2, generator=gen)) for _ in range(n)]


def _loss(model, x, y):
    return torch.nn.functional.mse_loss(model(x), y)


@pytest.mark.parametrize("path", [{"foreach": False}, {"foreach": True}])
@pytest.mark.parametrize("knobs", [{}, {"momentum": 0.9, "centered": True, "weight_decay": 0.1},
                                   {"momentum": 0.9, "caution": True, "agc_clip": 0.01, "ema_decay": 0.9,
                                    "ema_every": 2, "ema_warmup": True}],
                         ids=["plain", "centered-momentum-wd", "caution-agc-ema"])
def test_training_in_backward_equals_the_usual_loop_bit_for_bit(path, knobs):
    usual, inside = _model(), _model()
    opt = rmsprop.RMSprop(usual.parameters(), lr=0.01, **knobs, **path)
    opt_b = rmsprop.RMSprop(inside.parameters(), lr=0.01, **knobs, **path)
    handle = rmsprop.step_in_backward(opt_b)
    sched = torch.optim.lr_scheduler.ExponentialLR(opt, 0.9)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the scheduler must not warn that the optimizer never stepped
        sched_b = torch.optim.lr_scheduler.ExponentialLR(opt_b, 0.9)
        for x, y in _batches(4):
            _loss(usual, x, y).backward()
            opt.step()
            opt.zero_grad()
            sched.step()
            _loss(inside, x, y).backward()
            assert all(p.grad is None for p in inside.parameters())  # freed at once
            sched_b.step()
    for a, b in zip(usual.parameters(), inside.parameters()):
        assert torch.equal(a, b)
    sd, sd_b = opt.state_dict(), opt_b.state_dict()
    assert sd["param_groups"] == sd_b["param_groups"]
    for k in sd["state"]:
        for key, value in sd["state"][k].items():
            assert torch.equal(value, sd_b["state"][k][key])
    handle.remove()


def test_step_is_refused_while_attached_and_works_after_remove():
    model = _model()
    opt = rmsprop.RMSprop(model.parameters(), lr=0.01)
    with rmsprop.step_in_backward(opt):
        with pytest.raises(RuntimeError, match="step_in_backward is attached"):
            opt.step()
        with pytest.raises(RuntimeError, match="step_in_backward is attached"):
            opt.step(lambda: 0.0)
        scaler = torch.amp.GradScaler("cpu")
        x, y = _batches(1)[0]
        scaler.scale(_loss(model, x, y)).backward()
        with pytest.raises(RuntimeError, match="step_in_backward is attached"):
            scaler.step(opt)
    x, y = _batches(1)[0]
    _loss(model, x, y).backward()
    assert all(p.grad is not None for p in model.parameters())  # hooks gone: grads stay
    opt.step()


def test_what_cannot_be_honoured_is_refused_when_attaching():
    params = list(_model().parameters())
    with pytest.raises(ValueError, match="cannot honour nonfinite='skip'"):
        rmsprop.step_in_backward(rmsprop.RMSprop(params, nonfinite="skip"))
    with pytest.raises(TypeError, match="needs an rmsprop.RMSprop"):
        rmsprop.step_in_backward(torch.optim.RMSprop(params))
    opt = rmsprop.RMSprop(params)
    rmsprop.step_in_backward(opt)
    with pytest.raises(RuntimeError, match="already attached"):
        rmsprop.step_in_backward(opt)
