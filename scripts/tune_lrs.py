"""Find the default learning rates of ``rmsprop compare --task digits`` (a few minutes).

For each optimizer of the line-up, trains digits on seeds 0-2 for 20 epochs at every lr
of the grid 1e-4, 3e-4, ..., 1 and picks the lr whose mean test loss over the last
five epochs (averaged over the seeds) is lowest: the average over five epochs keeps an
lr at the edge of stability from winning on one lucky final epoch, and scores within
TIE (2%) of the best count as a tie, which the smaller lr wins. Prints the table and
the dict that src/rmsprop/compare.py holds.

    .venv/bin/python scripts/tune_lrs.py [--optimizers sgd,rmsprop]
"""

from __future__ import annotations

import argparse
import statistics

from rmsprop.cliutil import torch_threads
from rmsprop.compare import TASKS, train
from rmsprop.lineup import LINEUP

GRID = (1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 0.1, 0.3, 1.0)
SEEDS = (0, 1, 2)
EPOCHS = 20
LAST = 5
TIE = 0.02


def score(curves_by_seed: list[dict[str, list[float]]]) -> float:
    """Mean over the seeds and the last LAST epochs of the test loss."""
    return statistics.fmean(v for c in curves_by_seed for v in c["test_loss"][-LAST:])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--optimizers", default=",".join(LINEUP))
    args = parser.parse_args()
    task = TASKS["digits"]
    best = {}
    for name in args.optimizers.split(","):
        scores = {}
        for lr in GRID:
            with torch_threads(1):  # as `rmsprop compare` trains
                result, = train(task, [name], {name: lr}, SEEDS, EPOCHS, batch_size=64)
            scores[lr] = score(list(result.runs.values()))
        lowest = min(scores.values())
        best[name] = min(lr for lr, s in scores.items() if s <= lowest * (1 + TIE))
        print(f"{name:<18} best {best[name]:g}  " + "  ".join(f"{lr:g}: {s:.4f}" for lr, s in scores.items()),
              flush=True)
    print({name: best[name] for name in best})


if __name__ == "__main__":
    main()
