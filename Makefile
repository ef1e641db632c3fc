# Verbs of the reproduction repository. `make help` lists them.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
# torch is installed first and pinned: this build is served from local disk on the dev machines.
TORCH_SPEC ?= torch==2.14.1 torchvision==0.29.1
# Variables (`make help` prints the `#>` lines): make degradation PROFILE=quick SEEDS=3
#> PROFILE   paper | quick | cpu | smoke (default: paper with a CUDA GPU, else smoke; cpu: the
#>           short CIFAR/MNIST schedules sized for a 2-core CPU, in degradation and seed004)
#> SEEDS     number of seeds, overriding the profile's (e.g. SEEDS=3)
#> DATA_DIR  folder holding the data sets (else $$CONVNETS_DATA, else ~/.cache/convnets/data)
#> DEVICE    cuda | cpu | cuda:1 ... (default: the trainer's choice)
#> EXTRA     more `experiments run` options, e.g. EXTRA="--dataset imagefolder:/data/c10-q75"
#> SOURCE    make tables: ledger (every part in paper_tables/data -> paper_tables/) | mlflow (the
#>           live store -> live_tables/, never over the ledger's tables)
#> OUT       make gpu-shift: folder for the shift's part, store and log
#> EXP       make lr-search: the spec to tune (default degradation)
#> PORT      make mlflow-ui: port on 127.0.0.1 (default 5000)
#> LAUNCHER  local | slurm (slurm: each claim target submits one job array; options from
#>           $$CONVNETS_SLURM_* or EXTRA="--partition gpu --gpus-per-run 1 --time-limit 4h")
#> SLURM_DIR make test-slurm: folder of the test cluster's config, state and logs
SEEDS ?=
DATA_DIR ?=
DEVICE ?=
EXP ?= degradation
SOURCE ?= ledger
OUT ?=
EXTRA ?=
PORT ?= 5000
LAUNCHER ?=
SLURM_DIR ?= /tmp/convnets-slurm

# PROFILE defaults to `paper` when a CUDA GPU is visible, else `smoke` (with a notice).
PROFILE ?= $(shell $(PY) -c "import torch; print('paper' if torch.cuda.is_available() else 'smoke')" 2>/dev/null || echo smoke)
RUN_ARGS = --profile $(PROFILE) $(if $(SEEDS),--seeds $(SEEDS)) $(if $(DATA_DIR),--data-dir $(DATA_DIR)) $(if $(DEVICE),--device $(DEVICE)) $(if $(LAUNCHER),--launcher $(LAUNCHER)) $(EXTRA)

.PHONY: help setup test test-slurm lint shifts gpu-shift gpu-rehearsal ablation-resnetv2 degradation densenet nin seed-claims seed004 reproduce \
        lr-search tables bench mlflow-ui optuna-dashboard clean-stores _notice

help: ## list the targets and the variables they take
	@echo "targets:"
	@grep -E '^[a-zA-Z0-9_-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-20s %s\n", $$1, $$2}'
	@echo "variables (VAR=value after the target):"
	@sed -n 's/^#> /  /p' $(MAKEFILE_LIST) | sed 's/\$$\$$/$$/g'
	@echo "optuna-dashboard needs the dashboard extra: $(VENV)/bin/pip install -e '.[dashboard]'"

setup: ## create .venv with pip and install the project (editable, with the dev extra)
	python3 -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q $(TORCH_SPEC)
	$(PIP) install -q -e '.[dev]'

test: ## run the test suite (CPU, skips the `slow`, `gpu` and `slurm` markers)
	$(PY) -m pytest -q

# up.sh installs Slurm if missing and starts it (root); if it cannot, the tests skip and say why
test-slurm: ## the `slurm` tests on a single-node Slurm started for them (tests/slurm/up.sh), stopped after
	@bash -c 'd="$(SLURM_DIR)"; trap "bash tests/slurm/down.sh \"$$d\"" EXIT; \
	  if bash tests/slurm/up.sh "$$d"; then . "$$d/env"; \
	  else echo "warning: no Slurm cluster here; the slurm tests will be skipped" >&2; fi; \
	  $(PY) -m pytest -q -m slurm tests/test_slurm.py'

