"""Where one fused optimizer step's time goes, per workload: a table the README can quote.

    .venv/bin/python benchmarks/profile_step.py [--quick | --max-size N] [--rounds 21] [--json FILE]

Each workload is ``rmsprop.RMSprop(..., fused=True)`` over fp32 parameters:
33.6M (2**25) in 16 tensors, plain and centered with momentum; ResNet-50's
shapes (161 tensors, 25.6M), plain; the RL network (6 tensors, 4,996), plain;
2**25 in 16 tensors, plain, with ``state_precision="bf16"`` and ``"int8"``.
``--max-size`` (``--quick``: 2**20 and 5 rounds) shrinks the 2**25 workloads,
and ResNet-50's shapes to 1-D tensors of the same count, the same proportions
and that total.

A step is cut into four nested layers, each timed, none estimated:

1. **step**: ``opt.step()``, wall time.
2. **python**: the optimizer's own code around the compiled call (settings,
   plan, grouping, the 0-d tensors of the hyperparameters, and the lookup
   of the compiled code by its key): the step minus the time spent inside
   the compiled callable that the fused path calls.
3. **graph wrapper**: inside that callable, what is not a kernel:
   AOTAutograd's runtime wrappers and Inductor's generated Python ``call``
   with its buffer allocations.
4. **kernels**: the compiled C++ loops themselves, each one timed apart
   (int8 state has block reductions and encodes: one row per kernel below
   the table).

How the layers are reached, without changing the library: the fused path
keeps its compiled callables in ``rmsprop.paths.fused._COMPILED`` (one
record per key and layout, its callable as ``.fn``) and calls the one it
looks up at every call; the script swaps timed wrappers into those records
(and captures the arguments). Inductor's generated module (``PyCodeCache``) calls its
kernels and its buffer allocator (``empty_strided_cpu``) through module
globals: those are wrapped too, which times each kernel in place, page
faults included, and counts the bytes of every buffer the graph allocates.
All timers are nested in one and the same step, so every share is paired
within a step rather than a difference of two noisy medians.
``torch.profiler`` was not used: with ``profile_memory`` it does not see
Inductor's ``_empty_strided_cpu`` allocations on torch 2.13, and per-kernel
profiling (``cpp.enable_kernel_profile``) changes the generated code and
forces a recompile.

Every workload is built and warmed up first (compiled, state allocated,
pages touched; about 4 GB resident at full size), then each round takes three
measurements of every workload, workloads and measurements in rotating
order, so that all rows see the same load on a shared machine: a bare
``opt.step()`` (the step time, and minor page faults from ``getrusage``), an
instrumented ``opt.step()`` (the shares), and the brief's cross-check, a
direct call of the compiled callable with arguments captured from a real
step (``python_share_by_direct_call`` in the JSON: 1 − direct/step, two medians).
Each measurement repeats the step enough times to last 2 ms (the RL net);
gradients alternate between two sets (with one constant gradient,
centered's v − ḡ² would cancel towards subnormal numbers, which x86 computes
far slower). Figures are medians over the rounds; the shares are the medians
of each round's shares, so they need not add up to 100 exactly.

The floor: the roofline of ``rmsprop.bench.roofline.measure_roofline`` (the
best bandwidth of PyTorch's in-place kernels and a STREAM-style C/OpenMP
loop with the step's own access pattern, measured in the same run, before
and after the rounds; the better of the two, as STREAM keeps its best) times the
bytes a step must move: per parameter, θ read and written and g read (12 B)
plus, per state buffer (1 plain, 3 centered with momentum), 8 B in fp32, 4 B
in bf16, 2 B in int8 with its block scale (8 B per 256; tensors under 4,096
elements keep fp32 state). ``kernel / roofline`` is the kernels' time over
that floor. The RL network fits in cache: its floor is not a memory floor.

That floor is measured before and after the rounds, and this VM's bandwidth
drifts within a run (45.9 to 39.0 GB/s in two minutes, once). So each round
also times, for the fp32-state workloads, a fourth measurement next to the
three above: the C loop of the step's own access pattern
(``rmsprop.bench.roofline.stream_step``: read θ, g, v and write θ, v, or
read five arrays and write four centered with momentum) over arrays of the
workload's own tensor sizes, one call per tensor, as the fused step's
kernels loop over them. ``kernel / C loop`` is the median over the rounds of
the kernels' time over that loop's time in the same round: the same bytes,
the same tensor count, the same load (``instrumented_step_c_loop`` in the
JSON: the whole instrumented step's, Python included, over the same loop).

``OMP_WAIT_POLICY=PASSIVE`` unless set (benchmarks/extras_cost.py: OpenMP's
spin-waiting made steps several times slower on the shared VM).
"""

