"""Train the same model with several optimizers and seeds; plot and tabulate the curves.

tasks:
  digits  scikit-learn's handwritten digits (1,797 8x8 images, bundled in its wheel:
          nothing is downloaded), pixels scaled to [0, 1], a fixed stratified
          split of 1,347 training and 450 test images; an MLP 64-64-10 (ReLU)
          trained with cross-entropy on shuffled minibatches. Every epoch
          records the loss and accuracy on the whole training and test sets.
  seed    the seed notebook's problem: Linear(2, 1) on the one sample
          x=[[1., 2.]], y=[[1.]], MSE, full batch, 10 epochs at lr 0.01 for
          every optimizer. The default "seed" is `notebook`: the start that
          reproduces the notebook's printed losses (see `rmsprop demo`); there
          the notebook's RMSProp ends far above plain SGD (no badly scaled
          direction for per-parameter steps to fix). An integer seed starts
          from PyTorch's default init after torch.manual_seed(seed) instead:
          --seeds notebook,0,1,2 shows how much the verdict depends on the start.

For a given seed every optimizer starts from the same weights and sees the same
minibatches in the same order, so the curves differ only by the update rule.
Curves have epochs + 1 points: index 0 is before training. The picture shows
each optimizer's mean over the seeds, with a band from the lowest to the highest
seed (the spread); the table prints the final values as mean [min-max].

Default learning rates (--help-lrs) for digits are each optimizer's best on the
grid 1e-4, 3e-4, ..., 1 by test loss over the last 5 of 20 epochs, mean over
seeds 0-2 (scripts/tune_lrs.py; within 2% the smaller lr wins): the comparison
is between tuned optimizers, not between one lr for all.

Files: --out FILE.png writes the picture, FILE.csv (one row per optimizer, seed
and epoch, then rows whose seed is mean, std, min or max) and FILE.json.
JSON (--json FILE|-): schema, task, settings, elapsed_s and optimizers, each
with name, label, lr, runs [{seed, curves {metric: [...]}}], mean, std, min,
max ({metric: [...]}) and final ({metric: {mean, std, min, max}}).

  a2c-cartpole
          Stable-Baselines3's A2C on gymnasium's CartPole-v1 with A2C's defaults
          (lr 7e-4, alpha 0.99, eps 1e-5, 5 steps per update), once per form of
          RMSProp (--forms; see rmsprop.a2c): PyTorch's form (A2C's default) against
          the TF-like form (preset sb3 = SB3's RMSpropTFLike) and each of its two
          differences alone. --steps environment steps per run, --evals evaluations
          (plus one before training) of --eval-episodes deterministic episodes
          each: the curve is the mean evaluation return. Needs
          pip install 'rmsprop[sb3]'. The default (10,000 steps, 3 seeds) takes
          about a minute per form; docs/a2c.md has the full run.

examples:
  rmsprop compare                                   digits, the default line-up, 3 seeds
  rmsprop compare --optimizers sgd,rmsprop,adam --seeds 0,1 --epochs 5 --out digits.png
  rmsprop compare --task seed --json -
  rmsprop compare --task a2c-cartpole --jobs 2 --out a2c.png
"""

from __future__ import annotations

import argparse
import csv
import functools
import io
import math
import statistics
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

import torch

from . import a2c, demo
from .cliutil import (
    Progress,
    UsageError,
    add_json_option,
    comma_list,
    figure,
    guarded,
    output_file,
    positive_int,
    save_png,
    seed_int,
    text_stream,
    thread_count,
    torch_threads,
    write_json,
)
from .lineup import DEFAULT_NAMES, LINEUP, Contender, add_lineup_options, lrs_table, make, resolve_lrs

__all__ = ["TASKS", "Task", "configure_parser", "run", "train", "aggregate", "to_json", "to_csv", "plot"]

SCHEMA = "rmsprop-compare/1"
Curves = dict[str, list[float]]


