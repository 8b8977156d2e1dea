"""Draw the paths optimizers take on classic 2-D test functions, from one start.

Each optimizer (see rmsprop.lineup) minimizes f(x, y) from the same start in
float64, one full step per iteration; the picture has, per function, a contour
plot with every path and a panel of f - f* against the step. Functions:

  quadratic   f = 0.05 x^2 + 5 y^2: a valley 100x steeper across than along, with
              its axes on the parameters' axes. SGD's lr is capped by the steep
              direction (unstable above 2/10), so it crawls along the flat one;
              RMSProp divides each coordinate's step by its own gradient scale.
  rotated     the same valley turned by 45 degrees: now both parameters see both
              curvatures, and per-parameter scaling has nothing to fix.
  rosenbrock  f = (1 - x)^2 + 100 (y - x^2)^2, a curved valley; minimum 0 at (1, 1).
              Momentum matters here more than per-parameter scaling.
  beale       f = (1.5 - x + xy)^2 + (2.25 - x + xy^2)^2 + (2.625 - x + xy^3)^2;
              gradients from 1e-2 to 1e2 along the way; minimum 0 at (3, 0.5).
  saddle      f = x^2/2 + y^4/4 - y^2/2: a saddle at (0, 0), minima -1/4 at (0, +-1);
              the start sits 1e-4 off the ridge, where the gradient that leads
              away is tiny. RMSProp's normalised step leaves at once; SGD waits.

Default learning rates are per function and per optimizer (--help-lrs prints
them): the RMSProp forms and Adam take steps of about lr in parameter units, so
they share one lr per function (a tenth of it with momentum 0.9, whose steps add
up to ten); SGD runs at 0.9x its stability limit where the function has one
(quadratic: 2/10), otherwise at the best of a log grid; SGD with momentum at the
best of the same grid. --lr changes any of them.

A path "reaches" the minimum when it ends within --tol of one (default 0.01);
the table and the JSON give the first step from which it stays there.

JSON (--json, and FILE.json beside --out FILE.png): schema, settings, and per
function: name, formula, minima, f_min, start, steps, tol, and runs, each with
optimizer, label, lr, points [[x, y], ...] (steps + 1 of them unless it
diverged), loss [f at each point], final_gap (f - f*), distance (to the nearest
minimum), reached, reached_at (or null) and diverged.

examples:
  rmsprop trajectories                                 the ill-conditioned quadratic
  rmsprop trajectories --function all --out paths.png  every function, one row each
  rmsprop trajectories --function saddle --optimizers sgd,rmsprop --lr 0.05 --gif saddle.gif
  rmsprop trajectories --function rosenbrock --lr rmsprop=0.02 --steps 2000 --json -
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from .cliutil import (
    add_json_option,
    comma_list,
    figure,
    guarded,
    output_file,
    positive_float,
    positive_int,
    save_png,
    text_stream,
    torch_threads,
    write_json,
)
from .lineup import DEFAULT_NAMES, LINEUP, add_lineup_options, lrs_table, make, resolve_lrs

__all__ = [
    "SURFACES", "Surface", "Run", "configure_parser", "run", "run_surface", "trace", "plot", "animate",
    "to_json",
]

SCHEMA = "rmsprop-trajectories/1"
DIVERGED = 1e6  # |x| or |y| beyond this (or not finite) ends a path as diverged
GAP_FLOOR = 1e-12  # the loss panel's floor: f - f* below this is drawn at it


@dataclass(frozen=True)
class Surface:
    """A 2-D test function with its minima, its start and the default settings for it."""

    name: str
    formula: str
    f: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    minima: tuple[tuple[float, float], ...]
    f_min: float
    start: tuple[float, float]
    xlim: tuple[float, float]
    ylim: tuple[float, float]
    steps: int
    lrs: Mapping[str, float] = field(repr=False)

    def value(self, point: Sequence[float]) -> float:
        x, y = (torch.tensor(v, dtype=torch.float64) for v in point)
        return self.f(x, y).item()

    def distance(self, point: Sequence[float]) -> float:
        """Distance from ``point`` to the nearest minimum."""
        return min(math.dist(point, m) for m in self.minima)


def _quadratic(x, y):
    return 0.05 * x**2 + 5 * y**2


def _rotated(x, y):
    return _quadratic((x + y) / math.sqrt(2), (y - x) / math.sqrt(2))


def _rosenbrock(x, y):
    return (1 - x) ** 2 + 100 * (y - x**2) ** 2


def _beale(x, y):
    return (1.5 - x + x * y) ** 2 + (2.25 - x + x * y**2) ** 2 + (2.625 - x + x * y**3) ** 2


def _saddle(x, y):
    return x**2 / 2 + y**4 / 4 - y**2 / 2


def _lrs(sgd: float, momentum: float, adaptive: float, adam: float | None = None) -> dict[str, float]:
    """One surface's defaults: SGD's, SGD+momentum's, and the shared lr of the adaptive methods."""
    return {"sgd": sgd, "momentum": momentum, "rmsprop-seed": adaptive, "rmsprop": adaptive,
            "rmsprop-centered": adaptive, "rmsprop-momentum": adaptive / 10, "rmsprop-tf1": adaptive,
            "adam": adaptive if adam is None else adam}


