# cl-explain: every figure and table of the study from one command. `make help` lists the targets.
SHELL := /bin/bash
.DEFAULT_GOAL := help
.DELETE_ON_ERROR:

PYTHON_SYS ?= python3
VENV       ?= .venv
PY         := $(VENV)/bin/python
STAMP      := $(VENV)/.cl-explain-installed
PROFILE    ?= full
# seconds per notebook cell: a guard against a hung kernel, not a budget (05's evaluation cell is the longest)
TIMEOUT    ?= 7200
NOTEBOOKS  := $(sort $(wildcard notebooks/[0-9][0-9]-*.ipynb))
STEMS      := $(notdir $(basename $(NOTEBOOKS)))
SOURCES    := $(shell find cl_explain -name '*.py' 2>/dev/null)
MODELS     := data/models/manifest.json
EXECUTED   := $(foreach s,$(STEMS),build/$(PROFILE)/$(s).ipynb)

help: ## list the targets
	@echo "cl-explain -- make targets:"
	@grep -E '^[a-z][a-z-]*:.*## ' $(MAKEFILE_LIST) | sed -E 's/:.*## /\t/' | sort | awk -F'\t' '{printf "  %-10s %s\n", $$1, $$2}'
	@echo "Variables: PROFILE=full|ci (parameter set for figures), TIMEOUT=seconds per notebook cell"

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON_SYS) -m venv $(VENV)
	$(PY) -m pip install --quiet torch==2.14.1 torchvision==0.29.1
	$(PY) -m pip install --quiet -e '.[notebooks,test,cluster]'
	$(PY) -m ipykernel install --sys-prefix --name python3 --display-name "Python 3 (cl-explain)" >/dev/null
	@touch $@

env: $(STAMP) ## create the environment (.venv) with the pinned torch and the package (done by every target)

figures: $(STAMP) $(EXECUTED) ## regenerate every figure and table (PROFILE=full writes figures/, PROFILE=ci build/ci/figures/)
	@echo "figures written for profile $(PROFILE)"

# Figures are written to a staging folder and replace the profile's figure_dir (read from the params
# file) only when the whole notebook succeeded: a failed run leaves neither an executed notebook nor
# a half-updated figure folder. Each run's wall time is appended to build/<profile>/timings.txt.
# The manifest is a prerequisite: `make models` changes it (hashes, quality numbers), so the figures follow.
STAGING := build/$(PROFILE)/staging
build/$(PROFILE)/%.ipynb: notebooks/%.ipynb params/$(PROFILE)/%.yaml $(SOURCES) $(MODELS) | $(STAMP)
	@mkdir -p $(dir $@) && rm -rf $(STAGING)/$*
	@start=$$SECONDS; set -e; \
	$(VENV)/bin/papermill -k python3 --cwd notebooks --execution-timeout $(TIMEOUT) --log-level WARNING \
		-f params/$(PROFILE)/$*.yaml -p figure_dir ../$(STAGING)/$* $< $(basename $@).partial.ipynb; \
	dest=notebooks/$$($(PY) -c 'import sys, yaml; print(yaml.safe_load(open(sys.argv[1]))["figure_dir"])' params/$(PROFILE)/$*.yaml); \
	rm -rf "$$dest" && mkdir -p "$$(dirname "$$dest")" && mv $(STAGING)/$* "$$dest"; \
	mv $(basename $@).partial.ipynb $@; \
	echo "$* $$((SECONDS - start)) s" | tee -a build/$(PROFILE)/timings.txt

# The browser test (tests/test_browser.py) needs Debian's chromium and chromium-driver; installed here when
# missing and the user is root (as in CI), else the test skips and says why.
browser: ## install headless Chromium and its driver for the browser test (Debian packages, needs root)
	@if command -v chromium >/dev/null && command -v chromedriver >/dev/null; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		echo "installing chromium and chromium-driver (apt-get)"; \
		{ apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null; } \
		|| echo "could not install chromium and chromium-driver: the browser test will be skipped"; \
	else echo "chromium or chromedriver missing and not root: the browser test will be skipped"; fi

test: $(STAMP) browser ## lint and format check (ruff), unit tests (with the JupyterLab browser test), notebook tests (nbval), CI-profile smoke run
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(PY) -m pytest -q tests
	$(PY) -m pytest -q --nbval-lax --nbval-current-env --nbval-sanitize-with tests/nbval_sanitize.cfg \
		-p no:cacheprovider notebooks/[0-9][0-9]-*.ipynb

models: $(STAMP) ## retrain the embedded models and rewrite data/models/manifest.json
	$(PY) -m cl_explain.train --all

bench: $(STAMP) ## benchmark every method and metric; prints a table and writes build/bench.md
	$(PY) scripts/benchmark.py --output build/bench.md

check-kernels: $(STAMP) ## recompute quality numbers and ci tables under native and portable CPU kernels, compare
	$(PY) scripts/check_cpu_kernels.py

exercises: $(STAMP) ## regenerate the student copies of the classroom exercises
	$(PY) -m cl_explain.exercises generate

tidy: $(STAMP) ## store the notebooks as JupyterLab writes them (kernel metadata, no outputs), then the student copies
	$(PY) -m cl_explain.notebook_files tidy
	$(PY) -m cl_explain.exercises generate

lab: $(STAMP) ## open JupyterLab in the environment
	$(VENV)/bin/jupyter lab notebooks

clean: ## remove executed notebooks and caches (keeps the environment and committed figures)
	rm -rf build .cache .pytest_cache

.PHONY: help env browser figures test models bench check-kernels exercises tidy lab clean