from __future__ import annotations

import argparse
import functools
import gc
import json
import math
import os
import platform
import resource
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402

import rmsprop  # noqa: E402
from rmsprop.bench.roofline import measure_roofline, stream_step  # noqa: E402
from rmsprop.bench.workloads import format_count, resnet50_shapes, rl_mlp_shapes, split  # noqa: E402
from rmsprop.paths import fused  # noqa: E402
from rmsprop.quant import BLOCK, MIN_NUMEL  # noqa: E402

Shape = tuple[int, ...]
CENTERED_MOMENTUM = {"centered": True, "momentum": 0.9}
# bytes per element of one state buffer, read and written (int8: codes, then scales per BLOCK)
STATE_BYTES = {"fp32": 8.0, "bf16": 4.0, "int8": 2.0 + 8.0 / BLOCK}
MIN_MEASURE_S = 2e-3  # each measurement repeats the step to last at least this long


@dataclass(frozen=True)
class Workload:
    name: str
    shapes: tuple[Shape, ...]
    knobs: dict[str, Any] = field(default_factory=dict)
    precision: str = "fp32"

    @property
    def numel(self) -> int:
        return sum(math.prod(s) for s in self.shapes)

    @property
    def step_bytes(self) -> float:
        """What one step must move (the module docstring's byte model)."""
        buffers = 3 if self.knobs.get("centered") else 1
        total = 0.0
        for shape in self.shapes:
            n = math.prod(shape)
            narrow = self.precision != "int8" or n >= MIN_NUMEL
            total += n * (12 + buffers * STATE_BYTES[self.precision if narrow else "fp32"])
        return total


def scaled(shapes: tuple[Shape, ...], total: int) -> tuple[Shape, ...]:
    """As many 1-d tensors as ``shapes``, in the same proportions, about ``total`` elements in all."""
    factor = total / sum(math.prod(s) for s in shapes)
    return tuple((max(1, round(math.prod(s) * factor)),) for s in shapes)


def workloads(max_size: int) -> list[Workload]:
    big = min(2**25, max_size)
    sweep = split(big, 16)
    resnet = resnet50_shapes()
    if sum(math.prod(s) for s in resnet) > max_size:
        resnet = scaled(resnet, max_size)
    tag = f"{format_count(big)}/16"
    return [
        Workload(f"{tag} plain", sweep),
        Workload(f"{tag} centered+momentum", sweep, CENTERED_MOMENTUM),
        Workload(f"ResNet-50 shapes ({format_count(sum(math.prod(s) for s in resnet))}/161) plain", resnet),
        Workload("RL MLP (5k/6) plain", rl_mlp_shapes()),
        Workload(f"{tag} plain, bf16 state", sweep, precision="bf16"),
        Workload(f"{tag} plain, int8 state", sweep, precision="int8"),
    ]