_ALL = (
    Surface("quadratic", "0.05x² + 5y²", _quadratic, ((0.0, 0.0),), 0.0, (-8.0, 2.0),
            (-9.0, 3.0), (-2.5, 2.5), 150, _lrs(sgd=0.18, momentum=0.03, adaptive=0.1)),
    Surface("rotated", "the quadratic turned 45°", _rotated, ((0.0, 0.0),), 0.0, (-6.0, -4.5),
            (-8.0, 8.0), (-8.0, 8.0), 150, _lrs(sgd=0.18, momentum=0.03, adaptive=0.1)),
    Surface("rosenbrock", "(1−x)² + 100(y−x²)²", _rosenbrock, ((1.0, 1.0),), 0.0, (-1.5, 2.0),
            (-2.0, 2.0), (-1.0, 3.0), 500, _lrs(sgd=1.5e-3, momentum=1.5e-3, adaptive=0.05)),
    Surface("beale", "Beale's function", _beale, ((3.0, 0.5),), 0.0, (1.0, 1.5),
            (-1.0, 4.5), (-1.5, 2.5), 500, _lrs(sgd=0.03, momentum=5e-3, adaptive=0.03)),
    Surface("saddle", "x²/2 + y⁴/4 − y²/2", _saddle, ((0.0, 1.0), (0.0, -1.0)), -0.25, (2.0, 1e-4),
            (-2.5, 2.5), (-1.6, 1.6), 100, _lrs(sgd=0.05, momentum=0.05, adaptive=0.05)),
)

#: name → :class:`Surface`.
SURFACES: Mapping[str, Surface] = {s.name: s for s in _ALL}


@dataclass
class Run:
    """One optimizer's path on one surface."""

    optimizer: str
    lr: float
    points: list[tuple[float, float]]
    loss: list[float]
    diverged: bool

    def summary(self, surface: Surface, tol: float) -> dict[str, Any]:
        """final_gap, distance, reached and reached_at (the first step from which the path stays
        within ``tol`` of a minimum)."""
        distances = [surface.distance(p) for p in self.points]
        reached_at = None
        if not self.diverged:
            for index in range(len(distances) - 1, -1, -1):
                if distances[index] > tol:
                    break
                reached_at = index
        return {"final_gap": self.loss[-1] - surface.f_min, "distance": distances[-1],
                "reached": reached_at is not None, "reached_at": reached_at}


def trace(surface: Surface, optimizer: str, lr: float, steps: int,
          start: tuple[float, float] | None = None) -> Run:
    """Minimize ``surface`` with the line-up's ``optimizer`` for ``steps`` steps from ``start``
    (default: the surface's), recording every point and f there."""
    xy = torch.tensor(start or surface.start, dtype=torch.float64, requires_grad=True)
    opt = make(optimizer, [xy], lr)
    points, losses = [], []
    diverged = False
    for step in range(steps + 1):
        if not bool(torch.isfinite(xy).all()) or xy.detach().abs().max().item() > DIVERGED:
            diverged = True
            break
        loss = surface.f(xy[0], xy[1])
        points.append(tuple(xy.detach().tolist()))
        losses.append(loss.item())
        if step == steps:
            break
        opt.zero_grad()
        loss.backward()
        opt.step()
    return Run(optimizer, lr, points, losses, diverged)


def run_surface(surface: Surface, optimizers: Sequence[str], lrs: Mapping[str, float],
                steps: int | None = None, start: tuple[float, float] | None = None) -> list[Run]:
    """Every optimizer's path on ``surface`` (``lrs`` by name; steps and start: the surface's)."""
    return [trace(surface, name, lrs[name], steps or surface.steps, start) for name in optimizers]


# ---------------------------------------------------------------- output

