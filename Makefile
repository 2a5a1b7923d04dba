# transferlab — every target installs what it needs first (idempotent, quick when done).
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.transferlab-installed
# The local machine keeps these wheels on disk; GPU users may override, e.g. TORCH_SPEC="torch torchvision".
TORCH_SPEC ?= torch==2.14.1 torchvision==0.29.1
PYTEST_ARGS ?=
export HF_HUB_OFFLINE ?= 1
export WANDB_MODE ?= offline
export PYTHONUNBUFFERED := 1

.PHONY: install demo test test-slow test-slurm test-wheel sweep-demo report-demo benchmark gpu-check clean help

help:
	@echo "make install | demo | test | test-slow | test-slurm | test-wheel | sweep-demo | report-demo | benchmark | gpu-check | clean"

install: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	@$(BIN)/python -c "import torch, torchvision" 2>/dev/null || \
		$(BIN)/python -m pip install -q $(TORCH_SPEC) || $(BIN)/python -m pip install -q torch torchvision
	$(BIN)/python -m pip install -q -e ".[dev]"
	@touch $@

demo: install
	$(BIN)/python -m transferlab.train

# A small freeze-vs-n sweep (3 seeds x 4 n x (5 depths + scratch): 72 runs, a few minutes on 2 cores) and its report.
sweep-demo: install
	$(BIN)/python -m transferlab.train -m experiment=freeze_vs_n name=freeze_vs_n_demo seed=0,1,2 \
		target.n_per_class=2,5,20,null trainer.enable_progress_bar=false
	$(MAKE) report-demo

report-demo: install
	$(BIN)/python -m transferlab.report outputs/sweeps/freeze_vs_n_demo

benchmark: install
	$(BIN)/python scripts/benchmark.py

# On a GPU node (< 8 min): writes outputs/gpu_check.json + .md and fills docs/speed.md's GPU table.
gpu-check: install
	@mkdir -p outputs
	$(BIN)/python scripts/gpu_check.py --out outputs/gpu_check.json --update-docs docs/speed.md

test: install
	$(BIN)/python -m pytest -m "not slow and not slurm" $(PYTEST_ARGS)

test-slow: install
	$(BIN)/python -m pytest -m "slow" $(PYTEST_ARGS)

test-slurm: install
	$(BIN)/python -m pytest -m "slurm" $(PYTEST_ARGS)

# The wheel as a researcher gets it: built, installed into a fresh environment outside the checkout, and run from
# there (train, a sweep, status, report, own configs via --config-dir, score): scripts/ci_wheel.sh. Needs no
# `make install`; a few minutes, most of them installing the environment.
test-wheel:
	TORCH_SPEC="$(TORCH_SPEC)" PYTHON="$(PYTHON)" scripts/ci_wheel.sh

clean:
	rm -rf outputs multirun .pytest_cache
