"""The functional form and ``capturable``: the same engine without the class."""

from __future__ import annotations

import pytest
import torch

import rmsprop
from rmsprop.functional import rmsprop as functional_rmsprop

from cases import every_combination
from helpers import clone_params, grad_stream, make_params, run


@pytest.mark.parametrize("foreach", [False, True], ids=["reference", "foreach"])
@pytest.mark.parametrize("name,knobs", every_combination()[::53])
def test_functional_form_equals_the_class(name, knobs, foreach):
    base = make_params(torch.float64)[:3]
    stream = grad_stream(base, 5)
    ours = clone_params(base)
    run(rmsprop.RMSprop, ours, stream, foreach=foreach, **knobs)

    params = clone_params(base)
    v0 = knobs["initial_square_avg"]
    square_avgs = [torch.full_like(p, v0) for p in params]
    grad_avgs = [torch.zeros_like(p) for p in params] if knobs["centered"] else []
    buffers = [torch.zeros_like(p) for p in params] if knobs["momentum"] else []
    steps = [torch.zeros(()) for _ in params]
    hyper = {k: v for k, v in knobs.items() if k not in ("initial_square_avg", "maximize")}
    for grads in stream:
        idx = [i for i, g in enumerate(grads) if g is not None]
        with torch.no_grad():
            functional_rmsprop(
                [params[i] for i in idx], [grads[i] for i in idx], [square_avgs[i] for i in idx],
                [grad_avgs[i] for i in idx] if grad_avgs else [],
                [buffers[i] for i in idx] if buffers else [],
                [steps[i] for i in idx], foreach=foreach, maximize=knobs["maximize"], **hyper,
            )
    for a, b in zip(ours, params):
        assert torch.equal(a, b), name


def test_capturable_keeps_the_step_on_the_device_and_lr_a_tensor(monkeypatch):
    base = make_params(torch.float64)
    stream = grad_stream(base, 10)
    plain, captured = clone_params(base), clone_params(base)
    run(rmsprop.RMSprop, plain, stream, lr=0.01, momentum=0.9)
    lr = torch.tensor(0.01, dtype=torch.float64)
    # A capturable step must never read a tensor back to the host.
    monkeypatch.setattr(torch.Tensor, "item", lambda self: pytest.fail("host read in a capturable step"))
    opt = run(rmsprop.RMSprop, captured, stream, lr=lr, momentum=0.9, capturable=True)
    monkeypatch.undo()
    for a, b in zip(plain, captured):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-15)
    for p in captured:
        if p in opt.state:
            assert opt.state[p]["step"].device == p.device


def test_state_steps_must_be_tensors():
    p = torch.zeros(2)
    with pytest.raises(RuntimeError, match="state_steps"):
        functional_rmsprop([p], [p], [p.clone()], [], [], [0.0], lr=0.1, alpha=0.9, eps=1e-8,
                           weight_decay=0.0, momentum=0.0, centered=False)
