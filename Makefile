# Two commands do all the set-up on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: demo test test-slow lint bench parity goldens clean figures tutorial docs integration gpu-check

$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c constraints.txt -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/rmsprop demo

test: lint                         # ruff and mypy first: a type error fails the run before any test
	$(PY) -m pytest -q

test-slow: $(STAMP)                # the exhaustive checks: every knob combination compiled, ...
	$(PY) -m pytest -q -m slow

lint: $(STAMP)                     # ruff, then mypy (its settings and files: pyproject.toml's [tool.mypy])
	$(PY) -m ruff check src tests examples scripts integration
	$(PY) -m mypy

# The live peers (TensorFlow, Keras, JAX/optax, timm) live in their own
# environment, never in the project's: scripts/make_goldens.py explains it.
PARITY_STAMP := .parity-venv/.installed

$(PARITY_STAMP): scripts/parity-requirements.txt constraints.txt
	test -x .parity-venv/bin/python || $(PYTHON) -m venv .parity-venv
	.parity-venv/bin/pip install --quiet --upgrade pip
	.parity-venv/bin/pip install --quiet --no-deps -c constraints.txt -r scripts/parity-requirements.txt
	touch $(PARITY_STAMP)

parity: $(PARITY_STAMP) $(STAMP)   # rerun the live peers against the goldens, then replay them
	.parity-venv/bin/python scripts/make_goldens.py --check
	$(PY) -m pytest -q tests/test_parity.py

goldens: $(PARITY_STAMP)           # rewrite tests/goldens from the live peers
	.parity-venv/bin/python scripts/make_goldens.py --peer all

# The third-party frameworks (Stable-Baselines3, timm, Lightning, Hugging Face Trainer and
# Accelerate) in their own environment, as the parity peers are: integration/ runs against them.
INTEGRATION_STAMP := .integration-venv/.installed

$(INTEGRATION_STAMP): scripts/integration-requirements.txt constraints.txt pyproject.toml
	test -x .integration-venv/bin/python || $(PYTHON) -m venv .integration-venv
	.integration-venv/bin/pip install --quiet --upgrade pip
	.integration-venv/bin/pip install --quiet --no-deps -c constraints.txt -r scripts/integration-requirements.txt
	.integration-venv/bin/pip install --quiet --no-deps -e .
	touch $(INTEGRATION_STAMP)

integration: $(INTEGRATION_STAMP)  # each framework's claim against the real library
	.integration-venv/bin/python -m pytest -q -p no:cacheprovider integration

docs: $(STAMP)                     # the documentation site, warnings as errors: build/site/index.html
	$(PY) -m mkdocs build --strict --site-dir build/site

clean:
	rm -rf $(VENV) .parity-venv .integration-venv build src/*.egg-info .pytest_cache

bench: $(STAMP)
	$(PY) benchmarks/bench_paths.py

.PHONY: profile
profile: $(STAMP)                  # where a fused step's time goes, per workload (docs/performance.md)
	$(PY) benchmarks/profile_step.py

# On a machine with CUDA: every CUDA test, then `rmsprop bench --device cuda --suite gpu`, under hard
# time limits (< 8 min on one H100/H200); logs, JSON, plot and summary in build/gpu/. Without a GPU it
# exits with status 2, never 0. Where torch comes with the machine: `python3 scripts/gpu_check.py`.
gpu-check: $(STAMP)
	$(PY) scripts/gpu_check.py

# See it work's pictures (docs/see-it-work.md) and the numbers beside them, from the commands themselves.
figures: $(STAMP)
	$(VENV)/bin/rmsprop trajectories --function quadratic,saddle --out docs/figures/trajectories.png
	$(VENV)/bin/rmsprop compare --no-progress --out docs/figures/compare_digits.png
	$(PY) benchmarks/ema_digits.py --out docs/figures/ema_digits.png

tutorial: $(STAMP)                 # run docs/tutorial.md's code in docs/: rewrites docs/figures/tutorial_*.png
	$(PY) scripts/run_tutorial.py docs/tutorial.md --cwd docs
