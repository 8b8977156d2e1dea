"""torch.distributed on CPU (gloo, 2 processes started here): DDP, ZeRO-1 and
distributed checkpoints train like one process.

The two ranks run every scenario in one start (starting processes is most of
the cost), write their results to files, and the tests compare them with a
single-process run on the full batch. A failed rank fails every test with its
traceback; processes are killed if they outlive the timeout.
"""

from __future__ import annotations

import subprocess
import sys
import traceback
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
import torch.multiprocessing as mp
from torch.distributed.checkpoint.state_dict import (
    get_optimizer_state_dict,
    get_state_dict,
    set_optimizer_state_dict,
    set_state_dict,
)
from torch.distributed.fsdp import fully_shard
from torch.distributed.optim import ZeroRedundancyOptimizer
from torch.distributed.tensor import DTensor
from torch.nn.parallel import DistributedDataParallel

import rmsprop

WORLD = 2
# Line (16) and line (0), where clipping acts at every step.
EXTRAS = dict(ema_decay=0.9, max_grad_norm=0.05)
KNOBS = {"lr": 0.01, "momentum": 0.9, "centered": True, "weight_decay": 0.01}
STEPS, MORE = 4, 3
PATHS = {"reference": {"foreach": False}, "foreach": {"foreach": True}, "fused": {"fused": True}}


def _model() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 3))