class Layers:
    """Timers around the fused step's layers (the module docstring), installed
    by replacing dict entries and module globals, removed by putting the originals back."""

    def __init__(self) -> None:
        # found once (after the warm-up compiled everything), swapped in and out per measurement
        self._modules = _inductor_modules()
        self.call_s = 0.0
        self.kernel_s: dict[str, float] = {}
        self.alloc_bytes = 0
        self.capture: list[tuple[Callable[..., Any], tuple]] | None = None
        self._saved: list[Callable[[], None]] = []  # each puts one original back

    def reset(self) -> None:
        self.call_s = 0.0
        self.kernel_s = {}
        self.alloc_bytes = 0

    def _swap(self, namespace: dict[Any, Any], name: Any, new: Any) -> None:
        self._saved.append(functools.partial(namespace.__setitem__, name, namespace[name]))
        namespace[name] = new

    def _swap_fn(self, record: Any, new: Any) -> None:
        self._saved.append(functools.partial(setattr, record, "fn", record.fn))
        record.fn = new

    def install(self) -> None:
        if not isinstance(getattr(fused, "_COMPILED", None), dict) or not fused._COMPILED:
            raise SystemExit("rmsprop.paths.fused keeps no _COMPILED dict: update benchmarks/profile_step.py")
        for records in fused._COMPILED.values():
            for record in records:
                self._swap_fn(record, self._timed_call(record.fn))
        for module in self._modules:
            namespace = vars(module)
            for name in list(namespace):
                value = namespace[name]
                if name.startswith(("cpp_fused", "triton_")) and callable(value):
                    self._swap(namespace, name, self._timed_kernel(name, value))
                elif name.startswith("empty_strided") and callable(value):
                    self._swap(namespace, name, self._counted_alloc(value))

    def uninstall(self) -> None:
        while self._saved:
            self._saved.pop()()

    def _timed_call(self, compiled: Callable[..., Any]) -> Callable[..., Any]:
        def timed(*args: Any) -> Any:
            if self.capture is not None:
                self.capture.append((compiled, args))
            start = time.perf_counter()
            try:
                return compiled(*args)
            finally:
                self.call_s += time.perf_counter() - start
        return timed

    def _timed_kernel(self, name: str, kernel: Callable[..., Any]) -> Callable[..., Any]:
        def run(*args: Any) -> Any:
            start = time.perf_counter()
            try:
                return kernel(*args)
            finally:
                self.kernel_s[name] = self.kernel_s.get(name, 0.0) + time.perf_counter() - start
        return run

    def _counted_alloc(self, alloc: Callable[..., torch.Tensor]) -> Callable[..., torch.Tensor]:
        def run(*args: Any, **kwargs: Any) -> torch.Tensor:
            out = alloc(*args, **kwargs)
            self.alloc_bytes += out.untyped_storage().nbytes()
            return out
        return run


def _inductor_modules() -> list[Any]:
    """Inductor's generated Python modules loaded in this process."""
    from torch._inductor.codecache import PyCodeCache

    seen: dict[int, Any] = {}
    for module in [*PyCodeCache.modules, *PyCodeCache.modules_no_attr.values()]:
        seen.setdefault(id(module), module)
    return list(seen.values())


def _check_reached(layers: Layers, called: bool) -> None:
    """Stop, naming the layer, where a step ran without passing a timer: the
    fused path or torch changed where this script looks."""
    missing = [what for what, ok in (("the fused path's compiled callable (fused._COMPILED)", called),
                                     ("Inductor's kernels (PyCodeCache modules)", bool(layers.kernel_s)))
               if not ok]
    if missing:
        raise SystemExit(f"a fused step ran without reaching {', '.join(missing)}: "
                         "update benchmarks/profile_step.py's Layers")


