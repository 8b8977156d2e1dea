"""The table the automatic path choice is fitted on: foreach against fused, per workload.

    .venv/bin/python benchmarks/path_choice.py [--precisions fp32,bf16,int8]
        [--configs plain,centered-momentum] [--sets bench,crossover] [--rounds 5]
        [--max-size 2**25] [--only "NAME;NAME"] [--compile-max-tensors N] [--json FILE]

For every workload, config and state precision, the foreach and the fused path
step the same parameters in interleaved rounds (``rmsprop.bench.measure.run_case``,
the machinery of ``rmsprop bench``: rotating order, median of the rounds, the
first step timed apart); a row shows both medians, the first fused step
(compiling), what ``choose_path`` picks with ``fused=None, foreach=None`` at that
state precision, and how much slower the pick is than the faster path (the
"never more than 10%" that docs/paths.md's rule is held to).

Workload sets: ``bench`` is every ``rmsprop bench`` workload of the size, count,
models, rl and schedule suites up to ``--max-size``; ``crossover`` adds totals of
1e5 to 1e7 in 1 to 1000 tensors, where the choice changes; ``edge`` one tensor of
2,048, 3,072 and 4,096 elements, either side of foreach-int8's jump in step time. Paths whose
structure compiles longer than ``--compile-max-tensors`` tensors allow are left
out (a row says so). Lines print as cases finish; ``--json`` keeps the rows.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time

# OpenMP's default spin-waiting made foreach steps after a fused round take up to 100x their time on
# this shared 2-core machine (benchmarks/extras_cost.py); OMP_WAIT_POLICY=ACTIVE restores it.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402

from rmsprop.bench.measure import _stand_ins, our_default_path, run_case  # noqa: E402
from rmsprop.bench.workloads import Case, Workload, build_cases, format_count, split  # noqa: E402

SETS = ("bench", "crossover", "edge")
PRECISIONS = ("fp32", "bf16", "int8")
CROSSOVER = [(total, count) for total in (10**5, 10**6, 10**7) for count in (1, 16, 100, 1000)
             if total // count >= 100]
EDGE = [(2048, 1), (3072, 1), (4096, 1)]  # one tensor either side of foreach-int8's jump at 4,096


def paths_for(precision: str) -> tuple[str, str]:
    """The bench's foreach and fused path names at ``precision``."""
    suffix = "" if precision == "fp32" else f"-{precision}"
    return f"foreach{suffix}", f"fused{suffix}"


def cases(sets: list[str], configs: list[str], max_size: float) -> list[Case]:
    found: list[Case] = []
    if "bench" in sets:
        found += build_cases(["size", "count", "models", "rl", "schedule"], configs, max_size)
    for name, grid in (("crossover", CROSSOVER), ("edge", EDGE)):
        if name in sets:
            found += [Case(name, Workload(f"{format_count(total)} in {count} tensor{'s' * (count > 1)}",
                                          split(total, count)), config)
                      for config in configs for total, count in grid if total <= max_size]
    unique: dict[tuple, Case] = {}
    for case in found:
        unique.setdefault(case.key, case)
    return list(unique.values())


def row(case: Case, precision: str, rounds: int, compile_max_tensors: int) -> dict:
    """One case at one state precision: both paths timed in the same rounds."""
    foreach, fused = paths_for(precision)
    cr = run_case(case, [foreach, fused], rounds, torch.device("cpu"),
                  compile_max_tensors=compile_max_tensors)
    pick = our_default_path(_stand_ins(case, torch.device("cpu")), case.config, precision)
    f, c = cr.results[foreach], cr.results[fused]
    times = {"foreach": f.median_s, "fused": c.median_s}
    best = min((t for t in times.values() if t is not None), default=None)
    picked = times.get(pick)
    loss = None if best is None or picked is None else picked / best - 1
    return {"workload": case.workload.name, "suite": case.suite, "config": case.config,
            "schedule": case.schedule, "numel": case.workload.numel, "tensors": case.workload.tensors,
            "precision": precision, "foreach_s": f.median_s, "fused_s": c.median_s,
            "fused_first_step_s": c.first_step_s, "foreach_first_step_s": f.first_step_s,
            "fused_skipped": c.skipped, "pick": pick, "loss": loss}


def format_row(r: dict) -> str:
    def ms(s: float | None) -> str:
        return "—" if s is None else f"{s * 1e3:.3g}"

    config = "c+m" if r["config"] == "centered-momentum" else "plain"
    name = r["workload"] + (", ExponentialLR" if r["schedule"] and "Exp" not in r["workload"] else "")
    first = "—" if r["fused_first_step_s"] is None else f"{r['fused_first_step_s']:.1f} s"
    loss = "—" if r["loss"] is None else f"{100 * r['loss']:.0f}%"
    return (f"| {name} | {config} | {r['precision']} | {ms(r['foreach_s'])} | {ms(r['fused_s'])} | {first} "
            f"| {r['pick']} | {loss} |")


def size(text: str) -> int:
    """'2**25', '1e7' or '1000000'."""
    base, _, power = text.partition("**")
    return int(float(base) ** int(power)) if power else int(float(text))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--precisions", default=",".join(PRECISIONS))
    parser.add_argument("--configs", default="plain,centered-momentum")
    parser.add_argument("--sets", default=",".join(SETS))
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--max-size", type=size, default=2**25)
    parser.add_argument("--compile-max-tensors", type=int, default=1000)
    parser.add_argument("--only", default="", help="workload names to keep, separated by ';' (default: all)")
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    only = {w.strip() for w in args.only.split(";") if w.strip()}
    todo = [c for c in cases(args.sets.split(","), args.configs.split(","), args.max_size)
            if not only or c.workload.name in only]
    print(f"# {platform.node()} {platform.processor() or platform.machine()}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads, OMP_WAIT_POLICY={os.environ['OMP_WAIT_POLICY']}; "
          f"{args.rounds} rounds; "
          f"{' '.join(sys.argv)}", flush=True)
    print("| workload | config | state | foreach ms | fused ms | fused first step | pick | pick's loss |")
    print("|---|---|---|---|---|---|---|---|", flush=True)
    rows = []
    start = time.perf_counter()
    for precision in args.precisions.split(","):
        for case in todo:
            r = row(case, precision, args.rounds, args.compile_max_tensors)
            rows.append(r)
            print(format_row(r), flush=True)
            if args.json:
                with open(args.json, "w") as fh:
                    json.dump({"rows": rows, "argv": sys.argv, "machine": platform.node()}, fh, indent=1)
    losses = [r["loss"] for r in rows if r["loss"] is not None]
    print(f"# worst loss of the pick: {100 * max(losses, default=0):.1f}%; "
          f"{time.perf_counter() - start:.0f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
