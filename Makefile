# Entry points for people and CI: `make test`, `make demo`, `make lock`, `make clean`, `make gpu-check`.
# The virtual environment is created on first use from requirements.lock (every package, transitive ones
# too, at one version) and reinstalled only when the lock changes. `make lock` resolves requirements.txt
# again in a clean environment and rewrites requirements.lock.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
PIP_VERSION := 26.3
PYTEST_ARGS ?=
DEMO_ARGS ?=
OUT ?= experiments/gpu_check

.PHONY: venv test demo lock clean gpu-check

venv: $(STAMP)

$(STAMP): requirements.lock
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet pip==$(PIP_VERSION)
	$(PY) -m pip install -r requirements.lock
	touch $(STAMP)

test: venv
	$(PY) -m pytest -q tests $(PYTEST_ARGS)

demo: venv
	$(PY) demo.py $(DEMO_ARGS)

lock:
	rm -rf .lock-venv
	$(PYTHON) -m venv .lock-venv
	.lock-venv/bin/python -m pip install --quiet pip==$(PIP_VERSION)
	.lock-venv/bin/python -m pip install -r requirements.txt
	{ echo "# Every package the toolkit installs, resolved from requirements.txt by \`make lock\`; do not edit."; \
	  .lock-venv/bin/python -m pip freeze --all --exclude pip; } > requirements.lock
	rm -rf .lock-venv

gpu-check: venv
	$(PY) -m tools.gpu_check --out $(OUT)

clean:
	find . -path ./$(VENV) -prune -o -type d -name __pycache__ -prune -exec rm -rf {} +
	rm -rf .pytest_cache