class Session:
    """One workload's optimizer, warmed up, with its three measurements."""

    def __init__(self, work: Workload) -> None:
        self.work = work
        gen = torch.Generator().manual_seed(0)
        self.params = [torch.nn.Parameter(torch.randn(s, generator=gen)) for s in work.shapes]
        self.grads = [[torch.randn(s, generator=gen) for s in work.shapes] for _ in range(2)]
        self.opt = rmsprop.RMSprop(self.params, lr=1e-3, fused=True, state_precision=work.precision,
                                   **work.knobs)
        self.turn = 0
        start = time.perf_counter()
        self.step()
        self.first_s = time.perf_counter() - start
        for _ in range(4):
            self.step()
        start = time.perf_counter()
        self.step()
        self.reps = max(1, min(50, math.ceil(MIN_MEASURE_S / (time.perf_counter() - start))))

        self.layers = layers = Layers()
        layers.install()
        self.captured: list[list[tuple[Callable[..., Any], tuple]]] = []
        for _ in range(2):  # one capture per gradient set
            layers.capture = []
            layers.reset()
            self.step()
            self.captured.append(layers.capture)
        _check_reached(layers, bool(self.captured[-1]))
        layers.capture = None
        layers.uninstall()
        self.samples: dict[str, list[dict[str, Any]]] = {"bare": [], "instrumented": [], "direct": [],
                                                         "floor": []}
        self.floor_loop: Callable[[], None] | None = None
        if work.precision == "fp32":  # the C loop has fp32 state's pattern only
            arrays = 5 if work.knobs.get("centered") else 3
            self.floor_arrays = [[torch.rand(math.prod(s), generator=gen) for _ in range(arrays)]
                                 for s in work.shapes]
            try:
                self.floor_loop = stream_step(self.floor_arrays)
            except RuntimeError as err:  # no C compiler: the column says so
                print(f"# {work.name}: no same-round C loop ({err})", flush=True)
            else:
                self.floor_loop()  # pages touched

    def step(self) -> None:
        self.turn ^= 1
        for p, g in zip(self.params, self.grads[self.turn]):
            p.grad = g
        self.opt.step()

    def measure(self, kind: str) -> None:
        if kind != "floor" or self.floor_loop is not None:
            self.samples[kind].append(getattr(self, kind)())

    def bare(self) -> dict[str, float]:
        faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        start = time.perf_counter()
        for _ in range(self.reps):
            self.step()
        seconds = time.perf_counter() - start
        return {"step": seconds / self.reps,
                "faults": (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults) / self.reps}

    def instrumented(self) -> dict[str, Any]:
        layers = self.layers
        layers.install()
        totals: dict[str, Any] = {"step": 0.0, "call": 0.0, "alloc": 0.0, "kernels": {}}
        try:
            for _ in range(self.reps):
                layers.reset()
                start = time.perf_counter()
                self.step()
                totals["step"] += time.perf_counter() - start
                totals["call"] += layers.call_s
                totals["alloc"] += layers.alloc_bytes
                for name, seconds in layers.kernel_s.items():
                    totals["kernels"][name] = totals["kernels"].get(name, 0.0) + seconds
        finally:
            layers.uninstall()
        return {k: ({n: s / self.reps for n, s in v.items()} if isinstance(v, dict) else v / self.reps)
                for k, v in totals.items()}

    def direct(self) -> dict[str, float]:
        start = time.perf_counter()
        for r in range(self.reps):
            for compiled, args in self.captured[r % 2]:
                compiled(*args)
        return {"direct": (time.perf_counter() - start) / self.reps}

    def floor(self) -> dict[str, float]:
        assert self.floor_loop is not None
        start = time.perf_counter()
        for _ in range(self.reps):
            self.floor_loop()
        return {"floor": (time.perf_counter() - start) / self.reps}

    def summary(self) -> dict[str, Any]:
        med = statistics.median
        work, inst = self.work, self.samples["instrumented"]

        def share(fn: Callable[[dict[str, Any]], float]) -> float:
            return med(fn(s) / s["step"] for s in inst)

        kernel_names = sorted({n for s in inst for n in s["kernels"]})
        step_s = med(s["step"] for s in self.samples["bare"])
        floors = self.samples["floor"]  # one per round, as inst: paired by round

        def over_floor(fn: Callable[[dict[str, Any]], float]) -> float | None:
            return med(fn(s) / f["floor"] for s, f in zip(inst, floors, strict=True)) if floors else None

        direct_s = med(s["direct"] for s in self.samples["direct"])
        return {
            "workload": work.name, "params": work.numel, "tensors": len(work.shapes),
            "state_precision": work.precision, "config": "centered+momentum" if work.knobs else "plain",
            "steps_per_measurement": self.reps, "rounds": len(inst), "first_step_s": self.first_s,
            "step_ms": step_s * 1e3,
            "instrumented_step_ms": med(s["step"] for s in inst) * 1e3,
            "python_share": share(lambda s: s["step"] - s["call"]),
            "graph_wrapper_share": share(lambda s: s["call"] - sum(s["kernels"].values())),
            "kernel_share": share(lambda s: sum(s["kernels"].values())),
            "python_share_by_direct_call": 1 - direct_s / step_s,
            "direct_call_ms": direct_s * 1e3,
            "kernel_ms": med(sum(s["kernels"].values()) for s in inst) * 1e3,
            "kernels_ms": {n: med(s["kernels"].get(n, 0.0) for s in inst) * 1e3 for n in kernel_names},
            "compiled_calls_per_step": len(self.captured[0]),
            "step_bytes": work.step_bytes,
            "faults_per_step": med(s["faults"] for s in self.samples["bare"]),
            "c_loop_ms": med(f["floor"] for f in floors) * 1e3 if floors else None,
            "kernel_c_loop": over_floor(lambda s: sum(s["kernels"].values())),
            "instrumented_step_c_loop": over_floor(lambda s: s["step"]),
            "allocated_mb_per_step": med(s["alloc"] for s in inst) / 1e6,
        }


def _machine() -> str:
    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            model = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return (f"{model}, {os.cpu_count()} CPUs, {torch.get_num_threads()} torch threads, "
            f"OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', 'unset')}, torch {torch.__version__}")


