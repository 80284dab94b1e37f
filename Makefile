# The two set-up commands of the README: `make run` (default pipeline) and `make test` (test suite).
VENV ?= .venv
PYTHON ?= python3
# A CPU build of torch lies on this machine's disk; elsewhere set TORCH_SPEC=torch (or a CUDA build).
TORCH_SPEC ?= torch==2.13.0
BIN := $(VENV)/bin

.PHONY: venv run test test-fast lint dag plan bench clean

$(BIN)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q "$(TORCH_SPEC)"
	$(BIN)/python -m pip install -q -e ".[dev]"
	touch $@

venv: $(BIN)/.installed

run: venv
	$(BIN)/snakemake -c2

lint: venv
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/snakefmt --check Snakefile rules
	$(BIN)/snakemake --lint

# The whole suite: unit tests, workflow runs through the snakemake CLI, kill/resume, the Slurm cluster.
test: lint
	$(BIN)/python -m pytest -v --durations=20

# A quick check (about 6 minutes on 2 cores): unit tests and dry runs, no full pipeline run, no cluster tests
# (tests/conftest.py still starts the test cluster where Slurm's client is installed and its controller is down).
test-fast: lint
	$(BIN)/python -m pytest -q -m "not e2e and not slurm"

# The plan before submit: a table of estimates per GPU rule and results/plan/plan.json; runs no other job.
# e.g. `make plan CONFIG=config/examples/gsm8k-qwen.yaml SFTDPO_GPU_MODEL=a100` (README, "Before you submit").
CONFIG ?=
plan: venv
	$(BIN)/snakemake -c1 results/plan/plan.json --forcerun plan $(if $(CONFIG),--configfile $(CONFIG))

# sftdpo against its peers (README, "sftdpo against its peers"): about 15 minutes on 2 cores.
bench: venv
	$(BIN)/python benchmarks/peers.py --save

dag: venv
	$(BIN)/snakemake --dag | dot -Tsvg > dag.svg

clean:
	rm -rf results logs work .snakemake report.html dag.svg
