"""The weights' average on the digits task: test loss of the raw weights and of their EMA.

    .venv/bin/python benchmarks/ema_digits.py [--out docs/figures/ema_digits.png] [--epochs 20]
                                              [--seeds 0,1,2] [--every 10]

The task is ``rmsprop compare``'s digits (:func:`rmsprop.compare.digits_data`,
:func:`rmsprop.compare.digits_model`: scikit-learn's bundled 8x8 digits, a
fixed 1,347/450 split, an MLP 64-64-10, minibatches of 64, nothing
downloaded), trained with ``rmsprop.RMSprop`` (PyTorch's form) at two
learning rates: 3e-3, the one ``rmsprop compare`` tuned for it, and 1e-2,
where the raw weights are noisier. Each run keeps an average,
``RMSprop(ema_decay=δ, ema_warmup=...)``, and every ``--every`` steps the
test loss is taken of the raw weights and, ``with opt.ema_weights():``, of the
average. Settings: δ = 0.9, δ = 0.99, and δ = 0.99 with the warm-up. The
average leaves training alone, so each seed's raw curve is the same in every
setting (checked). The picture shows the mean over the seeds with a band from
the lowest to the highest seed; the table gives the final and the best test
loss and the final test accuracy, mean [min-max] over the seeds.
"""

from __future__ import annotations

import argparse
import time

import torch

import rmsprop
from rmsprop.cliutil import figure, save_png
from rmsprop.compare import TASKS, digits_data, digits_model

BATCH = 64
LRS = (TASKS["digits"].lrs["rmsprop"], 1e-2)
SETTINGS = (("δ = 0.9", dict(ema_decay=0.9)), ("δ = 0.99", dict(ema_decay=0.99)),
            ("δ = 0.99, warm-up", dict(ema_decay=0.99, ema_warmup=True)))
COLOURS = {"raw weights": "tab:gray", "δ = 0.9": "tab:blue", "δ = 0.99": "tab:orange",
           "δ = 0.99, warm-up": "tab:green"}


def _test(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[float, float]:
    with torch.no_grad():
        logits = model(x)
        return (torch.nn.functional.cross_entropy(logits, y).item(),
                (logits.argmax(1) == y).float().mean().item())


Curve = list[tuple[float, float]]  # (test loss, test accuracy) every ``--every`` steps


def train(seed: int, lr: float, epochs: int, every: int, **ema: float | bool) -> dict[str, Curve]:
    """One run; the curves of the raw weights ("raw") and of the average ("ema")."""
    x_train, y_train, x_test, y_test = digits_data()
    model = digits_model(seed)
    opt = rmsprop.RMSprop(model.parameters(), lr=lr, **ema)  # type: ignore[arg-type]
    order = torch.Generator().manual_seed(seed)
    curves: dict[str, Curve] = {"raw": [], "ema": []}
    step = 0
    for _ in range(epochs):
        perm = torch.randperm(len(x_train), generator=order)
        for start in range(0, len(perm), BATCH):
            batch = perm[start:start + BATCH]
            opt.zero_grad()
            torch.nn.functional.cross_entropy(model(x_train[batch]), y_train[batch]).backward()
            opt.step()
            step += 1
            if step % every == 0:
                curves["raw"].append(_test(model, x_test, y_test))
                with opt.ema_weights():
                    curves["ema"].append(_test(model, x_test, y_test))
    return curves


def _cell(values: list[float]) -> str:
    return f"{sum(values) / len(values):.4f} [{min(values):.4f}-{max(values):.4f}]"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default="docs/figures/ema_digits.png", help="the picture (PNG)")
    ap.add_argument("--epochs", type=int, default=TASKS["digits"].epochs)
    ap.add_argument("--seeds", default="0,1,2", help="comma list of integer seeds")
    ap.add_argument("--every", type=int, default=10, help="evaluate every this many steps")
    args = ap.parse_args(argv)
    seeds = [int(s) for s in args.seeds.split(",")]
    torch.set_num_threads(1)  # a tiny MLP: threads only contend on a shared machine
    t0 = time.perf_counter()
    # results[lr][label] = per seed, the (loss, accuracy) curve
    results: dict[float, dict[str, list[Curve]]] = {}
    for lr in LRS:
        results[lr] = {"raw weights": []}
        for label, ema in SETTINGS:
            done = [train(seed, lr, args.epochs, args.every, **ema) for seed in seeds]
            if results[lr]["raw weights"]:
                assert [r["raw"] for r in done] == results[lr]["raw weights"], "the average changed training"
            results[lr]["raw weights"] = [r["raw"] for r in done]
            results[lr][label] = [r["ema"] for r in done]
    elapsed = time.perf_counter() - t0

    steps = len(results[LRS[0]]["raw weights"][0]) * args.every
    print(f"digits, RMSprop (PyTorch's form), {args.epochs} epochs = {steps} steps of {BATCH}, seeds "
          f"{args.seeds}; test set, mean [min-max] over the seeds ({elapsed:.0f} s)\n")
    print("| lr | weights | final test loss | best test loss | final test accuracy |")
    print("|---|---|---|---|---|")
    for lr, rows in results.items():
        for label, runs in rows.items():
            name = label if label == "raw weights" else f"average, {label}"
            final, best = _cell([r[-1][0] for r in runs]), _cell([min(loss for loss, _ in r) for r in runs])
            print(f"| {lr:g} | {name} | {final} | {best} | {_cell([r[-1][1] for r in runs])} |")

    fig = figure(figsize=(11, 4.2))
    axes = fig.subplots(1, len(LRS), sharey=True)
    xs = [args.every * (i + 1) for i in range(len(results[LRS[0]]["raw weights"][0]))]
    for ax, (lr, rows) in zip(axes, results.items()):
        for label, runs in rows.items():
            curves = [[loss for loss, _ in r] for r in runs]
            mean = [sum(c) / len(c) for c in zip(*curves)]
            ax.fill_between(xs, [min(c) for c in zip(*curves)], [max(c) for c in zip(*curves)],
                            color=COLOURS[label], alpha=0.2, linewidth=0)
            ax.plot(xs, mean, color=COLOURS[label], linewidth=1.5 if label == "raw weights" else 1.8,
                    label=label if label == "raw weights" else f"average, {label}")
        ax.set_yscale("log")
        ax.set_title(f"lr {lr:g}" + (" (compare's tuned lr)" if lr == LRS[0] else ""))
        ax.set_xlabel("step")
        ax.grid(True, which="both", alpha=0.3)
    axes[0].set_ylabel("test loss (cross-entropy)")
    axes[0].legend()
    fig.suptitle(f"digits, RMSprop: raw weights against RMSprop(ema_decay=...)'s average; "
                 f"mean of seeds {args.seeds}, band min-max")
    fig.tight_layout()
    save_png(fig, args.out)
    print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
