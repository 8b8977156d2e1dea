"""benchmarks/profile_step.py: the byte model its floor divides by, and (under -m slow) one short run
whose layers are all reached and add up to the step."""

from __future__ import annotations

import functools
import importlib.util
import math
import os
import pathlib
import sys
from unittest import mock

import pytest

from rmsprop.bench.workloads import resnet50_shapes
from rmsprop.cliutil import torch_threads

SCRIPT = pathlib.Path(__file__).parents[1] / "benchmarks" / "profile_step.py"


@functools.cache
def _script():
    spec = importlib.util.spec_from_file_location("profile_step", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up there
    with mock.patch.dict(os.environ):  # its OMP_WAIT_POLICY default stays in the script
        spec.loader.exec_module(module)
    return module


def test_the_floor_counts_the_bytes_each_state_precision_moves():
    ps = _script()
    n = 2**20
    rows = {w.name.split(" ", 1)[1]: w for w in ps.workloads(n) if w.name.startswith("1.05M/16")}
    # θ read and written, g read (12 B), then per buffer: fp32 8 B, bf16 4 B, int8 2 B + a 4 B scale
    # per 256, read and written; centered with momentum has three buffers
    assert rows["plain"].step_bytes == 20 * n
    assert rows["centered+momentum"].step_bytes == 36 * n
    assert rows["plain, bf16 state"].step_bytes == 16 * n
    assert rows["plain, int8 state"].step_bytes == (14 + 8 / 256) * n
    small = ps.Workload("int8 below MIN_NUMEL", ((ps.MIN_NUMEL - 1,),), precision="int8")
    assert small.step_bytes == 20 * (ps.MIN_NUMEL - 1)  # stays fp32


def test_resnet_shapes_are_kept_whole_or_scaled_to_the_cap_with_their_count():
    ps = _script()
    full = next(w for w in ps.workloads(2**25) if w.name.startswith("ResNet"))
    assert full.shapes == resnet50_shapes()
    small = next(w for w in ps.workloads(2**20) if w.name.startswith("ResNet"))
    assert len(small.shapes) == 161 and math.isclose(small.numel, 2**20, rel_tol=0.01)


@pytest.mark.slow
def test_a_short_run_reaches_every_layer_and_they_add_up(monkeypatch):
    ps = _script()
    roof = type("Roof", (), {"gbps": 10.0, "best": "stub", "probes": [],
                             "seconds": lambda self, nbytes: nbytes / 1e10})()
    monkeypatch.setattr(ps, "measure_roofline", lambda *args, **kwargs: roof)
    with torch_threads(1):
        (row,) = ps.main(["--only", "RL", "--rounds", "3"])
    shares = [row[k] for k in ("python_share", "graph_wrapper_share", "kernel_share")]
    assert all(s > 0 for s in shares) and math.isclose(sum(shares), 1, abs_tol=0.1)
    assert row["kernel_ms"] > 0 and row["compiled_calls_per_step"] == 1
    assert row["recompiles_while_measuring"] == 0 and row["allocated_mb_per_step"] == 0
    assert row["c_loop_ms"] > 0 and row["kernel_c_loop"] > 0  # fp32 state: paired with the C loop
