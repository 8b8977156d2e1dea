"""Timing one case: every path's optimizer over the same parameters, in alternating rounds."""

from __future__ import annotations

import contextlib
import gc
import os
import statistics
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

import torch

import rmsprop
from rmsprop.paths import choose_path
from rmsprop.paths.fused import compiled_structures

from .workloads import CONFIGS, Case

__all__ = [
    "PATHS", "TORCH_PATHS", "OUR_PATHS", "GUARDED_PATHS", "COMPILED_PATHS", "LR", "SCHEDULE_GAMMA",
    "SCHEDULE_STEPS_PER_ROUND", "MEMORY_METHOD", "PathResult", "CaseResult", "run_case",
    "torch_default_path", "our_default_path", "peak_extra_bytes",
]

TORCH_PATHS = ("torch-forloop", "torch-foreach", "torch-compile")
#: Ours with nonfinite="skip": the cost of the gradient check (only when named in --paths).
GUARDED_PATHS = ("foreach+skip", "fused+skip")
OUR_PATHS = ("reference", "foreach", "fused", *GUARDED_PATHS)
PATHS = TORCH_PATHS + OUR_PATHS
#: Paths whose first step compiles.
COMPILED_PATHS = ("torch-compile", "fused", "fused+skip")

LR = 1e-3
SCHEDULE_GAMMA = 0.99
#: In the schedule suite every round is this many steps, each followed by an lr change.
SCHEDULE_STEPS_PER_ROUND = 4

MEMORY_METHOD = {
    "cpu": "peak bytes of the tensors the step itself allocates, from the torch profiler's "
           "allocation events (CPU allocator; RSS and compiler memory not included)",
    "cuda": "torch.cuda.max_memory_allocated() during the step minus memory_allocated() before it",
}

Step = Callable[[], object]


@dataclass
class PathResult:
    """One path's numbers for one case (seconds, bytes)."""

    path: str
    median_s: float | None = None
    round_s: list[float] = field(default_factory=list)  # mean step time of each round
    steps_per_round: int = 0
    first_step_s: float | None = None  # includes compiling, or allocating the state
    compiles: int = 0  # graphs Dynamo compiled during the first step
    recompiles: int = 0  # graphs compiled during the timed steps after it
    recompile_limit_hit: bool = False
    structures_compiled: int | None = None  # rmsprop.paths.fused.compiled_structures() delta (ours)
    inductor_cache_hits: int = 0  # Inductor FX-graph cache hits during the first step
    peak_extra_bytes: int | None = None
    total_s: float = 0.0  # every step this path ran, timed, first step included
    steps: int = 0
    skipped: str | None = None  # why this path did not run, or the error it raised


@dataclass
class CaseResult:
    case: Case
    results: dict[str, PathResult]
    torch_default: str  # which torch path torch.optim.RMSprop() picks here
    our_default: str  # which of our paths rmsprop.RMSprop() picks here


def torch_default_path(params: Sequence[torch.Tensor]) -> str:
    """The path ``torch.optim.RMSprop(params)`` takes: the for-loop on CPU, foreach on CUDA."""
    from torch.optim.optimizer import _default_to_fused_or_foreach

    _, foreach = _default_to_fused_or_foreach(list(params), differentiable=False, use_fused=False)
    return "torch-foreach" if foreach else "torch-forloop"


def our_default_path(params: Sequence[torch.Tensor]) -> str:
    """The path ``rmsprop.RMSprop(params)`` takes (fused=None, foreach=None)."""
    return choose_path(params, foreach=None, differentiable=False, fused=None)


def _make_optimizer(path: str, params: list[torch.nn.Parameter], config: str) -> torch.optim.Optimizer:
    knobs = CONFIGS[config]
    if path in TORCH_PATHS:
        foreach = {"torch-forloop": False, "torch-foreach": True, "torch-compile": None}[path]
        return torch.optim.RMSprop(params, lr=LR, foreach=foreach, **knobs)
    base, _, policy = path.partition("+")
    foreach, fused = {"reference": (False, False), "foreach": (True, False), "fused": (False, True)}[base]
    return rmsprop.RMSprop(params, lr=LR, foreach=foreach, fused=fused, **knobs,
                           nonfinite=policy or "propagate")


