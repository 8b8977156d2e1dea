"""rmsprop.RMSprop inside Stable-Baselines3's real A2C on gymnasium's CartPole-v1 (no download).

Every comparison is bit for bit: the same seed, the same environment, the same
minibatches, so two optimizers that compute the same float32 numbers end with
the same policy. docs/integrations/sb3.md quotes these tests.
"""

from __future__ import annotations

import csv

import pytest
import torch

import rmsprop
from rmsprop.integrations.sb3 import A2C_EPS, policy_kwargs

sb3 = pytest.importorskip("stable_baselines3", reason="the sb3 extra (in dev) is not installed")
from stable_baselines3 import A2C  # noqa: E402
from stable_baselines3.common.env_util import make_vec_env  # noqa: E402
from stable_baselines3.common.sb2_compat.rmsprop_tf_like import RMSpropTFLike  # noqa: E402

STEPS = 500  # A2C's 5-step rollouts: 100 updates


@pytest.fixture(autouse=True)
def one_thread():
    """One torch thread: a run's float32 sums then do not depend on the machine's core count,
    so the trajectories these tests pin (the centered cases below) are the same everywhere."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def linear(start: float):
    """SB3's linear schedule: the learning rate is written into the groups before every update."""
    return lambda progress_remaining: start * progress_remaining


def train(kwargs: dict | None, steps: int = STEPS, seed: int = 0, **a2c) -> A2C:
    model = A2C("MlpPolicy", "CartPole-v1", seed=seed, device="cpu", policy_kwargs=kwargs, **a2c)
    model.learn(steps)
    return model


def assert_same_policy(a: A2C, b: A2C) -> None:
    pa, pb = list(a.policy.parameters()), list(b.policy.parameters())
    assert len(pa) == len(pb) > 0
    for x, y in zip(pa, pb):
        assert torch.equal(x, y), f"differ by {(x - y).abs().max().item():.3g}"


def test_policy_kwargs_is_a2c_default_optimizer_bit_for_bit():
    theirs = train(None)
    ours = train(policy_kwargs())
    assert type(theirs.policy.optimizer) is torch.optim.RMSprop
    assert type(ours.policy.optimizer) is rmsprop.RMSprop
    assert ours.policy.optimizer.param_groups[0]["eps"] == theirs.policy.optimizer.param_groups[0]["eps"]
    assert_same_policy(theirs, ours)


def test_without_the_helper_a2c_rms_prop_eps_never_reaches_the_class():
    # The trap policy_kwargs closes: SB3 fills eps=rms_prop_eps only for its own default class.
    model = A2C("MlpPolicy", "CartPole-v1", device="cpu", rms_prop_eps=A2C_EPS,
                policy_kwargs={"optimizer_class": rmsprop.RMSprop})
    assert model.policy.optimizer.param_groups[0]["eps"] == 1e-8
    model = A2C("MlpPolicy", "CartPole-v1", device="cpu", policy_kwargs=policy_kwargs("sb3"))
    assert model.policy.optimizer.param_groups[0]["eps"] == A2C_EPS


def test_policy_kwargs_checks_settings_at_the_call():
    with pytest.raises(ValueError, match="momentum"):
        policy_kwargs(momentum=-1.0)
    with pytest.raises(ValueError, match="preset"):
        policy_kwargs("tf2")
    with pytest.raises(ValueError, match="learning_rate"):
        policy_kwargs(lr=1e-3)
    assert policy_kwargs(eps=None)["optimizer_kwargs"] == {"preset": "torch"}


@pytest.mark.parametrize(
    "knobs",
    [
        {},
        {"momentum": 0.9},
        {"centered": True},
        {"centered": True, "momentum": 0.9},
    ],
    ids=["plain", "momentum", "centered", "centered-momentum"],
)
def test_preset_sb3_is_rmsproptflike_bit_for_bit(knobs):
    # A linear lr schedule, as the RL Zoo's A2C recipes use, and RMSpropTFLike's own ε. The
    # centered cases need the preset's op_order ("torch-1.5"): in PyTorch's order the policies
    # differ by ~5e-10 after these 1,000 steps (seed 0, one thread).
    schedule = {"learning_rate": linear(7e-4)}
    theirs = train({"optimizer_class": RMSpropTFLike, "optimizer_kwargs": knobs}, 1000, **schedule)
    ours = train(policy_kwargs("sb3", eps=1e-8, **knobs), 1000, **schedule)
    assert type(theirs.policy.optimizer) is RMSpropTFLike
    assert_same_policy(theirs, ours)


def resume_pair(tmp_path, first: dict, then: dict | None = None) -> tuple[A2C, A2C]:
    """Train, save, and go on twice from the same point: the model itself (its optimizer never
    left memory) and ``A2C.load`` of the file (``then`` replaces the saved policy_kwargs).
    Both get a fresh, identically seeded environment and reseeded RNGs before the second half,
    so the only difference left is the trip through the file."""
    model = train(first)
    path = tmp_path / "a2c.zip"
    model.save(path)
    custom = None if then is None else {"policy_kwargs": then}
    loaded = A2C.load(path, env=make_vec_env("CartPole-v1", n_envs=1), device="cpu", custom_objects=custom)
    model.set_env(make_vec_env("CartPole-v1", n_envs=1))
    for m in (model, loaded):
        m.set_random_seed(1)
        m.learn(STEPS, reset_num_timesteps=False)
    return model, loaded