def _batches(n: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    gen = torch.Generator().manual_seed(1)
    return [(torch.randn(8, 4, generator=gen), torch.randn(8, 3, generator=gen)) for _ in range(n)]


def _train(model, opt, batches, rank=None, world=WORLD) -> None:
    for x, y in batches:
        if rank is not None:  # each rank takes its share of the batch
            x, y = x.chunk(world)[rank], y.chunk(world)[rank]
        opt.zero_grad()
        torch.nn.functional.mse_loss(model(x), y).backward()
        opt.step()


def _params(model) -> list[torch.Tensor]:
    return [p.detach().clone() for p in model.parameters()]


def _fsdp_model() -> torch.nn.Module:
    model = _model()
    for layer in model:
        if isinstance(layer, torch.nn.Linear):
            fully_shard(layer)
    fully_shard(model)
    return model


def _checkpoint(model, opt, path: Path) -> None:
    model_sd, optim_sd = get_state_dict(model, opt)
    dcp.save({"model": model_sd, "optim": optim_sd}, checkpoint_id=str(path))


def _resume(model, opt, path: Path) -> None:
    model_sd, optim_sd = get_state_dict(model, opt)  # the layout to load into, on this mesh
    loaded = {"model": model_sd, "optim": optim_sd}
    dcp.load(loaded, checkpoint_id=str(path))
    set_state_dict(model, opt, model_state_dict=loaded["model"], optim_state_dict=loaded["optim"])


def _one_rank(rank: int, tmp: str, job: str) -> None:
    """World size 1: save a sharded checkpoint after STEPS (job "save"), or
    load the 2-rank one and train on (job "load")."""
    out = Path(tmp)
    try:
        torch.set_num_threads(1)
        dist.init_process_group("gloo", init_method=f"file://{tmp}/store-{job}", rank=0, world_size=1)
        batches = _batches(STEPS + MORE)
        model = _fsdp_model()
        opt = rmsprop.RMSprop(model.parameters(), **KNOBS)
        if job == "save":
            _train(model, opt, batches[:STEPS], 0, 1)
            _checkpoint(model, opt, out / "dcp-world1")
        else:
            _resume(model, opt, out / "dcp-world2")
            _train(model, opt, batches[STEPS:], 0, 1)
            torch.save([p.full_tensor() for p in model.parameters()], out / "two-to-one.pt")
        dist.destroy_process_group()
    except Exception:
        (out / f"{job}.error").write_text(traceback.format_exc())
        raise


def _rank_main(rank: int, tmp: str) -> None:
    out = Path(tmp)
    try:
        torch.set_num_threads(1)
        dist.init_process_group("gloo", init_method=f"file://{tmp}/store", rank=rank, world_size=WORLD)
        results = {}
        batches = _batches(STEPS + MORE)

        # DDP: gradients averaged over the ranks' halves = the full batch's gradient.
        ddp = DistributedDataParallel(_model())
        _train(ddp, rmsprop.RMSprop(ddp.parameters(), **KNOBS), batches, rank)
        results["ddp"] = _params(ddp.module)

        # ZeRO-1: each rank keeps and steps the state of its share of the parameters.
        ddp = DistributedDataParallel(_model())
        zero = ZeroRedundancyOptimizer(ddp.parameters(), optimizer_class=rmsprop.RMSprop, **KNOBS)
        _train(ddp, zero, batches[:STEPS], rank)
        zero.consolidate_state_dict(to=0)
        consolidated = zero.state_dict() if rank == 0 else None
        holder = [consolidated]
        dist.broadcast_object_list(holder, src=0)
        fresh = ZeroRedundancyOptimizer(ddp.parameters(), optimizer_class=rmsprop.RMSprop, **KNOBS)
        fresh.load_state_dict(holder[0])
        _train(ddp, fresh, batches[STEPS:], rank)
        results["zero"] = _params(ddp.module)

        # Distributed checkpoint: save the optimizer after STEPS, load into a new one, go on.
        ddp = DistributedDataParallel(_model())
        opt = rmsprop.RMSprop(ddp.parameters(), **KNOBS)
        _train(ddp, opt, batches[:STEPS], rank)
        dcp.save({"optim": get_optimizer_state_dict(ddp, opt)}, checkpoint_id=str(out / "dcp"))
        # As in a new process: no gradients yet, and the optimizer built the same way (DCP loads
        # into the state an init step creates), its lr a placeholder that the file replaces.
        ddp.zero_grad(set_to_none=True)
        again = rmsprop.RMSprop(ddp.parameters(), **{**KNOBS, "lr": 1.0})
        loaded = {"optim": get_optimizer_state_dict(ddp, again)}
        dcp.load(loaded, checkpoint_id=str(out / "dcp"))
        set_optimizer_state_dict(ddp, again, optim_state_dict=loaded["optim"])
        results["dcp_group"] = {k: v for k, v in again.param_groups[0].items() if k != "params"}
        _train(ddp, again, batches[STEPS:], rank)
        results["dcp"] = _params(ddp.module)

        # FSDP2: DTensor parameters and state; every path steps the local shards.
        for path, choice in PATHS.items():
            model = _model()
            for layer in model:
                if isinstance(layer, torch.nn.Linear):
                    fully_shard(layer)
            fully_shard(model)
            opt = rmsprop.RMSprop(model.parameters(), **KNOBS, **choice)
            _train(model, opt, batches, rank)
            state = opt.state[next(iter(model.parameters()))]
            results[f"fsdp-{path}"] = [p.full_tensor() for p in model.parameters()]
            results[f"fsdp-{path}-state"] = sorted(k for k, v in state.items() if isinstance(v, DTensor))

        # A narrower state precision under FSDP2: the bf16 buffers are DTensors too.
        model = _fsdp_model()
        opt = rmsprop.RMSprop(model.parameters(), **KNOBS, state_precision="bf16")
        _train(model, opt, batches, rank)
        results["fsdp-bf16"] = [p.full_tensor() for p in model.parameters()]
        state = opt.state[next(iter(model.parameters()))]
        results["fsdp-bf16-state"] = sorted({str(v.dtype) for v in state.values() if isinstance(v, DTensor)})

        # nonfinite="skip" under FSDP2: a NaN in one rank's shard only skips the step on every rank.
        model = _model()
        fully_shard(model)
        opt = rmsprop.RMSprop(model.parameters(), **KNOBS, nonfinite="skip")
        _train(model, opt, batches[:1], rank)
        before = [p.full_tensor() for p in model.parameters()]
        torch.nn.functional.mse_loss(model(batches[1][0]), batches[1][1]).backward()
        if rank == 0:
            next(iter(model.parameters())).grad.to_local().view(-1)[0] = float("nan")
        opt.step()
        results["skip"] = (opt.skipped_steps, all(torch.equal(a, p.full_tensor())
                                                  for a, p in zip(before, model.parameters())))

        # The weights' average and global-norm clipping under FSDP2: the average is sharded like
        # the state, and the norm's squares are summed over the ranks (one all-reduce).
        model = _fsdp_model()
        opt = rmsprop.RMSprop(model.parameters(), **KNOBS, **EXTRAS)
        _train(model, opt, batches, rank)
        results["fsdp-extras"] = [p.full_tensor() for p in model.parameters()]
        results["fsdp-extras-ema"] = [opt.state[p]["ema"].full_tensor() for p in model.parameters()]
        results["fsdp-extras-sharded"] = all(isinstance(opt.state[p]["ema"], DTensor)
                                             for p in model.parameters())
        results["fsdp-extras-norm"] = opt.grad_norm

        # Resharding checkpoints: one saved by 1 process loads into 2 and trains on; one saved
        # here by 2 processes is loaded by 1 process afterwards (the fixture).
        model = _fsdp_model()
        opt = rmsprop.RMSprop(model.parameters(), **KNOBS)
        _resume(model, opt, out / "dcp-world1")
        _train(model, opt, batches[STEPS:], rank)
        results["one-to-two"] = [p.full_tensor() for p in model.parameters()]
        model = _fsdp_model()
        opt = rmsprop.RMSprop(model.parameters(), **KNOBS)
        _train(model, opt, batches[:STEPS], rank)
        _checkpoint(model, opt, out / "dcp-world2")

        torch.save(results, out / f"rank{rank}.pt")
        dist.destroy_process_group()
    except Exception:
        (out / f"rank{rank}.error").write_text(traceback.format_exc())
        raise


def _launch(tmp: Path, target, argsets: list[tuple]) -> None:
    """Start one process per argument tuple, wait (bounded), kill leftovers, fail with tracebacks."""
    context = mp.get_context("spawn")
    procs = [context.Process(target=target, args=args) for args in argsets]
    for p in procs:
        p.start()
    try:
        for p in procs:
            p.join(timeout=300)
    finally:
        for p in procs:
            if p.is_alive():
                p.kill()
                p.join()
    errors = [e.read_text() for e in sorted(tmp.glob("*.error"))]
    if errors or any(p.exitcode != 0 for p in procs):
        pytest.fail(f"a process failed (exit codes {[p.exitcode for p in procs]}):\n" + "\n".join(errors))


@pytest.fixture(scope="module")
def ranks(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("dist")
    _launch(tmp, _one_rank, [(0, str(tmp), "save")])
    _launch(tmp, _rank_main, [(rank, str(tmp)) for rank in range(WORLD)])
    _launch(tmp, _one_rank, [(0, str(tmp), "load")])
    results = [torch.load(tmp / f"rank{r}.pt", weights_only=True) for r in range(WORLD)]
    for r in results:
        r["two-to-one"] = torch.load(tmp / "two-to-one.pt", weights_only=True)
    return results


def _single_process(steps: int) -> list[torch.Tensor]:
    model = _model()
    _train(model, rmsprop.RMSprop(model.parameters(), **KNOBS), _batches(steps))
    return _params(model)


@pytest.mark.parametrize("scenario", ["ddp", "zero", "dcp", *(f"fsdp-{path}" for path in PATHS),
                                      "one-to-two", "two-to-one"])
def test_distributed_training_equals_one_process_on_the_full_batch(ranks, scenario):
    expected = _single_process(STEPS + MORE)
    for rank in ranks:
        for got, want in zip(rank[scenario], expected):
            # the all-reduce sums the two halves' mean gradients in another order than
            # one mean over the batch: equal to float32 rounding, not bit for bit
            torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    assert all(torch.equal(a, b) for a, b in zip(ranks[0][scenario], ranks[1][scenario]))


@pytest.mark.parametrize("path", list(PATHS))
def test_fsdp2_state_is_sharded_like_the_parameters(ranks, path):
    for rank in ranks:
        assert rank[f"fsdp-{path}-state"] == ["grad_avg", "momentum_buffer", "square_avg"]


def test_fsdp2_with_bf16_state_trains_like_one_process_with_bf16_state(ranks):
    model = _model()
    opt = rmsprop.RMSprop(model.parameters(), **KNOBS, state_precision="bf16")
    _train(model, opt, _batches(STEPS + MORE))
    for rank in ranks:
        assert rank["fsdp-bf16-state"] == ["torch.bfloat16"]
        for got, want in zip(rank["fsdp-bf16"], _params(model)):
            # a gradient summed in another order can round a bf16 buffer the other way
            torch.testing.assert_close(got, want, rtol=1e-3, atol=1e-5)


def test_fsdp2_skip_is_decided_on_all_ranks_together(ranks):
    assert [rank["skip"] for rank in ranks] == [(1, True), (1, True)]


def test_fsdp2_averages_the_weights_and_clips_the_global_norm_like_one_process(ranks):
    model = _model()
    opt = rmsprop.RMSprop(model.parameters(), **KNOBS, **EXTRAS)
    _train(model, opt, _batches(STEPS + MORE))
    assert opt.grad_norm is not None and float(opt.grad_norm) > EXTRAS["max_grad_norm"]  # it clipped
    expected = [opt.state[p]["ema"] for p in model.parameters()]
    for rank in ranks:
        assert rank["fsdp-extras-sharded"]
        torch.testing.assert_close(rank["fsdp-extras-norm"], opt.grad_norm, rtol=1e-5, atol=0)
        for got, want in zip(rank["fsdp-extras"], _params(model)):
            torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
        for got, want in zip(rank["fsdp-extras-ema"], expected):
            torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


def test_distributed_checkpoint_carries_the_groups_knobs(ranks):
    group = ranks[0]["dcp_group"]
    assert group["lr"] == KNOBS["lr"] and group["momentum"] == 0.9 and group["centered"] is True
    assert group["preset"] == "torch" and group["skipped_steps"] == 0



@pytest.mark.slow  # torchrun's own start-up and rendezvous: slow here, and covered in-process above
@pytest.mark.parametrize("example", ["ddp_train.py", "fsdp2_train.py"])
def test_torchrun_examples_train_on_two_cpu_processes(example, tmp_path):
    script = Path(__file__).resolve().parent.parent / "examples" / example
    torchrun = Path(sys.executable).with_name("torchrun")
    args = [str(torchrun), "--standalone", "--nproc-per-node", "2", str(script), "--steps", "20"]
    if example == "fsdp2_train.py":
        args += ["--checkpoint", str(tmp_path / "ckpt")]
    done = subprocess.run(args, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "step   19" in done.stdout
    if example == "ddp_train.py":
        assert "2 processes, identical models after 20 steps" in done.stdout
    else:
        assert "(32, 16) of its square_avg on this process" in done.stdout
        assert any((tmp_path / "ckpt").iterdir())
