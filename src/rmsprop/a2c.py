"""Stable-Baselines3's A2C on gymnasium's CartPole-v1, once per form of RMSProp.

The workload behind ``rmsprop compare --task a2c-cartpole``: a real training
loop of a real framework, where only the optimizer changes. Every run is
``A2C("MlpPolicy", "CartPole-v1", seed=seed, device="cpu")`` with A2C's own
defaults (lr 7e-4, n_steps 5, gamma 0.99, ...) and ``policy_kwargs`` choosing
the optimizer class and its arguments, as a user of SB3 would write them:

===============  ==============================================================================
form             ``optimizer_class`` and ``optimizer_kwargs`` (all: alpha 0.99, eps 1e-5, wd 0)
===============  ==============================================================================
``torch``        ``torch.optim.RMSprop``: exactly what A2C builds by default
``rmsprop``      ``rmsprop.RMSprop`` (preset ``torch``): the drop-in, same numbers as ``torch``
``sb3``          ``rmsprop.RMSprop(preset="sb3")``: SB3's ``RMSpropTFLike`` (ε inside √, v₀ = 1)
``tflike``       SB3's own ``RMSpropTFLike``: its ``use_rms_prop`` recipe
``eps-in-sqrt``  ``rmsprop.RMSprop(eps_in_sqrt=True)``: ε inside the root, v₀ = 0
``v0-1``         ``rmsprop.RMSprop(initial_square_avg=1.0)``: v₀ = 1, ε outside the root
``sb3-eps1e-8``  ``rmsprop.RMSprop(preset="sb3", eps=1e-8)``: the TF-like form with its own ε
===============  ==============================================================================

``eps-in-sqrt`` and ``v0-1`` separate the two ways the TF-like form differs from
PyTorch's. ``sb3-eps1e-8`` is what ``policy_kwargs=dict(optimizer_class=RMSpropTFLike)``
gives without ``optimizer_kwargs``: A2C passes its ``rms_prop_eps`` (1e-5) only to the
optimizer it picks itself, so the class's default ε (1e-8) applies.

Evaluation protocol: at ``evals`` evenly spaced points of training (and before
it), the policy plays ``episodes`` episodes of a separate CartPole-v1
(``make_vec_env`` seeded with ``EVAL_SEED_OFFSET + seed``, so every point of a
run, and every form, sees the same starting states) with deterministic
actions (SB3's ``evaluate_policy``); the point's value is the mean return
(500 is the most CartPole-v1 gives). Evaluation draws nothing from the
training's random streams: a run's training is the same with or without it.

Stable-Baselines3 and gymnasium are imported inside the functions: ``import
rmsprop`` needs torch alone (``pip install 'rmsprop[sb3]'`` adds them).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

import torch

from .integrations.sb3 import A2C_EPS
from .optimizer import RMSprop

__all__ = ["ALPHA", "EPS", "ENV_ID", "FORMS", "Form", "LR", "N_STEPS", "evaluate", "make_model",
           "require_sb3", "train"]

ENV_ID = "CartPole-v1"
LR = 7e-4  # A2C's default learning rate
ALPHA = 0.99  # A2C's RMSProp alpha
EPS = A2C_EPS  # A2C's rms_prop_eps
N_STEPS = 5  # A2C's default rollout length: one update per 5 environment steps
EVAL_SEED_OFFSET = 1_000_000  # the evaluation environment's seed is this plus the run's seed

OptimizerSpec = tuple[type[torch.optim.Optimizer], dict[str, Any]]


def require_sb3() -> Any:
    """Import and return ``stable_baselines3``; raise ImportError naming the extra when it or
    gymnasium is missing."""
    try:
        import gymnasium  # noqa: F401
        import stable_baselines3
    except ImportError as err:
        raise ImportError(f"the A2C CartPole task needs Stable-Baselines3 and gymnasium ({err.name} is not "
                          f"installed): pip install 'rmsprop[sb3]'") from err
    return stable_baselines3


def _a2c_kwargs(**extra: Any) -> dict[str, Any]:
    # What A2C itself puts in optimizer_kwargs when use_rms_prop=True (its default).
    return {"alpha": ALPHA, "eps": EPS, "weight_decay": 0, **extra}


def _torch() -> OptimizerSpec:
    return torch.optim.RMSprop, _a2c_kwargs()


def _tflike() -> OptimizerSpec:
    require_sb3()
    from stable_baselines3.common.sb2_compat.rmsprop_tf_like import RMSpropTFLike

    return RMSpropTFLike, _a2c_kwargs()


def _ours(**knobs: Any) -> Callable[[], OptimizerSpec]:
    return lambda: (RMSprop, _a2c_kwargs(**knobs))


@dataclass(frozen=True)
class Form:
    """One optimizer as SB3's ``policy_kwargs`` take it.

    Attributes:
        name: the name on the command line.
        label: the legend text.
        color: the matplotlib colour of its curves.
        optimizer: returns ``(optimizer_class, optimizer_kwargs)``; a function, so that a form
            needing Stable-Baselines3 imports it only when used.
    """

    name: str
    label: str
    color: str
    optimizer: Callable[[], OptimizerSpec]

    def policy_kwargs(self) -> dict[str, Any]:
        """``policy_kwargs`` for SB3's A2C that select this optimizer."""
        cls, kwargs = self.optimizer()
        return {"optimizer_class": cls, "optimizer_kwargs": kwargs}


