"""Time whole optimizer steps of rmsprop's paths against torch.optim.RMSprop.

Paths: torch-forloop and torch-foreach (torch.optim.RMSprop with foreach=False /
True), torch-compile (a function calling torch's step, under torch.compile, lr
a float), and ours: reference, foreach and fused. Every path steps the same
fp32 parameters and gradients with its own state; rounds alternate between the
paths and the medians are compared as ratios from the one run, so drift on a
shared machine hits every path alike. Compiled paths' first steps (compiling)
are timed apart and left out of the medians. Run only when --paths names them
(or the gpu suite's default does): foreach+skip and fused+skip
(nonfinite="skip"), foreach-bf16, fused-bf16, foreach-int8 and fused-int8 (ours
with state_precision="bf16" / "int8"), and bitsandbytes' RMSprop8bit and
RMSprop32bit as bnb-rmsprop8bit and bnb-rmsprop32bit (skipped, saying why,
where bitsandbytes is not importable or the config is centered).

The roofline is measured in the same run and does not come from our compiler:
the best bandwidth of PyTorch's in-place add_/addcmul_ and of a STREAM-style
C/OpenMP kernel with the step's own access pattern (built now with gcc), times
the bytes a step must move: 20 per parameter plain (θ, g, v read; θ, v
written), 36 centered with momentum; with bf16 or 8-bit state, the same
accesses at the state's width (16 and 24, 14 and 18 B per parameter).

suites:
  quick     1k and 10k params in 16 tensors and the RL net; 2 rounds; no
            compiled path unless --paths names one (seconds; for tests)
  size      1e3 … 1e8 params (up to --max-size) in 16 tensors; 2^25 = 32Mi
  count     2^25 params (or --max-size) in 1, 16, 100, 1000 tensors
  models    GPT-2 small (148 tensors, 124.4M) and ResNet-50 (161, 25.6M)
  rl        a 3-layer MLP policy, 8-64-64-4 (6 tensors, 4,996 params)
  schedule  2^22 params in 16 tensors, ExponentialLR(0.99) after every step,
            4 steps a round (torch.compile recompiles for every new float lr)
  gpu       for --device cuda: 2^20, 2^25, 1e8 and 1e9 params (up to
            --max-size) in 16 tensors, then the ResNet-50 and GPT-2 small
            shapes; a case that would not fit the device's free memory is
            skipped with the reason; default paths torch-foreach,
            torch-compile, ours at fp32, bf16 and int8 state, bitsandbytes
  all       size, count, models, rl, schedule

JSON (--json), schema rmsprop-bench/2: schema, machine, settings (suites, configs, rounds,
paths, max_size, compile_max_tensors, target_round_s, threads, dtype, time_limit_s,
memory_bytes), roofline {gbps, best, probes}, memory_method, goals [{goal, text, value, met}],
elapsed_s, and cases, each with suite, name, config, schedule, numel, tensors, bytes_per_step
(at fp32 state), roofline_s, torch_default, our_default and results: one per path with path,
state_precision (fp32, bf16 or int8), bytes_per_step (at that precision: gbps and the roofline
columns use it), median_s, round_s, steps_per_round, gbps, roofline_pct, x_roofline_time,
speedup_vs_torch, first_step_s, compiles, recompiles, recompile_limit_hit, structures_compiled,
inductor_cache_hits, peak_extra_bytes, total_s, steps, skipped (null, or why the path did not
run). Times in seconds. Schema 1 (before state precisions and bitsandbytes) lacked the two
result fields and the two settings.

Peak extra memory: on CPU, the peak bytes of the tensors one step allocates, read
from the torch profiler's allocation events (RSS is not measured); on CUDA,
max_memory_allocated() during the step.

examples:
  rmsprop bench --suite quick
  rmsprop bench --suite size --max-size 1e7 --paths torch-forloop,foreach,fused
  rmsprop bench --suite size,models --json bench.json --out bench.png
  rmsprop bench --suite all --config plain,centered-momentum
  rmsprop bench --device cuda --suite gpu --max-size 1e9 --time-limit 200 --json gpu.json --out gpu.png
"""

from __future__ import annotations

import argparse
import logging
import os
import time
from contextlib import contextmanager
from typing import Any

import torch

