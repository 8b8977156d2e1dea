"""Why the TF-like form trails PyTorch's on A2C CartPole: the size of every update, per form.

    .venv/bin/python benchmarks/a2c_why.py --steps 50000 --seeds 0,1,2 --jobs 2 \\
        --json /tmp/a2c_why.json --out docs/figures/a2c_why.png

Each form of :data:`rmsprop.a2c.FORMS` (default: torch, sb3, eps-in-sqrt, v0-1) trains
SB3's A2C on CartPole-v1 exactly as ``rmsprop compare --task a2c-cartpole`` does (A2C's
defaults, lr 7e-4, α 0.99, ε 1e-5; A2C also clips the gradient to a global norm of 0.5),
and after every update this records, separately for the policy network (``_pi``: its MLP
and the action head) and the value network (``_vf``: its MLP and the value head):

- ``step``: RMS(Δθ) / lr, the update's size in units of the learning rate. PyTorch's form
  divides g by √v + ε with v ≈ g², so its steps are about 1 (10 at the first update, where
  v = (1 − α)·g²); the TF-like form divides by √(v + ε): about 1 while v still holds its
  start of 1, and never less than √ε ≈ 3.2e-3 after, which is far above √v wherever
  v ≪ ε.
- ``grad``: RMS(g) of the (clipped) gradient the optimizer stepped with.
- ``v``: the mean square average (the optimizer's ``square_avg``).
- ``below_eps``: the fraction of elements whose v is below ε: there, ε inside the root
  sets the denominator instead of the gradient's scale.

and for the whole policy: ``clipped``, the fraction of updates whose gradient A2C clipped
(to a norm of 0.5), and ``v``, the mean square average of all parameters.

Then the final evaluation return (10 deterministic episodes, as the compare task's last
point). The table gives each quantity's mean over the seeds in windows of updates
(1, 2–10, 11–100, ...); the picture plots the two networks' step sizes and the policy
network's v against the update number. Recording reads the parameters and the
optimizer's state only, so every run's training is the compare task's run for the same
form and seed, bit for bit (the final returns match the compare run's, seed by seed).
``--from-json`` redraws the table and the picture of an earlier ``--json`` without running
(the JSON holds every per-update series: about 24 MB for 12 runs of 50,000 steps).
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing
import statistics
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from typing import Any

import torch

from rmsprop import a2c
from rmsprop.cliutil import figure, save_png

PARTS = ("pi", "vf")  # the policy network (and action head), the value network (and value head)
QUANTITIES = ("step_pi", "step_vf", "grad_pi", "grad_vf", "v_pi", "v_vf", "below_eps_pi", "below_eps_vf",
              "clipped", "v")
WINDOWS = ((1, 1), (2, 10), (11, 100), (101, 1000), (1001, 10000), (10001, 100000))
FORMS = ("torch", "sb3", "eps-in-sqrt", "v0-1")


def measure(form: str, seed: int, steps: int, lr: float) -> dict[str, Any]:
    """One run; per update (index 0 is the first update) each of :data:`QUANTITIES`."""
    torch.set_num_threads(1)
    series: dict[str, list[float]] = {q: [] for q in QUANTITIES}
    parts: dict[str, torch.Tensor] = {}
    before: list[torch.Tensor] = []

    def record(model: Any) -> None:
        named = list(model.policy.named_parameters())
        theta = torch.nn.utils.parameters_to_vector([p for _, p in named]).detach().clone()
        if before:
            opt = model.policy.optimizer
            g = torch.cat([p.grad.reshape(-1) for _, p in named])
            v = torch.cat([opt.state[p]["square_avg"].reshape(-1) for _, p in named])
            step = (theta - before[0]) / lr
            for part, mask in parts.items():
                series[f"step_{part}"].append(step[mask].pow(2).mean().sqrt().item())
                series[f"grad_{part}"].append(g[mask].pow(2).mean().sqrt().item())
                series[f"v_{part}"].append(v[mask].mean().item())
                series[f"below_eps_{part}"].append((v[mask] < a2c.EPS).double().mean().item())
            series["clipped"].append(float(g.norm().item() >= model.max_grad_norm * (1 - 1e-5)))
            series["v"].append(v.mean().item())
            before[0] = theta
        else:
            before.append(theta)
            parts.update({part: torch.cat([torch.full((p.numel(),), _part(n) == part) for n, p in named])
                          for part in PARTS})

    curves = a2c.train(form, lr, seed, steps, 1, 10, on_update=record)
    return {"form": form, "seed": seed, "final_return": curves["eval_return"][-1], "series": series}


def _part(name: str) -> str:
    return "pi" if name.startswith(("mlp_extractor.policy_net", "action_net")) else "vf"


def window_means(values: list[float]) -> list[float | None]:
    return [statistics.fmean(values[lo - 1:hi]) if len(values) >= lo else None for lo, hi in WINDOWS]


def log_bins(count: int, bins: int = 60) -> list[tuple[int, int]]:
    """Update index ranges [lo, hi) spaced evenly in log(index + 1) from 0 to ``count``."""
    edges = sorted({round(math.exp(i * math.log(count + 1) / bins)) - 1 for i in range(bins + 1)})
    return [(lo, hi) for lo, hi in zip(edges, edges[1:], strict=False) if hi > lo]


def summarise(runs: list[dict[str, Any]], forms: list[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for form in forms:
        mine = [r for r in runs if r["form"] == form]
        count = len(mine[0]["series"]["clipped"])
        bins = log_bins(count)
        out[form] = {
            "final_return": [r["final_return"] for r in mine],
            "windows": {q: [statistics.fmean(c) if None not in c else None
                            for c in zip(*(window_means(r["series"][q]) for r in mine))] for q in QUANTITIES},
            "curve_x": [(lo + hi + 1) / 2 for lo, hi in bins],  # updates counted from 1
            "curve": {q: [statistics.fmean(statistics.fmean(r["series"][q][lo:hi]) for r in mine)
                          for lo, hi in bins] for q in QUANTITIES},
        }
    return out


def table(summary: dict[str, Any], steps: int, seeds: list[int]) -> str:
    lines = [f"A2C CartPole-v1, {steps:,} steps = {steps // a2c.N_STEPS:,} updates, seeds "
             f"{', '.join(map(str, seeds))}; means over seeds within windows of updates"]
    shown = [w for w in WINDOWS if w[0] <= steps // a2c.N_STEPS]
    head = "".join(f"{(f'{lo}' if lo == hi else f'{lo}-{hi}'):>12}" for lo, hi in shown)
    formats = {"step": ".3g", "grad": ".2e", "v": ".2e", "below": ".1%", "clipped": ".1%"}
    for q in QUANTITIES:
        fmt = formats[q.split("_")[0]]
        lines.append(f"\n{q:<13}{head}")
        for form, s in summary.items():
            cells = (format(x, fmt) for x in s["windows"][q] if x is not None)
            lines.append(f"{form:<13}" + "".join(f"{c:>12}" for c in cells))
    lines.append("\nfinal evaluation return (10 episodes): mean ± sd over seeds [per seed]")
    for form, s in summary.items():
        r = s["final_return"]
        lines.append(f"{form:<13}{statistics.fmean(r):7.1f} ± {statistics.pstdev(r):5.1f}  {r}")
    return "\n".join(lines)


def plot(filename: str, summary: dict[str, Any], steps: int, seeds: list[int]) -> None:
    fig = figure(figsize=(14, 5.0))
    ax_pi, ax_vf, ax_v = fig.subplots(1, 3)
    for form, s in summary.items():
        f = a2c.FORMS[form]
        alone = form in ("eps-in-sqrt", "v0-1")  # dashed: they overlap the full forms in places
        style = {"color": f.color, "label": f.label, "linestyle": "--" if alone else "-"}
        ax_pi.plot(s["curve_x"], s["curve"]["step_pi"], **style)
        ax_vf.plot(s["curve_x"], s["curve"]["step_vf"], **style)
        ax_v.plot(s["curve_x"], s["curve"]["v_pi"], **style)
    any_form = next(iter(summary.values()))
    xs = any_form["curve_x"]
    ax_v.plot(xs, [a2c.ALPHA ** x for x in xs], color="black", linestyle=":",
              label="α^k (what is left of v₀ = 1)")
    ax_v.axhline(a2c.EPS, color="gray", linestyle="--", label="ε = 1e-5")
    for ax in (ax_pi, ax_vf):
        ax.axhline(1.0, color="gray", linestyle="--", linewidth=0.8)
    titles = ("policy network: update size RMS(Δθ)/lr", "value network: update size RMS(Δθ)/lr",
              "policy network: mean square average v")
    for ax, title in zip((ax_pi, ax_vf, ax_v), titles, strict=True):
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("update (5 environment steps each)")
        ax.set_title(title, fontsize=10)
        ax.grid(True, which="major", alpha=0.3)
    ax_v.set_ylim(1e-7, 2)
    handles, labels = ax_v.get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=3, fontsize=8, frameon=False)
    fig.suptitle(f"A2C CartPole-v1, lr {a2c.LR:g}, α {a2c.ALPHA}, ε {a2c.EPS:g}: mean over seeds "
                 f"{', '.join(map(str, seeds))} in log-spaced windows ({steps:,} steps)", fontsize=10)
    fig.tight_layout(rect=(0, 0.13, 1, 1))
    save_png(fig, filename)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=50_000,
                        help="environment steps per run (default: 50000)")
    parser.add_argument("--seeds", default="0,1,2", help="comma list (default: 0,1,2)")
    parser.add_argument("--forms", default=",".join(FORMS), help=f"comma list (default: {','.join(FORMS)})")
    parser.add_argument("--lr", type=float, default=a2c.LR, help=f"learning rate (default: {a2c.LR:g})")
    parser.add_argument("--jobs", type=int, default=1, help="worker processes (default: 1)")
    parser.add_argument("--json", help="write the summary (and every per-update series) here")
    parser.add_argument("--out", help="the picture (PNG)")
    parser.add_argument("--from-json", metavar="FILE",
                        help="no runs: the table and picture of an earlier --json")
    args = parser.parse_args(argv)
    if args.from_json:
        with open(args.from_json) as f:
            saved = json.load(f)
        print(table(saved["summary"], saved["steps"], saved["seeds"]))
        if args.out:
            plot(args.out, saved["summary"], saved["steps"], saved["seeds"])
        return 0
    seeds = [int(s) for s in args.seeds.split(",")]
    forms = args.forms.split(",")
    cases = [(form, seed, args.steps, args.lr) for form in forms for seed in seeds]
    started = time.perf_counter()
    if args.jobs > 1:
        with ProcessPoolExecutor(args.jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
            runs = list(pool.map(measure, *zip(*cases, strict=True)))
    else:
        runs = [measure(*case) for case in cases]
    summary = summarise(runs, forms)
    print(table(summary, args.steps, seeds))
    print(f"\n{len(runs)} runs in {time.perf_counter() - started:.0f} s, torch {torch.__version__}, "
          f"{args.jobs} job(s)", file=sys.stderr)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"steps": args.steps, "seeds": seeds, "lr": args.lr, "summary": summary,
                       "runs": runs}, f)
    if args.out:
        plot(args.out, summary, args.steps, seeds)
    return 0


if __name__ == "__main__":
    sys.exit(main())
