# The README's two commands: `make run` and `make test`. CI calls `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: run test install bench clean

$(BIN)/orderflow: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test,embedded]'
	touch $@

install: $(BIN)/orderflow

run: install
	$(BIN)/orderflow dev

test: install
	$(BIN)/pytest -q -p no:cacheprovider

bench: install
	$(BIN)/pip install -q -e '.[bench]'
	@command -v wrk >/dev/null || { echo "bench needs wrk: apt-get install -y wrk"; exit 1; }
	$(BIN)/python -m bench

clean:
	rm -rf $(VENV) .orderflow-dev
