"""Counter-based random bits, for stochastic rounding without a generator.

The idea of Salmon et al.'s Philox/Threefry (Parallel Random Numbers: As Easy
as 1, 2, 3, 2011), with a much simpler mixer: the random bits of element j
of a tensor at step t are a hash of (seed, t, salt, j), computed with integer
tensor ops. Nothing to store: the seed lives in the param group and the step
count in the state, so a resumed run draws the same bits; and the same code
runs eagerly and inside the fused path's compiled pass (where the index costs
no memory traffic). Every value is masked to 31 bits after each step.
"""

from __future__ import annotations

import torch

__all__ = ["random_bits", "uniform"]

_M31 = 0x7FFFFFFF


def _mix(h: torch.Tensor) -> torch.Tensor:
    h = ((h ^ (h >> 15)) * 0x2C1B3C6D) & _M31
    h = ((h ^ (h >> 12)) * 0x297A2D39) & _M31
    return h ^ (h >> 15)


def random_bits(shape: torch.Size | tuple[int, ...], seed: int, step: torch.Tensor, salt: int,
                device: torch.device) -> torch.Tensor:
    """31 random bits per element of a ``shape`` tensor (int32, or int64 past
    2**31 elements), a function of
    (seed, step, salt, element index) only."""
    numel = 1
    for n in shape:
        numel *= n
    # Every step keeps the low 31 bits of a sum or a product of numbers under
    # 2**31, and those bits are the same whether the sum or product wrapped
    # at 32 bits or was exact in 64: int32 gives int64's bits, and vectorises
    # twice as wide (CPU SIMD has no fast 64-bit multiply).
    dtype = torch.int64 if numel > _M31 else torch.int32
    index = torch.arange(numel, device=device, dtype=dtype).view(shape)
    t = step.to(device=device, dtype=torch.int64)
    base = (((t & _M31) * 0x5BD1E995) & _M31) + (((seed & _M31) * 0x1B873593) & _M31)
    base = ((base + ((salt & _M31) * 0x27D4EB2F & _M31)) & _M31).to(dtype)
    return _mix((index + base) & _M31)


def uniform(shape: torch.Size | tuple[int, ...], seed: int, step: torch.Tensor, salt: int,
            device: torch.device) -> torch.Tensor:
    """Uniform float32 numbers in [0, 1) on a grid of 2**-24, as :func:`random_bits`."""
    bits = random_bits(shape, seed, step, salt, device) & 0xFFFFFF
    return bits.to(torch.float32) * 2.0**-24
