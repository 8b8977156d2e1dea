"""Sharded training with rmsprop.RMSprop on CPU: FSDP2 (fully_shard), gloo.

    torchrun --standalone --nproc-per-node 2 examples/fsdp2_train.py [--steps 200]

``fully_shard`` turns every parameter into a DTensor whose rows are split
over the processes; RMSprop steps each process's own shard and keeps its
state (square_avg, grad_avg, momentum_buffer) sharded the same way, so each
process holds half of the parameters and half of the optimizer state. At the
end the optimizer is saved with torch.distributed.checkpoint (one file per
shard, reloadable onto a different number of processes).
"""

from __future__ import annotations

import argparse
import tempfile

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.state_dict import get_state_dict
from torch.distributed.fsdp import fully_shard

import rmsprop


def main(argv: list[str] | None = None) -> float:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--batch", type=int, default=64, help="per process")
    parser.add_argument("--checkpoint", default=None, help="directory (default: a temporary one)")
    args = parser.parse_args(argv)

    dist.init_process_group("gloo")
    rank = dist.get_rank()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    teacher = torch.nn.Linear(16, 4)
    model = torch.nn.Sequential(torch.nn.Linear(16, 64), torch.nn.Tanh(), torch.nn.Linear(64, 4))
    for layer in model:
        if isinstance(layer, torch.nn.Linear):
            fully_shard(layer)
    fully_shard(model)
    opt = rmsprop.RMSprop(model.parameters(), lr=1e-3, momentum=0.9, centered=True)
    gen = torch.Generator().manual_seed(1000 + rank)
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
    weight = next(iter(model.parameters()))
    local = opt.state[weight]["square_avg"].to_local()
    print(f"rank {rank}: first weight {tuple(weight.shape)} global, {tuple(local.shape)} of its "
          "square_avg on this process", flush=True)
    target = (args.checkpoint or tempfile.mkdtemp()) if rank == 0 else None
    holder = [target]
    dist.broadcast_object_list(holder, src=0)
    model_sd, optim_sd = get_state_dict(model, opt)
    dcp.save({"model": model_sd, "optim": optim_sd}, checkpoint_id=holder[0])
    if rank == 0:
        print(f"saved the sharded model and optimizer to {holder[0]}")
    dist.destroy_process_group()
    return loss.item()


if __name__ == "__main__":
    main()
