# The two set-up commands of the README: `make demo` and `make test`.
# Both create .venv (if missing) and install transferkit with its test extras into it.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: install demo demo-text test bench clean

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

clean:
	rm -rf runs .pytest_cache
