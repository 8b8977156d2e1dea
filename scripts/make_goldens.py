#!/usr/bin/env python3
"""Run the REAL peer libraries on ``tests/goldens/problems.py`` and write golden trajectories.

This script never imports ``rmsprop``: a golden computed by our own code would prove
nothing. It loads ``tests/goldens/problems.py`` by path and runs, for each peer, the
library that defines that peer's behaviour:

=======  ==================================================================  =========
peer     what runs                                                           dtype
=======  ==================================================================  =========
torch    ``torch.optim.RMSprop``                                             float64
tf1      ``tf.compat.v1.train.RMSPropOptimizer`` (eager, resource variables)  float64
keras    Keras 3 ``keras.optimizers.RMSprop`` with ``KERAS_BACKEND=torch``    float32
optax    ``optax.rmsprop`` (JAX CPU, ``jax_enable_x64``), eager (no jit)      float64
timm     ``timm.optim.rmsprop_tf.RMSpropTF``                                  float32 (bitwise)
sb3      Stable-Baselines3 ``RMSpropTFLike`` (``sb2_compat.rmsprop_tf_like``)  float32 (bitwise)
dqn      DeepMind DQN's Lua RMSProp update, transcribed op for op in NumPy    float64
=======  ==================================================================  =========

It runs in its own virtualenv, ``.parity-venv`` (git-ignored), never in the project's
``.venv``. All peers fit in one environment (TF 2.21, Keras 3, JAX and torch agree on
numpy/protobuf/ml_dtypes at the pins in ``scripts/parity-requirements.txt``). Create it
(from the repository root)::

    python3 -m venv .parity-venv
    .parity-venv/bin/pip install --upgrade pip
    .parity-venv/bin/pip install --no-deps -c constraints.txt -r scripts/parity-requirements.txt

``scripts/parity-requirements.txt`` pins the whole dependency closure with ``==`` (that is
why ``--no-deps`` is safe, and it keeps timm from pulling torchvision, which does not import
beside the local torch 2.13.0 CPU wheel; ``constraints.txt`` pins that wheel so no CUDA
build is downloaded). ``.parity-venv/bin/pip check`` then only reports timm's missing
torchvision, which this script works around (see ``peer_timm``).

Regenerate every golden (writes ``tests/goldens/<peer>.npz`` and ``<peer>.json`` and the
two interop checkpoints ``torch_checkpoint.pt`` and ``timm_checkpoint.pt``)::

    .parity-venv/bin/python scripts/make_goldens.py --peer all

or one peer (``--peer torch|tf1|keras|optax|timm|sb3|dqn``, repeatable). Compare a fresh,
in-memory run against the committed files (exit 1 on a mismatch: relative difference
> 1e-12 for float64 peers, any difference for float32 peers, or a changed checkpoint)::

    .parity-venv/bin/python scripts/make_goldens.py --check            # all peers
    .parity-venv/bin/python scripts/make_goldens.py --check --peer keras

``--sanity`` runs the self-checks (the lr schedule really reaches each peer, the optax
schedule count starts at 0). Makefile targets could read (recipe lines tab-indented)::

    PARITY_STAMP := .parity-venv/.installed
    $(PARITY_STAMP): scripts/parity-requirements.txt constraints.txt
        test -x .parity-venv/bin/python || python3 -m venv .parity-venv
        .parity-venv/bin/pip install --quiet --upgrade pip
        .parity-venv/bin/pip install --quiet --no-deps -c constraints.txt -r scripts/parity-requirements.txt
        touch $(PARITY_STAMP)
    parity: $(PARITY_STAMP)      # live comparison against the committed goldens
        .parity-venv/bin/python scripts/make_goldens.py --check
    goldens: $(PARITY_STAMP)     # rewrite them
        .parity-venv/bin/python scripts/make_goldens.py --peer all

Generation of all peers takes about 35 s on 2 cores (optax, run eagerly and once more under
jit for the comparison recorded in its metadata, and tf1 take most of it).

File format (the replay test relies on it): ``<peer>.npz`` holds, for each case ``C`` and
shape index ``i``, the key ``f"{C}/{i}"``: a float64 array of shape ``(STEPS + 1, numel)``;
row 0 holds the initial values, row ``k`` the values after step ``k`` (flattened in C
order). The float32 peer's values are stored as float64 (exactly representable). The
archive is written with fixed zip timestamps so that regenerating gives identical bytes.
``<peer>.json`` holds the metadata (library, version, command, dtype, cases, skipped cases,
order-of-operations notes and other facts found in the installed sources).

The weights' average: the timm peer also runs ``ModelEmaV3`` and the keras peer
``use_ema=True`` beside case ``momentum`` (``EMA_CASES``); key ``f"momentum/{tag}/{i}"`` holds
the peer's average in the same layout (row 0: the average before step 1 as the peer holds it,
timm's copy of the weights, Keras's zeros), and ``ema_cases`` in the .json names each with the
peer's own options. ``facts.torch_rounding`` records how the machine's torch rounded the
float32 ops (FMA or not), which decides whether a float32 golden reproduces bit for bit.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import importlib.metadata
import importlib.util
import inspect
import io
import json
import os
import platform
import sys
import time
import types
import zipfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
GOLDENS = ROOT / "tests" / "goldens"
PEERS = ["torch", "tf1", "keras", "optax", "timm", "sb3", "dqn"]
CHECKPOINT_STEPS = 100
CHECKPOINT_CASE = {"torch": "centered-momentum-wd", "timm": "centered-momentum"}
# The weights' average (EMA), recorded beside one case of each peer that keeps one: peer -> (case,
# [(tag, the peer's own options)]). timm's "update_every" is not a ModelEmaV3 argument: the run
# calls update() only on steps 1, 1 + k, 1 + 2k, ..., giving it its own count of updates.
EMA_CASES = {
    "timm": ("momentum", [
        ("ema-0.9", {"decay": 0.9}),
        ("ema-0.99", {"decay": 0.99}),
        ("ema-0.9-warmup", {"decay": 0.9, "use_warmup": True}),
        ("ema-0.99-warmup", {"decay": 0.99, "use_warmup": True}),
        ("ema-0.9-warmup-every-3", {"decay": 0.9, "use_warmup": True, "update_every": 3}),
    ]),
    "keras": ("momentum", [
        ("ema-0.9", {"use_ema": True, "ema_momentum": 0.9}),
        ("ema-0.99", {"use_ema": True, "ema_momentum": 0.99}),
    ]),
}
REL_TOL_F64 = 1e-12

# Keras picks its backend at import time; set it before anything can import keras.
os.environ["KERAS_BACKEND"] = "torch"
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("JAX_PLATFORMS", "cpu")


def load_problems() -> types.ModuleType:
    """Import tests/goldens/problems.py by path (it is not a package)."""
    spec = importlib.util.spec_from_file_location("parity_problems", GOLDENS / "problems.py")
    mod = importlib.util.module_from_spec(spec)
    assert spec.loader is not None
    spec.loader.exec_module(mod)
    return mod


P = load_problems()


def _version(dist: str) -> str:
    return importlib.metadata.version(dist)


def _flat_traj(rows: list[list[np.ndarray]]) -> list[np.ndarray]:
    """rows[k][i] (values of shape i after k steps) -> per shape a (steps+1, numel) float64 array."""
    out = []
    for i in range(len(P.SHAPES)):
        out.append(np.stack([np.asarray(r[i], dtype=np.float64).reshape(-1) for r in rows]).reshape(
            len(rows), -1))
    return out


def _problem():
    return P.initial_params(), P.gradients()


def _same_weights(a: list[np.ndarray], b: list[np.ndarray], what: str) -> None:
    """A run that also keeps an average must train exactly as the run without one."""
    assert all(np.array_equal(x, y) for x, y in zip(a, b)), f"{what}: the average changed the weights"


# --------------------------------------------------------------------------------------------
# torch
# --------------------------------------------------------------------------------------------

def _run_torch_optimizer(cls, opts: dict, steps: int, schedule=True, checkpoint_at=None, dtype="float64",
                         average=None):
    """Step a torch.optim-style optimizer class over the problem, in ``dtype`` (the float64
    problem rounded once to it; the rows are stored as float64, exactly). ``average``: an
    object with ``start(params)`` and ``after_step(num_updates)`` (a weights' average, e.g.
    :class:`_TimmEma`), told after each optimizer step, ``num_updates`` counted from 1."""
    import torch

    params0, grads = _problem()
    base = opts["lr"]
    kw = {k: v for k, v in opts.items() if k != "lr"}
    dtype = getattr(torch, dtype)
    ps = [torch.tensor(p, dtype=torch.float64).to(dtype) for p in params0]
    opt = cls(ps, lr=base, **kw)
    if average is not None:
        average.start(ps)
    rows = [[p.detach().numpy().copy() for p in ps]]
    ckpt = None
    for k in range(steps):
        opt.param_groups[0]["lr"] = P.lr_at(base, k) if schedule else base
        for p, g in zip(ps, grads[k]):
            p.grad = torch.tensor(g, dtype=torch.float64).to(dtype)
        opt.step()
        if average is not None:
            average.after_step(k + 1)
        rows.append([p.detach().numpy().copy() for p in ps])
        if checkpoint_at is not None and k + 1 == checkpoint_at:
            ckpt = _clone_state_dict(opt.state_dict())
    return _flat_traj(rows), ckpt, opt


def _torch_run(opts: dict, steps: int, schedule=True, checkpoint_at=None):
    import torch

    return _run_torch_optimizer(torch.optim.RMSprop, opts, steps, schedule, checkpoint_at)


def _clone_state_dict(sd):
    import copy

    return copy.deepcopy(sd)


def peer_torch():
    import torch

    trajs, skipped, ckpts = {}, {}, {}
    for name, opts in P.CASES["torch"]:
        at = CHECKPOINT_STEPS if name == CHECKPOINT_CASE["torch"] else None
        trajs[name], ck, _ = _torch_run(opts, P.STEPS, checkpoint_at=at)
        if ck is not None:
            ckpts["torch_checkpoint.pt"] = ck
    sd = ckpts["torch_checkpoint.pt"]
    st0 = sd["state"][0]
    facts = {
        "class": "torch.optim.RMSprop",
        "signature": str(inspect.signature(torch.optim.RMSprop.__init__)),
        "defaults": dict(torch.optim.RMSprop([torch.zeros(1)]).defaults),
        "param_group_keys": sorted(k for k in sd["param_groups"][0] if k != "params"),
        "state_keys": sorted(st0),
        "state_step_type": f"{type(st0['step']).__name__} {st0['step'].dtype} "
                           f"shape {tuple(st0['step'].shape)}",
        "path": "CPU default: foreach=None resolves to the single-tensor implementation",
        "checkpoint": f"torch_checkpoint.pt = optimizer.state_dict() after {CHECKPOINT_STEPS} steps of "
                      f"'{CHECKPOINT_CASE['torch']}' (param_groups[0]['lr'] is lr_at(lr, 99)); "
                      f"continue from row {CHECKPOINT_STEPS} with lr_at(lr, {CHECKPOINT_STEPS}) onward",
    }
    notes = (
        "torch.optim.RMSprop, float64 params, grads set as p.grad; before 0-based step k "
        "param_groups[0]['lr'] = lr_at(lr, k). Case options are passed through unchanged "
        "(defaults alpha=0.99, eps=1e-8, eps outside the sqrt, square_avg starts at 0, lr outside "
        "the momentum buffer). Single-tensor CPU path (foreach=None on CPU), float64, ops: "
        "grad = -grad if maximize; step += 1; grad = grad.add(param, alpha=weight_decay) if wd; "
        "square_avg.mul_(alpha).addcmul_(grad, grad, value=1-alpha); centered: grad_avg.lerp_(grad, "
        "1-alpha); avg = square_avg.addcmul(grad_avg, grad_avg, value=-1).sqrt_() else avg = "
        "square_avg.sqrt(); avg.add_(eps); momentum: buf.mul_(momentum).addcdiv_(grad, avg); "
        "param.add_(buf, alpha=-lr); else param.addcdiv_(grad, avg, value=-lr). Note: torch's vectorized "
        "CPU kernels for add(alpha=...), addcmul and addcdiv use FMA (seen for tensors of 6+ "
        "elements), so a plain NumPy re-implementation of the same formulas drifts from these goldens "
        "by up to ~1e-12 relative over 200 steps; replay with the same torch ops to match exactly."
    )
    return {
        "library": "torch", "version": torch.__version__, "dtype": "float64",
        "trajs": trajs, "skipped": skipped, "notes": notes, "facts": facts, "checkpoints": ckpts,
    }


# --------------------------------------------------------------------------------------------
# tf1
# --------------------------------------------------------------------------------------------

def _tf1_run(opts: dict, steps: int, schedule=True, lr_mode="callable"):
    """lr_mode "callable" (the goldens): learning_rate is a zero-argument callable returning the
    Python float lr_at(lr, k); in eager mode _prepare calls it on every apply_gradients and
    converts it exactly like a plain ``learning_rate=0.01`` (Python float -> float32 tensor ->
    cast to float64). lr_mode "f64var": a float64 tf.Variable assigned before each step (only
    used by --sanity to show the difference)."""
    import tensorflow as tf

    params0, grads = _problem()
    base = opts["lr"]
    kw = {k: v for k, v in opts.items() if k != "lr"}
    current = [base]
    if lr_mode == "callable":
        lr_arg = lambda: current[0]  # noqa: E731
        lr_var = None
    else:
        lr_var = tf.Variable(base, dtype=tf.float64, trainable=False, name="learning_rate")
        lr_arg = lr_var
    vs = [tf.Variable(p, dtype=tf.float64) for p in params0]
    opt = tf.compat.v1.train.RMSPropOptimizer(learning_rate=lr_arg, **kw)
    rows = [[v.numpy().copy() for v in vs]]
    for k in range(steps):
        current[0] = P.lr_at(base, k) if schedule else base
        if lr_var is not None:
            lr_var.assign(current[0])
        opt.apply_gradients([(tf.constant(g, dtype=tf.float64), v) for g, v in zip(grads[k], vs)])
        rows.append([v.numpy().copy() for v in vs])
    return _flat_traj(rows), opt, vs


def _tf1_cast(x: float) -> float:
    import tensorflow as tf

    return float(tf.cast(tf.convert_to_tensor(x), tf.float64).numpy())


def _tf1_initial_rms() -> str:
    """Infer the rms slot's starting value from one real step with a zero gradient:
    rms1 = r0 + (0 - r0)*(1-rho) = 0.9*r0."""
    import tensorflow as tf

    v = tf.Variable(np.ones(3), dtype=tf.float64)
    opt = tf.compat.v1.train.RMSPropOptimizer(learning_rate=0.01)
    opt.apply_gradients([(tf.zeros(3, dtype=tf.float64), v)])
    r0 = opt.get_slot(v, "rms").numpy() / 0.9
    r0_f32 = opt.get_slot(v, "rms").numpy() / (1.0 - (1.0 - _tf1_cast(0.9)))
    return (f"{np.round(r0, 12).tolist()} (rms slot / 0.9 after one real step with a zero gradient); "
            f"{r0_f32.tolist()} dividing instead by 1 - (1 - float64(float32(0.9))): the slot starts "
            "at exactly 1.0 and decay is float32-rounded")


def peer_tf1():
    import tensorflow as tf

    trajs = {}
    opt = vs = None
    for name, opts in P.CASES["tf1"]:
        trajs[name], opt, vs = _tf1_run(opts, P.STEPS)
    sig = inspect.signature(tf.compat.v1.train.RMSPropOptimizer.__init__)
    facts = {
        "class": "tf.compat.v1.train.RMSPropOptimizer",
        "signature": str(sig),
        "slot_names": "rms, momentum (always, even with momentum=0), mg (centered only); "
                      f"this run's last case: {opt.get_slot_names()}",
        "rms_slot_initial_value": _tf1_initial_rms(),
        "kernel": "ResourceApplyRMSProp / ResourceApplyCenteredRMSProp (C++ Eigen, CPU)",
        "mode": "TF2 eager, resource variables (ResourceApply* kernels); learning_rate is a "
                "zero-argument callable returning the Python float lr_at(lr, k): _prepare calls it "
                "on every apply_gradients, so it behaves exactly like learning_rate=<float>",
        "hyperparameter_precision": "_prepare does ops.convert_to_tensor(x) on the Python floats "
                                    "learning_rate, decay, momentum, epsilon -> float32 tensors, then "
                                    "_resource_apply_dense casts them to the variable dtype: in float64 "
                                    "the kernel sees float64(float32(x)), e.g. decay 0.9 -> "
                                    f"{_tf1_cast(0.9)!r}, lr 0.01 -> {_tf1_cast(0.01)!r}",
    }
    notes = (
        "Order of operations (training_ops.cc, all in float64; lr, decay(rho), momentum, epsilon are "
        "cast to the gradient dtype): ms += (grad*grad - ms) * (1 - rho); [centered: mg += (grad - mg) "
        "* (1 - rho); denom = (ms - mg*mg) + epsilon] else denom = ms + epsilon; "
        "mom = mom*momentum + (grad*lr) / sqrt(denom); var -= mom. The 'rms' slot starts at ONES, "
        "'mom' (and 'mg') at zeros; lr is inside the momentum buffer; epsilon inside the sqrt; the "
        "hyperparameters given as Python floats (lr, decay, momentum, epsilon) are converted to "
        "FLOAT32 tensors and then cast to float64, i.e. the float64 kernel uses float64(float32(x)) "
        "(decay 0.9 -> 0.8999999761581421); the goldens pass lr as a callable returning the Python "
        "float lr_at(lr, k), which takes exactly this path; "
        "(verified when these goldens were made: a NumPy float64 re-implementation of exactly this "
        "order with float32-rounded hyperparameters reproduces all tf1 goldens bit for bit -- no FMA); "
        "momentum slot exists (and is applied) even with momentum=0. Defaults decay=0.9, momentum=0, "
        "epsilon=1e-10."
    )
    return {
        "library": "tensorflow", "version": tf.__version__, "dtype": "float64",
        "trajs": trajs, "skipped": {}, "notes": notes, "facts": facts, "checkpoints": {},
    }


# --------------------------------------------------------------------------------------------
# keras (torch backend, float32)
# --------------------------------------------------------------------------------------------

def _keras_run(opts: dict, steps: int, schedule=True, ema: dict | None = None):
    """The weights' rows, the optimizer, its variables and, when ``ema`` (Keras's own
    ``use_ema``/``ema_momentum`` arguments) is given, the rows of the optimizer's average of
    the weights (row 0: the average variables as built, zeros; else None)."""
    import keras
    import torch

    assert keras.backend.backend() == "torch", keras.backend.backend()
    params0, grads = _problem()
    base = opts["lr"]
    kw = {k: v for k, v in opts.items() if k != "lr"}
    vs = [keras.Variable(initializer=np.asarray(p, dtype=np.float32), dtype="float32", name=f"p{i}")
          for i, p in enumerate(params0)]
    opt = keras.optimizers.RMSprop(learning_rate=float(base), **kw, **(ema or {}))
    averages = None
    if ema:
        opt.build(vs)

        def read():
            return [np.array(a.numpy(), dtype=np.float32) for a in opt._model_variables_moving_average]

        averages = [read()]
    rows = [[np.array(v.numpy(), dtype=np.float32) for v in vs]]
    for k in range(steps):
        opt.learning_rate.assign(P.lr_at(base, k) if schedule else base)
        gs = [torch.tensor(np.asarray(g, dtype=np.float32)) for g in grads[k]]
        opt.apply(gs, vs)
        rows.append([np.array(v.numpy(), dtype=np.float32) for v in vs])
        if averages is not None:
            averages.append(read())
    for r in rows + (averages or []):
        for a in r:
            assert a.dtype == np.float32
    return _flat_traj(rows), opt, vs, None if averages is None else _flat_traj(averages)


def _keras_initial_velocity() -> str:
    import keras
    import torch

    v = keras.Variable(initializer=np.ones(3, dtype=np.float32), dtype="float32")
    opt = keras.optimizers.RMSprop(learning_rate=1e-3)
    opt.apply([torch.zeros(3, dtype=torch.float32)], [v])
    r0 = opt._velocities[0].numpy().astype(np.float64) / 0.9
    return f"{np.round(r0, 7).tolist()} (inferred: velocity / 0.9 after one real step with a zero gradient)"


def peer_keras():
    import keras

    trajs = {}
    opt = None
    for name, opts in P.CASES["keras"]:
        trajs[name], opt, vs, _ = _keras_run(opts, P.STEPS)
    lr_var = opt.learning_rate
    base, runs = EMA_CASES["keras"]
    ema_cases = {}
    for tag, options in runs:
        weights, _, _, trajs[f"{base}/{tag}"] = _keras_run(dict(P.CASES["keras"])[base], P.STEPS, ema=options)
        _same_weights(weights, trajs[base], f"keras {base}/{tag}")
        ema_cases[f"{base}/{tag}"] = {"case": base, "options": options, "update_every": 1}
    facts = {
        "backend": keras.backend.backend(),
        "optimizer_class": f"{type(opt).__module__}.{type(opt).__qualname__}",
        "mro": [f"{c.__module__}.{c.__qualname__}" for c in type(opt).__mro__[:5]],
        "signature": str(inspect.signature(keras.optimizers.RMSprop.__init__)),
        "learning_rate_variable_dtype": str(lr_var.dtype),
        "iterations_dtype": str(opt.iterations.dtype),
        "hyperparameter_types": {
            "learning_rate": f"keras Variable {lr_var.dtype} (assigning a Python float rounds it to float32)",
            "rho": type(opt.rho).__name__, "momentum": type(opt.momentum).__name__,
            "epsilon": type(opt.epsilon).__name__, "weight_decay": type(opt.weight_decay).__name__,
        },
        "velocity_initial_value": _keras_initial_velocity(),
        "optimizer_variables": [(w.path.split("/", 1)[-1], str(w.dtype), tuple(w.shape))
                                for w in opt.variables],
        "ema": "use_ema=True: after each apply() (update, then the average, then iterations += 1) "
               "BaseOptimizer._update_model_variables_moving_average: m = float32(iterations != 0) * "
               "ema_momentum (a float32 tensor), average = m*average + (1 - m)*var (float32 ops, no lerp); "
               "the 'average' variables start at zeros, so step 1 copies the weights. Recorded beside "
               f"case {base!r} as '{base}/<tag>/<shape>': {sorted(ema_cases)}; the weights of those runs "
               "equal the case's own, bit for bit (the average does not touch training)",
        "torch_rounding": P.torch_rounding(),
    }
    notes = (
        "Keras 3 with KERAS_BACKEND=torch: keras.optimizers.RMSprop is instantiated as "
        "keras.src.backend.torch.optimizers.torch_rmsprop.RMSprop, whose _parallel_update_step "
        "(torch._foreach_* ops, float32) REPLACES the generic update_step of "
        "keras/src/optimizers/rmsprop.py. Variables, gradients and slots are float32 (initial values "
        "and gradients are rounded from float64 to float32 before the run). Python-float "
        "hyperparameters rho, momentum, epsilon, 1-rho are cast to float32 by torch at each op "
        "(1-rho is computed in Python float64 first, then rounded: float32(1-0.9), not "
        "1-float32(0.9)); the learning rate is a float32 keras Variable (lr = ops.cast(lr, float32)). "
        "Per apply(): (1) weight decay FIRST, before the update, on every variable with a gradient "
        "(TorchOptimizer._apply_weight_decay): "
        "torch._foreach_mul_(vars, 1 - weight_decay * lr_var), i.e. s = 1 - float32(wd)*lr32 "
        "computed in float32 (one 0-dim tensor), then var = var * s; uses the current (this step's) "
        "learning rate. (The generic BaseOptimizer version, NOT used on the torch backend, is "
        "var - var*wd*lr.) (2) velocity: v.mul_(rho); v.add_(g*g, alpha=1-rho) "
        "[torch add with alpha: v + alpha*(g*g)]. (3) denominator = v + epsilon (new tensor); "
        "[centered: a.mul_(rho); a.add_(g, alpha=1-rho); denominator.add_(a*a, alpha=-1), i.e. "
        "(v + eps) - a*a -- eps is added BEFORE subtracting a^2, unlike the generic "
        "v - a^2 + eps]; denominator.sqrt_() -- epsilon INSIDE the sqrt. (4) increment = (g * lr) / "
        "denominator. (5) momentum>0: m.mul_(momentum); m.add_(increment); var.add_(m, alpha=-1) "
        "(lr INSIDE the momentum buffer); else var.add_(increment, alpha=-1). Slots (velocity, "
        "momentum, average_gradient) start at zeros. The iteration counter is incremented after the "
        "update. Defaults rho=0.9, momentum=0, epsilon=1e-7. The learning rate is changed per step "
        "with optimizer.learning_rate.assign(lr_at(lr, k)) before apply(). (Verified when these "
        "goldens were made: single-tensor torch float32 ops in exactly this order -- v.mul_(1 - wd*lr), "
        "vel.mul_(rho), vel.add_(g*g, alpha=1-rho), den = vel + eps, [a.mul_(rho), a.add_(g, "
        "alpha=1-rho), den.add_(a*a, alpha=-1)], den.sqrt_(), inc = (g*lr)/den, m.mul_(momentum), "
        "m.add_(inc), v.add_(m, alpha=-1) -- reproduce all keras goldens bit for bit; a NumPy float32 "
        "model of the same formulas does NOT (up to ~4e-6 rel after 200 steps) because torch's "
        "vectorized CPU add(alpha=...) contracts into FMA for tensors of 6+ elements.)"
    )
    return {
        "library": "keras", "version": keras.__version__, "dtype": "float32",
        "trajs": trajs, "skipped": {}, "notes": notes, "facts": facts, "checkpoints": {},
        "ema_cases": ema_cases,
    }


# --------------------------------------------------------------------------------------------
# optax (JAX, float64)
# --------------------------------------------------------------------------------------------

def _optax_schedule(base: float):
    import jax.numpy as jnp

    lo, mid, hi = P.lr_at(base, 0), P.lr_at(base, 80), P.lr_at(base, 140)
    assert all(P.lr_at(base, k) == (lo if k < 80 else mid if k < 140 else hi) for k in range(P.STEPS))

    def schedule(count):
        return jnp.where(count < 80, lo, jnp.where(count < 140, mid, hi))

    return schedule


def _optax_transform(opts: dict, schedule=True):
    import optax

    base = opts["lr"]
    kw = {k: v for k, v in opts.items() if k not in ("lr", "add_decayed_weights")}
    lr = _optax_schedule(base) if schedule else base
    tx = optax.rmsprop(learning_rate=lr, **kw)
    if "add_decayed_weights" in opts:
        tx = optax.chain(optax.add_decayed_weights(opts["add_decayed_weights"]), tx)
    return tx


def _optax_run(opts: dict, steps: int, schedule=True, jit=False):
    """jit=False (the goldens): every JAX primitive runs as its own XLA computation, so each
    operation in optax's source is rounded on its own -- the literal op order. Under jax.jit
    XLA CPU fuses the update and contracts a*b+c into FMAs (and computes decay**count
    differently), which moves the trajectory (see facts["jit_vs_eager_max_rel"])."""
    import jax
    import jax.numpy as jnp
    import optax

    params0, grads = _problem()
    tx = _optax_transform(opts, schedule)
    params = [jnp.asarray(p, dtype=jnp.float64) for p in params0]
    state = tx.init(params)

    def step(params, state, g):
        updates, state = tx.update(g, state, params)
        return optax.apply_updates(params, updates), state

    if jit:
        step = jax.jit(step)
    rows = [[np.asarray(p) for p in params]]
    for k in range(steps):
        g = [jnp.asarray(x, dtype=jnp.float64) for x in grads[k]]
        params, state = step(params, state, g)
        rows.append([np.asarray(p) for p in params])
    for p in params:
        assert p.dtype == jnp.float64, p.dtype
    return _flat_traj(rows)


def _optax_schedule_counts(opts: dict) -> list[int]:
    """Eagerly, the schedule sees concrete counts: record them (first update must use count 0)."""
    import jax.numpy as jnp
    import optax

    params0, grads = _problem()
    seen = []
    sched = _optax_schedule(opts["lr"])

    def recording(count):
        seen.append(int(count))
        return sched(count)

    tx = optax.rmsprop(learning_rate=recording)
    params = [jnp.asarray(p) for p in params0]
    state = tx.init(params)
    for k in range(P.STEPS):
        updates, state = tx.update([jnp.asarray(g) for g in grads[k]], state, params)
        params = optax.apply_updates(params, updates)
    return seen


def _optax_setup():
    import jax

    jax.config.update("jax_enable_x64", True)
    jax.config.update("jax_platforms", "cpu")


def peer_optax():
    _optax_setup()
    import jax
    import optax

    sig = inspect.signature(optax.rmsprop)
    trajs, skipped, jit_rel = {}, {}, {}
    for name, opts in P.CASES["optax"]:
        missing = [k for k in opts if k not in ("lr", "add_decayed_weights") and k not in sig.parameters]
        if missing:
            skipped[name] = f"optax {optax.__version__} rmsprop has no argument(s) {missing}"
            continue
        trajs[name] = _optax_run(opts, P.STEPS)
        jitted = _optax_run(opts, P.STEPS, jit=True)
        jit_rel[name] = max(_max_rel(a, b) for a, b in zip(trajs[name], jitted))
    facts = {
        "signature": f"optax.rmsprop{sig}",
        "jax": jax.__version__, "jaxlib": _version("jaxlib"),
        "jax_enable_x64": True,
        "update": "tx.update + optax.apply_updates run EAGERLY (no jax.jit): each primitive is its own "
                  "XLA computation, so every op of optax's source is rounded separately (no FMA "
                  "contraction). Under jax.jit the same optimizer gives slightly different numbers: "
                  "max relative difference per case in jit_vs_eager_max_rel (the centered + "
                  "bias-correction case is ill-conditioned at step 1: nu_hat - mu_hat**2 is g**2 - g**2 "
                  "up to rounding, compared against eps=1e-8, so it amplifies any rounding change)",
        "jit_vs_eager_max_rel": {k: float(f"{v:.3g}") for k, v in jit_rel.items()},
        "observed_numerics": "checked against a plain NumPy float64 re-implementation of the order "
                             "in notes, which reproduces every optax golden BIT FOR BIT: "
                             "jax.lax.rsqrt(x) == 1/np.sqrt(x); the bias-correction denominator "
                             "(optax.tree.bias_correction is jax.jit(inline=True), so it is compiled "
                             "even in eager mode) equals Python's 1 - decay**count for count 1..200 "
                             "(a bare eager `0.9 ** int32_array` would instead give "
                             "square-and-multiply results, which differ in the last bit)",
        "schedule": "learning_rate is a schedule count -> jnp.where(count<80, lr, where(count<140, "
                    "lr*0.3, lr*2.0)) equal to lr_at(lr, count) for every count; scale_by_schedule's "
                    "count starts at 0 so the first update uses lr_at(lr, 0) (checked by --sanity)",
    }
    notes = (
        "optax.rmsprop = chain(scale_by_rms | scale_by_stddev (centered), "
        "scale_by_learning_rate(lr), trace(decay=momentum, nesterov) if momentum is not None else "
        "identity). All float64. scale_by_rms: nu starts at initial_scale (default 0); "
        "nu = (1-decay)*g**2 + decay*nu (the (1-decay)*g^2 term first; g**2 is x*x); "
        "bias_correction: count = count+1 (int32, starts 0), nu_hat = nu / (1 - decay**count) "
        "(decay**count: see facts.observed_numerics) "
        "(the stored nu stays uncorrected); eps_in_sqrt=True: scaling = jax.lax.rsqrt(nu_hat + eps) "
        "(XLA rsqrt; on CPU equal to 1/sqrt(x) bit for bit), else scaling = "
        "1 / (jnp.sqrt(nu_hat) + eps); update = scaling * g. "
        "scale_by_stddev (centered): mu = (1-decay)*g + decay*mu (zeros), nu as above; bias "
        "correction divides BOTH mu and nu by (1 - decay**count) before use; scaling = "
        "rsqrt(nu_hat - mu_hat*mu_hat + eps) or 1/(sqrt(nu_hat - mu_hat*mu_hat) + eps). "
        "scale_by_learning_rate with a schedule: update = (-1*lr(count)) * update, count from 0. "
        "trace: t = update + momentum*t; nesterov: update = update + momentum*t_new, else update = "
        "t_new -- the learning rate is INSIDE the trace. apply_updates: p = p + update. "
        "add_decayed_weights(wd) chained BEFORE rmsprop: g = g + wd*p (so the decayed gradient "
        "also feeds nu, L2-style). Default decay=0.9, eps=1e-8, eps inside the sqrt, nu starts at 0."
    )
    return {
        "library": "optax", "version": optax.__version__, "dtype": "float64",
        "trajs": trajs, "skipped": skipped, "notes": notes, "facts": facts, "checkpoints": {},
    }


# --------------------------------------------------------------------------------------------
# timm (torch float64)
# --------------------------------------------------------------------------------------------

def _import_timm_rmsprop_tf():
    """timm/__init__ imports torchvision, which does not import beside this torch: stub the
    ``timm`` and ``timm.optim`` packages and import only ``timm.optim.rmsprop_tf``."""
    if "timm.optim.rmsprop_tf" in sys.modules:
        return sys.modules["timm.optim.rmsprop_tf"]
    spec = importlib.util.find_spec("timm")
    assert spec is not None and spec.submodule_search_locations, "timm is not installed"
    pkg = Path(list(spec.submodule_search_locations)[0])
    timm_stub = types.ModuleType("timm")
    timm_stub.__path__ = [str(pkg)]
    optim_stub = types.ModuleType("timm.optim")
    optim_stub.__path__ = [str(pkg / "optim")]
    timm_stub.optim = optim_stub
    sys.modules["timm"] = timm_stub
    sys.modules["timm.optim"] = optim_stub
    import timm.optim.rmsprop_tf as mod

    return mod


def _import_timm_model_ema():
    """timm.utils.model_ema, imported as rmsprop_tf is (its package __init__ needs torchvision)."""
    _import_timm_rmsprop_tf()  # the 'timm' stub
    if "timm.utils" not in sys.modules:
        utils_stub = types.ModuleType("timm.utils")
        utils_stub.__path__ = [str(Path(sys.modules["timm"].__path__[0]) / "utils")]
        sys.modules["timm"].utils = utils_stub
        sys.modules["timm.utils"] = utils_stub
    import timm.utils.model_ema as mod

    return mod


class _TimmEma:
    """timm's ModelEmaV3 over the run's parameters, driven as timm's train.py drives it:
    ``model_ema.update(model, step=num_updates)`` after each optimizer step, num_updates
    counted from 1. With ``update_every`` = k > 1, update() runs on steps 1, 1 + k, ... only,
    given its own count of updates. ``rows``: row 0 the copy made at construction, row t the
    average after step t."""

    def __init__(self, options: dict):
        self.every = options.get("update_every", 1)
        self.options = {k: v for k, v in options.items() if k != "update_every"}
        self.rows: list[list[np.ndarray]] = []

    def start(self, params) -> None:
        import torch

        self.model = torch.nn.Module()
        for i, p in enumerate(params):  # Parameters sharing the optimizer's tensors' storage
            self.model.register_parameter(f"p{i}", torch.nn.Parameter(p, requires_grad=False))
        self.ema = _import_timm_model_ema().ModelEmaV3(self.model, **self.options)
        self.rows.append(self._read())

    def after_step(self, num_updates: int) -> None:
        if (num_updates - 1) % self.every == 0:
            self.ema.update(self.model, step=(num_updates - 1) // self.every + 1)
        self.rows.append(self._read())

    def _read(self) -> list[np.ndarray]:
        return [t.detach().numpy().copy() for t in self.ema.module.state_dict().values()]


def _timm_run(opts: dict, steps: int, checkpoint_at=None, schedule=True, average=None):
    # float32, compared bit for bit: the "timm" preset follows timm's order of operations
    return _run_torch_optimizer(_import_timm_rmsprop_tf().RMSpropTF, opts, steps, schedule, checkpoint_at,
                                dtype="float32", average=average)


def _timm_initial_square_avg() -> str:
    import torch

    mod = _import_timm_rmsprop_tf()
    p = torch.ones(3, dtype=torch.float64)
    opt = mod.RMSpropTF([p], lr=0.01)
    p.grad = torch.zeros(3, dtype=torch.float64)
    opt.step()
    r0 = opt.state[p]["square_avg"].numpy() / 0.9
    return (f"{np.round(r0, 12).tolist()} "
            "(inferred: square_avg / 0.9 after one real step with a zero gradient)")


def peer_timm():
    mod = _import_timm_rmsprop_tf()
    trajs, ckpts = {}, {}
    for name, opts in P.CASES["timm"]:
        at = CHECKPOINT_STEPS if name == CHECKPOINT_CASE["timm"] else None
        trajs[name], ck, opt = _timm_run(opts, P.STEPS, checkpoint_at=at)
        if ck is not None:
            ckpts["timm_checkpoint.pt"] = ck
    base, runs = EMA_CASES["timm"]
    ema_cases = {}
    for tag, options in runs:
        average = _TimmEma(options)
        weights = _timm_run(dict(P.CASES["timm"])[base], P.STEPS, average=average)[0]
        _same_weights(weights, trajs[base], f"timm {base}/{tag}")
        trajs[f"{base}/{tag}"] = _flat_traj(average.rows)
        ema_cases[f"{base}/{tag}"] = {"case": base, "options": average.options, "update_every": average.every}
    ema_module = _import_timm_model_ema()
    sd = ckpts["timm_checkpoint.pt"]
    st0 = sd["state"][0]
    sig = inspect.signature(mod.RMSpropTF.__init__)
    group = sd["param_groups"][0]
    facts = {
        "import": "stub modules 'timm' and 'timm.optim' (types.ModuleType with __path__ = installed "
                  "package dirs) in sys.modules, then import timm.optim.rmsprop_tf",
        "signature": f"RMSpropTF{sig}",
        "param_group_keys": sorted(k for k in group if k != "params"),
        "state_keys": sorted(st0),
        "state_step_type": f"{type(st0['step']).__name__} {st0['step'].dtype} shape "
                           f"{tuple(st0['step'].shape)} on {st0['step'].device} (float32 since the "
                           "default dtype is float32; float64 if torch's default dtype is float64)",
        "square_avg_initial_value": _timm_initial_square_avg(),
        "has_caution": "caution" in sig.parameters,
        "has_corrected_weight_decay": "corrected_weight_decay" in sig.parameters,
        "has_foreach": "foreach" in sig.parameters,
        "path": "CPU params: foreach=None resolves to the single-tensor implementation "
                "(_single_tensor_rmsprop_tf); a Python-float lr uses addcdiv",
        "checkpoint": f"timm_checkpoint.pt = optimizer.state_dict() after {CHECKPOINT_STEPS} steps of "
                      f"'{CHECKPOINT_CASE['timm']}' (param_groups[0]['lr'] is lr_at(lr, 99)); continue "
                      f"from row {CHECKPOINT_STEPS} with lr_at(lr, {CHECKPOINT_STEPS}) onward",
        "group_values_at_checkpoint": {k: v for k, v in group.items() if k != "params"},
        "ema_signature": f"ModelEmaV3{inspect.signature(ema_module.ModelEmaV3.__init__)}",
        "ema": "timm.utils.model_ema.ModelEmaV3 (imported as rmsprop_tf is) over a torch.nn.Module whose "
               "Parameters share the optimizer's float32 tensors; after each optimizer step "
               "ema.update(model, step=num_updates), num_updates from 1, as timm's train.py. get_decay: "
               "s = max(0, step - update_after_step - 1); s = 0 -> decay 0 (step 1 copies the weights); "
               "else decay, or with use_warmup max(min(1 - (1 + s/warmup_gamma)**-warmup_power, decay), "
               "min_decay); update: foreach torch._foreach_lerp_(ema, model, weight=1 - decay) (a Python "
               "float), parameters and buffers. 'update_every' k > 1 (not a timm argument): update() only on "
               "steps 1, 1 + k, ..., with step = its own count of updates. Recorded beside case "
               f"{base!r} as '{base}/<tag>/<shape>': {sorted(ema_cases)}; the weights of those runs equal "
               "the case's own, bit for bit (the average does not touch training)",
        "torch_rounding": P.torch_rounding(),
    }
    notes = (
        "timm RMSpropTF, float32 (problem rounded once to float32; compared bit for bit), "
        "single-tensor CPU path; before 0-based step k "
        "param_groups[0]['lr'] = lr_at(lr, k). Per step: state['step'] += 1; weight decay first: "
        "decoupled_decay: param.mul_(1 - lr*weight_decay) (Python float64 scalar; "
        "corrected_weight_decay would use lr**2/max_lr instead of lr), else grad = "
        "grad.add(param, alpha=weight_decay) (L2, feeds square_avg). square_avg (starts at ONES) "
        ".add_(grad.pow(2) - square_avg, alpha=1-alpha); centered: grad_avg (zeros) .add_(grad - "
        "grad_avg, alpha=1-alpha); avg = square_avg.addcmul(grad_avg, grad_avg, value=-1).add(eps)"
        ".sqrt_() else avg = square_avg.add(eps).sqrt_() (eps INSIDE the sqrt). momentum>0: "
        "buf.mul_(momentum); lr_in_momentum (default): buf.addcdiv_(grad, avg, value=lr); "
        "param.add_(-buf) (lr INSIDE the buffer); else buf.addcdiv_(grad, avg); param.add_(buf, "
        "alpha=-lr). No momentum: param.addcdiv_(grad, avg, value=-lr). Defaults alpha=0.9, "
        "eps=1e-10, lr=1e-2. As for the torch peer, torch's vectorized add(alpha)/addcmul/addcdiv use "
        "FMA on CPU, so a plain NumPy model of these formulas drifts by up to ~1e-12 relative."
    )
    return {
        "library": "timm", "version": _version("timm"), "dtype": "float32", "bitwise": True,
        "trajs": trajs, "skipped": {}, "notes": notes, "facts": facts, "checkpoints": ckpts,
        "ema_cases": ema_cases,
    }


# --------------------------------------------------------------------------------------------
# dqn (numpy transcription of DeepMind's Lua)
# --------------------------------------------------------------------------------------------

def _dqn_run(opts: dict, steps: int):
    params0, grads = _problem()
    base = opts["lr"]
    w = [np.array(p, dtype=np.float64) for p in params0]
    g = [np.zeros_like(p) for p in w]
    g2 = [np.zeros_like(p) for p in w]
    rows = [[p.copy() for p in w]]
    for k in range(steps):
        lr = P.lr_at(base, k)
        for i in range(len(w)):
            dw = -np.asarray(grads[k][i], dtype=np.float64)   # the Lua code ascends along -dloss/dw
            g[i] = g[i] * 0.95 + 0.05 * dw                    # self.g:mul(0.95):add(0.05, self.dw)
            tmp = dw * dw                                     # self.tmp:cmul(self.dw, self.dw)
            g2[i] = g2[i] * 0.95 + 0.05 * tmp                 # self.g2:mul(0.95):add(0.05, self.tmp)
            tmp = g[i] * g[i]                                 # self.tmp:cmul(self.g, self.g)
            tmp = tmp * -1.0                                  # self.tmp:mul(-1)
            tmp = tmp + g2[i]                                 # self.tmp:add(self.g2)
            tmp = tmp + 0.01                                  # self.tmp:add(0.01)
            tmp = np.sqrt(tmp)                                # self.tmp:sqrt()
            deltas = (lr * dw) / tmp                          # deltas:mul(0):addcdiv(lr, dw, tmp)
            w[i] = w[i] + deltas                              # self.w:add(self.deltas)
        rows.append([p.copy() for p in w])
    return _flat_traj(rows)


def peer_dqn():
    trajs = {name: _dqn_run(opts, P.STEPS) for name, opts in P.CASES["dqn"]}
    notes = (
        "No library: DeepMind's DQN (Nature 2015) Lua update NeuralQLearner:qLearnMinibatch "
        "transcribed op for op in NumPy float64: dw = -gradient; g = g*0.95 + 0.05*dw; "
        "tmp = dw*dw; g2 = g2*0.95 + 0.05*tmp; tmp = g*g; tmp = tmp*(-1); tmp = tmp + g2; "
        "tmp = tmp + 0.01; tmp = sqrt(tmp); deltas = (lr*dw)/tmp (Torch7 addcdiv(value, t1, t2) "
        "computes value*t1/t2 left to right); w = w + deltas. g and g2 start at 0; lr = "
        "lr_at(lr, k); the 0.01 is inside the sqrt and acts as epsilon; no momentum."
    )
    return {
        "library": "numpy (transcription of deepmind/dqn NeuralQLearner.lua)", "version": np.__version__,
        "dtype": "float64", "trajs": trajs, "skipped": {}, "notes": notes,
        "facts": {"formula": "g <- 0.95 g + 0.05 dw; g2 <- 0.95 g2 + 0.05 dw^2; "
                             "theta <- theta + lr dw / sqrt(g2 - g^2 + 0.01); dw = -grad"},
        "checkpoints": {},
    }


# --------------------------------------------------------------------------------------------
# sb3 (Stable-Baselines3's RMSpropTFLike, torch float32)
# --------------------------------------------------------------------------------------------

def _import_sb3_rmsprop_tf_like():
    """stable_baselines3/__init__ imports gymnasium and its algorithms; the optimizer module needs
    only torch: load that one file by path."""
    spec = importlib.util.find_spec("stable_baselines3")
    assert spec is not None and spec.submodule_search_locations, "stable-baselines3 is not installed"
    path = Path(list(spec.submodule_search_locations)[0]) / "common" / "sb2_compat" / "rmsprop_tf_like.py"
    mod_spec = importlib.util.spec_from_file_location("sb3_rmsprop_tf_like", path)
    mod = importlib.util.module_from_spec(mod_spec)
    assert mod_spec.loader is not None
    mod_spec.loader.exec_module(mod)
    return mod


def _sb3_run(opts: dict, steps: int, schedule=True):
    return _run_torch_optimizer(_import_sb3_rmsprop_tf_like().RMSpropTFLike, opts, steps, schedule,
                                dtype="float32")


def peer_sb3():
    import torch

    mod = _import_sb3_rmsprop_tf_like()
    trajs = {name: _sb3_run(opts, P.STEPS)[0] for name, opts in P.CASES["sb3"]}
    _, _, opt = _sb3_run(dict(P.CASES["sb3"])["centered-momentum-wd"], 2)
    group = opt.state_dict()["param_groups"][0]
    st0 = opt.state_dict()["state"][0]
    p = torch.ones(3)
    probe = mod.RMSpropTFLike([p])
    p.grad = torch.zeros(3)
    probe.step()
    facts = {
        "import": "the file stable_baselines3/common/sb2_compat/rmsprop_tf_like.py loaded by path",
        "signature": f"RMSpropTFLike{inspect.signature(mod.RMSpropTFLike.__init__)}",
        "param_group_keys": sorted(k for k in group if k != "params"),
        "state_keys": sorted(st0),
        "state_step_type": type(st0["step"]).__name__,
        "square_avg_initial_value": f"{(probe.state[p]['square_avg'] / 0.99).tolist()} (square_avg / "
                                    "alpha after one step with a zero gradient)",
        "torch_rounding": P.torch_rounding(),
    }
    notes = (
        "SB3 RMSpropTFLike, float32 (problem rounded once to float32; compared bit for bit); before "
        "0-based step k param_groups[0]['lr'] = lr_at(lr, k). Per step: state['step'] += 1 (a Python "
        "int); L2 weight decay grad = grad.add(p, alpha=wd); square_avg (starts at ONES) "
        ".mul_(alpha).addcmul_(grad, grad, value=1-alpha); centered: grad_avg.mul_(alpha).add_(grad, "
        "alpha=1-alpha) (PyTorch 1.5's form, not lerp); avg = square_avg.addcmul(grad_avg, grad_avg, "
        "value=-1).add_(eps).sqrt_() else square_avg.add(eps).sqrt_() (eps INSIDE the sqrt); momentum: "
        "buf.mul_(momentum).addcdiv_(grad, avg); p.add_(buf, alpha=-lr) (lr OUTSIDE the buffer); else "
        "p.addcdiv_(grad, avg, value=-lr). Defaults lr=1e-2, alpha=0.99, eps=1e-8."
    )
    return {
        "library": "stable-baselines3", "version": _version("stable-baselines3"), "dtype": "float32",
        "bitwise": True, "trajs": trajs, "skipped": {}, "notes": notes, "facts": facts, "checkpoints": {},
    }


RUNNERS = {
    "torch": peer_torch, "tf1": peer_tf1, "keras": peer_keras,
    "optax": peer_optax, "timm": peer_timm, "sb3": peer_sb3, "dqn": peer_dqn,
}


# --------------------------------------------------------------------------------------------
# files
# --------------------------------------------------------------------------------------------

_ZIP_DATE = (1980, 1, 1, 0, 0, 0)


def write_npz(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """np.savez_compressed's format (np.load reads it the same) with fixed zip timestamps and
    sorted-by-insertion entries, so identical arrays give identical bytes."""
    tmp = path.with_suffix(path.suffix + ".tmp")
    with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for key, arr in arrays.items():
            info = zipfile.ZipInfo(key + ".npy", date_time=_ZIP_DATE)
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = 0o644 << 16
            buf = io.BytesIO()
            np.lib.format.write_array(buf, np.ascontiguousarray(arr), allow_pickle=False)
            zf.writestr(info, buf.getvalue())
    tmp.replace(path)


def arrays_of(result: dict) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    arrays, refused = {}, {}
    for case, trajs in result["trajs"].items():
        for i, t in enumerate(trajs):
            if t is None:
                refused[f"{case}/{i}"] = "peer refused a variable of this shape"
                continue
            assert t.shape == (P.STEPS + 1, int(np.prod(P.SHAPES[i], dtype=np.int64))), (case, i, t.shape)
            arrays[f"{case}/{i}"] = np.ascontiguousarray(t, dtype=np.float64)
    return arrays, refused


def _rel(path: str) -> str:
    try:
        return os.path.relpath(path, ROOT) if os.path.isabs(path) else path
    except ValueError:
        return path


def command_string() -> str:
    exe = _rel(sys.executable)
    script = _rel(os.path.abspath(sys.argv[0]))
    return " ".join([exe, script, *sys.argv[1:]])


def metadata(peer: str, result: dict, refused: dict, seconds: float) -> dict:
    cases = {name: opts for name, opts in P.CASES[peer]}
    skipped = dict(result["skipped"])
    meta = {
        "peer": peer,
        "library": result["library"],
        "version": result["version"],
        "python": platform.python_version(),
        "command": command_string(),
        "dtype": result["dtype"],
        "bitwise": result.get("bitwise", False),
        "generated": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d"),
        "cases": cases,
        **({"ema_cases": result["ema_cases"]} if "ema_cases" in result else {}),
        "skipped": skipped,
        "refused_keys": refused,
        "notes": result["notes"],
        "facts": result["facts"],
        "steps": P.STEPS,
        "shapes": [list(s) for s in P.SHAPES],
        "seed": P.SEED,
        "format": "npz key f'{case}/{shape_index}' -> float64 (STEPS+1, numel); row 0 initial, row k "
                  "after step k (0-based step k-1 used lr_at(lr, k-1)); values flattened C-order"
                  + ("; an ema case 'CASE/TAG' holds the peer's average of CASE's weights the same way "
                     "(row 0: the average before step 1, as the peer holds it)"
                     if "ema_cases" in result else ""),
        "platform": f"{platform.system()} {platform.machine()}",
        "numpy": np.__version__,
        "seconds": round(seconds, 1),
    }
    return meta


def save_checkpoint(path: Path, state_dict) -> None:
    import torch

    torch.save(state_dict, path)
    loaded = torch.load(path, weights_only=True)
    _assert_same_state(state_dict, loaded)


def _assert_same_state(a, b, where="state_dict"):
    import torch

    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and a.shape == b.shape, where
        assert torch.equal(a, b), where
    elif isinstance(a, dict):
        assert isinstance(b, dict) and set(a) == set(b), (where, set(a) ^ set(b))
        for k in a:
            _assert_same_state(a[k], b[k], f"{where}[{k!r}]")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            _assert_same_state(x, y, f"{where}[{i}]")
    else:
        assert a == b or (a != a and b != b), (where, a, b)


def run_peer(peer: str) -> tuple[dict, float]:
    t0 = time.perf_counter()
    result = RUNNERS[peer]()
    return result, time.perf_counter() - t0


def assert_no_rmsprop() -> None:
    bad = [m for m in sys.modules if m == "rmsprop" or m.startswith("rmsprop.")]
    assert not bad, f"the generator must never import rmsprop, found {bad}"


def write(peers: list[str]) -> None:
    GOLDENS.mkdir(parents=True, exist_ok=True)
    for peer in peers:
        result, secs = run_peer(peer)
        arrays, refused = arrays_of(result)
        write_npz(GOLDENS / f"{peer}.npz", arrays)
        meta = metadata(peer, result, refused, secs)
        (GOLDENS / f"{peer}.json").write_text(json.dumps(meta, indent=2, sort_keys=False, default=str) + "\n")
        for fname, sd in result["checkpoints"].items():
            save_checkpoint(GOLDENS / fname, sd)
        print(f"{peer:6s} {result['library']} {result['version']}: {len(arrays)} arrays, "
              f"{len(result['skipped'])} skipped, {secs:.1f}s -> tests/goldens/{peer}.npz")
        assert_no_rmsprop()


def _max_rel(a: np.ndarray, b: np.ndarray) -> float:
    if a.size == 0:
        return 0.0
    denom = np.maximum(np.abs(a), np.abs(b))
    diff = np.abs(a - b)
    with np.errstate(invalid="ignore", divide="ignore"):
        rel = np.where(diff == 0, 0.0, diff / np.where(denom == 0, 1.0, denom))
    return float(np.max(rel))


def check(peers: list[str]) -> int:
    import torch

    failures = 0
    print(f"{'peer':6s} {'key':45s} {'dtype':7s} {'max rel diff':>13s}  status")
    for peer in peers:
        npz, js = GOLDENS / f"{peer}.npz", GOLDENS / f"{peer}.json"
        if not npz.exists() or not js.exists():
            print(f"{peer:6s} {'(missing files)':45s} {'':7s} {'':>13s}  FAIL")
            failures += 1
            continue
        meta = json.loads(js.read_text())
        result, _ = run_peer(peer)
        arrays, _ = arrays_of(result)
        exact = result["dtype"] == "float32"
        with np.load(npz) as stored:
            keys = sorted(set(stored.files) | set(arrays))
            for key in keys:
                if key not in stored.files or key not in arrays:
                    print(f"{peer:6s} {key:45s} {result['dtype']:7s} {'missing':>13s}  FAIL")
                    failures += 1
                    continue
                a, b = stored[key], arrays[key]
                if a.shape != b.shape:
                    print(f"{peer:6s} {key:45s} {result['dtype']:7s} {'shape':>13s}  FAIL")
                    failures += 1
                    continue
                rel = _max_rel(a, b)
                ok = np.array_equal(a, b) if exact else rel <= REL_TOL_F64
                failures += not ok
                print(f"{peer:6s} {key:45s} {result['dtype']:7s} {rel:13.3e}  {'ok' if ok else 'FAIL'}")
        if meta.get("version") != result["version"]:
            print(f"{peer:6s} note: files made with {meta.get('library')} {meta.get('version')}, "
                  f"now running {result['version']}")
        for fname, sd in result["checkpoints"].items():
            path = GOLDENS / fname
            try:
                _assert_same_state(torch.load(path, weights_only=True), sd)
                status = "ok"
            except (AssertionError, FileNotFoundError) as exc:
                status = f"FAIL ({exc})"
                failures += 1
            print(f"{peer:6s} {fname:45s} {'':7s} {'':>13s}  {status}")
        assert_no_rmsprop()
    print("mismatches:", failures)
    return 1 if failures else 0


# --------------------------------------------------------------------------------------------
# sanity checks
# --------------------------------------------------------------------------------------------

def _first_diff_row(a: list[np.ndarray], b: list[np.ndarray]) -> int | None:
    for k in range(P.STEPS + 1):
        if any(not np.array_equal(x[k], y[k]) for x, y in zip(a, b)):
            return k
    return None


def sanity(peers: list[str]) -> int:
    """The schedule must really reach each peer: a run with the schedule and a run with the
    constant base lr agree up to row 80 (steps 0..79 use the base lr) and differ from row 81 on
    (step 80 is the first with lr*0.3)."""
    bad = 0
    for peer in peers:
        if peer == "dqn":
            continue
        name, opts = P.CASES[peer][1] if len(P.CASES[peer]) > 1 else P.CASES[peer][0]
        if peer == "torch":
            a = _torch_run(opts, P.STEPS)[0]
            b = _torch_run(opts, P.STEPS, schedule=False)[0]
        elif peer == "tf1":
            a = _tf1_run(opts, P.STEPS)[0]
            b = _tf1_run(opts, P.STEPS, schedule=False)[0]
            c = _tf1_run(opts, P.STEPS, lr_mode="f64var")[0]
            print(f"tf1    lr as callable (Python float -> float32 -> float64) vs float64 tf.Variable: "
                  f"first differing row {_first_diff_row(a, c)} (None = identical)")
        elif peer == "keras":
            a = _keras_run(opts, P.STEPS)[0]
            b = _keras_run(opts, P.STEPS, schedule=False)[0]
        elif peer == "optax":
            _optax_setup()
            a = _optax_run(opts, P.STEPS)
            b = _optax_run(opts, P.STEPS, schedule=False)
            counts = _optax_schedule_counts(opts)
            ok_counts = counts == list(range(P.STEPS))
            bad += not ok_counts
            print(f"optax  schedule called with counts {counts[:3]}...{counts[-2:]} "
                  f"(expected 0..{P.STEPS - 1}) {'ok' if ok_counts else 'FAIL'}")
        elif peer == "timm":
            a = _timm_run(opts, P.STEPS)[0]
            b = _timm_run(opts, P.STEPS, schedule=False)[0]
        elif peer == "sb3":
            a = _sb3_run(opts, P.STEPS)[0]
            b = _sb3_run(opts, P.STEPS, schedule=False)[0]
        first = _first_diff_row(a, b)
        ok = first == 81
        bad += not ok
        print(f"{peer:6s} case {name!r}: schedule vs constant lr first differ at row {first} "
              f"(expected 81) {'ok' if ok else 'FAIL'}")
    return 1 if bad else 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--peer", action="append", choices=PEERS + ["all"],
                    help="peer to run (repeatable; 'all' = every peer). Default for --check/--sanity: all")
    ap.add_argument("--check", action="store_true", help="regenerate in memory and compare to the files")
    ap.add_argument("--sanity", action="store_true", help="check that the lr schedule reaches the peers")
    args = ap.parse_args(argv)
    if not args.peer:
        if not (args.check or args.sanity):
            ap.error("name --peer NAME (or --peer all) to write goldens, or pass --check / --sanity")
        peers = list(PEERS)
    elif "all" in args.peer:
        peers = list(PEERS)
    else:
        peers = list(dict.fromkeys(args.peer))
    if args.sanity:
        return sanity(peers)
    if args.check:
        return check(peers)
    write(peers)
    return 0


if __name__ == "__main__":
    sys.exit(main())