def _step_function(path: str, opt: torch.optim.Optimizer) -> Step:
    """What the timer calls. For torch-compile, what a user writes: a function that
    calls torch's step, under torch.compile, with lr a float (torch's default)."""
    if path == "torch-compile":
        return torch.compile(lambda: opt.step())
    return lambda: opt.step()  # looked up per call: a scheduler wraps opt.step


def _counter(group: str, name: str) -> int:
    from torch._dynamo.utils import counters

    return int(counters[group][name])


def _graphs() -> int:
    return _counter("stats", "unique_graphs")


def _cache_hits() -> int:
    return _counter("inductor", "fxgraph_cache_hit")


def _limit_hits() -> int:
    from torch._dynamo.utils import counters

    return sum(v for k, v in counters["unimplemented"].items() if "recompile limit" in k.lower())


@contextlib.contextmanager
def _quiet_stderr_fd() -> Iterator[None]:
    """Send file descriptor 2 to /dev/null: the profiler's C++ side prints a line
    at every start and stop."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as devnull:
            os.dup2(devnull.fileno(), 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def peak_extra_bytes(step: Step, device: torch.device) -> int | None:
    """Peak memory one call of ``step`` allocates on top of what exists (see MEMORY_METHOD)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        before = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        step()
        torch.cuda.synchronize(device)
        return torch.cuda.max_memory_allocated(device) - before
    try:
        from torch._C._profiler import _EventType
        from torch.profiler import ProfilerActivity, profile
    except ImportError:
        return None
    with _quiet_stderr_fd(), profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        step()
    events = []
    try:  # private profiler API: a torch that changes it reports n/a rather than failing
        stack = list(prof.profiler.kineto_results.experimental_event_tree())
        while stack:
            node = stack.pop()
            stack.extend(node.children)
            if node.tag == _EventType.Allocation:
                events.append((node.start_time_ns, node.extra_fields.alloc_size))
    except AttributeError:
        return None
    live = peak = 0
    for _, size in sorted(events):
        live += size
        peak = max(peak, live)
    return peak


@contextlib.contextmanager
def _counting(result: PathResult) -> Iterator[None]:
    """Add the graphs Dynamo compiles inside the block to ``result.recompiles``."""
    graphs, hits = _graphs(), _limit_hits()
    try:
        yield
    finally:
        result.recompiles += _graphs() - graphs
        result.recompile_limit_hit |= _limit_hits() > hits


def _make_params(case: Case, device: torch.device) -> list[torch.nn.Parameter]:
    gen = torch.Generator().manual_seed(0)
    params = []
    for shape in case.workload.shapes:
        p = torch.nn.Parameter(torch.randn(shape, generator=gen).to(device))
        p.grad = torch.randn(shape, generator=gen).to(device)
        params.append(p)
    return params


