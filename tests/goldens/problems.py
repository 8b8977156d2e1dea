"""The problems every live peer is run on, for the parity goldens.

Shared by the generator (``scripts/make_goldens.py``, which runs the real
libraries and never imports ``rmsprop``) and the replay test
(``tests/test_parity.py``). NumPy only: its PCG64 generator gives the same
numbers on every platform and version, so the gradients need not be stored.

Each case names the peer's own options, in the peer's own spelling; how they
map onto ``rmsprop.RMSprop`` is the claim the replay test checks.
"""

from __future__ import annotations

import numpy as np

STEPS = 200
SHAPES: list[tuple[int, ...]] = [(), (5,), (2, 3), (0,)]
SEED = 20261125


def initial_params(seed: int = SEED) -> list[np.ndarray]:
    """Float64 starting values, one array per shape."""
    rng = np.random.default_rng(seed)
    return [rng.standard_normal(shape) for shape in SHAPES]


def gradients(seed: int = SEED, steps: int = STEPS) -> list[list[np.ndarray]]:
    """Per step, one float64 gradient per shape: magnitudes from 1e-3 to 1e3,
    both signs, drawn independently per element and step."""
    rng = np.random.default_rng(seed + 1)
    out = []
    for _ in range(steps):
        out.append([
            rng.standard_normal(shape) * 10.0 ** rng.integers(-3, 4, size=shape)
            for shape in SHAPES
        ])
    return out


def lr_at(base_lr: float, step: int) -> float:
    """The learning rate of 0-based step ``step``: it changes twice mid-run,
    which is where η inside and η outside the momentum buffer part ways."""
    if step < 80:
        return base_lr
    if step < 140:
        return base_lr * 0.3
    return base_lr * 2.0


# peer → list of (case name, peer-native options). "lr" is the base learning
# rate handed to lr_at; every other key is the peer's own argument name.
CASES: dict[str, list[tuple[str, dict]]] = {
    "torch": [
        ("default", {"lr": 0.01}),
        ("momentum", {"lr": 0.01, "momentum": 0.9}),
        ("centered", {"lr": 0.01, "centered": True}),
        ("centered-momentum-wd", {"lr": 0.01, "centered": True, "momentum": 0.9, "weight_decay": 0.1}),
        ("maximize-wd", {"lr": 0.01, "maximize": True, "weight_decay": 0.01}),
    ],
    "tf1": [
        ("default", {"lr": 0.01}),
        ("momentum", {"lr": 0.01, "momentum": 0.9}),
        ("centered-momentum", {"lr": 0.01, "centered": True, "momentum": 0.9}),
        ("dopamine", {"lr": 0.00025, "decay": 0.95, "epsilon": 1e-5, "centered": True}),
        ("efficientnet", {"lr": 0.016, "decay": 0.9, "momentum": 0.9, "epsilon": 1e-3}),
    ],
    "keras": [
        ("default", {"lr": 1e-3}),
        ("momentum", {"lr": 1e-3, "momentum": 0.9}),
        ("centered", {"lr": 1e-3, "centered": True}),
        ("centered-momentum-wd", {"lr": 1e-3, "centered": True, "momentum": 0.9, "weight_decay": 0.01}),
    ],
    "optax": [
        ("default", {"lr": 0.01}),
        ("momentum", {"lr": 0.01, "momentum": 0.9}),
        ("nesterov", {"lr": 0.01, "momentum": 0.9, "nesterov": True}),
        ("centered", {"lr": 0.01, "centered": True}),
        ("eps-outside", {"lr": 0.01, "eps_in_sqrt": False}),
        ("bias-correction", {"lr": 0.01, "bias_correction": True}),
        ("initial-scale-1", {"lr": 0.01, "initial_scale": 1.0}),
        ("centered-momentum-bias-correction",
         {"lr": 0.01, "centered": True, "momentum": 0.9, "bias_correction": True}),
        ("add-decayed-weights", {"lr": 0.01, "momentum": 0.9, "add_decayed_weights": 0.01}),
    ],
    "timm": [
        ("default", {"lr": 0.01}),
        ("momentum", {"lr": 0.01, "momentum": 0.9}),
        ("centered-momentum", {"lr": 0.01, "centered": True, "momentum": 0.9}),
        ("l2-decay", {"lr": 0.01, "momentum": 0.9, "weight_decay": 0.01}),
        ("decoupled-decay", {"lr": 0.01, "momentum": 0.9, "weight_decay": 0.01, "decoupled_decay": True}),
        ("lr-outside-momentum", {"lr": 0.01, "momentum": 0.9, "lr_in_momentum": False}),
    ],
    "sb3": [
        ("default", {"lr": 0.01}),
        ("momentum", {"lr": 0.01, "momentum": 0.9}),
        ("centered", {"lr": 0.01, "centered": True}),
        ("centered-momentum-wd", {"lr": 0.01, "centered": True, "momentum": 0.9, "weight_decay": 0.01}),
    ],
    "dqn": [
        ("nature-2015", {"lr": 0.00025}),
    ],
}


def torch_rounding() -> dict:
    """How this machine's torch rounds the float32 CPU ops that the float32 goldens go through,
    seen on 64-element tensors: "fma" where a*b + c is rounded once. The float32 goldens
    reproduce bit for bit only where torch rounds as it did when they were made (the answers
    differ with the CPU: AVX2/AVX512 kernels contract these into FMAs, the DEFAULT ones do not)."""
    import torch

    def r(x):
        return np.asarray(x, dtype=np.float64).astype(np.float32)

    rng = np.random.default_rng(0)
    seen: dict[str, set] = {}
    for _ in range(20):
        x, y, z = (rng.standard_normal(64).astype(np.float32) for _ in range(3))
        z = np.abs(z) + np.float32(0.5)
        a = np.float32(0.1)
        tx, ty, tz = map(torch.from_numpy, (x, y, z))
        models = {
            "add(y, alpha=a)": (torch.add(tx, ty, alpha=0.1),
                                {"fma": r(np.float64(x) + np.float64(a) * y), "separate": r(x + r(a * y))}),
            "addcmul(y, z, value=a)": (torch.addcmul(tx, ty, tz, value=0.1),
                                       {"fma(a*y, z)": r(np.float64(x) + np.float64(r(a * y)) * z),
                                        "separate": r(x + r(r(a * y) * z))}),
            "addcdiv(y, z, value=a)": (torch.addcdiv(tx, ty, tz, value=0.1),
                                       {"x + (a*y)/z": r(x + r(r(a * y) / z)),
                                        "x + a*(y/z)": r(x + r(a * r(y / z)))}),
            "lerp(y, a)": (torch.lerp(tx, ty, 0.1),
                           {"fma": r(np.float64(x) + np.float64(a) * r(y - x)),
                            "separate": r(x + r(a * r(y - x)))}),
        }
        for op, (out, candidates) in models.items():
            hits = {name for name, value in candidates.items() if np.array_equal(out.numpy(), value)}
            seen[op] = hits if op not in seen else seen[op] & hits
    return {"cpu_capability": torch.backends.cpu.get_cpu_capability(),
            **{op: " or ".join(sorted(hits)) or "neither model" for op, hits in seen.items()}}


def same_rounding(recorded: dict | None) -> bool:
    """Whether this machine's torch rounds the float32 ops as it did where ``recorded``
    (a golden's ``facts.torch_rounding``) was taken; the CPU capability itself may differ."""
    if not recorded:
        return False
    here = torch_rounding()
    return all(recorded.get(op) == value for op, value in here.items() if op != "cpu_capability")
