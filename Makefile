# Every user-facing target creates .venv on first use. torch is pinned here: 2.13.0 (a CPU build lies on the
# dev/CI disk; an unpinned torch would pull a multi-GB CUDA build).
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
SCALE ?= demo
WORKERS ?= 2

.PHONY: help setup test test-slow test-slurm lint data bench bench-prep bench-frontier bench-finetune-frontier gpu-check gpu-wheels ablation-nsp ablation-masking ablation-batch \
	ablation-data tables notebook clean

help:  ## list targets
	@grep -E '^[a-z -]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-18s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q --disable-pip-version-check torch==2.13.0
	$(VENV)/bin/pip install -q --disable-pip-version-check -e '.[test]'
	touch $@

setup: $(STAMP)  ## create .venv with every dependency

test: $(STAMP)  ## the default test suite (CPU, 2 cores)
	$(PY) -m pytest -q

test-slow: $(STAMP)  ## only the tests marked slow
	$(PY) -m pytest -q -m slow

test-slurm: $(STAMP)  ## only the tests marked slurm: a real one-node cluster (.ci/slurm.sh; .ci/run starts it)
	$(PY) -m pytest -q -m slurm

lint: $(STAMP)  ## ruff
	$(VENV)/bin/ruff check harness analysis tests

data: $(STAMP)  ## fetch and prepare the demo corpus as configs/demo.yaml uses it (cached)
	$(PY) -m harness data prepare --config configs/demo.yaml

bench: $(STAMP)  ## benchmarks -> runs/bench/latest.json
	$(PY) -m harness bench

bench-prep: $(STAMP)  ## data preparation at 50 and 500 MB (1 and 2 workers) -> runs/bench/latest.json (~30 min)
	$(PY) -m harness bench --sections prep

bench-frontier: $(STAMP) data  ## the demo designs' learning curves, two at a time on one thread each -> docs/frontier.png (~1 h)
	$(PY) -m harness bench --sections frontier

bench-finetune-frontier: $(STAMP) data  ## fine-tuning protocols on each table's reference arm vs random weights -> docs/ftfrontier.png
	$(PY) -m harness bench --sections finetune_frontier

# The device machine has no venv and no registry: `make gpu-check PY=python3` there uses its own torch, with the
# wheels from `make gpu-wheels` and the data a CPU rehearsal left in .gpu/cache (docs/gpu.md has the exact call).
GPU_CACHE := $(CURDIR)/.gpu/cache
gpu-check: $(if $(findstring $(VENV)/,$(PY)),$(STAMP))  ## what only a GPU shows; without one, a CPU rehearsal (docs/gpu.md)
	HARNESS_CACHE=$(GPU_CACHE) PYTHONPATH=$(CURDIR)$${PYTHONPATH:+:$$PYTHONPATH} $(PY) -m harness gpu-check

# nltk and mwparserfromhell at this venv's versions (the corpus cache key names them), for the device's Python 3.12
gpu-wheels: $(STAMP)  ## wheels the device call carries in .gpu/wheels (docs/gpu.md)
	rm -rf .gpu/wheels
	$(PY) -m pip download -q --disable-pip-version-check --no-deps --only-binary=:all: --python-version 3.12 \
		--implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
		--platform manylinux2014_x86_64 -d .gpu/wheels \
		$$($(PY) -c 'import importlib.metadata as m; print(*(f"{p}=={m.version(p)}" for p in ("nltk", "mwparserfromhell")))')

ablation-nsp: EXP = table2_nsp
ablation-masking: EXP = table1_masking
ablation-batch: EXP = table3_batch
ablation-data: EXP = table4_data
ablation-nsp ablation-masking ablation-batch ablation-data: $(STAMP)  ## a paper table: SCALE=smoke|demo|paper (laptop: Table 1) WORKERS=N
	$(PY) -m harness grid run experiments/$(EXP).yaml --scale $(SCALE) --workers $(WORKERS) $(GRID_ARGS)
	$(PY) -m analysis report runs/$(EXP)-$(SCALE)

tables: $(STAMP)  ## render every study in runs/ into runs/<study>/report/
	@for d in runs/*/study.json; do $(PY) -m analysis report $$(dirname $$d) || exit 1; done

notebook: $(STAMP)  ## Jupyter on the analysis notebooks
	$(VENV)/bin/pip install -q -e '.[notebook]'
	RUNS_DIR=$(abspath runs) $(VENV)/bin/jupyter lab --notebook-dir=analysis/notebooks

clean:  ## remove the venv and local caches (not runs/)
	rm -rf $(VENV) .cache .pytest_cache
