"""Stable-Baselines3 in the integration environment: the project's SB3 tests against the pinned
SB3 and gymnasium of scripts/integration-requirements.txt, and PPO.

tests/test_integrations_sb3.py also runs in `make test`, against whatever SB3 the dev extras
installed (`stable-baselines3>=2.3`); here the versions are the pinned ones.
"""

from __future__ import annotations

import importlib.util

import pytest
import torch
from conftest import ROOT

import rmsprop
from rmsprop.integrations.sb3 import policy_kwargs

pytest.importorskip("stable_baselines3", reason="runs in the integration environment (make integration)")
from stable_baselines3 import PPO  # noqa: E402

_spec = importlib.util.spec_from_file_location("sb3_tests", ROOT / "tests" / "test_integrations_sb3.py")
sb3_tests = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(sb3_tests)

# The same tests, collected here under their own names.
globals().update({name: getattr(sb3_tests, name) for name in dir(sb3_tests) if name.startswith("test_")})


def test_ppo_with_policy_kwargs_is_ppo_with_torch_rmsprop_bit_for_bit():
    # PPO's default is Adam; given an optimizer_class, both get the same kwargs and minibatches.
    def train(kwargs):
        model = PPO("MlpPolicy", "CartPole-v1", n_steps=128, batch_size=32, n_epochs=2, seed=0, device="cpu",
                    policy_kwargs=kwargs)
        model.learn(256)
        return model

    theirs = train({"optimizer_class": torch.optim.RMSprop, "optimizer_kwargs": {"eps": 1e-5}})
    ours = train(policy_kwargs())
    assert type(ours.policy.optimizer) is rmsprop.RMSprop
    for p, q in zip(ours.policy.parameters(), theirs.policy.parameters()):
        assert torch.equal(p, q)