@dataclass(frozen=True)
class Task:
    """A training problem: what it records, its defaults, and how one run trains.

    ``train(optimizer, lr, seed, epochs, batch_size, on_epoch)`` returns ``epochs + 1`` points per
    metric; ``lineup`` names the optimizers it takes (their labels and colours), ``optimizers``
    those it runs by default.
    """

    name: str
    description: str
    metrics: tuple[str, ...]
    epochs: int
    lrs: Mapping[str, float]
    train: Callable[..., Curves]
    seeds: tuple[int | str, ...]
    lineup: Mapping[str, Contender] = field(default_factory=lambda: LINEUP)
    optimizers: tuple[str, ...] = DEFAULT_NAMES


# ---------------------------------------------------------------- digits

DIGITS_SPLIT_SEED = 0
DIGITS_TEST_FRACTION = 0.25
DIGITS_HIDDEN = 64
DIGITS_METRICS = ("train_loss", "test_loss", "train_accuracy", "test_accuracy")


@functools.lru_cache(maxsize=1)
def digits_data() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """scikit-learn's digits as float32 tensors in [0, 1]: x_train, y_train, x_test, y_test."""
    try:
        from sklearn.datasets import load_digits
        from sklearn.model_selection import train_test_split
    except ImportError as err:
        raise ImportError("--task digits needs scikit-learn, which is not installed: "
                          "pip install 'rmsprop[plot]' (or pip install scikit-learn)") from err
    x, y = load_digits(return_X_y=True)
    x_train, x_test, y_train, y_test = train_test_split(
        x, y, test_size=DIGITS_TEST_FRACTION, stratify=y, random_state=DIGITS_SPLIT_SEED)
    as_x = lambda a: torch.tensor(a / 16.0, dtype=torch.float32)  # pixels are 0..16
    return as_x(x_train), torch.tensor(y_train), as_x(x_test), torch.tensor(y_test)


def digits_model(seed: int) -> torch.nn.Module:
    """The MLP 64-64-10, initialised from ``torch.manual_seed(seed)`` (the global RNG is left as it was)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return torch.nn.Sequential(torch.nn.Linear(64, DIGITS_HIDDEN), torch.nn.ReLU(),
                                   torch.nn.Linear(DIGITS_HIDDEN, 10))


def _evaluate(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[float, float]:
    with torch.no_grad():
        logits = model(x)
        return (torch.nn.functional.cross_entropy(logits, y).item(),
                (logits.argmax(1) == y).float().mean().item())


def train_digits(optimizer: str, lr: float, seed: int | str, epochs: int, batch_size: int,
                 on_epoch: Callable[[int], None] = lambda epoch: None) -> Curves:
    """One run on digits: the seed fixes the init and the minibatch order."""
    if isinstance(seed, str):  # Task.train takes the seed task's NOTEBOOK too; run() refuses it here
        raise ValueError(f"the digits task takes integer seeds, not {seed!r}")
    x_train, y_train, x_test, y_test = digits_data()
    model = digits_model(seed)
    opt = make(optimizer, model.parameters(), lr)
    order = torch.Generator().manual_seed(seed)
    curves: Curves = {m: [] for m in DIGITS_METRICS}

    def record() -> None:
        for split, x, y in (("train", x_train, y_train), ("test", x_test, y_test)):
            loss, accuracy = _evaluate(model, x, y)
            curves[f"{split}_loss"].append(loss)
            curves[f"{split}_accuracy"].append(accuracy)

    record()
    for epoch in range(1, epochs + 1):
        perm = torch.randperm(len(x_train), generator=order)
        for start in range(0, len(perm), batch_size):
            batch = perm[start:start + batch_size]
            opt.zero_grad()
            torch.nn.functional.cross_entropy(model(x_train[batch]), y_train[batch]).backward()
            opt.step()
        record()
        on_epoch(epoch)
    return curves


# ---------------------------------------------------------------- seed

NOTEBOOK = "notebook"  # the seed task's "seed" for the notebook's own start


def train_seed(optimizer: str, lr: float, seed: int | str, epochs: int, batch_size: int,
               on_epoch: Callable[[int], None] = lambda epoch: None) -> Curves:
    """One run of the notebook's problem from ``demo.initial_model(seed)`` (``NOTEBOOK``: the start
    that reproduces the notebook); ``batch_size`` is unused (one sample, full batch). Point k is the
    loss after k epochs, so points 0..epochs-1 are the losses the notebook's loop prints."""
    del batch_size
    model = demo.initial_model(None if seed == NOTEBOOK else int(seed))
    opt = make(optimizer, model.parameters(), lr)
    x, y = demo.notebook_data()
    losses: list[float] = []
    for epoch in range(1, epochs + 1):
        losses += demo.train(model, opt, x, y, 1)
        on_epoch(epoch)
    with torch.no_grad():
        losses.append(torch.nn.functional.mse_loss(model(x), y).item())
    return {"train_loss": losses}