lint: ## ruff over the code
	$(PY) -m ruff check convnets experiments analysis tests

_notice:
	@if [ "$(PROFILE)" = "smoke" ]; then echo "NOTICE: PROFILE=smoke (no CUDA GPU visible, or PROFILE=smoke given): CPU, synthetic data, tiny models. Not evidence."; fi

ablation-resnetv2: _notice ## Identity Mappings Table 1 (shortcuts) and Table 2 (orderings)
	$(PY) -m experiments run resnetv2-shortcuts $(RUN_ARGS)
	$(PY) -m experiments run resnetv2-orderings $(RUN_ARGS)

degradation: _notice ## He et al. 2015 Fig. 1/6: plain-20/56 vs ResNet-20/56
	$(PY) -m experiments run degradation $(RUN_ARGS)

densenet: _notice ## DenseNet Table 2 CIFAR variants
	$(PY) -m experiments run densenet-cifar $(RUN_ARGS)

nin: _notice ## NiN: global average pooling vs fully connected heads
	$(PY) -m experiments run nin-heads $(RUN_ARGS)

seed-claims: _notice ## the seed documents' own models (d2l DenseNet on Fashion-MNIST, MNIST nets)
	$(PY) -m experiments run seed-claims $(RUN_ARGS)

seed004: _notice ## the course notes' MNIST nets, printed vs corrected code (PROFILE=cpu: 3 epochs)
	$(PY) -m experiments run seed004-mnist $(RUN_ARGS)

reproduce: ablation-resnetv2 degradation densenet nin seed-claims seed004 ## every claim (all the targets above, seed004 included)

lr-search: _notice ## Optuna learning-rate search: make lr-search EXP=degradation
	$(PY) -m experiments lr-search $(EXP) $(RUN_ARGS)

tables: ## regenerate paper_tables/ from every ledger part (SOURCE=ledger|mlflow)
	$(PY) -m analysis tables --source $(SOURCE)

# BENCH_ARGS: e.g. --resume (keep the rows a cut-off run wrote, measure the rest), --load "..."
bench: ## training throughput, side by side -> paper_tables/bench-gpu.md (GPU) or bench-cpu.md (CPU)
	$(PY) -m convnets.bench $(BENCH_ARGS)

# One worker and no background job consumers (MLflow 3 starts 4 workers and a huey consumer).
mlflow-ui: ## MLflow UI on 127.0.0.1:PORT (default 5000), one worker, over the local store
	MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false MLFLOW_DISABLE_TELEMETRY=true $(VENV)/bin/mlflow server --host 127.0.0.1 \
	  --port $(PORT) --workers 1 \
	  --backend-store-uri "$${MLFLOW_TRACKING_URI:-sqlite:///$(CURDIR)/mlflow.db}" \
	  --default-artifact-root "file://$(CURDIR)/mlartifacts"

optuna-dashboard: ## optuna-dashboard on 127.0.0.1:8080 over optuna.db (needs the dashboard extra)
	@test -x $(VENV)/bin/optuna-dashboard || { echo "optuna-dashboard is not installed: $(VENV)/bin/pip install -e '.[dashboard]'" >&2; exit 1; }
	$(VENV)/bin/optuna-dashboard --host 127.0.0.1 --port 8080 "$${OPTUNA_STORAGE:-sqlite:///$(CURDIR)/optuna.db}"

shifts: ## the GPU shift queue with each shift's state (from the ledger) and estimate
	$(PY) -m experiments shifts

gpu-rehearsal: ## a GPU shift rehearsed on this CPU: smoke shift killed mid-run, $$OUT checked against the device's limits, add-part, then a resumed second lease
	$(PY) -m experiments.rehearsal

gpu-shift: ## the device side of the next pending shift: make gpu-shift OUT=DIR (python3 without a venv)
	@test -n "$(OUT)" || { echo "usage: make gpu-shift OUT=DIR"; exit 2; }
	PYTHON=$$( [ -x $(PY) ] && echo $(PY) || echo python3 ) bash experiments/gpu_shift.sh $(OUT) $(EXTRA)
