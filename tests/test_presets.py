"""Each preset follows its framework's formula, written here independently.

Every oracle below is a plain-Python, per-element transcription of the
framework's update as its own documentation and source state it (see
SEMANTICS.md), in that framework's own variables and defaults; it shares no
code with the library. Matching the live libraries is ``make parity``'s job.
"""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

import rmsprop
from rmsprop import PRESETS

GRADS = [[0.5, -2.0, 1e-3], [-1.5, 0.25, -4e-3], [3.0, -0.75, 2e-3], [0.1, 1.0, -1e-2], [-2.5, -0.5, 5e-3]]
THETA0 = [1.0, -0.5, 0.25]
LRS = [0.01, 0.01, 0.03, 0.03, 0.005]  # a schedule: η-inside and η-outside differ


def seed_oracle(lr_schedule, gamma=0.9, eps=1e-8):
    theta, avg_sq = list(THETA0), [0.0] * 3
    for lr, g in zip(lr_schedule, GRADS):
        for i in range(3):
            avg_sq[i] = gamma * avg_sq[i] + (1 - gamma) * g[i] ** 2
            theta[i] -= lr * g[i] / math.sqrt(avg_sq[i] + eps)
    return theta


def torch_oracle(lr_schedule, alpha=0.99, eps=1e-8, momentum=0.0, centered=False, weight_decay=0.0,
                 v0=0.0, eps_inside=False):
    """PyTorch's loop; ``v0`` and ``eps_inside`` are SB3's two changes to it (sb3_oracle)."""
    theta, v, gav, buf = list(THETA0), [v0] * 3, [0.0] * 3, [0.0] * 3
    for lr, grads in zip(lr_schedule, GRADS):
        for i in range(3):
            g = grads[i] + weight_decay * theta[i]
            v[i] = alpha * v[i] + (1 - alpha) * g * g
            var = v[i]
            if centered:
                gav[i] = alpha * gav[i] + (1 - alpha) * g
                var -= gav[i] ** 2
            denom = math.sqrt(var + eps) if eps_inside else math.sqrt(var) + eps
            if momentum > 0:
                buf[i] = momentum * buf[i] + g / denom
                theta[i] -= lr * buf[i]
            else:
                theta[i] -= lr * g / denom
    return theta


def tf1_oracle(lr_schedule, decay=0.9, momentum=0.0, epsilon=1e-10, centered=False):
    theta, ms, mg, mom = list(THETA0), [1.0] * 3, [0.0] * 3, [0.0] * 3
    for lr, grads in zip(lr_schedule, GRADS):
        for i in range(3):
            g = grads[i]
            ms[i] = ms[i] + (g * g - ms[i]) * (1 - decay)
            if centered:
                mg[i] = mg[i] + (g - mg[i]) * (1 - decay)
                denom = math.sqrt(ms[i] - mg[i] ** 2 + epsilon)
            else:
                denom = math.sqrt(ms[i] + epsilon)
            mom[i] = momentum * mom[i] + lr * g / denom
            theta[i] -= mom[i]
    return theta


def keras_oracle(lr_schedule, rho=0.9, momentum=0.0, epsilon=1e-7, centered=False, weight_decay=0.0):
    theta, vel, avg, mom = list(THETA0), [0.0] * 3, [0.0] * 3, [0.0] * 3
    for lr, grads in zip(lr_schedule, GRADS):
        for i in range(3):
            theta[i] -= theta[i] * weight_decay * lr  # decoupled, applied before the update
            g = grads[i]
            vel[i] = rho * vel[i] + (1 - rho) * g * g
            denominator = vel[i] + epsilon
            if centered:
                avg[i] = rho * avg[i] + (1 - rho) * g
                denominator -= avg[i] ** 2
            increment = lr * g / math.sqrt(denominator)
            if momentum > 0:
                mom[i] = momentum * mom[i] + increment
                theta[i] -= mom[i]
            else:
                theta[i] -= increment
    return theta


def optax_oracle(lr_schedule, decay=0.9, eps=1e-8, momentum=None, nesterov=False,
                 bias_correction=False, eps_in_sqrt=True):
    theta, nu, trace = list(THETA0), [0.0] * 3, [0.0] * 3
    for count, (lr, grads) in enumerate(zip(lr_schedule, GRADS), start=1):
        for i in range(3):
            g = grads[i]
            nu[i] = (1 - decay) * g * g + decay * nu[i]
            nu_hat = nu[i] / (1 - decay**count) if bias_correction else nu[i]
            if eps_in_sqrt:
                u = g / math.sqrt(nu_hat + eps)
            else:
                u = g / (math.sqrt(nu_hat) + eps)
            u = -lr * u  # scale_by_learning_rate
            if momentum is not None:
                trace[i] = u + momentum * trace[i]
                u = u + momentum * trace[i] if nesterov else trace[i]
            theta[i] += u
    return theta