# ---------------------------------------------------------------- a2c-cartpole

A2C_STEPS = 10_000  # the default run: about a minute per form on one core here; docs/a2c.md runs 50,000
A2C_EVALS = 10
A2C_EPISODES = 10
A2C_DEFAULT_FORMS = ("torch", "sb3")


def _builder(form: a2c.Form) -> Callable[[Iterable[torch.Tensor], float], torch.optim.Optimizer]:
    def build(params: Iterable[torch.Tensor], lr: float) -> torch.optim.Optimizer:
        cls, kwargs = form.optimizer()
        return cls(params, lr=lr, **kwargs)  # type: ignore[call-arg]  # every form's class takes lr

    return build


#: The forms of RMSProp the A2C task takes, as line-up entries (what A2C would build from each).
A2C_LINEUP: Mapping[str, Contender] = MappingProxyType(
    {f.name: Contender(f.name, f.label, _builder(f), f.color) for f in a2c.FORMS.values()})


def train_a2c(optimizer: str, lr: float, seed: int | str, epochs: int, batch_size: int,
              on_epoch: Callable[[int], None] = lambda epoch: None, *, steps: int = A2C_STEPS,
              episodes: int = A2C_EPISODES) -> Curves:
    """One A2C run (:func:`rmsprop.a2c.train`) of ``steps`` steps with ``epochs`` evaluations of
    ``episodes`` episodes after the one before training; ``batch_size`` is unused."""
    del batch_size
    return a2c.train(optimizer, lr, int(seed), steps, epochs, episodes,
                     on_eval=lambda index, value: on_epoch(index) if index else None)


TASKS: Mapping[str, Task] = {
    "digits": Task(
        "digits",
        "scikit-learn digits: 1,347 train / 450 test 8x8 images; MLP 64-64-10; cross-entropy",
        DIGITS_METRICS, 20,
        # scripts/tune_lrs.py: each optimizer's best test loss (last 5 epochs, seeds 0-2) on a grid
        {"sgd": 0.3, "momentum": 0.3, "rmsprop-seed": 1e-2, "rmsprop": 3e-3, "rmsprop-centered": 3e-3,
         "rmsprop-momentum": 1e-3, "rmsprop-tf1": 1e-2, "adam": 3e-2},
        train_digits, (0, 1, 2),
    ),
    "seed": Task(
        "seed",
        "the seed notebook: Linear(2, 1), x=[[1, 2]], y=[[1]], MSE, full batch",
        ("train_loss",), 10, {name: 0.01 for name in LINEUP}, train_seed, (NOTEBOOK,),
    ),
    "a2c-cartpole": Task(
        "a2c-cartpole",
        "Stable-Baselines3 A2C on CartPole-v1, A2C's defaults; mean return of deterministic evaluation",
        ("eval_return",), A2C_EVALS, {name: a2c.LR for name in a2c.FORMS}, train_a2c, (0, 1, 2),
        A2C_LINEUP, A2C_DEFAULT_FORMS,
    ),
}


# ---------------------------------------------------------------- running and summarising

