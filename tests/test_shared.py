"""optimizer.share_memory() and A3C-style Hogwild training across processes."""

from __future__ import annotations

import importlib
from pathlib import Path

import torch

import rmsprop

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def test_share_memory_creates_every_buffer_in_shared_memory():
    model = torch.nn.Linear(3, 2)
    opt = rmsprop.RMSprop(model.parameters(), momentum=0.9, centered=True)
    assert opt.share_memory() is opt
    for p in model.parameters():
        state = opt.state[p]
        assert set(state) == {"step", "square_avg", "grad_avg", "momentum_buffer"}
        assert all(value.is_shared() for value in state.values())
    before = {p: dict(opt.state[p]) for p in model.parameters()}
    model(torch.ones(1, 3)).sum().backward()
    opt.step()  # steps in place: the shared tensors are the ones that change
    for p in model.parameters():
        assert all(opt.state[p][k] is v for k, v in before[p].items())
        assert opt.state[p]["step"] == 1


def test_a3c_workers_share_one_model_and_one_set_of_statistics(monkeypatch):
    """Two spawned workers, each with its own optimizer object, train the one
    shared actor-critic. The shared step count holds both workers' steps (so
    each sees the other's updates), and the greedy policy ends optimal: a
    random walk needs 25 moves on average, the optimum is 5, and before
    training the greedy policy never reaches the end (30)."""
    # importable by name: the spawned workers import the module their target lives in
    monkeypatch.syspath_prepend(str(EXAMPLES))
    example = importlib.import_module("a3c_shared_rmsprop")
    result = example.main(["--workers", "2", "--episodes", "150"])
    assert result["before"] == example.MAX_MOVES
    assert all(steps > 150 for steps in result["steps"])  # more than one worker's steps landed
    assert result["after"] == example.CELLS - 1
