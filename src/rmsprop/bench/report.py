"""What the benchmark prints and writes: tables, goal lines, JSON and the plot (the progress bar is
:class:`rmsprop.cliutil.Progress`)."""

from __future__ import annotations

import os
import platform
import textwrap
from dataclasses import asdict
from typing import Any

import torch

import rmsprop

from .. import cliutil
from ..cliutil import Progress
from .measure import COMPILED_PATHS, MEMORY_METHOD, CaseResult, PathResult, state_precision
from .roofline import Roofline, last_level_cache_bytes
from .workloads import BYTES_PER_PARAM, Case

__all__ = [
    "SCHEMA", "Progress", "machine_info", "machine_line", "table_header", "case_rows", "goals",
    "to_json", "require_matplotlib", "plot", "format_time", "format_bytes",
]

SCHEMA = "rmsprop-bench/2"
SUITE_TITLES = {"quick": "quick check", "size": "size sweep", "count": "tensor-count sweep",
                "models": "model-shaped parameter lists", "rl": "small RL network",
                "schedule": "lr schedule (ExponentialLR after every step)",
                "gpu": "GPU: sizes in 16 tensors, GPT-2 small and ResNet-50 shapes"}


# ---------------------------------------------------------------- formatting

def format_time(seconds: float | None) -> str:
    if seconds is None:
        return "–"
    for unit, scale in (("s", 1.0), ("ms", 1e-3), ("µs", 1e-6)):
        if seconds >= 0.9995 * scale:  # what rounds to 1000 ms prints as 1 s
            return f"{seconds / scale:.3g} {unit}"
    return f"{seconds * 1e9:.3g} ns"


def format_bytes(n: int | None) -> str:
    if n is None:
        return "n/a"
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if abs(n) >= scale:
            return f"{n / scale:.3g} {unit}"
    return f"{n} B"


# ---------------------------------------------------------------- machine