class _Runner:
    """One path's optimizer over the shared parameters, with its own state."""

    def __init__(self, path: str, params: list[torch.nn.Parameter], case: Case, device: torch.device):
        self.result = PathResult(path)
        self.device = device
        self.opt = _make_optimizer(path, params, case.config)
        self.scheduler = (torch.optim.lr_scheduler.ExponentialLR(self.opt, SCHEDULE_GAMMA)
                          if case.schedule else None)
        self.step = _step_function(path, self.opt)
        self._sync = (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else (lambda: None)

    def timed_step(self, advance_schedule: bool = True) -> float:
        """One step, timed and counted; the schedule (if any) moves on after it."""
        start = time.perf_counter()
        self.step()
        self._sync()
        seconds = time.perf_counter() - start
        self.result.total_s += seconds
        self.result.steps += 1
        if self.scheduler is not None and advance_schedule:
            self.scheduler.step()
        return seconds

    def first_step(self) -> None:
        """The first step (compiling, or allocating the state), then one profiled
        step for memory at the same learning rate."""
        r = self.result
        graphs, structures, hits = _graphs(), compiled_structures(), _cache_hits()
        r.first_step_s = self.timed_step(advance_schedule=False)  # the memory step takes the same lr
        r.compiles = _graphs() - graphs
        r.inductor_cache_hits = _cache_hits() - hits
        if r.path in OUR_PATHS:
            r.structures_compiled = compiled_structures() - structures
        r.peak_extra_bytes = peak_extra_bytes(self.step, self.device)
        if self.scheduler is not None:
            self.scheduler.step()

    def steps_per_round(self, target_round_s: float, schedule: bool) -> int:
        """How many steps make a round of about ``target_round_s`` (one or two steps timed to know)."""
        if schedule:
            return SCHEDULE_STEPS_PER_ROUND
        with _counting(self.result):
            seconds = self.timed_step()
            if seconds < target_round_s / 20:  # too short to time alone: time ten
                seconds = statistics.fmean(self.timed_step() for _ in range(10))
        return max(1, min(10_000, round(target_round_s / seconds)))

    def run_round(self, steps: int) -> None:
        with _counting(self.result):
            seconds = sum(self.timed_step() for _ in range(steps))
        self.result.round_s.append(seconds / steps)


def run_case(
    case: Case,
    paths: list[str],
    rounds: int,
    device: torch.device,
    target_round_s: float = 0.1,
    compile_max_tensors: int | None = None,
    progress: Callable[[str], None] = lambda label: None,
) -> CaseResult:
    """Time ``paths`` on ``case``; ``progress`` is called rounds + 1 times per path.

    Every path steps the same parameters and gradients (values do not change
    the timing) with its own optimizer state. Order: each path's first step
    (timed alone: it compiles or allocates the state), one profiled step for
    memory, a calibration step (rounds last about ``target_round_s``), then
    ``rounds`` rounds that visit the paths in a rotating order, so drift on a
    shared machine hits all alike.
    """
    gc.collect()  # the previous case's tensors
    params = _make_params(case, device)
    too_many = compile_max_tensors is not None and case.workload.tensors > compile_max_tensors
    if any(p in COMPILED_PATHS for p in paths) and not too_many:
        torch._dynamo.reset()  # every case compiles as a fresh process would (Inductor's disk cache aside)
    results: dict[str, PathResult] = {}
    runners: list[_Runner] = []
    for path in paths:
        runner = None
        if path in COMPILED_PATHS and too_many:
            results[path] = PathResult(path, skipped=f"compiling {case.workload.tensors} tensors skipped "
                                                     f"(--compile-max-tensors {compile_max_tensors})")
        else:
            try:
                runner = _Runner(path, params, case, device)
                runner.first_step()
            except Exception as err:  # one path failing (e.g. no C++ compiler) must not end the run
                results[path] = PathResult(path, skipped=f"{type(err).__name__}: {err}")
                runner = None
        if runner is None:
            for _ in range(rounds + 1):
                progress(f"{path}: skipped")
            continue
        runners.append(runner)
        results[path] = runner.result
        progress(f"{path}: first step")

    steps = {runner.result.path: runner.steps_per_round(target_round_s, case.schedule) for runner in runners}
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        for index in range(rounds if runners else 0):
            shift = index % len(runners)
            for runner in runners[shift:] + runners[:shift]:
                runner.run_round(steps[runner.result.path])
                progress(f"{runner.result.path}: round {index + 1}/{rounds}")
    finally:
        if gc_was_enabled:
            gc.enable()

    for runner in runners:
        r = runner.result
        r.steps_per_round = steps[r.path]
        r.median_s = statistics.median(r.round_s)
    return CaseResult(case, results, torch_default_path(params), our_default_path(params))