def to_json(results: list[tuple[Surface, list[Run]]], settings: dict[str, Any], tol: float) -> dict[str, Any]:
    functions = []
    for surface, runs in results:
        functions.append({
            "name": surface.name, "formula": surface.formula, "minima": [list(m) for m in surface.minima],
            "f_min": surface.f_min, "start": list(runs[0].points[0]) if runs else list(surface.start),
            "steps": max((len(r.points) - 1 for r in runs), default=0), "tol": tol,
            "runs": [{"optimizer": r.optimizer, "label": LINEUP[r.optimizer].label, "lr": r.lr,
                      "points": [list(p) for p in r.points], "loss": r.loss,
                      **r.summary(surface, tol), "diverged": r.diverged} for r in runs],
        })
    return {"schema": SCHEMA, "settings": settings, "functions": functions}


def table(surface: Surface, runs: list[Run], tol: float, steps: int) -> str:
    start = runs[0].points[0] if runs else surface.start
    minima = ", ".join(f"({m[0]:g}, {m[1]:g})" for m in surface.minima)
    lines = [f"== {surface.name}: f = {surface.formula}; minimum {surface.f_min:g} at {minima}; "
             f"start ({start[0]:g}, {start[1]:g}), {steps} steps ==",
             f"{'optimizer':<18} {'lr':>8} {'f - f*':>10} {'distance':>10}  reached (within {tol:g})"]
    for r in runs:
        s = r.summary(surface, tol)
        reached = ("diverged" if r.diverged else f"from step {s['reached_at']}" if s["reached"] else "no")
        lines.append(f"{r.optimizer:<18} {r.lr:>8.3g} {s['final_gap']:>10.2e} {s['distance']:>10.3g}  "
                     f"{reached}")
    return "\n".join(lines)


def _grid(surface: Surface, n: int = 240):
    xs = torch.linspace(*surface.xlim, n, dtype=torch.float64)
    ys = torch.linspace(*surface.ylim, n, dtype=torch.float64)
    gx, gy = torch.meshgrid(xs, ys, indexing="xy")
    gap = (surface.f(gx, gy) - surface.f_min).clamp_min(0)
    return gx.numpy(), gy.numpy(), gap.numpy()


def _figure(results: list[tuple[Surface, list[Run]]]):
    """The figure and, per run, the artists that animate() moves."""
    fig = figure(figsize=(12, 4.6 * len(results)))
    import numpy as np
    from matplotlib.colors import LogNorm

    axes = fig.subplots(len(results), 2, squeeze=False, gridspec_kw={"width_ratios": [1.25, 1]})
    artists = []
    for (surface, runs), (ax_map, ax_loss) in zip(results, axes):
        gx, gy, gap = _grid(surface)
        top = max(float(gap.max()), 1e-3)
        levels = np.logspace(math.log10(top) - 6, math.log10(top), 13)
        shifted = gap + levels[0] / 10  # log levels need f - f* > 0 everywhere
        ax_map.contourf(gx, gy, shifted, levels=levels, norm=LogNorm(), cmap="Greys", alpha=0.3, extend="min")
        ax_map.contour(gx, gy, shifted, levels=levels, norm=LogNorm(), colors="0.6", linewidths=0.5)
        for m in surface.minima:
            ax_map.plot(*m, marker="*", color="gold", markeredgecolor="black", markersize=15, zorder=5)
        start = runs[0].points[0] if runs else surface.start
        ax_map.plot(*start, marker="o", color="black", markersize=6, zorder=5)
        for r in runs:
            c = LINEUP[r.optimizer]
            xs, ys = zip(*r.points)
            path, = ax_map.plot(xs, ys, "-", color=c.color, linewidth=1.5, marker=".", markersize=2.5,
                                label=f"{c.label}, lr={r.lr:g}")
            gaps = [max(v - surface.f_min, GAP_FLOOR) for v in r.loss]
            curve, = ax_loss.plot(range(len(gaps)), gaps, color=c.color, linewidth=1.5)
            artists.append((r.points, gaps, path, curve))
        ax_map.set_xlim(*surface.xlim)
        ax_map.set_ylim(*surface.ylim)
        ax_map.set_title(f"{surface.name}: f = {surface.formula}  (● start, ★ minimum)", fontsize=10)
        ax_map.set_xlabel("x")
        ax_map.set_ylabel("y")
        ax_map.legend(fontsize=7, loc="best", framealpha=0.8)
        ax_loss.set_yscale("log")
        ax_loss.set_ylim(bottom=GAP_FLOOR / 2)
        ax_loss.set_xlabel("step")
        ax_loss.set_ylabel("f − f*")
        ax_loss.set_title("loss gap against step (floored at 1e-12)", fontsize=10)
        ax_loss.grid(True, which="major", alpha=0.3)
    fig.tight_layout()
    return fig, artists


def plot(filename: str, results: list[tuple[Surface, list[Run]]]) -> None:
    """Contour plot with every path and the loss panel, one row per surface, as a PNG."""
    fig, _ = _figure(results)
    save_png(fig, filename)