def timm_oracle(lr_schedule, alpha=0.9, eps=1e-10, momentum=0.0, weight_decay=0.0,
                decoupled_decay=False, lr_in_momentum=True):
    theta, sq, buf = list(THETA0), [1.0] * 3, [0.0] * 3
    for lr, grads in zip(lr_schedule, GRADS):
        for i in range(3):
            g = grads[i]
            if weight_decay:
                if decoupled_decay:
                    theta[i] *= 1 - lr * weight_decay
                else:
                    g = g + weight_decay * theta[i]
            sq[i] = sq[i] + (g * g - sq[i]) * (1 - alpha)
            avg = math.sqrt(sq[i] + eps)
            if momentum > 0:
                if lr_in_momentum:
                    buf[i] = momentum * buf[i] + lr * g / avg
                    theta[i] -= buf[i]
                else:
                    buf[i] = momentum * buf[i] + g / avg
                    theta[i] -= lr * buf[i]
            else:
                theta[i] -= lr * g / avg
    return theta


def sb3_oracle(lr_schedule, **kwargs):
    """SB3's RMSpropTFLike: PyTorch 1.5's loop with ε inside the root and v starting at 1."""
    return torch_oracle(lr_schedule, v0=1.0, eps_inside=True, **kwargs)


def dqn_oracle(lr_schedule):
    theta, gav, g2 = list(THETA0), [0.0] * 3, [0.0] * 3
    for lr, grads in zip(lr_schedule, GRADS):
        for i in range(3):
            dw = -grads[i]  # the Lua code ascends along dw = −∂loss/∂θ
            gav[i] = 0.95 * gav[i] + 0.05 * dw
            g2[i] = 0.95 * g2[i] + 0.05 * dw * dw
            theta[i] += lr * dw / math.sqrt(g2[i] - gav[i] ** 2 + 0.01)
    return theta


# (preset, our keyword arguments, oracle, oracle keyword arguments)
CASES = [
    ("seed", {}, seed_oracle, {}),
    ("torch", {}, torch_oracle, {}),
    ("torch", {"momentum": 0.9, "centered": True, "weight_decay": 0.1}, torch_oracle,
     {"momentum": 0.9, "centered": True, "weight_decay": 0.1}),
    ("tf1", {}, tf1_oracle, {}),
    ("tf1", {"momentum": 0.9}, tf1_oracle, {"momentum": 0.9}),
    ("tf1", {"momentum": 0.9, "centered": True, "alpha": 0.95, "eps": 1e-5}, tf1_oracle,
     {"momentum": 0.9, "centered": True, "decay": 0.95, "epsilon": 1e-5}),
    ("keras", {}, keras_oracle, {}),
    ("keras", {"momentum": 0.9, "centered": True, "weight_decay": 0.05}, keras_oracle,
     {"momentum": 0.9, "centered": True, "weight_decay": 0.05}),
    ("optax", {}, optax_oracle, {}),
    ("optax", {"momentum": 0.9, "nesterov": True}, optax_oracle, {"momentum": 0.9, "nesterov": True}),
    ("optax", {"momentum": 0.5, "bias_correction": True, "eps_in_sqrt": False}, optax_oracle,
     {"momentum": 0.5, "bias_correction": True, "eps_in_sqrt": False}),
    ("timm", {}, timm_oracle, {}),
    ("timm", {"momentum": 0.9, "weight_decay": 0.01}, timm_oracle, {"momentum": 0.9, "weight_decay": 0.01}),
    ("timm", {"momentum": 0.9, "weight_decay": 0.01, "decoupled_weight_decay": True},
     timm_oracle,
     {"momentum": 0.9, "weight_decay": 0.01, "decoupled_decay": True}),
    ("timm", {"momentum": 0.9, "lr_in_momentum": False},
     timm_oracle, {"momentum": 0.9, "lr_in_momentum": False}),
    ("sb3", {}, sb3_oracle, {}),
    ("sb3", {"momentum": 0.9, "centered": True, "weight_decay": 0.01}, sb3_oracle,
     {"momentum": 0.9, "centered": True, "weight_decay": 0.01}),
    ("dqn", {}, dqn_oracle, {}),
]


def _ids():
    return [
        f"{preset}-" + ("-".join(f"{k}={v}" for k, v in kw.items()) or "defaults")
        for preset, kw, _, _ in CASES
    ]


@pytest.mark.parametrize("foreach", [False, True], ids=["reference", "foreach"])
@pytest.mark.parametrize("preset,kwargs,oracle,oracle_kwargs", CASES, ids=_ids())
def test_preset_follows_its_framework(preset, kwargs, oracle, oracle_kwargs, foreach):
    default_lr = PRESETS[preset].lr
    schedule = LRS if default_lr is None else [default_lr * s / LRS[0] for s in LRS]
    theta = torch.nn.Parameter(torch.tensor(THETA0, dtype=torch.float64))
    opt = rmsprop.RMSprop([theta], lr=schedule[0], preset=preset, foreach=foreach, **kwargs)
    for lr, g in zip(schedule, GRADS):
        opt.param_groups[0]["lr"] = lr
        theta.grad = torch.tensor(g, dtype=torch.float64)
        opt.step()
    expected = torch.tensor(oracle(schedule, **oracle_kwargs), dtype=torch.float64)
    torch.testing.assert_close(theta.detach(), expected, rtol=1e-12, atol=1e-15)


