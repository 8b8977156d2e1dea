"""A3C with a shared RMSProp: lock-free worker processes, one model, one set of statistics.

Mnih et al.'s A3C (2016) trains one actor-critic from several worker processes
that each play their own episodes and apply their gradients to the shared
parameters without locks (Hogwild), with RMSProp statistics shared between the
workers too ("shared RMSProp"). Here:

    model.share_memory()
    optimizer = rmsprop.RMSprop(model.parameters(), lr=..., alpha=0.99, eps=0.1).share_memory()
    # each worker process receives (model, optimizer): its own optimizer object
    # over the shared parameters and the shared square averages and step counts

The environment needs no download: a corridor of 6 cells, start at the left
end, +1 for reaching the right end (which ends the episode), -0.01 for every
other move, at most 30 moves. A random walk needs 25 moves on average; the
optimal policy needs 5. The agent is an actor-critic MLP on the one-hot cell,
trained with the advantage actor-critic loss on whole-episode returns (gamma
0.95) and an entropy bonus. eps = 0.1 and alpha = 0.99 are the A3C settings
(SEMANTICS.md); lr 1e-2 instead of 7e-4 because the episodes are short and
the network is tiny.

    python examples/a3c_shared_rmsprop.py [--workers 3 --episodes 300]
"""

from __future__ import annotations

import argparse

import torch
import torch.multiprocessing as mp
from torch import nn

import rmsprop

CELLS, MAX_MOVES, GAMMA, ENTROPY = 6, 30, 0.95, 0.01


class Corridor:
    def reset(self) -> int:
        self.cell, self.moves = 0, 0
        return self.cell

    def step(self, action: int) -> tuple[int, float, bool]:
        self.cell = max(0, min(CELLS - 1, self.cell + (1 if action == 1 else -1)))
        self.moves += 1
        if self.cell == CELLS - 1:
            return self.cell, 1.0, True
        return self.cell, -0.01, self.moves >= MAX_MOVES


class ActorCritic(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Linear(CELLS, 32), nn.Tanh())
        self.policy, self.value = nn.Linear(32, 2), nn.Linear(32, 1)

    def forward(self, cells: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.body(nn.functional.one_hot(cells, CELLS).float())
        return self.policy(h), self.value(h).squeeze(-1)


def worker(rank: int, model: ActorCritic, optimizer: rmsprop.RMSprop, episodes: int, seed: int) -> None:
    """Play ``episodes`` episodes, stepping the shared model after each one."""
    torch.set_num_threads(1)
    torch.manual_seed(seed + rank)
    env = Corridor()
    for _ in range(episodes):
        cells, actions, rewards = [env.reset()], [], []
        done = False
        while not done:
            with torch.no_grad():
                logits, _ = model(torch.tensor([cells[-1]]))
            action = int(torch.distributions.Categorical(logits=logits[0]).sample())
            cell, reward, done = env.step(action)
            actions.append(action)
            rewards.append(reward)
            cells.append(cell)
        returns, ret = [], 0.0
        for r in reversed(rewards):
            ret = r + GAMMA * ret
            returns.append(ret)
        returns = torch.tensor(returns[::-1])
        logits, values = model(torch.tensor(cells[:-1]))
        dist = torch.distributions.Categorical(logits=logits)
        advantage = returns - values
        loss = (-(dist.log_prob(torch.tensor(actions)) * advantage.detach()).mean()
                + 0.5 * advantage.pow(2).mean() - ENTROPY * dist.entropy().mean())
        optimizer.zero_grad()  # this process's own gradients
        loss.backward()
        optimizer.step()  # writes into the shared parameters and statistics, no lock


def greedy_moves(model: ActorCritic) -> int:
    """Moves the greedy policy needs to reach the end (MAX_MOVES if it never does)."""
    env = Corridor()
    cell, done, reward = env.reset(), False, 0.0
    while not done:
        with torch.no_grad():
            logits, _ = model(torch.tensor([cell]))
        cell, reward, done = env.step(int(logits[0].argmax()))
    return env.moves if reward > 0 else MAX_MOVES


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workers", type=int, default=3)
    parser.add_argument("--episodes", type=int, default=300, help="per worker")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    torch.manual_seed(args.seed)
    model = ActorCritic()
    model.share_memory()
    optimizer = rmsprop.RMSprop(model.parameters(), lr=1e-2, alpha=0.99, eps=0.1).share_memory()
    before = greedy_moves(model)
    context = mp.get_context("spawn")
    processes = [context.Process(target=worker, args=(rank, model, optimizer, args.episodes, args.seed))
                 for rank in range(args.workers)]
    for p in processes:
        p.start()
    try:
        for p in processes:
            p.join()
    finally:
        for p in processes:
            if p.is_alive():
                p.kill()
    if any(p.exitcode != 0 for p in processes):
        raise RuntimeError(f"a worker failed: exit codes {[p.exitcode for p in processes]}")
    steps = [int(optimizer.state[p]["step"]) for p in model.parameters()]
    after = greedy_moves(model)
    print(f"{args.workers} workers × {args.episodes} episodes: shared step count {steps[0]}; "
          f"greedy policy needs {after} moves (before training: {before}; optimal: {CELLS - 1})")
    return {"model": model, "optimizer": optimizer, "steps": steps, "before": before, "after": after}


if __name__ == "__main__":
    main()