@pytest.mark.parametrize("precision", ["param", "bf16", "int8"])
def test_sb3_save_and_load_resume_bit_exactly(tmp_path, precision):
    uninterrupted, resumed = resume_pair(tmp_path, policy_kwargs(state_precision=precision, momentum=0.9))
    assert type(resumed.policy.optimizer) is rmsprop.RMSprop
    assert resumed.policy.optimizer.param_groups[0]["state_precision"] == precision
    assert resumed.num_timesteps == uninterrupted.num_timesteps == 2 * STEPS
    assert_same_policy(uninterrupted, resumed)
    a, b = uninterrupted.policy.optimizer.state_dict(), resumed.policy.optimizer.state_dict()
    stored = {t.dtype for s in b["state"].values() for k, t in s.items() if k.startswith("square_avg")}
    # the 64×64 hidden weights are large enough for int8 codes (smaller tensors keep float32)
    assert {"param": torch.float32, "bf16": torch.bfloat16, "int8": torch.uint8}[precision] in stored
    for sa, sb in zip(a["state"].values(), b["state"].values()):
        assert sa.keys() == sb.keys()
        for key in sa:
            assert torch.equal(sa[key], sb[key]), key


def test_rmsproptflike_checkpoint_continues_as_rmsproptflike_in_preset_sb3(tmp_path):
    # A model trained with SB3's own RMSpropTFLike: its saved groups hold only lr, momentum,
    # alpha, eps, centered and weight_decay. Loaded into preset "sb3", the knobs the file does
    # not mention (eps_in_sqrt, initial_square_avg, ...) must stay the loading optimizer's.
    tflike = {"optimizer_class": RMSpropTFLike, "optimizer_kwargs": {"eps": A2C_EPS, "momentum": 0.9}}
    theirs, ours = resume_pair(tmp_path, tflike, then=policy_kwargs("sb3", momentum=0.9))
    assert type(theirs.policy.optimizer) is RMSpropTFLike
    assert type(ours.policy.optimizer) is rmsprop.RMSprop
    assert_same_policy(theirs, ours)
    group = ours.policy.optimizer.param_groups[0]
    assert (group["eps_in_sqrt"], group["initial_square_avg"]) == (True, 1.0)


class _NaNRewardOnce:
    """A gymnasium wrapper's step: the reward of the ``at``-th step is NaN, so the
    A2C update whose rollout holds it has NaN gradients."""

    def __init__(self, at: int) -> None:
        self.at, self.seen = at, 0

    def __call__(self, env):
        import gymnasium

        outer = self

        class NaNReward(gymnasium.Wrapper):
            def step(self, action):
                obs, reward, terminated, truncated, info = self.env.step(action)
                outer.seen += 1
                return obs, float("nan") if outer.seen == outer.at else reward, terminated, truncated, info

        return NaNReward(env)


def test_skipped_steps_callback_logs_what_the_optimizer_skipped(tmp_path):
    """One NaN reward (step 52 of 100, in the 11th 5-step rollout) makes one A2C
    update non-finite: ``nonfinite="skip"`` skips it, and the callback records
    the count in SB3's logger, written out with the other ``train/`` values."""
    from stable_baselines3.common.logger import configure

    from rmsprop.integrations.sb3 import SkippedSteps

    env = make_vec_env("CartPole-v1", n_envs=1, seed=0, wrapper_class=_NaNRewardOnce(52))
    model = A2C("MlpPolicy", env, seed=0, device="cpu", policy_kwargs=policy_kwargs(nonfinite="skip"))
    model.set_logger(configure(str(tmp_path), ["csv"]))
    model.learn(100, callback=SkippedSteps(), log_interval=1)
    assert model.policy.optimizer.skipped_steps == 1
    assert all(p.isfinite().all() for p in model.policy.parameters())
    with open(tmp_path / "progress.csv") as f:
        rows = list(csv.DictReader(f))
    logged = [float(row["train/skipped_steps"]) for row in rows if row.get("train/skipped_steps")]
    assert len(logged) >= 10 and logged[0] == 0 and logged[-1] == 1
    assert sorted(logged) == logged  # counted once, from the update that skipped on


def test_skipped_steps_callback_finds_every_optimizer_of_an_algorithm():
    """SAC steps three optimizers (actor, critic, entropy coefficient): each of ours is counted."""
    from stable_baselines3 import SAC

    from rmsprop.integrations.sb3 import _optimizers

    model = SAC("MlpPolicy", "Pendulum-v1", device="cpu", seed=0,
                policy_kwargs={**policy_kwargs(nonfinite="skip")})
    found = _optimizers(model)
    assert [type(o) for o in found[:2]] == [rmsprop.RMSprop, rmsprop.RMSprop]
    assert found[0] is model.actor.optimizer and found[1] is model.critic.optimizer
    assert found[2] is model.ent_coef_optimizer
    model.critic.optimizer.param_groups[0]["skipped_steps"] = 2
    from rmsprop.integrations import skipped_steps

    assert skipped_steps(found) == {"skipped_steps/0": 0, "skipped_steps/1": 2, "skipped_steps": 2}
