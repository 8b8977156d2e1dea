"""The other process of ``test_resume_in_a_fresh_process_is_bit_exact``.

Usage: ``python resume_child.py JOBS OUT``. Loads each job (parameters, the
optimizer's state dict and the remaining gradients) with
``torch.load(weights_only=True)``, rebuilds the optimizer from nothing but the
state dict and the path arguments, trains on, and saves the final parameters
and state dict per job name.
"""

from __future__ import annotations

import sys

import torch

import rmsprop


def main(jobs_file: str, out_file: str) -> None:
    results = {}
    for job in torch.load(jobs_file, weights_only=True):
        params = [torch.nn.Parameter(p.clone(), requires_grad=r)
                  for p, r in zip(job["params"], job["requires_grad"])]
        opt = rmsprop.RMSprop(params, lr=1.0, **job["path_args"])  # every knob comes from the state dict
        opt.load_state_dict(job["optimizer"])
        for grads in job["stream"]:
            for p, g in zip(params, grads):
                p.grad = None if g is None else g.clone()
            opt.step()
        results[job["name"]] = ([p.detach() for p in params], opt.state_dict())
    torch.save(results, out_file)


if __name__ == "__main__":
    main(*sys.argv[1:])