_ALL = (
    Form("torch", "torch.optim.RMSprop (A2C's default)", "tab:blue", _torch),
    Form("rmsprop", "rmsprop.RMSprop, preset torch", "tab:cyan", _ours()),
    Form("sb3", "rmsprop.RMSprop, preset sb3 (TF-like)", "tab:red", _ours(preset="sb3")),
    Form("tflike", "SB3's RMSpropTFLike", "tab:orange", _tflike),
    Form("eps-in-sqrt", "ε inside √ only (v₀ = 0)", "tab:green", _ours(eps_in_sqrt=True)),
    Form("v0-1", "v₀ = 1 only (ε outside √)", "tab:purple", _ours(initial_square_avg=1.0)),
    Form("sb3-eps1e-8", "preset sb3 with its own ε 1e-8", "tab:brown", _ours(preset="sb3", eps=1e-8)),
)

#: name → :class:`Form`, read-only, in the order the pictures list them.
FORMS: Mapping[str, Form] = MappingProxyType({f.name: f for f in _ALL})


def make_model(form: str, seed: int, lr: float = LR) -> Any:
    """SB3's ``A2C("MlpPolicy", "CartPole-v1")`` with A2C's defaults, the optimizer ``form`` and
    learning rate ``lr``, seeded with ``seed``, on the CPU."""
    sb3 = require_sb3()
    return sb3.A2C("MlpPolicy", ENV_ID, learning_rate=lr, seed=seed, device="cpu",
                   policy_kwargs=FORMS[form].policy_kwargs())


def evaluate(model: Any, seed: int, episodes: int) -> float:
    """Mean return of ``episodes`` deterministic episodes on a CartPole-v1 seeded with
    ``EVAL_SEED_OFFSET + seed`` (the same starting states at every call)."""
    require_sb3()
    from stable_baselines3.common.env_util import make_vec_env
    from stable_baselines3.common.evaluation import evaluate_policy

    env = make_vec_env(ENV_ID, n_envs=1, seed=EVAL_SEED_OFFSET + seed)
    try:
        mean, _ = evaluate_policy(model, env, n_eval_episodes=episodes, deterministic=True)
    finally:
        env.close()
    assert isinstance(mean, float)  # a list only with return_episode_rewards=True
    return float(mean)


def train(form: str, lr: float, seed: int, steps: int, evals: int, episodes: int,
          on_eval: Callable[[int, float], None] = lambda index, value: None,
          on_update: Callable[[Any], None] | None = None) -> dict[str, list[float]]:
    """One A2C run of ``steps`` environment steps; returns ``{"eval_return": [...]}``.

    Args:
        form: a name of :data:`FORMS`.
        lr: the learning rate.
        seed: A2C's seed (initial weights, environment, action sampling).
        steps: environment steps; a multiple of ``N_STEPS * evals``, so that every evaluation
            falls between two updates.
        evals: evaluations during training, evenly spaced; one more happens before it.
        episodes: episodes per evaluation.
        on_eval: called with (index, mean return) after each evaluation, index 0..evals.
        on_update: called with the model after every update (and once before the first), at
            the start of each rollout and at the end: for measurements that read the
            parameters or the optimizer's state. It must not draw random numbers.

    Returns:
        ``eval_return``: ``evals + 1`` mean returns, at steps ``i * steps / evals``.

    Raises:
        ValueError: ``steps`` is not a multiple of ``N_STEPS * evals``.
        ImportError: Stable-Baselines3 or gymnasium is missing.
    """
    if steps % (N_STEPS * evals):
        raise ValueError(f"steps must be a multiple of {N_STEPS} × evals = {N_STEPS * evals} "
                         f"(A2C updates every {N_STEPS} steps), got {steps}")
    require_sb3()
    from stable_baselines3.common.callbacks import BaseCallback

    model = make_model(form, seed, lr)
    every = steps // evals
    returns: list[float] = []

    def checkpoint() -> None:
        if on_update is not None:
            on_update(model)
        if model.num_timesteps == every * len(returns):
            returns.append(evaluate(model, seed, episodes))
            on_eval(len(returns) - 1, returns[-1])

    class Checkpoints(BaseCallback):
        def _on_rollout_start(self) -> None:  # the previous update is done, the next rollout not begun
            checkpoint()

        def _on_step(self) -> bool:
            return True

    model.learn(total_timesteps=steps, callback=Checkpoints())
    checkpoint()
    return {"eval_return": returns}
