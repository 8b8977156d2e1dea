"""The seed's door: ``RMSPropOptimizer`` keeps the notebook's name, signature and numbers."""

from __future__ import annotations

import contextlib
import inspect
import io

import pytest
import torch

import rmsprop
from rmsprop import RMSPropOptimizer

# The notebook's training cell, verbatim (shared/seed/rmsprop_from_scratch.md, cell 2).
SEED_CELL = """
# Dummy model
model = torch.nn.Linear(2, 1)

# Optimizer
optimizer = RMSPropOptimizer(model.parameters(), lr=0.01, gamma=0.9)

# Dummy data
x = torch.tensor([[1.0, 2.0]])
y = torch.tensor([[1.0]])

criterion = torch.nn.MSELoss()

# Training loop
for epoch in range(10):
    optimizer.zero_grad()
    y_pred = model(x)
    loss = criterion(y_pred, y)
    loss.backward()
    optimizer.step()

    print(f"Epoch {epoch+1}, Loss = {loss.item():.4f}")
"""


class PlainSeedRMSProp:
    """The notebook's two formulas, written out independently of the library."""

    def __init__(self, params, lr=0.01, gamma=0.9, eps=1e-8):
        self.params, self.lr, self.gamma, self.eps = list(params), lr, gamma, eps
        self.avg_sq_grad = [torch.zeros_like(p) for p in self.params]

    def step(self):
        for p, avg_sq in zip(self.params, self.avg_sq_grad):
            if p.grad is None:
                continue
            g = p.grad
            avg_sq.mul_(self.gamma).addcmul_(g, g, value=1 - self.gamma)
            p.data.addcdiv_(g, torch.sqrt(avg_sq + self.eps), value=-self.lr)

    def zero_grad(self):
        for p in self.params:
            if p.grad is not None:
                p.grad.zero_()


def _run_cell(optimizer_class, seed):
    torch.manual_seed(seed)
    out = io.StringIO()
    namespace = {"torch": torch, "RMSPropOptimizer": optimizer_class}
    with contextlib.redirect_stdout(out):
        exec(SEED_CELL, namespace)
    return out.getvalue().splitlines(), namespace["model"]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_the_seed_cell_runs_unchanged_and_matches_the_plain_class(seed):
    ours, our_model = _run_cell(RMSPropOptimizer, seed)
    plain, plain_model = _run_cell(PlainSeedRMSProp, seed)
    assert len(ours) == 10 and ours[0].startswith("Epoch 1, Loss = ")
    assert ours == plain
    for a, b in zip(our_model.parameters(), plain_model.parameters()):
        assert torch.equal(a, b)


@pytest.mark.parametrize("foreach", [False, True])
def test_equals_the_plain_formulas_on_many_tensors(foreach):
    torch.manual_seed(3)
    base = [torch.randn(4, 3), torch.randn(7), torch.randn(())]
    ours = [torch.nn.Parameter(p.clone()) for p in base]
    plain = [torch.nn.Parameter(p.clone()) for p in base]
    opt_ours = RMSPropOptimizer(ours, lr=0.05, gamma=0.8, eps=1e-6)
    opt_ours.param_groups[0]["foreach"] = foreach
    opt_plain = PlainSeedRMSProp(plain, lr=0.05, gamma=0.8, eps=1e-6)
    for step in range(50):
        for a, b in zip(ours, plain):
            g = torch.randn_like(a) * 10 ** (step % 5 - 2)
            a.grad, b.grad = g.clone(), g.clone()
        opt_ours.step()
        opt_plain.step()
        for a, b in zip(ours, plain):
            assert torch.equal(a, b)


def test_signature_and_engine():
    params = inspect.signature(RMSPropOptimizer).parameters
    assert [(n, p.default) for n, p in params.items()][1:] == [("lr", 0.01), ("gamma", 0.9), ("eps", 1e-8)]
    opt = RMSPropOptimizer([torch.nn.Parameter(torch.zeros(1))])
    assert isinstance(opt, rmsprop.RMSprop)  # the same engine, not a second implementation
    group = opt.param_groups[0]
    assert (group["preset"], group["alpha"], group["eps_in_sqrt"]) == ("seed", 0.9, True)


@pytest.mark.parametrize("gamma", [1.5, -0.1, float("nan")])
def test_a_bad_gamma_is_reported_as_gamma(gamma):
    with pytest.raises(ValueError, match=r"^Invalid gamma value: .* \(must lie in \[0, 1\]\)$") as info:
        RMSPropOptimizer([torch.nn.Parameter(torch.zeros(1))], gamma=gamma)
    assert str(info.value) == f"Invalid gamma value: {gamma} (must lie in [0, 1])"
    assert "alpha" not in str(info.value)


def test_gamma_at_the_ends_of_its_range_is_accepted():
    for gamma in (0.0, 1.0):
        opt = RMSPropOptimizer([torch.nn.Parameter(torch.zeros(1))], gamma=gamma)
        assert opt.param_groups[0]["alpha"] == gamma
