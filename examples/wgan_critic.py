"""A Wasserstein GAN trained with RMSProp and weight clipping, as in the WGAN paper.

Arjovsky, Chintala and Bottou, "Wasserstein GAN" (2017), Algorithm 1, with its default values:
learning rate alpha = 5e-5, clipping parameter c = 0.01, batch size m = 64, n_critic = 5
critic steps per generator step; both networks updated with RMSProp (the paper reports that a
momentum-based optimizer such as Adam made training unstable at times). The authors' PyTorch
code calls torch.optim.RMSprop with only the learning rate, so here it is
rmsprop.RMSprop(lr=5e-5): the "torch" preset (alpha 0.99, eps 1e-8 outside the root).

The data are 2-D points from a Gaussian centred at (2, 2) with standard deviation 0.5, the
generator maps 2-D standard normal noise through a small MLP, and the critic is an MLP whose
weights are clipped to [-c, c] after every critic step. The critic's estimate of the Wasserstein
distance, E[critic(real)] - E[critic(fake)], falls as the generated points move onto the data.

    python examples/wgan_critic.py [--steps 600]
"""

from __future__ import annotations

import argparse

import torch
from torch import nn

import rmsprop

LR, CLIP, BATCH, N_CRITIC = 5e-5, 0.01, 64, 5  # Algorithm 1's defaults
DATA_MEAN, DATA_STD = torch.tensor([2.0, 2.0]), 0.5


def real_batch(n: int) -> torch.Tensor:
    return DATA_MEAN + DATA_STD * torch.randn(n, 2)


def mlp(out: int) -> nn.Module:
    return nn.Sequential(nn.Linear(2, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, out))


def critic_step(critic: nn.Module, generator: nn.Module, opt: torch.optim.Optimizer) -> float:
    """Lines 2-8 of Algorithm 1: maximise E[f(real)] - E[f(fake)], then clip f's weights."""
    with torch.no_grad():
        fake = generator(torch.randn(BATCH, 2))
    estimate = critic(real_batch(BATCH)).mean() - critic(fake).mean()
    opt.zero_grad()
    (-estimate).backward()
    opt.step()
    with torch.no_grad():
        for p in critic.parameters():
            p.clamp_(-CLIP, CLIP)
    return estimate.item()


def generator_step(critic: nn.Module, generator: nn.Module, opt: torch.optim.Optimizer) -> None:
    """Lines 9-11: minimise -E[f(G(z))]."""
    loss = -critic(generator(torch.randn(BATCH, 2))).mean()
    opt.zero_grad()
    loss.backward()
    opt.step()


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=600, help="generator steps (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    torch.manual_seed(args.seed)
    critic, generator = mlp(1), mlp(2)
    with torch.no_grad():
        for p in critic.parameters():
            p.clamp_(-CLIP, CLIP)
    critic_opt = rmsprop.RMSprop(critic.parameters(), lr=LR)
    generator_opt = rmsprop.RMSprop(generator.parameters(), lr=LR)
    print(critic_opt)
    estimates, gaps = [], []
    for step in range(args.steps):
        for _ in range(N_CRITIC):
            estimate = critic_step(critic, generator, critic_opt)
        generator_step(critic, generator, generator_opt)
        estimates.append(estimate)
        with torch.no_grad():
            gaps.append((generator(torch.randn(1024, 2)).mean(0) - DATA_MEAN).norm().item())
        if (step + 1) % 100 == 0 or step + 1 == args.steps:
            print(f"generator step {step + 1:4d}  critic's W estimate {estimate:.5f}  "
                  f"|mean(G(z)) - mean(data)| {gaps[-1]:.3f}")
    return {"estimates": estimates, "mean_gaps": gaps, "critic": critic,
            "optimizers": (critic_opt, generator_opt)}


if __name__ == "__main__":
    main()
