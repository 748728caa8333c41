# The two set-up commands of the README: `make demo` and `make test`.
# Both create .venv (if missing) and install transferkit with its test extras into it.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: install demo demo-text test docs bench clean

$(VENV)/.installed: pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e ".[test]"
	touch $@

install: $(VENV)/.installed

demo: install
	$(BIN)/transferkit demo

demo-text: install
	$(BIN)/transferkit demo --text

test: install
	$(BIN)/python -m pytest -q

# the documentation site on http://127.0.0.1:8000, rebuilt on every edit (`mkdocs build --strict` is in the tests)
docs: install
	$(BIN)/mkdocs serve

# build products only: runs/ holds trained models (the README's examples train there), never removed
clean:
	rm -rf .pytest_cache build dist site transferkit.egg-info
	find transferkit tests benchmarks scripts -name __pycache__ -type d -prune -exec rm -rf {} +