def animate(filename: str, results: list[tuple[Surface, list[Run]]], frames: int = 50, fps: int = 10) -> None:
    """The same figure as :func:`plot`, the paths growing step by step, as an animated GIF.

    The contours are drawn once; each frame redraws only the paths (blitting), then Pillow
    (a dependency of matplotlib) writes the frames."""
    fig, artists = _figure(results)
    from PIL import Image

    fig.set_dpi(60)
    for *_, path, curve in artists:
        path.set_animated(True)
        curve.set_animated(True)
    canvas = fig.canvas
    canvas.draw()  # everything but the animated paths
    background = canvas.copy_from_bbox(fig.bbox)
    longest = max((len(points) for points, *_ in artists), default=1)
    marks = sorted({round(i * (longest - 1) / max(frames - 1, 1)) for i in range(frames)})
    images = []
    for k in marks:
        canvas.restore_region(background)
        for points, gaps, path, curve in artists:
            n = min(k + 1, len(points))
            path.set_data([p[0] for p in points[:n]], [p[1] for p in points[:n]])
            curve.set_data(range(n), gaps[:n])
            path.axes.draw_artist(path)
            curve.axes.draw_artist(curve)
        canvas.blit(fig.bbox)
        images.append(Image.frombuffer("RGBA", canvas.get_width_height(), bytes(canvas.buffer_rgba()))
                      .convert("RGB").quantize(colors=64))
    images[0].save(filename, save_all=True, append_images=images[1:], duration=round(1000 / fps), loop=0)


# ---------------------------------------------------------------- command line

def _start(text: str) -> tuple[float, float]:
    """X,Y: finite and inside the box beyond which a path counts as diverged (a start outside
    it would end every path before its first point)."""
    try:
        x, y = (float(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected X,Y, got {text!r}") from None
    if not all(math.isfinite(v) and abs(v) <= DIVERGED for v in (x, y)):
        raise argparse.ArgumentTypeError(f"X and Y must be finite and within ±{DIVERGED:g} "
                                         f"(where a path counts as diverged), got {text}")
    return x, y


def configure_parser(parser: argparse.ArgumentParser) -> None:
    """Add the command's options to ``parser`` and make :func:`run` its action."""
    parser.add_argument("--function", action="append", metavar="NAME",
                        type=comma_list(tuple(SURFACES), {"all": tuple(SURFACES)}),
                        help=f"{', '.join(SURFACES)} or all; repeat or comma-separate (default: quadratic)")
    add_lineup_options(parser, "per function")
    parser.add_argument("--steps", type=positive_int, help="steps per path (default: per function)")
    parser.add_argument("--start", type=_start, metavar="X,Y", help="start point (default: per function)")
    parser.add_argument("--tol", type=positive_float, default=0.01,
                        help="distance to a minimum that counts as reaching it (default: %(default)s)")
    parser.add_argument("--out", metavar="FILE.png", type=output_file,
                        help="the picture (needs matplotlib); the numbers go to FILE.json beside it")
    parser.add_argument("--gif", metavar="FILE.gif", type=output_file,
                        help="the same picture, animated (needs matplotlib)")
    add_json_option(parser)
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    """The ``rmsprop trajectories`` command; returns the exit code."""
    if args.help_lrs:
        print(lrs_table("function", {s.name: s.lrs for s in SURFACES.values()}))
        return 0
    return guarded("trajectories", lambda: _run(args), needs_matplotlib=bool(args.out or args.gif))


def _run(args: argparse.Namespace) -> int:
    names = list(dict.fromkeys(n for group in (args.function or [["quadratic"]]) for n in group))
    optimizers = list(dict.fromkeys(args.optimizers or DEFAULT_NAMES))
    out = text_stream(args.json)
    results = []
    for name in names:
        surface = SURFACES[name]
        lrs = resolve_lrs(optimizers, surface.lrs, args.lr or ())
        with torch_threads(1):  # two-element tensors: threads only add waiting
            runs = run_surface(surface, optimizers, lrs, args.steps, args.start)
        results.append((surface, runs))
        print(table(surface, runs, args.tol, args.steps or surface.steps) + "\n", file=out, flush=True)
    settings = {"functions": names, "optimizers": optimizers, "steps": args.steps, "start": args.start,
                "tol": args.tol, "dtype": "float64"}
    data = to_json(results, settings, args.tol)
    if args.json:
        write_json(data, args.json)
    if args.out:
        plot(args.out, results)
        write_json(data, str(Path(args.out).with_suffix(".json")))
        print(f"picture written to {args.out}, numbers to {Path(args.out).with_suffix('.json')}", file=out)
    if args.gif:
        animate(args.gif, results)
        print(f"animation written to {args.gif}", file=out)
    return 0
