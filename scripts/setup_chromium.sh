#!/usr/bin/env bash
# Install Debian's headless-capable chromium for the report rendering tests.
#
# Idempotent: exits at once when a chromium binary is already on PATH. The report tests
# call it when chromium is missing (CI starts from a fresh machine); run it by hand with
#   bash scripts/setup_chromium.sh
# It needs root or passwordless sudo, since it uses apt-get.
set -euo pipefail

find_chromium() {
    command -v chromium || command -v chromium-browser || command -v google-chrome || true
}

if [ -n "$(find_chromium)" ]; then
    echo "chromium present: $(find_chromium)"
    exit 0
fi

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null && sudo -n true 2>/dev/null; then
        SUDO="sudo -n"
    else
        echo "error: installing chromium needs root (apt-get); run as root or with passwordless sudo" >&2
        exit 1
    fi
fi

export DEBIAN_FRONTEND=noninteractive
# The fonts package keeps text in the page from rendering as boxes; it is small.
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends chromium fonts-dejavu-core >/dev/null

path="$(find_chromium)"
if [ -z "$path" ]; then
    echo "error: apt-get finished but no chromium binary is on PATH" >&2
    exit 1
fi
echo "chromium installed: $path ($("$path" --version 2>/dev/null || echo 'version unknown'))"
