"""Timing one case: every path's optimizer over the same parameters, in alternating rounds."""

from __future__ import annotations

import contextlib
import gc
import importlib
import math
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
    "PATHS", "TORCH_PATHS", "OUR_PATHS", "GUARDED_PATHS", "PRECISION_PATHS", "BNB_PATHS", "OPT_IN_PATHS",
    "COMPILED_PATHS", "GPU_PATHS", "LR", "SCHEDULE_GAMMA", "SCHEDULE_STEPS_PER_ROUND", "MEMORY_METHOD",
    "WORKSPACE_BYTES_PER_PARAM", "PathResult", "CaseResult", "run_case", "skipped_case", "torch_default_path",
    "our_default_path", "peak_extra_bytes", "state_precision", "state_bytes_per_param", "bytes_per_param",
    "unavailable_reason", "memory_needed", "memory_fit",
]

TORCH_PATHS = ("torch-forloop", "torch-foreach", "torch-compile")
#: Ours with nonfinite="skip": the cost of the gradient check (only when named in --paths).
GUARDED_PATHS = ("foreach+skip", "fused+skip")
#: Ours with the state stored narrower (state_precision="bf16" or "int8"; the plain names keep
#: fp32 state for the benchmark's fp32 parameters).
PRECISION_PATHS = ("foreach-bf16", "fused-bf16", "foreach-int8", "fused-int8")
OUR_PATHS = ("reference", "foreach", "fused", *GUARDED_PATHS, *PRECISION_PATHS)
#: bitsandbytes' RMSprop with 8-bit and 32-bit state, where bitsandbytes is installed (else skipped,
#: saying why); it has no centered variant.
BNB_PATHS = ("bnb-rmsprop8bit", "bnb-rmsprop32bit")
PATHS = TORCH_PATHS + OUR_PATHS + BNB_PATHS
#: Paths run only when --paths names them (or the gpu suite's default does): the CPU default is
#: the paths above them.
OPT_IN_PATHS = GUARDED_PATHS + PRECISION_PATHS + BNB_PATHS
#: Paths whose first step compiles.
COMPILED_PATHS = ("torch-compile", "fused", "fused+skip", "fused-bf16", "fused-int8")
#: The gpu suite's default: torch's CUDA default and its compiled step, ours at every state
#: precision, and bitsandbytes.
GPU_PATHS = ("torch-foreach", "torch-compile", "foreach", "fused", "foreach-bf16", "fused-bf16",
             "foreach-int8", "fused-int8", *BNB_PATHS)

LR = 1e-3
SCHEDULE_GAMMA = 0.99
#: In the schedule suite every round is this many steps, each followed by an lr change.
SCHEDULE_STEPS_PER_ROUND = 4

MEMORY_METHOD = {
    "cpu": "peak bytes of the tensors the step itself allocates, from the torch profiler's "
           "allocation events (CPU allocator; RSS and compiler memory not included)",
    "cuda": "torch.cuda.max_memory_allocated() during the step minus memory_allocated() before it",
}

#: Bytes per element of one state buffer: fp32, bf16, and 8-bit codes with one fp32 block maximum
#: per 256 elements (rmsprop.quant.BLOCK; bitsandbytes' block-wise 8-bit state is counted alike).
_ELEMENT_BYTES = {"fp32": 4.0, "bf16": 2.0, "int8": 1.0 + 4 / 256}
#: Bytes per parameter that one step may allocate on top of the state (the foreach ops'
#: temporaries, the 8-bit path's realized intermediates): an allowance for the memory check,
#: not a measurement (the tables' peak extra column is the measurement).
WORKSPACE_BYTES_PER_PARAM = 16
#: Share of the device's free memory the memory check lets a case use.
MEMORY_HEADROOM = 0.9


def state_precision(path: str) -> str:
    """How ``path`` stores its state for fp32 parameters: "fp32", "bf16" or "int8"."""
    if path == "bnb-rmsprop8bit" or path.endswith("-int8"):
        return "int8"
    return "bf16" if path.endswith("-bf16") else "fp32"


def state_bytes_per_param(path: str, config: str) -> float:
    """Bytes of optimizer state per parameter: one buffer (v) plain, three (v, ḡ, b) centered
    with momentum, each of :func:`state_precision`'s width."""
    buffers = 1 + 2 * ("centered" in CONFIGS[config])
    return buffers * _ELEMENT_BYTES[state_precision(path)]


