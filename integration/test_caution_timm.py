"""caution=True (line (15)) against timm 1.0.31's RMSpropTF(caution=True), live, in float32.

Bit for bit on every pairing of timm's two paths and ours, for each momentum form timm has
(η inside and outside the buffer), with centered, L2 and decoupled decay and a learning rate
that changes mid-run; and a state dict timm saved with caution=True continues in ours as it
continues in timm.
"""

from __future__ import annotations

import copy
import itertools

import pytest
import torch

import rmsprop

pytest.importorskip("timm", reason="runs in the integration environment (make integration)")
from timm.optim.rmsprop_tf import RMSpropTF  # noqa: E402

STEPS = 40


def _problem(seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    shapes = [(50,), (3, 4), (), (0,)]
    start = [torch.randn(s, generator=gen) for s in shapes]
    grads = [[torch.randn(s, generator=gen) * 10.0 ** torch.randint(-2, 3, (), generator=gen).item()
              for s in shapes] for _ in range(STEPS)]
    return start, grads


def _run(opt, params, grads, start=0):
    for k, step_grads in enumerate(grads[start:], start):
        opt.param_groups[0]["lr"] = 0.01 if k < STEPS // 2 else 0.003
        for p, g in zip(params, step_grads):
            p.grad = g.clone()
        opt.step()


OPTIONS = [dict(momentum=0.9, lr_in_momentum=lim, centered=centered, weight_decay=wd, **decay)
           for lim, centered, (wd, decay) in itertools.product(
               (True, False), (False, True), ((0.0, {}), (0.01, {}), (0.01, {"decoupled": True})))]


@pytest.mark.parametrize("ours_foreach", [False, True], ids=["ours-reference", "ours-foreach"])
@pytest.mark.parametrize("timm_foreach", [False, True], ids=["timm-loop", "timm-foreach"])
@pytest.mark.parametrize("options", OPTIONS, ids=lambda o: "-".join(f"{k}={v}" for k, v in o.items()))
def test_cautious_steps_equal_timms_bit_for_bit(options, timm_foreach, ours_foreach):
    start, grads = _problem()
    options = dict(options)
    decoupled = options.pop("decoupled", False)
    theirs = [p.clone().requires_grad_() for p in start]
    ours = [p.clone().requires_grad_() for p in start]
    _run(RMSpropTF(theirs, lr=0.01, caution=True, decoupled_decay=decoupled, foreach=timm_foreach,
                   **options), theirs, grads)
    _run(rmsprop.RMSprop(ours, lr=0.01, preset="timm", caution=True, decoupled_weight_decay=decoupled,
                         foreach=ours_foreach, fused=False, **options), ours, grads)
    for a, b in zip(ours, theirs):
        assert torch.equal(a, b)
    plain = [p.clone().requires_grad_() for p in start]
    _run(rmsprop.RMSprop(plain, lr=0.01, preset="timm", decoupled_weight_decay=decoupled, **options),
         plain, grads)
    assert any(not torch.equal(a, b) for a, b in zip(plain, theirs)), "caution changed nothing"


def test_a_cautious_timm_checkpoint_continues_in_ours_as_in_timm():
    start, grads = _problem(1)
    theirs = [p.clone().requires_grad_() for p in start]
    timm_opt = RMSpropTF(theirs, lr=0.01, momentum=0.9, caution=True)
    half = STEPS // 2
    _run(timm_opt, theirs, grads[:half])
    saved = copy.deepcopy(timm_opt.state_dict())  # timm goes on stepping its own buffers in place
    ours = [p.detach().clone().requires_grad_() for p in theirs]
    our_opt = rmsprop.RMSprop(ours, lr=0.01)  # a torch-preset optimizer: the file's knobs win
    our_opt.load_state_dict(saved)
    assert our_opt.param_groups[0]["caution"] is True and our_opt.param_groups[0]["preset"] == "timm"
    _run(timm_opt, theirs, grads, start=half)
    _run(our_opt, ours, grads, start=half)
    for a, b in zip(ours, theirs):
        assert torch.equal(a, b)