def test_lr_inside_and_outside_the_buffer_differ_under_a_schedule():
    """Sanity check on the oracles: the two momentum forms must disagree once η changes."""
    inside = timm_oracle(LRS, momentum=0.9)
    outside = timm_oracle(LRS, momentum=0.9, lr_in_momentum=False)
    assert max(abs(a - b) for a, b in zip(inside, outside)) > 1e-4


@pytest.mark.parametrize(
    "name,facts",
    [
        ("seed", dict(lr=0.01, alpha=0.9, eps=1e-8, eps_in_sqrt=True, initial_square_avg=0.0)),
        ("torch", dict(lr=1e-2, alpha=0.99, eps=1e-8, eps_in_sqrt=False, lr_in_momentum=False)),
        ("tf1", dict(lr=None, alpha=0.9, eps=1e-10, initial_square_avg=1.0, lr_in_momentum=True)),
        ("keras", dict(lr=1e-3, alpha=0.9, eps=1e-7, decoupled_weight_decay=True, lr_in_momentum=True)),
        ("optax", dict(lr=None, alpha=0.9, eps=1e-8, eps_in_sqrt=True, bias_correction=False)),
        ("timm", dict(lr=1e-2, alpha=0.9, eps=1e-10, initial_square_avg=1.0, lr_in_momentum=True,
                      op_order="tf")),
        ("sb3", dict(lr=1e-2, alpha=0.99, eps=1e-8, eps_in_sqrt=True, initial_square_avg=1.0,
                     lr_in_momentum=False, op_order="torch-1.5")),
        ("dqn", dict(lr=2.5e-4, alpha=0.95, eps=0.01, centered=True, eps_in_sqrt=True)),
    ],
)
def test_preset_defaults_are_the_frameworks(name, facts):
    preset = PRESETS[name]
    for key, value in facts.items():
        assert getattr(preset, key) == value, key


def test_presets_are_frozen_data():
    with pytest.raises(dataclasses.FrozenInstanceError):
        PRESETS["torch"].eps = 1.0  # type: ignore[misc]
    with pytest.raises(TypeError):
        PRESETS["mine"] = PRESETS["torch"]  # type: ignore[index]


@pytest.mark.parametrize(
    "preset,theirs,ours",
    [
        ("keras", dict(learning_rate=1e-3, rho=0.95, epsilon=1e-6, weight_decay=0.01),
         dict(lr=1e-3, alpha=0.95, eps=1e-6, weight_decay=0.01)),
        ("keras", dict(global_clipnorm=1.0, use_ema=True), dict(max_grad_norm=1.0, ema_decay=0.99)),
        ("keras", dict(use_ema=True, ema_momentum=0.9), dict(ema_decay=0.9)),
        ("keras", dict(use_ema=False, ema_momentum=0.9), dict(ema_decay=0.0)),
        ("tf1", dict(learning_rate=0.1, decay=0.95, epsilon=1e-5, centered=True),
         dict(lr=0.1, alpha=0.95, eps=1e-5, centered=True)),
        ("optax", dict(learning_rate=0.1, decay=0.8, initial_scale=1.0, momentum=None,
                       add_decayed_weights=0.1, eps_in_sqrt=False),
         dict(lr=0.1, alpha=0.8, initial_square_avg=1.0, momentum=0.0, weight_decay=0.1,
              eps_in_sqrt=False)),
        ("timm", dict(lr=0.1, decoupled_decay=True, lr_in_momentum=False),
         dict(lr=0.1, decoupled_weight_decay=True, lr_in_momentum=False)),
        ("seed", dict(lr=0.1, gamma=0.5), dict(lr=0.1, alpha=0.5)),
        ("torch", dict(lr=0.1, maximize=True, foreach=False), dict(lr=0.1, maximize=True, foreach=False)),
    ],
)
def test_translate_renames_the_frameworks_arguments(preset, theirs, ours):
    assert rmsprop.translate(preset, **theirs) == {"preset": preset, **ours}
    rmsprop.RMSprop([torch.nn.Parameter(torch.zeros(1))], **rmsprop.translate(preset, **theirs))


def test_translate_refuses_what_has_no_counterpart():
    with pytest.raises(ValueError, match="keras argument 'clipnorm' has no counterpart"):
        rmsprop.translate("keras", clipnorm=1.0)
    with pytest.raises(ValueError, match="Unknown preset"):
        rmsprop.translate("mxnet")