def table(rows: list[dict[str, Any]]) -> str:
    lines = ["| workload | step ms | python % | graph wrapper % | kernel % | "
             "kernel / roofline | kernel / C loop | faults/step | allocated MB/step |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(
            f"| {r['workload']} | {r['step_ms']:.3g} | {100 * r['python_share']:.1f} | "
            f"{100 * r['graph_wrapper_share']:.1f} | "
            f"{100 * r['kernel_share']:.1f} | {r['kernel_roofline']:.2f}× | "
            f"{'—' if r['kernel_c_loop'] is None else format(r['kernel_c_loop'], '.2f') + '×'} | "
            f"{r['faults_per_step']:.0f} | "
            f"{r['allocated_mb_per_step']:.1f} |")
    kernels = [r for r in rows if len(r["kernels_ms"]) > 1]
    if kernels:
        lines.append("")
    for r in kernels:
        parts = sorted(r["kernels_ms"].items(), key=lambda kv: -kv[1])
        shown = ", ".join(f"{_short(n)} {t:.3g} ms" for n, t in parts[:4])
        more = f", and {len(parts) - 4} more" if len(parts) > 4 else ""
        lines.append(f"- {r['workload']}: {len(parts)} kernels: {shown}{more}")
    return "\n".join(lines)


def _short(kernel: str) -> str:
    """cpp_fused_abs_add_amax_..._3 → 'kernel 3 (abs, add, amax, …)'."""
    body, _, index = kernel.rpartition("_")
    ops = [op for op in body.removeprefix("cpp_fused_").split("_") if op][:3]
    return f"kernel {index} ({', '.join(ops)}, …)"


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--max-size", type=float, default=2**25,
                        help="cap on the 2**25 workloads' size; ResNet-50 shapes are scaled to it if larger")
    parser.add_argument("--quick", action="store_true", help="--max-size 2**20 --rounds 5")
    parser.add_argument("--rounds", type=int, default=None, help="interleaved rounds (default 21; quick 5)")
    parser.add_argument("--only", help="only the workloads whose name contains this text")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--json", help="write the rows and the roofline here")
    args = parser.parse_args(argv)
    max_size = 2**20 if args.quick else int(args.max_size)
    rounds = args.rounds or (5 if args.quick else 21)
    if args.threads:
        torch.set_num_threads(args.threads)
    chosen = [w for w in workloads(max_size) if args.only is None or args.only in w.name]
    if not chosen:
        parser.error(f"--only {args.only!r} names no workload; they are: "
                     + "; ".join(w.name for w in workloads(max_size)))
    print(f"# {_machine()}; fused step, {rounds} interleaved rounds", flush=True)
    reps = 5 if args.quick else 10
    roofs = [measure_roofline(torch.device("cpu"), reps=reps)]
    sessions = []
    for work in chosen:
        sessions.append(Session(work))
        print(f"# {work.name}: first step {sessions[-1].first_s:.1f} s (compiles, or loads from "
              f"Inductor's disk cache), {sessions[-1].reps} step(s) per measurement", flush=True)
    graphs = fused.compiled_structures()
    kinds = ["bare", "instrumented", "direct", "floor"]
    for r in range(rounds):  # every workload in every round: they all see the same load
        for session in sessions[r % len(sessions):] + sessions[:r % len(sessions)]:
            for kind in kinds[r % 4:] + kinds[:r % 4]:
                session.measure(kind)
    if fused.compiled_structures() != graphs:
        print(f"# WARNING: {fused.compiled_structures() - graphs} recompile(s) while measuring", flush=True)
    roofs.append(measure_roofline(torch.device("cpu"), reps=reps))
    roof = max(roofs, key=lambda x: x.gbps)  # the best bandwidth seen, before or after (as STREAM)
    print(f"# roofline {roof.gbps:.1f} GB/s ({roof.best}; before {roofs[0].gbps:.1f}, "
          f"after {roofs[1].gbps:.1f})", flush=True)
    rows = []
    for session in sessions:
        row = session.summary()
        row["threads"] = torch.get_num_threads()
        row["recompiles_while_measuring"] = fused.compiled_structures() - graphs
        row["roofline_gbps"] = roof.gbps
        row["roofline_ms"] = roof.seconds(int(session.work.step_bytes)) * 1e3
        row["kernel_roofline"] = row["kernel_ms"] / row["roofline_ms"]
        rows.append(row)
    del sessions
    gc.collect()
    print(table(rows))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"machine": _machine(), "rounds": rounds,
                       "roofline": [{"gbps": x.gbps, "best": x.best, "probes": [vars(p) for p in x.probes]}
                                    for x in roofs],
                       "rows": rows}, f, indent=1)
    return rows


if __name__ == "__main__":
    main()