def machine_info(device: torch.device) -> dict[str, Any]:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    info = {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "last_level_cache_bytes": last_level_cache_bytes(),
        "torch": torch.__version__,
        "rmsprop": rmsprop.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "device": str(device),
        "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def machine_line(info: dict[str, Any]) -> str:
    text = (f"{info['cpu']}, {info['cores']} cores ({info['torch_threads']} torch threads), "
            f"torch {info['torch']}")
    if "gpu" in info:
        text += f", {info['gpu']}"
    load = info.get("load_average")
    if load:
        text += f"; load average {load[0]:.2f} at start"
    return f"machine: {text}; device {info['device']}"


# ---------------------------------------------------------------- tables

_COLUMNS = (("case", 22, "<"), ("path", 18, "<"), ("step", 9, ">"), ("GB/s", 7, ">"), ("roofline", 8, ">"),
            ("vs torch", 8, ">"), ("1st step", 13, ">"), ("recompiles", 10, ">"), ("peak extra", 10, ">"))


def _row(cells: list[str]) -> str:
    return "  ".join(f"{c:{align}{width}}" for c, (_, width, align) in zip(cells, _COLUMNS)).rstrip()


def table_header(case: Case, roofline: Roofline) -> str:
    title = SUITE_TITLES.get(case.suite, case.suite)
    extra = "  total (steps)" if case.schedule else ""
    line = (f"\n== {title} · {case.config} ({BYTES_PER_PARAM[case.config]} B/param) · "
            f"roofline {roofline.gbps:.1f} GB/s ==")
    return line + "\n" + _row([c[0] for c in _COLUMNS]) + extra


def derived(case: Case, result: PathResult, torch_result: PathResult | None,
            roofline: Roofline) -> dict[str, float | None]:
    """GB/s, % of roofline, × roofline time and speed-up over torch's default; the bytes are the
    path's own (its state's width)."""
    if result.median_s is None:
        return {"gbps": None, "roofline_pct": None, "x_roofline_time": None, "speedup_vs_torch": None}
    nbytes = result.bytes_per_step or case.bytes_per_step
    floor = roofline.seconds(nbytes)
    torch_s = torch_result.median_s if torch_result is not None else None
    return {
        "gbps": nbytes / result.median_s / 1e9,
        "roofline_pct": 100 * floor / result.median_s,
        "x_roofline_time": result.median_s / floor,
        "speedup_vs_torch": torch_s / result.median_s if torch_s else None,
    }


def case_rows(cr: CaseResult, case: Case, roofline: Roofline) -> list[str]:
    rows = []
    name = case.workload.name.replace(", ExponentialLR", "")
    torch_result = cr.results.get(cr.torch_default)
    for index, (path, r) in enumerate(cr.results.items()):
        label = name if index == 0 else ""
        mark = " †" if path == cr.torch_default else " *" if path == cr.our_default else ""
        if r.skipped is not None:
            rows.append(_row([label, path + mark, "skipped: " + r.skipped]))
            continue
        d = derived(case, r, torch_result, roofline)
        first = format_time(r.first_step_s)
        if path in COMPILED_PATHS and r.inductor_cache_hits:
            first += " (c)"
        recompiles = str(r.recompiles) + (" (limit)" if r.recompile_limit_hit else "")
        cells = [
            label, path + mark, format_time(r.median_s), f"{d['gbps']:.2f}", f"{d['roofline_pct']:.0f}%",
            f"{d['speedup_vs_torch']:.2f}×" if d["speedup_vs_torch"] else "–", first,
            recompiles if (path in COMPILED_PATHS or r.recompiles) else "–", format_bytes(r.peak_extra_bytes),
        ]
        row = _row(cells)
        if case.schedule:
            row += f"  {format_time(r.total_s)} ({r.steps})"
        rows.append(row)
    if case.suite in ("models", "gpu") and case.workload.tensors != 16:
        rows.append(_row(["", f"({case.workload.tensors} tensors, {case.workload.numel:,} params)"]))
    return rows


LEGEND = """\
step: median over rounds of the mean step time; GB/s: bytes the step must move (its state at the path's
width: -bf16, -int8 and bnb paths move fewer) / step; roofline: % of the best probe's bandwidth (in-cache
sizes can pass 100%); vs torch: torch's default step time / this one;
1st step: includes compiling, or allocating the state ((c): Inductor's on-disk cache was hit);
recompiles: graphs compiled after the first step ((limit): Dynamo's recompile limit hit, eager after it);
peak extra: peak bytes of the tensors one step allocates (CPU: torch profiler allocation events, not RSS);
† torch.optim.RMSprop's default path here; * rmsprop.RMSprop's default path here."""


# ---------------------------------------------------------------- goals

def _find(results: list[CaseResult], numel: int | None = None, tensors: int | None = None,
          name: str | None = None, schedule: bool = False) -> CaseResult | None:
    matches = [cr for cr in results
               if (numel is None or cr.case.workload.numel == numel)
               and (tensors is None or cr.case.workload.tensors == tensors)
               and (name is None or cr.case.workload.name == name)
               and cr.case.schedule == schedule]
    matches.sort(key=lambda cr: cr.case.config != "plain")
    return matches[0] if matches else None


def _median(cr: CaseResult, path: str) -> float | None:
    r = cr.results.get(path)
    return r.median_s if r is not None else None


def goals(results: list[CaseResult], roofline: Roofline) -> list[dict[str, Any]]:
    """The issue's goal lines, computed from the measurements."""
    lines: list[dict[str, Any]] = []

    def add(goal: str, text: str, value: float | None = None, met: bool | None = None) -> None:
        verdict = "" if met is None else (" — goal met" if met else " — goal NOT met")
        lines.append({"goal": goal, "text": text + verdict, "value": value, "met": met})

    cr = _find(results, numel=2**25, tensors=16)
    fused = cr and _median(cr, "fused")
    base = cr and _median(cr, cr.torch_default)
    if cr and fused and base:
        floor = roofline.seconds(cr.case.bytes_per_step)
        speedup = base / fused
        add("32M-16", f"32M fp32 in 16 tensors ({cr.case.config}): fused = {fused / floor:.2f}× roofline "
            f"time, {speedup:.2f}× faster than torch's default ({cr.torch_default}) (goal ≥3×)",
            speedup, speedup >= 3)
    else:
        add("32M-16", "32M fp32 in 16 tensors: not measured (needs --suite size or gpu, --max-size ≥ 3.4e7, "
            "paths fused and torch's default)")

    parts = []
    for name in ("GPT-2 small", "ResNet-50"):
        cr = _find(results, name=name)
        fused = cr and _median(cr, "fused")
        base = cr and _median(cr, cr.torch_default)
        if cr and fused and base:
            parts.append(f"{name} fused {base / fused:.2f}× faster than torch's default "
                         f"({fused / roofline.seconds(cr.case.bytes_per_step):.2f}× roofline time)")
    add("models", "; ".join(parts) if parts
        else "GPT-2 / ResNet-50: not measured (needs --suite models or gpu)")

    cr = _find(results, name="RL MLP")
    ours = cr and _median(cr, cr.our_default)
    base = cr and _median(cr, cr.torch_default)
    if cr and ours and base:
        w = cr.case.workload
        add("rl", f"RL net ({w.numel:,} params in {w.tensors} tensors): our default step ({cr.our_default}) "
            f"= {ours / base:.2f}× torch's ({cr.torch_default}) (goal ≤0.6×)",
            ours / base, ours / base <= 0.6)
    else:
        add("rl", "RL net: not measured (needs --suite rl or quick)")

    parts = []
    for label, cr in (("32M/16", _find(results, numel=2**25, tensors=16)),
                      ("GPT-2", _find(results, name="GPT-2 small"))):
        fused_run = cr.results.get("fused") if cr else None
        compiled_run = cr.results.get("torch-compile") if cr else None
        if fused_run and compiled_run and fused_run.median_s and compiled_run.median_s:
            parts.append(f"{label}: fused step = {fused_run.median_s / compiled_run.median_s:.2f}× "
                         f"torch.compile's time, first step {format_time(fused_run.first_step_s)} vs "
                         f"{format_time(compiled_run.first_step_s)}")
    cr = _find(results, schedule=True)
    fused_run = cr.results.get("fused") if cr else None
    compiled_run = cr.results.get("torch-compile") if cr else None
    if fused_run and compiled_run and fused_run.skipped is None and compiled_run.skipped is None:
        limit = (", then hit Dynamo's recompile limit and ran eager"
                 if compiled_run.recompile_limit_hit else "")
        parts.append(f"under ExponentialLR torch.compile recompiled {compiled_run.recompiles}× in "
                     f"{compiled_run.steps} steps{limit} ({format_time(compiled_run.total_s)} in all), "
                     f"fused {fused_run.recompiles} recompiles ({format_time(fused_run.total_s)})")
    add("torch-compile", "vs torch.compile: " + ("; ".join(parts) if parts else
        "not measured (needs paths fused and torch-compile)"))

    parts = []
    for cr in results:
        for path in ("foreach", "fused"):
            plain, guarded = _median(cr, path), _median(cr, f"{path}+skip")
            if plain and guarded:
                w = cr.case.workload
                parts.append(f"{w.name} {cr.case.config} {path} +{guarded / plain - 1:.0%}")
    if parts:
        add("nonfinite", "nonfinite='skip' costs (goal ≈ one extra read of the gradients: ≤20% of the plain "
            "fused step, ≤11% centered + momentum): " + "; ".join(parts))

    parts, met = [], []
    for cr in results:
        for path, goal in (("fused-bf16", 1.0), ("fused-int8", 1.3)):
            plain, narrow = _median(cr, "fused"), _median(cr, path)
            if plain and narrow:
                met.append(narrow / plain <= goal)
                parts.append(f"{cr.case.workload.name} {cr.case.config} {state_precision(path)} "
                             f"{narrow / plain:.2f}×")
    if parts:
        add("state-precision", "fused step with narrower state / with fp32 state (goal ≤1.0× bf16, "
            "≤1.3× int8): " + "; ".join(parts), None, all(met))

    parts = []
    for cr in results:
        for mine, peer in (("fused-int8", "bnb-rmsprop8bit"), ("fused", "bnb-rmsprop32bit")):
            a, b = _median(cr, mine), _median(cr, peer)
            if a and b:
                parts.append(f"{cr.case.workload.name} {cr.case.config} {peer} / {mine} {b / a:.2f}×")
    if parts:
        add("bitsandbytes", "bitsandbytes' step time / ours (>1: ours faster): " + "; ".join(parts))
    return lines


# ---------------------------------------------------------------- JSON

def to_json(machine: dict[str, Any], settings: dict[str, Any], roofline: Roofline,
            shown: list[tuple[Case, CaseResult]], goal_lines: list[dict[str, Any]], elapsed_s: float) -> dict:
    cases = []
    for case, cr in shown:
        torch_result = cr.results.get(cr.torch_default)
        entries = []
        for r in cr.results.values():
            entries.append({**asdict(r), **derived(case, r, torch_result, roofline)})
        cases.append({
            "suite": case.suite, "name": case.workload.name, "config": case.config, "schedule": case.schedule,
            "numel": case.workload.numel, "tensors": case.workload.tensors,
            "bytes_per_step": case.bytes_per_step, "roofline_s": roofline.seconds(case.bytes_per_step),
            "torch_default": cr.torch_default, "our_default": cr.our_default, "results": entries,
        })
    return {
        "schema": SCHEMA,
        "machine": machine,
        "settings": settings,
        "roofline": {"gbps": roofline.gbps, "best": roofline.best, "numel": roofline.numel,
                     "probes": [asdict(p) for p in roofline.probes], "notes": roofline.notes},
        "memory_method": MEMORY_METHOD["cuda" if machine["device"].startswith("cuda") else "cpu"],
        "cases": cases,
        "goals": goal_lines,
        "elapsed_s": elapsed_s,
    }


# ---------------------------------------------------------------- plot

def require_matplotlib() -> None:
    """Raise ImportError with the fix when matplotlib is missing."""
    cliutil.require_matplotlib("bench")


def plot(filename: str, shown: list[tuple[Case, CaseResult]], roofline: Roofline,
         machine: dict[str, Any]) -> None:
    """Log-log step time per path: against size (size sweep), against tensor count (count sweep);
    every case against size when neither sweep ran."""
    plt = cliutil.pyplot("bench")
    from matplotlib.ticker import FuncFormatter

    panels: dict[tuple[str, str], list[tuple[Case, CaseResult]]] = {}
    for case, cr in shown:
        if case.suite in ("size", "count", "gpu") and not case.schedule:
            panels.setdefault((case.suite, case.config), []).append((case, cr))
    if not panels:
        for case, cr in shown:
            panels.setdefault(("all", case.config), []).append((case, cr))
    fig, axes = plt.subplots(1, len(panels), figsize=(6.5 * len(panels), 5), squeeze=False)
    for ax, ((suite, config), items) in zip(axes[0], panels.items()):
        by_count = suite == "count"
        items = sorted({id(cr): (c, cr) for c, cr in items}.values(),
                       key=lambda x: x[0].workload.tensors if by_count else x[0].workload.numel)
        xs_of = (lambda c: c.workload.tensors) if by_count else (lambda c: c.workload.numel)
        names = list(dict.fromkeys(p for _, cr in items for p in cr.results))
        # the gpu suite's model shapes are points beside its 16-tensor sweep, not on its lines
        gpu = suite == "gpu"
        for name in names:
            pts = [(xs_of(c), median * 1e3, gpu and c.workload.tensors != 16) for c, cr in items
                   if name in cr.results and (median := cr.results[name].median_s)]
            line = [(x, y) for x, y, alone in pts if not alone]
            style = "--" if name.startswith("torch") else "-"
            color = None
            if line:
                color = ax.plot(*zip(*line), style, marker="o", markersize=4, label=name)[0].get_color()
            points = [(x, y) for x, y, alone in pts if alone]
            if points:
                ax.plot(*zip(*points), "x", markersize=7, color=color, label=None if line else name)
        floor = [(xs_of(c), roofline.seconds(c.bytes_per_step) * 1e3) for c, _ in items]
        ax.plot(*zip(*floor), ":", color="black", label=f"roofline ({roofline.gbps:.1f} GB/s)")
        ax.set_xscale("log")
        ax.set_yscale("log")
        plain = FuncFormatter(lambda v, _: f"{v:g}")
        ax.yaxis.set_major_formatter(plain)
        low, high = ax.get_ylim()
        if high / low < 100:  # under two decades: label 2, 3 and 5 × 10^k too
            ax.yaxis.set_minor_formatter(FuncFormatter(lambda v, _: f"{v:g}" if f"{v:e}"[0] in "235" else ""))
        else:
            ax.yaxis.set_minor_formatter(FuncFormatter(lambda v, _: ""))
        ax.grid(True, which="both", alpha=0.3)
        if by_count:
            total = items[0][0].workload.numel if items else 0
            ax.set_xlabel(f"tensors (same {total:,} params in all)")
        else:
            ax.set_xlabel("parameters (fp32)")
        ax.set_ylabel("median time per step (ms)")
        ax.set_title(f"{SUITE_TITLES.get(suite, 'all cases')} · {config}")
        ax.legend(fontsize=8, framealpha=0.5)
    if any(suite == "gpu" for suite, _ in panels):
        axes[0][0].annotate("×: ResNet-50 and GPT-2 small shapes", (0.02, 0.02), xycoords="axes fraction",
                            fontsize=8)
    fig.suptitle(textwrap.fill(f"rmsprop bench — {machine_line(machine)[9:]}", 70 * len(panels)), fontsize=9)
    fig.tight_layout()
    fig.savefig(filename, dpi=120)
    plt.close(fig)