def bytes_per_param(path: str, config: str) -> float:
    """Bytes a step of ``path`` must move per fp32 parameter: θ read and written, g read, every
    state buffer read and written (20 plain and 36 centered with momentum at fp32 state, as
    workloads.BYTES_PER_PARAM)."""
    return 12 + 2 * state_bytes_per_param(path, config)


def unavailable_reason(path: str, config: str) -> str | None:
    """Why ``path`` cannot run ``config`` here, known before building anything, or None."""
    if path in BNB_PATHS:
        if CONFIGS[config].get("centered"):
            return "bitsandbytes' RMSprop has no centered variant"
        try:
            importlib.import_module("bitsandbytes")
        except Exception as err:  # not installed, or no build for this machine: a reason, not a crash
            return f"bitsandbytes is not importable here ({type(err).__name__}: {err})"
    return None


def memory_needed(numel: int, paths: Sequence[str], config: str) -> int:
    """Device bytes a case needs: the shared θ and g, every path's state (all live at once, the
    paths alternate), and one step's workspace allowance."""
    per_param = 8 + sum(state_bytes_per_param(p, config) for p in paths) + WORKSPACE_BYTES_PER_PARAM
    return math.ceil(numel * per_param)


def memory_fit(numel: int, paths: Sequence[str], config: str, memory_bytes: int | None) -> str | None:
    """Why ``numel`` parameters with ``paths`` do not fit ``memory_bytes`` of free device memory
    (a share MEMORY_HEADROOM of it), or None when they fit or the memory is unknown (CPU)."""
    if memory_bytes is None:
        return None
    need = memory_needed(numel, paths, config)
    if need <= MEMORY_HEADROOM * memory_bytes:
        return None
    return (f"needs about {need / 2**30:.1f} GiB for {len(paths)} paths' state, θ and g; "
            f"{memory_bytes / 2**30:.1f} GiB free")


Step = Callable[[], object]


@dataclass
class PathResult:
    """One path's numbers for one case (seconds, bytes)."""

    path: str
    state_precision: str = "fp32"  # how the path stores its state (measure.state_precision)
    bytes_per_step: int = 0  # what one step must move at that precision (measure.bytes_per_param)
    median_s: float | None = None
    round_s: list[float] = field(default_factory=list)  # mean step time of each round
    steps_per_round: int = 0
    first_step_s: float | None = None  # includes compiling, or allocating the state
    compiles: int = 0  # graphs compiled during the first step (Dynamo's, or the fused path's own)
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


def our_default_path(params: Sequence[torch.Tensor], config: str = "plain",
                     state_precision: str = "param") -> str:
    """The path ``rmsprop.RMSprop(params, state_precision=state_precision, **CONFIGS[config])``
    takes (fused=None, foreach=None); the cases' ``our_default`` is the one at the parameters'
    precision."""
    knobs = CONFIGS[config]
    buffers = 1 + bool(knobs.get("centered")) + bool(knobs.get("momentum"))
    return choose_path(params, foreach=None, differentiable=False, fused=None,
                       state_precision=state_precision, state_buffers=buffers)


def _make_optimizer(path: str, params: list[torch.nn.Parameter], config: str) -> torch.optim.Optimizer:
    knobs = CONFIGS[config]
    if path in TORCH_PATHS:
        foreach = {"torch-forloop": False, "torch-foreach": True, "torch-compile": None}[path]
        return torch.optim.RMSprop(params, lr=LR, foreach=foreach, **knobs)
    if path in BNB_PATHS:
        optim = importlib.import_module("bitsandbytes.optim")
        cls = optim.RMSprop8bit if path == "bnb-rmsprop8bit" else optim.RMSprop32bit
        # torch's defaults for alpha and eps; momentum as the config asks (never centered: unavailable_reason)
        return cls(params, lr=LR, alpha=0.99, eps=1e-8, momentum=knobs.get("momentum", 0.0))
    base, _, policy = path.partition("+")
    base, _, _ = base.partition("-")
    foreach, fused = {"reference": (False, False), "foreach": (True, False), "fused": (False, True)}[base]
    precision = state_precision(path) if path in PRECISION_PATHS else "param"
    return rmsprop.RMSprop(params, lr=LR, foreach=foreach, fused=fused, **knobs,
                           nonfinite=policy or "propagate", state_precision=precision)


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
    """Graphs compiled so far: Dynamo's (torch.compile of torch's step) and the fused path's own."""
    return _counter("stats", "unique_graphs") + compiled_structures()


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
    """Add the graphs compiled inside the block to ``result.recompiles``."""
    graphs, hits = _graphs(), _limit_hits()
    try:
        yield
    finally:
        result.recompiles += _graphs() - graphs
        result.recompile_limit_hit |= _limit_hits() > hits


