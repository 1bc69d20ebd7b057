# Entry points for people and CI: `make test`, `make demo`, `make clean`.
# The virtual environment is created on first use and reinstalled only when requirements.txt changes.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
PYTEST_ARGS ?=

.PHONY: venv test demo clean

venv: $(STAMP)

$(STAMP): requirements.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade pip
	$(PY) -m pip install -r requirements.txt
	touch $(STAMP)

test: venv
	$(PY) -m pytest -q tests $(PYTEST_ARGS)

demo: venv
	@if [ -f demo.py ]; then \
		$(PY) demo.py; \
	else \
		echo "the demo (demo.py) is not available yet; running the test suite instead"; \
		$(PY) -m pytest -q tests $(PYTEST_ARGS); \
	fi

clean:
	find . -path ./$(VENV) -prune -o -type d -name __pycache__ -prune -exec rm -rf {} +
	rm -rf .pytest_cache
