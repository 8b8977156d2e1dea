"""``RMSPropOptimizer``: the seed notebook's class, name and signature.

It is :class:`rmsprop.RMSprop` with the "seed" preset (ε inside the root, decay
called ``gamma``), not a second implementation::

    v ← γ·v + (1 − γ)·g²
    θ ← θ − η·g / sqrt(v + ε)
"""

from __future__ import annotations

from torch.optim.optimizer import ParamsT

from .optimizer import RMSprop

__all__ = ["RMSPropOptimizer"]


class RMSPropOptimizer(RMSprop):
    """The seed's RMSProp: ``RMSPropOptimizer(params, lr=0.01, gamma=0.9, eps=1e-8)``.

    Args:
        params: iterable of parameters (or param groups) to optimize.
        lr: learning rate η (default: 0.01).
        gamma: decay rate of the moving average of squared gradients, in [0, 1] (default: 0.9).
        eps: numerical stability term, added inside the square root (default: 1e-8).

    Example:
        >>> import torch
        >>> from rmsprop import RMSPropOptimizer
        >>> model = torch.nn.Linear(2, 1)
        >>> optimizer = RMSPropOptimizer(model.parameters(), lr=0.01, gamma=0.9)
        >>> loss = (model(torch.tensor([[1.0, 2.0]])) - 1).pow(2).mean()
        >>> loss.backward()
        >>> optimizer.step()
    """

    def __init__(self, params: ParamsT, lr: float = 0.01, gamma: float = 0.9, eps: float = 1e-8):
        # gamma is passed on as alpha: check it here, or its error would name an argument
        # this class does not have. Everything else is RMSprop's own check.
        if not 0.0 <= gamma <= 1.0:
            raise ValueError(f"Invalid gamma value: {gamma} (must lie in [0, 1])")
        super().__init__(params, lr=lr, alpha=gamma, eps=eps, preset="seed")