def _make_params(case: Case, device: torch.device) -> list[torch.nn.Parameter]:
    # drawn where they live: on a GPU a CPU draw of 1e9 values would take longer than the case
    gen = torch.Generator(device=device).manual_seed(0)
    params = []
    for shape in case.workload.shapes:
        p = torch.nn.Parameter(torch.randn(shape, generator=gen, device=device))
        p.grad = torch.randn(shape, generator=gen, device=device)
        params.append(p)
    return params


def _stand_ins(case: Case, device: torch.device) -> list[torch.Tensor]:
    """Tensors of the case's shapes over one element of storage each: enough for the path
    policies (which look at sizes, types and devices) where the case itself does not run."""
    return [torch.empty_strided(shape, (0,) * len(shape), device=device) for shape in case.workload.shapes]


def _new_result(path: str, case: Case, skipped: str | None = None) -> PathResult:
    nbytes = math.ceil(case.workload.numel * bytes_per_param(path, case.config))
    return PathResult(path, state_precision(path), nbytes, skipped=skipped)


def skipped_case(case: Case, paths: Sequence[str], reason: str, device: torch.device) -> CaseResult:
    """A case none of whose paths ran (it does not fit the device, or the time limit passed)."""
    params = _stand_ins(case, device)
    return CaseResult(case, {p: _new_result(p, case, reason) for p in paths}, torch_default_path(params),
                      our_default_path(params, case.config))


class _Runner:
    """One path's optimizer over the shared parameters, with its own state."""

    def __init__(self, path: str, params: list[torch.nn.Parameter], case: Case, device: torch.device):
        self.result = _new_result(path, case)
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
    memory_bytes: int | None = None,
) -> CaseResult:
    """Time ``paths`` on ``case``; ``progress`` is called rounds + 1 times per path.

    Every path steps the same parameters and gradients (values do not change
    the timing) with its own optimizer state. Order: each path's first step
    (timed alone: it compiles or allocates the state), one profiled step for
    memory, a calibration step (rounds last about ``target_round_s``), then
    ``rounds`` rounds that visit the paths in a rotating order, so drift on a
    shared machine hits all alike. A path that cannot run here (bitsandbytes
    missing) is skipped with the reason; with ``memory_bytes`` (a GPU's free
    memory) a case that would not fit is skipped whole, before allocating.
    """
    gc.collect()  # the previous case's tensors
    if device.type == "cuda":
        torch.cuda.empty_cache()
    reasons = {path: unavailable_reason(path, case.config) for path in paths}
    runnable = [path for path in paths if reasons[path] is None]
    too_big = memory_fit(case.workload.numel, runnable, case.config, memory_bytes)
    if too_big is not None:
        for _ in range(len(paths) * (rounds + 1)):
            progress("skipped: does not fit")
        return skipped_case(case, paths, too_big, device)
    params = _make_params(case, device)
    too_many = compile_max_tensors is not None and case.workload.tensors > compile_max_tensors
    if any(p in COMPILED_PATHS for p in paths) and not too_many:
        torch._dynamo.reset()  # every case compiles as a fresh process would (Inductor's disk cache aside)
    results: dict[str, PathResult] = {}
    runners: list[_Runner] = []
    for path in paths:
        runner = None
        reason = reasons[path]
        if reason is None and path in COMPILED_PATHS and too_many:
            reason = (f"compiling {case.workload.tensors} tensors skipped "
                      f"(--compile-max-tensors {compile_max_tensors})")
        if reason is not None:
            results[path] = _new_result(path, case, reason)
        else:
            try:
                runner = _Runner(path, params, case, device)
                runner.first_step()
            except Exception as err:  # one path failing (e.g. no C++ compiler) must not end the run
                results[path] = _new_result(path, case, f"{type(err).__name__}: {err}")
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
    return CaseResult(case, results, torch_default_path(params), our_default_path(params, case.config))