@dataclass
class OptimizerResult:
    """One optimizer's runs (seed → curves) and their statistics over the seeds."""

    name: str
    lr: float
    runs: dict[int | str, Curves]

    def stats(self) -> dict[str, Curves]:
        return aggregate(list(self.runs.values()))


def aggregate(runs: Sequence[Curves]) -> dict[str, Curves]:
    """mean, std (population), min and max over ``runs``, per metric and epoch."""
    out: dict[str, Curves] = {"mean": {}, "std": {}, "min": {}, "max": {}}
    for metric in runs[0]:
        columns = list(zip(*(r[metric] for r in runs), strict=True))
        out["mean"][metric] = [statistics.fmean(c) for c in columns]
        out["std"][metric] = [statistics.pstdev(c) for c in columns]
        out["min"][metric] = [min(c) for c in columns]
        out["max"][metric] = [max(c) for c in columns]
    return out


def _in_worker(train_fn: Callable[..., Curves], threads: int, args: tuple[Any, ...]) -> Curves:
    torch.set_num_threads(threads)
    return train_fn(*args)


def train(task: Task, optimizers: Sequence[str], lrs: Mapping[str, float], seeds: Sequence[int | str],
          epochs: int, batch_size: int, progress: Progress | None = None, *, jobs: int = 1, threads: int = 1,
          options: Mapping[str, Any] | None = None) -> list[OptimizerResult]:
    """Every optimizer on every seed; ``progress`` ticks once per epoch.

    ``options`` are further keyword arguments of ``task.train``. With ``jobs`` above 1 the runs go
    to that many worker processes (started fresh, each with ``threads`` torch threads); a run's
    result does not depend on where it ran, and ``progress`` ticks as each run ends.
    """
    train_fn = functools.partial(task.train, **(options or {}))
    cases = [(name, seed) for name in optimizers for seed in seeds]
    curves: dict[tuple[str, int | str], Curves] = {}
    if jobs > 1:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor, as_completed

        with ProcessPoolExecutor(jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
            futures = {pool.submit(_in_worker, train_fn, threads, (n, lrs[n], s, epochs, batch_size)): (n, s)
                       for n, s in cases}
            for index, future in enumerate(as_completed(futures), 1):
                name, seed = futures[future]
                curves[name, seed] = future.result()
                if progress is not None:
                    progress.start_case(index, len(cases), f"{task.name} · {name} · seed {seed} done")
                    for _ in range(epochs):
                        progress(f"{jobs} jobs")
    else:
        for index, (name, seed) in enumerate(cases, 1):
            if progress is not None:
                progress.start_case(index, len(cases), f"{task.name} · {name} · seed {seed}")
            tick = (lambda e: progress(f"epoch {e}/{epochs}")) if progress is not None else (lambda e: None)
            curves[name, seed] = train_fn(name, lrs[name], seed, epochs, batch_size, tick)
    if progress is not None:
        progress.clear()
    return [OptimizerResult(name, lrs[name], {seed: curves[name, seed] for seed in seeds})
            for name in optimizers]


def to_json(task: Task, results: list[OptimizerResult], settings: dict[str, Any], elapsed_s: float) -> dict:
    optimizers = []
    for r in results:
        stats = r.stats()
        final = {m: {k: stats[k][m][-1] for k in stats} for m in task.metrics}
        optimizers.append({"name": r.name, "label": task.lineup[r.name].label, "lr": r.lr,
                           "runs": [{"seed": s, "curves": c} for s, c in r.runs.items()],
                           **stats, "final": final})
    return {"schema": SCHEMA, "task": {"name": task.name, "description": task.description,
                                       "metrics": list(task.metrics)},
            "settings": settings, "elapsed_s": elapsed_s, "optimizers": optimizers}


def to_csv(task: Task, results: list[OptimizerResult]) -> str:
    """Long CSV: optimizer, lr, seed, epoch, one column per metric; then the mean/std/min/max rows."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["optimizer", "lr", "seed", "epoch", *task.metrics])
    for r in results:
        rows = [(str(seed), curves) for seed, curves in r.runs.items()] + list(r.stats().items())
        for seed, curves in rows:
            for epoch in range(len(curves[task.metrics[0]])):
                values = (repr(curves[m][epoch]) for m in task.metrics)
                writer.writerow([r.name, repr(r.lr), seed, epoch, *values])
    return buffer.getvalue()


def _first_epoch(curve: list[float], threshold: float) -> int | None:
    return next((e for e, v in enumerate(curve) if v >= threshold), None)


ACCURACY_MARK = 0.95  # the table's "epochs to 95% test accuracy"


def table(task: Task, results: list[OptimizerResult], settings: dict[str, Any]) -> str:
    head = (f"== {task.name}: {task.description}; {settings['epochs']} epochs"
            + (f", batch {settings['batch_size']}" if task.name != "seed" else "")
            + f"; seeds {', '.join(map(str, settings['seeds']))} ==")
    columns = [m for m in task.metrics if m != "train_accuracy"]
    lines = [head, f"{'optimizer':<18} {'lr':>7}" + "".join(f"  {m.replace('_', ' '):<22}" for m in columns)
             + (f"  epochs to {ACCURACY_MARK:.0%} test acc" if "test_accuracy" in columns else "")]
    for r in results:
        stats = r.stats()
        cells = []
        for m in columns:
            fmt = ".3f" if "accuracy" in m else ".4f"
            mean, low, high = (format(stats[k][m][-1], fmt) for k in ("mean", "min", "max"))
            cells.append(mean if len(r.runs) == 1 else f"{mean} [{low}–{high}]")
        line = f"{r.name:<18} {r.lr:>7.3g}" + "".join(f"  {c:<22}" for c in cells)
        if "test_accuracy" in columns:
            hits = [_first_epoch(c["test_accuracy"], ACCURACY_MARK) for c in r.runs.values()]
            reached = [h for h in hits if h is not None]
            line += (f"  {statistics.fmean(reached):.1f} ({len(reached)}/{len(hits)} seeds)" if reached
                     else f"  never ({len(hits)} seeds)")
        lines.append(line.rstrip())
    key = "test_loss" if "test_loss" in task.metrics else "train_loss"
    best = min(results, key=lambda r: r.stats()["mean"][key][-1])
    lines.append(f"lowest mean final {key.replace('_', ' ')}: {best.name} "
                 f"({best.stats()['mean'][key][-1]:.4f})")
    return "\n".join(lines)


def table_a2c(task: Task, results: list[OptimizerResult], settings: dict[str, Any]) -> str:
    """The A2C table: per form, the final evaluation return and its mean over the whole curve, each as
    mean ± sd [min–max] over the seeds; sd is the sample one (n − 1), as seeds are usually reported
    (the JSON's ``std`` is the population one, as for every task)."""
    head = (f"== {task.name}: {task.description}; {settings['steps']:,} steps, {settings['epochs']} "
            f"evaluations of {settings['eval_episodes']} episodes; "
            f"seeds {', '.join(map(str, settings['seeds']))} ==")
    lines = [head, f"{'form':<12} {'lr':>7}  {'final eval return':<30}  mean eval return over the curve",
             f"{'':<12} {'':>7}  {'mean ± sd(n−1) [min–max]':<30}  mean ± sd(n−1) [min–max]"]

    def cell(values: list[float]) -> str:
        sd = statistics.stdev(values) if len(values) > 1 else 0.0
        return f"{statistics.fmean(values):.1f} ± {sd:.1f} [{min(values):.1f}–{max(values):.1f}]"

    for r in results:
        runs = [c["eval_return"] for c in r.runs.values()]
        lines.append(f"{r.name:<12} {r.lr:>7.3g}  {cell([c[-1] for c in runs]):<30}  "
                     f"{cell([statistics.fmean(c) for c in runs])}")
    best = max(results, key=lambda r: r.stats()["mean"]["eval_return"][-1])
    lines.append(f"highest mean final eval return: {best.name} ({best.stats()['mean']['eval_return'][-1]:.1f}"
                 f" of 500)")
    return "\n".join(lines)


_TITLES = {"train_loss": "training loss", "test_loss": "test loss", "train_accuracy": "training accuracy",
           "test_accuracy": "test accuracy", "eval_return": "evaluation return (deterministic)"}


def plot(filename: str, task: Task, results: list[OptimizerResult], settings: dict[str, Any]) -> None:
    """Mean curve per optimizer with a min–max band over the seeds; one panel per metric shown."""
    shown = [m for m in task.metrics if m != "train_accuracy"]
    rows = math.ceil(len(results) / 4)  # of the legend, under the panels
    fig = figure(figsize=(5.2 * len(shown) + 1, 4.2 + 0.3 * rows))
    axes = fig.subplots(1, len(shown), squeeze=False)
    from matplotlib.ticker import MaxNLocator

    steps = settings.get("steps")  # a2c-cartpole: the x axis counts environment steps
    step = steps // settings["epochs"] if steps else 1
    for ax, metric in zip(axes[0], shown):
        for r in results:
            c = task.lineup[r.name]
            stats = r.stats()
            xs = [e * step for e in range(len(stats["mean"][metric]))]
            ax.plot(xs, stats["mean"][metric], color=c.color, linewidth=1.6, label=f"{c.label}, lr={r.lr:g}")
            ax.fill_between(xs, stats["min"][metric], stats["max"][metric], color=c.color, alpha=0.18,
                            linewidth=0)
        if "loss" in metric:
            ax.set_yscale("log")
        elif "return" in metric:
            ax.set_ylim(0, 510)  # CartPole-v1 ends an episode at 500
        else:  # zoom on the end: the worst final mean, less a margin, to 1
            worst = min(r.stats()["mean"][metric][-1] for r in results)
            ax.set_ylim(max(0.0, worst - 0.1), 1.0)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlim(0, settings["epochs"] * step)
        ax.set_xlabel("environment steps" if steps else "epoch")
        ax.set_title(_TITLES[metric], fontsize=10)
        ax.grid(True, which="major", alpha=0.3)
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=min(4, len(labels)), fontsize=8, frameon=False)
    seeds = settings["seeds"]
    fig.suptitle(f"rmsprop compare --task {task.name}: mean over seeds {', '.join(map(str, seeds))}, "
                 f"band = min–max over seeds", fontsize=10)
    fig.tight_layout(rect=(0, 0.06 * math.ceil(len(labels) / 4) + 0.02, 1, 1))
    save_png(fig, filename)


def plot_a2c(filename: str, task: Task, results: list[OptimizerResult], settings: dict[str, Any]) -> None:
    """A2C's picture: every form's mean curve on top; below, one panel per form with each seed's
    curve (RL outcomes split into runs that solve the task and runs that do not: a band would hide it)."""
    count = len(results)
    fig = figure(figsize=(max(9.0, 2.6 * count), 7.4))
    grid = fig.add_gridspec(2, count, height_ratios=(1.3, 1))
    top = fig.add_subplot(grid[0, :])
    every = settings["steps"] // settings["epochs"]
    xs = [e * every for e in range(settings["epochs"] + 1)]
    for column, r in enumerate(results):
        c = task.lineup[r.name]
        top.plot(xs, r.stats()["mean"]["eval_return"], color=c.color, linewidth=1.8,
                 label=f"{c.label}, lr={r.lr:g}")
        ax = fig.add_subplot(grid[1, column], sharey=top)
        for curves in r.runs.values():
            ax.plot(xs, curves["eval_return"], color=c.color, linewidth=0.9, alpha=0.6)
        ax.plot(xs, r.stats()["mean"]["eval_return"], color=c.color, linewidth=2)
        ax.set_title(f"{r.name}: each seed, mean bold", fontsize=9)
        ax.set_xlabel("environment steps", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(True, alpha=0.3)
    top.set_ylim(0, 510)  # CartPole-v1 ends an episode at 500
    top.set_xlim(0, settings["steps"])
    top.set_ylabel("evaluation return")
    top.grid(True, alpha=0.3)
    top.legend(fontsize=8, loc="upper left", frameon=False)
    seeds = settings["seeds"]
    fig.suptitle(f"rmsprop compare --task a2c-cartpole: SB3 A2C, CartPole-v1; mean return of "
                 f"{settings['eval_episodes']} deterministic episodes; mean over seeds "
                 f"{', '.join(map(str, seeds))}", fontsize=10)
    fig.tight_layout()
    save_png(fig, filename)


# ---------------------------------------------------------------- command line

def _seeds(text: str) -> list[int | str]:
    try:
        seeds = [x.strip() if x.strip() == NOTEBOOK else int(x) for x in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a comma list of integers (or {NOTEBOOK}), "
                                         f"got {text!r}") from None
    for seed in seeds:
        if seed != NOTEBOOK:
            seed_int(str(seed))  # in torch.manual_seed's range, or the same error as demo --seed
    if len(set(seeds)) != len(seeds):
        raise argparse.ArgumentTypeError(f"a seed is repeated in {text!r}")
    return seeds


def configure_parser(parser: argparse.ArgumentParser) -> None:
    """Add the command's options to ``parser`` and make :func:`run` its action."""
    parser.add_argument("--task", choices=tuple(TASKS), default="digits",
                        help="what to train (default: %(default)s)")
    add_lineup_options(parser, "per task", lr_names=a2c.FORMS)
    parser.add_argument("--seeds", type=_seeds, metavar="LIST",
                        help=f"comma list of integer seeds; the seed task also takes {NOTEBOOK}, the "
                             f"notebook's start (default: digits 0,1,2, seed {NOTEBOOK})")
    parser.add_argument("--epochs", type=positive_int, help="epochs per run (default: digits 20, seed 10; "
                                                             "a2c-cartpole: see --steps and --evals)")
    parser.add_argument("--batch-size", type=positive_int, default=64, help="digits minibatch (default: 64)")
    parser.add_argument("--threads", type=thread_count, default=1,
                        help="torch threads while training: the models are tiny, and on a busy machine more "
                             "threads mostly wait on each other (default: %(default)s)")
    parser.add_argument("--jobs", type=thread_count, default=1,
                        help="runs in parallel, each in its own process with --threads threads; the numbers "
                             "do not depend on it (default: %(default)s)")
    a2c_options = parser.add_argument_group("a2c-cartpole")
    forms = tuple(a2c.FORMS)
    a2c_options.add_argument("--forms", metavar="LIST", type=comma_list(forms, {"all": forms}),
                             help=f"comma list of {', '.join(a2c.FORMS)}, or all; the lr of every form is "
                                  f"A2C's {a2c.LR:g} unless --lr says "
                                  f"(default: {','.join(A2C_DEFAULT_FORMS)})")
    a2c_options.add_argument("--steps", type=positive_int,
                             help=f"environment steps per run, a multiple of {a2c.N_STEPS} × --evals "
                                  f"(default: {A2C_STEPS})")
    a2c_options.add_argument("--evals", type=positive_int,
                             help=f"evaluations during each run, evenly spaced (default: {A2C_EVALS})")
    a2c_options.add_argument("--eval-episodes", type=positive_int, default=A2C_EPISODES,
                             help="deterministic episodes per evaluation (default: %(default)s)")
    parser.add_argument("--out", metavar="FILE.png", type=output_file,
                        help="the picture (needs matplotlib); the numbers go to FILE.csv and FILE.json "
                             "beside it")
    add_json_option(parser)
    parser.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    """The ``rmsprop compare`` command; returns the exit code."""
    if args.help_lrs:
        print(lrs_table("task", {t.name: t.lrs for t in TASKS.values() if t.lineup is LINEUP}))
        print(f"a2c-cartpole: every form at A2C's default lr {a2c.LR:g} (--forms; --lr LR or FORM=LR)")
        return 0
    return guarded("compare", lambda: _run(args), needs_matplotlib=bool(args.out))


def _a2c_settings(args: argparse.Namespace) -> tuple[int, dict[str, Any]]:
    """--evals and the keyword arguments of :func:`train_a2c`, checked before any run starts."""
    if args.optimizers or args.epochs:
        raise UsageError("--task a2c-cartpole takes --forms (not --optimizers) and --steps/--evals "
                         "(not --epochs)")
    evals = args.evals or A2C_EVALS
    steps = args.steps or A2C_STEPS
    if steps % (a2c.N_STEPS * evals):
        raise UsageError(f"--steps must be a multiple of {a2c.N_STEPS} × --evals = {a2c.N_STEPS * evals} "
                         f"(A2C updates every {a2c.N_STEPS} steps), got {steps}")
    a2c.require_sb3()  # fail on a missing Stable-Baselines3 before the progress bar starts
    return evals, {"steps": steps, "episodes": args.eval_episodes}


def _run(args: argparse.Namespace) -> int:
    task = TASKS[args.task]
    options: dict[str, Any] = {}
    if task.name == "a2c-cartpole":
        epochs, options = _a2c_settings(args)
        optimizers = list(dict.fromkeys(args.forms or task.optimizers))
    else:
        if args.forms or args.steps or args.evals:
            raise UsageError("--forms, --steps and --evals belong to --task a2c-cartpole")
        epochs = args.epochs or task.epochs
        optimizers = list(dict.fromkeys(args.optimizers or task.optimizers))
    for override in args.lr or ():
        strangers = [name for name in override if name != "*" and name not in task.lrs]
        if strangers:
            raise UsageError(f"--lr {', '.join(strangers)}: not an optimizer of --task {task.name} "
                             f"({', '.join(task.lrs)})")
    lrs = resolve_lrs(optimizers, task.lrs, args.lr or ())
    seeds = list(args.seeds or task.seeds)
    if task.name != "seed" and NOTEBOOK in seeds:
        raise UsageError(f"--seeds {NOTEBOOK} is the seed task's start; --task {task.name} takes integers")
    if task.name == "digits":
        digits_data()  # fail on a missing scikit-learn before the progress bar starts
    out = text_stream(args.json)
    settings = {"task": task.name, "optimizers": optimizers, "lrs": lrs, "seeds": seeds,
                "epochs": epochs, "batch_size": args.batch_size if task.name == "digits" else None,
                "threads": args.threads, "jobs": args.jobs, "torch": torch.__version__}
    if task.name == "a2c-cartpole":
        settings |= {"steps": options["steps"], "eval_episodes": options["episodes"],
                     "stable_baselines3": a2c.require_sb3().__version__}
    started = time.perf_counter()
    progress = Progress(len(optimizers) * len(seeds) * epochs, enabled=not args.no_progress, name="compare")
    with torch_threads(args.threads):
        results = train(task, optimizers, lrs, seeds, epochs, args.batch_size, progress, jobs=args.jobs,
                        threads=args.threads, options=options)
    elapsed = time.perf_counter() - started
    print((table_a2c if task.name == "a2c-cartpole" else table)(task, results, settings), file=out)
    print(f"trained {len(optimizers) * len(seeds)} runs in {elapsed:.1f} s", file=out, flush=True)
    data = to_json(task, results, settings, elapsed)
    if args.json:
        write_json(data, args.json)
    if args.out:
        (plot_a2c if task.name == "a2c-cartpole" else plot)(args.out, task, results, settings)
        target = Path(args.out)
        target.with_suffix(".csv").write_text(to_csv(task, results))
        write_json(data, str(target.with_suffix(".json")))
        print(f"picture written to {target}, numbers to {target.with_suffix('.csv')} and "
              f"{target.with_suffix('.json')}", file=out)
    return 0
