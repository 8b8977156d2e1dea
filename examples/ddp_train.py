"""Data-parallel training with rmsprop.RMSprop on CPU: DistributedDataParallel, gloo.

    torchrun --standalone --nproc-per-node 2 examples/ddp_train.py [--steps 200]

Every process holds the whole model and its own RMSprop; DDP averages the
gradients over the processes during backward, so every process takes the
same step and the models stay identical (checked at the end). The data is a
synthetic regression that needs no download: each process draws its own
share of each batch.
"""

from __future__ import annotations

import argparse

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

import rmsprop


def main(argv: list[str] | None = None) -> float:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--batch", type=int, default=64, help="per process")
    args = parser.parse_args(argv)

    dist.init_process_group("gloo")  # torchrun sets RANK, WORLD_SIZE, MASTER_ADDR/PORT
    rank, world = dist.get_rank(), dist.get_world_size()
    torch.set_num_threads(1)
    torch.manual_seed(0)  # the same initial model everywhere (DDP also broadcasts rank 0's)
    teacher = torch.nn.Linear(16, 4)
    model = DistributedDataParallel(torch.nn.Sequential(torch.nn.Linear(16, 64), torch.nn.Tanh(),
                                                        torch.nn.Linear(64, 4)))
    opt = rmsprop.RMSprop(model.parameters(), lr=1e-3, momentum=0.9, centered=True)
    gen = torch.Generator().manual_seed(1000 + rank)  # each process its own data
    for step in range(args.steps):
        x = torch.randn(args.batch, 16, generator=gen)
        with torch.no_grad():
            y = teacher(x)
        loss = torch.nn.functional.mse_loss(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if rank == 0 and (step % 50 == 0 or step == args.steps - 1):
            print(f"step {step:4d}  loss {loss.item():.4f}", flush=True)
    flat = torch.cat([p.detach().flatten() for p in model.parameters()])
    copies = [torch.empty_like(flat) for _ in range(world)]
    dist.all_gather(copies, flat)
    assert all(torch.equal(copies[0], c) for c in copies), "the processes' models differ"
    if rank == 0:
        print(f"{world} processes, identical models after {args.steps} steps")
    dist.destroy_process_group()
    return loss.item()


if __name__ == "__main__":
    main()
