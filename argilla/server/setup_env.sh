#!/usr/bin/env bash
# Prepares the local Argilla test server: the .venv-argilla-server venv and Debian's redis-server.
#
# The unmodified argilla-server 2.8.0 gets its own venv because it pins typer<0.10 and needs
# click<8.2, huggingface-hub<1.0 and datasets<4, which clash with the main environment.
# Redis comes from Debian (serve.py runs it on a Unix socket); installed with apt-get when missing
# and we are root, otherwise the script says what to install.
# Idempotent and quick when everything is in place.
set -euo pipefail
cd "$(dirname "$0")/../.."
PY="${PY:-python3}"
VENV="${ARGILLA_SERVER_VENV:-.venv-argilla-server}"

if ! command -v redis-server >/dev/null; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        echo "installing redis-server (Debian package)"
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server >/dev/null
    else
        echo "redis-server is missing: install the Debian package (sudo apt-get install redis-server)" >&2
        exit 1
    fi
fi

# Cheap check by package metadata: importing argilla_server builds the whole app (seconds).
check() {
    "$VENV/bin/python" - <<'PY' 2>/dev/null
import importlib.metadata as md, importlib.util as iu
assert md.version("argilla-server") == "2.8.0" and iu.find_spec("uvicorn")
PY
}

# pip warns once per package about this machine's missing local index folders; drop that noise only.
pip_quiet() { "$VENV/bin/pip" install -q "$@" 2>&1 | { grep -v "is ignored: it is neither" || true; }; }

if ! { [ -x "$VENV/bin/python" ] && check; }; then
    "$PY" -m venv "$VENV"
    pip_quiet --upgrade pip
    pip_quiet "argilla-server==2.8.0" "typer<0.10" "click<8.2" "huggingface-hub<1.0" "datasets<4" "uvicorn"
    "$VENV/bin/python" -c 'import argilla_server, uvicorn' || { echo "argilla server env is broken: $VENV" >&2; exit 1; }
fi
echo "argilla server env ready: $VENV ($(redis-server --version | cut -d' ' -f1-3))"
