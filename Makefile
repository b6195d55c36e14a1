# clods-pl: the two commands a newcomer needs are `make demo` and `make test`; `make help` lists the rest.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
TORCH_SPEC ?= torch==2.13.0
CLI := $(BIN)/clods-pl

CONFIG ?= experiments/flag_tiny.yaml
RUN ?= runs/demo
PRESET ?= tiny
DATA ?= data/$(PRESET)
SWEEP ?= experiments/sweeps/stage2_gamma_iters.yaml
PYTEST_ARGS ?=
ARGS ?=

# One intra-op thread: on a 2-core box, torch with 2 threads runs 10-20x slower as soon as another process
# competes for a core (measured: 7.9 s vs 0.43 s per stage-2 render step). Raise it on an idle many-core machine.
export OMP_NUM_THREADS ?= 1
export WANDB_MODE ?= offline
export WANDB_SILENT ?= true

.DEFAULT_GOAL := help
.PHONY: help install demo small test data preview stage1 stage2 stage3 pipeline eval refine report bench bench-gpu clean \
        test-slurm slurm-pipeline sweep agent lint

help: ## show this list
	@grep -hE '^[a-zA-Z0-9_-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-15s %s\n", $$1, $$2}'

$(STAMP): setup.cfg pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q "$(TORCH_SPEC)"
	$(BIN)/python -m pip install -q -e ".[dev]"
	$(BIN)/python -m clods_pl.pipeline.help_cache
	$(BIN)/python -m clods_pl.render.cpu_backend
	@touch $(STAMP)

install: $(STAMP) ## create .venv (if missing) and install clods-pl with its CPU dependencies

data: $(STAMP) ## generate the synthetic dataset PRESET (tiny|small|paper) into DATA and its preview
	$(CLI) data generate --preset $(PRESET) --out $(DATA)
	$(CLI) data preview --dataset $(DATA) --out $(DATA)/preview.png

preview: $(STAMP) ## write a contact sheet (views x frames) of DATA
	$(CLI) data preview --dataset $(DATA) --out $(DATA)/preview.png

stage1: $(STAMP) ## stage 1: fit SMGS appearance on frame 0 (RUN, CONFIG, ARGS: extra clods-pl options)
	$(CLI) stage1 --config $(CONFIG) --run_dir $(RUN) $(ARGS)

stage2: $(STAMP) ## stage 2: recover mesh sequences by inverse rendering (RUN, CONFIG)
	$(CLI) stage2 --config $(CONFIG) --run_dir $(RUN) $(ARGS)

stage3: $(STAMP) ## stage 3: train MeshGraphNets on the recovered meshes (RUN, CONFIG)
	$(CLI) stage3 --config $(CONFIG) --run_dir $(RUN) $(ARGS)

pipeline: $(STAMP) ## run every stage that is not up to date, then evaluate and report (RUN, CONFIG)
	$(CLI) pipeline --config $(CONFIG) --run_dir $(RUN) $(ARGS)

eval: $(STAMP) ## rollout evaluation against ground-truth meshes -> RUN/eval/metrics.json
	$(CLI) eval --config $(CONFIG) --run_dir $(RUN) $(ARGS)

refine: $(STAMP) ## close the loop: stage 2 again from the stage-3 model, stage 3, eval (RUN, CONFIG, ARGS)
	$(CLI) refine --config $(CONFIG) --run_dir $(RUN) $(ARGS)

report: $(STAMP) ## write RUN/report.md and RUN/report.html with tables, plots and videos
	$(CLI) report --run_dir $(RUN)

demo: $(STAMP) ## install, generate the tiny dataset, run all stages on the CPU, write the report
	@test -f data/tiny/dataset.json || $(MAKE) --no-print-directory data PRESET=tiny DATA=data/tiny
	$(CLI) pipeline --config experiments/flag_tiny.yaml --run_dir $(RUN)
	@echo "Report: $(RUN)/report.html (self-contained; $(RUN)/report.md links the same files)"

small: $(STAMP) ## the small benchmark (paper Tables 1-2, three stage-3 seeds; ~18 min on 2 CPU cores) -> runs/small
	@test -f data/small/dataset.json || $(MAKE) --no-print-directory data PRESET=small DATA=data/small
	$(CLI) pipeline --config experiments/flag_small.yaml --run_dir runs/small $(ARGS)
	@echo "Report: runs/small/report.html"

test: $(STAMP) lint ## install (if needed), lint, and run the test suite (GPU tests skip without CUDA)
	$(BIN)/python -m pytest $(PYTEST_ARGS)

lint: $(STAMP) ## ruff: lint rules and the format check in pyproject.toml (`ruff format` fixes the format)
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks

bench: $(STAMP) ## CPU benchmarks -> benchmarks/results/*.json (see BENCHMARKS.md)
	$(BIN)/python -m benchmarks.run_all --device cpu

bench-gpu: ## GPU benchmarks and gpu-marked tests on a CUDA machine (see benchmarks/gpu.sh)
	bash benchmarks/gpu.sh

test-slurm: $(STAMP) ## start a local single-node SLURM, submit the tiny pipeline with 2 CPU tasks, check it
	bash experiments/slurm/test_local_slurm.sh

slurm-pipeline: ## submit the whole pipeline to SLURM as dependent jobs (see experiments/slurm/README.md)
	bash experiments/slurm/submit_pipeline.sh $(CONFIG) $(RUN)

sweep: $(STAMP) ## create the W&B sweep SWEEP (prints its id)
	$(BIN)/wandb sweep $(SWEEP)

agent: $(STAMP) ## run a W&B agent for SWEEP_ID
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/wandb agent $(SWEEP_ID)  # the trials run `clods-pl` from PATH

clean: ## remove generated data, runs, logs and caches (keeps .venv)
	rm -rf data runs wandb lightning_logs .pytest_cache
	find . -name __pycache__ -type d -prune -not -path './$(VENV)/*' -exec rm -rf {} +
