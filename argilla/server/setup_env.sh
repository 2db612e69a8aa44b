#!/usr/bin/env bash
# Creates .venv-argilla-server: the unmodified argilla-server 2.8.0 for the review tests.
#
# It gets its own venv because the server pins typer<0.10 and needs click<8.2,
# huggingface-hub<1.0 and datasets<4, which clash with the main environment.
# fakeredis provides Redis in-process (see serve.py); uvicorn serves the app.
# Idempotent: a venv whose server already imports is left alone.
set -euo pipefail
cd "$(dirname "$0")/../.."
PY="${PY:-python3}"
VENV="${ARGILLA_SERVER_VENV:-.venv-argilla-server}"

check() { "$VENV/bin/python" -c 'import argilla_server, fakeredis, uvicorn' 2>/dev/null; }

# pip warns once per package about this machine's missing local index folders; drop that noise only.
pip_quiet() { "$VENV/bin/pip" install -q "$@" 2>&1 | { grep -v "is ignored: it is neither" || true; }; }

if [ -x "$VENV/bin/python" ] && check; then
    echo "argilla server env ready: $VENV"
    exit 0
fi
"$PY" -m venv "$VENV"
pip_quiet --upgrade pip
pip_quiet "argilla-server==2.8.0" \
    "typer<0.10" "click<8.2" "huggingface-hub<1.0" "datasets<4" \
    "uvicorn" "fakeredis>=2.26"
check || { echo "argilla server env is broken: $VENV" >&2; exit 1; }
echo "argilla server env ready: $VENV"
