# The two commands a newcomer runs: `make demo` and `make test`.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
PIP := $(BIN)/pip install -q -c constraints.txt

.PHONY: setup demo test models clean

$(BIN)/activate: pyproject.toml constraints.txt
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# CPU torch first, pinned, so nothing pulls a CUDA build.
	$(PIP) torch==2.13.0
	$(PIP) -e '.[test,curation,argilla]'
	touch $@

setup: $(BIN)/activate

models: setup
	$(BIN)/python -m magpie_dl.tiny --out models/tiny

demo: models
	$(BIN)/python pipelines/dpo_100k.py --preset smoke --output-dir out/smoke

test: models
	$(BIN)/python -m pytest -q

clean:
	rm -rf $(VENV) models out
