#!/usr/bin/env bash
# The command behind the Performance page's numbers (docs/performance.md): writes docs/bench_cpu.json
# and docs/bench_cpu.png and prints the tables and goal lines.
#
#   bash benchmarks/run_readme_bench.sh            # about 10 minutes on a 2-core VM
#   bash benchmarks/run_readme_bench.sh --rounds 7 # extra options go to `rmsprop bench`
#
# Inductor gets an empty cache directory, so every "1st step" is a cold compile,
# as a first run sees it (a warm cache would hide most of it). Sizes go up to
# 1e8 parameters (about 4 GB of tensors at the peak, GPT-2 small included);
# compiled paths are skipped for the 1000-tensor case (--compile-max-tensors,
# default 200: compiling it takes 5 to 8 minutes per path here). The machine is
# shared: compare ratios within one run, and run again when the load average
# printed at the start and the end is high.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-.venv/bin/python}

TORCHINDUCTOR_CACHE_DIR=$(mktemp -d)
export TORCHINDUCTOR_CACHE_DIR
trap 'rm -rf "$TORCHINDUCTOR_CACHE_DIR"' EXIT

"$PYTHON" -m rmsprop bench \
    --suite size,count,models,rl,schedule \
    --config plain \
    --max-size 1e8 \
    --rounds 5 \
    --json docs/bench_cpu.json \
    --out docs/bench_cpu.png \
    "$@"
