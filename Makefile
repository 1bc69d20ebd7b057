# Entry points for people and CI: `make test`, `make demo`, `make clean`; `make gpu-check` on a GPU machine
# (docs/benchmarks.md, "The prepared device run": it uses that machine's own python3 and torch).
# The virtual environment is created on first use and reinstalled only when requirements.txt changes.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
PYTEST_ARGS ?=
DEMO_ARGS ?=
GPU_CHECK_ARGS ?=

.PHONY: venv test demo clean gpu-check

venv: $(STAMP)

$(STAMP): requirements.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade pip
	$(PY) -m pip install -r requirements.txt
	touch $(STAMP)

test: venv
	$(PY) -m pytest -q tests $(PYTEST_ARGS)

demo: venv
	$(PY) demo.py $(DEMO_ARGS)

gpu-check:
	bash tools/gpu_check.sh $(GPU_CHECK_ARGS)

clean:
	find . -path ./$(VENV) -prune -o -type d -name __pycache__ -prune -exec rm -rf {} +
	rm -rf .pytest_cache