from ..cliutil import (
    UsageError,
    add_json_option,
    comma_list,
    guarded,
    output_file,
    positive_int,
    text_stream,
    thread_count,
    write_json,
)
from .measure import COMPILED_PATHS, GPU_PATHS, OPT_IN_PATHS, PATHS, CaseResult, run_case, skipped_case
from .report import (
    LEGEND,
    Progress,
    case_rows,
    goals,
    machine_info,
    machine_line,
    plot,
    require_matplotlib,
    table_header,
    to_json,
)
from .roofline import default_probe_numel, measure_roofline
from .workloads import CONFIGS, SUITES, Case, build_cases

__all__ = ["configure_parser", "run", "run_bench"]

ALL = ("size", "count", "models", "rl", "schedule")


def _size(text: str) -> int:
    try:
        value = int(float(text))
    except (ValueError, OverflowError):  # "inf" overflows int()
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError("must be a positive number of seconds")
    return value


def configure_parser(parser: argparse.ArgumentParser) -> None:
    """Add the benchmark's options to ``parser`` and make :func:`run` its action."""
    parser.add_argument("--suite", action="append", type=comma_list(SUITES, {"all": ALL}), metavar="SUITE",
                        help="what to time: quick, size, count, models, rl, schedule, gpu or all; "
                             "repeat or comma-separate (default: quick)")
    parser.add_argument("--rounds", type=positive_int, default=None,
                        help="alternating rounds per case; medians are over these (default: 5, quick: 2)")
    parser.add_argument("--max-size", type=_size, default=10**8, metavar="N",
                        help="largest total parameter count in the size, count and gpu sweeps, e.g. 3.4e7 "
                             "(default: 1e8; model shapes are fixed)")
    parser.add_argument("--config", action="append", type=comma_list(tuple(CONFIGS)), metavar="CONFIG",
                        help="plain (20 B/param) or centered-momentum (centered, momentum 0.9: 36 B/param); "
                             "repeat or comma-separate (default: plain)")
    parser.add_argument("--paths", type=comma_list(PATHS), default=None, metavar="LIST",
                        help=f"comma list of {', '.join(PATHS)} (default: all but the +skip ones, which "
                             "time nonfinite='skip', the -bf16/-int8 ones (state_precision) and the bnb ones "
                             f"(bitsandbytes); quick: no compiled path; gpu: {', '.join(GPU_PATHS)})")
    parser.add_argument("--compile-max-tensors", type=positive_int, default=200, metavar="N",
                        help="skip the compiled paths (fused, torch-compile) for cases with more tensors "
                             "than this: compiling takes minutes there (default: %(default)s)")
    parser.add_argument("--threads", type=thread_count, default=None,
                        help="torch.set_num_threads(N) for the run (default: torch's choice)")
    parser.add_argument("--device", default="cpu", help="cpu, or cuda[:N] where there is one (default: cpu)")
    parser.add_argument("--time-limit", type=_seconds, default=None, metavar="S",
                        help="start no new case after S seconds: the rest are listed as skipped, and the "
                             "tables, JSON and plot hold what ran (default: none)")
    add_json_option(parser)
    parser.add_argument("--out", metavar="FILE.png", type=output_file,
                        help="log-log plot of step time against size per path (needs matplotlib)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    parser.set_defaults(run=run)


def _device(text: str) -> torch.device:
    try:
        device = torch.device(text)
    except RuntimeError:
        raise UsageError(f"--device {text}: not a device name (cpu, cuda, cuda:N)") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise UsageError(f"--device {text}: CUDA is not available here "
                              f"(torch {torch.__version__}, {torch.cuda.device_count()} GPUs visible)")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise UsageError(f"--device {text}: only {torch.cuda.device_count()} CUDA devices")
        return device
    if device.type != "cpu":
        raise UsageError(f"--device {text}: only cpu and cuda are supported")
    return device


@contextmanager
def _quiet_dynamo():
    """Dynamo warns on stderr when torch.compile hits its recompile limit; the
    tables report it instead."""
    logger = logging.getLogger("torch._dynamo")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def run(args: argparse.Namespace) -> int:
    """The ``rmsprop bench`` command; returns the exit code."""
    return guarded("bench", lambda: run_bench(args))


def run_bench(args: argparse.Namespace) -> int:
    device = _device(args.device)
    if args.out:
        require_matplotlib()  # fail now, not after the run
    threads = torch.get_num_threads()
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        return _bench(args, device)
    finally:
        torch.set_num_threads(threads)


def _bench(args: argparse.Namespace, device: torch.device) -> int:
    suites = list(dict.fromkeys(s for group in (args.suite or [["quick"]]) for s in group))
    configs = list(dict.fromkeys(c for group in (args.config or [["plain"]]) for c in group))
    quick_only = suites == ["quick"]
    rounds = args.rounds or (2 if quick_only else 5)
    if args.paths is not None:
        paths = list(dict.fromkeys(args.paths))
    elif "gpu" in suites:
        paths = list(GPU_PATHS)
    else:
        paths = [p for p in PATHS if p not in OPT_IN_PATHS and not (quick_only and p in COMPILED_PATHS)]
    cases = build_cases(suites, configs, args.max_size)
    # a GPU's step times repeat closely: shorter rounds keep the gpu suite within minutes
    target_round_s = 0.01 if quick_only else 0.1 if suites == ["gpu"] else 0.2
    memory_bytes = torch.cuda.mem_get_info(device)[0] if device.type == "cuda" else None

    out = text_stream(args.json)
    started = time.perf_counter()
    machine = machine_info(device)
    print(machine_line(machine), file=out)
    # on a GPU, 1 GiB arrays: a launch and a sync are then about 1% of a probe's time (2**26 left 5-15%)
    probe_numel = 2**20 if quick_only else (2**28 if device.type == "cuda" else default_probe_numel())
    roofline = measure_roofline(device, probe_numel, reps=3 if quick_only else 10)
    probes = ", ".join(f"{p.name} {p.gbps:.1f}" for p in roofline.probes)
    print(f"roofline: {roofline.gbps:.1f} GB/s, best of {probes} GB/s "
          f"({roofline.numel:,} fp32 elements per array)", file=out)
    for note in roofline.notes:
        print(f"  note: {note}", file=out)
    print(f"rounds: {rounds}; paths: {', '.join(paths)}", file=out)
    if memory_bytes is not None:
        print(f"device memory free at start: {memory_bytes / 2**30:.1f} GiB", file=out)

    settings: dict[str, Any] = {"suites": suites, "configs": configs, "rounds": rounds, "paths": paths,
                                "max_size": args.max_size, "compile_max_tensors": args.compile_max_tensors,
                                "target_round_s": target_round_s, "threads": torch.get_num_threads(),
                                "dtype": "float32", "time_limit_s": args.time_limit,
                                "memory_bytes": memory_bytes, "complete": False}
    unique: dict[tuple, CaseResult] = {}
    shown: list[tuple[Case, CaseResult]] = []

    def save() -> None:
        """With --json FILE, every case measured so far, written after each case (settings' "complete"
        says whether the run ended), so that a run stopped from outside keeps what it measured, as
        scripts/gpu_check.py stops one at its time limit."""
        if args.json:
            goal_lines = goals(list(unique.values()), roofline)
            write_json(to_json(machine, settings, roofline, shown, goal_lines, time.perf_counter() - started),
                       args.json)

    progress = Progress(sum(len(paths) * (rounds + 1) for c in {c.key: c for c in cases}),
                        enabled=not args.no_progress)
    group = None
    with _quiet_dynamo():
        for index, case in enumerate(cases, 1):
            if (case.suite, case.config) != group:
                group = (case.suite, case.config)
                progress.clear()
                print(table_header(case, roofline), file=out, flush=True)
            cr = unique.get(case.key)
            if cr is None:
                progress.start_case(index, len(cases), f"{case.suite} · {case.workload.name} · {case.config}")
                spent = time.perf_counter() - started
                if args.time_limit is not None and spent > args.time_limit:
                    for _ in range(len(paths) * (rounds + 1)):
                        progress("skipped: time limit")
                    cr = skipped_case(case, paths, f"not started: --time-limit {args.time_limit:g} s passed "
                                                   f"({spent:.0f} s)", device)
                else:
                    cr = run_case(case, paths, rounds, device, target_round_s, args.compile_max_tensors,
                                  progress, memory_bytes)
                unique[case.key] = cr
            shown.append((case, cr))
            progress.clear()
            print("\n".join(case_rows(cr, case, roofline)), file=out, flush=True)
            if args.json != "-":  # (stdout takes the whole run's JSON once, at the end)
                save()
    progress.clear()
    print("\n" + LEGEND, file=out)

    goal_lines = goals(list(unique.values()), roofline)
    print("\ngoals:", file=out)
    for line in goal_lines:
        print(f"  {line['text']}", file=out)
    elapsed = time.perf_counter() - started
    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    machine["load_average_end"] = list(load) if load else None
    print(f"\nbench took {elapsed:.0f} s" + (f"; load average {load[0]:.2f} at the end" if load else ""),
          file=out)

    settings["complete"] = True
    save()
    if args.out:
        plot(args.out, shown, roofline, machine)
        print(f"plot written to {args.out}", file=out)
    return 0
