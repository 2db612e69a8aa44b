"""Can the Hugging Face hub be used from here: switched off, and reachable within seconds.

Asked before anything waits on the hub client, whose retries spend most of a minute on a
machine without network before saying so. Standard library only.
"""

from __future__ import annotations

import os
import socket
from urllib.parse import urlsplit

_TRUE = {"1", "on", "yes", "true"}
# How long a server gets to accept a connection before it counts as unreachable.
TIMEOUT_S = 3.0


def hub_offline() -> bool:
    """Whether the user switched the hub client off (HF_HUB_OFFLINE / TRANSFORMERS_OFFLINE)."""
    return any(os.environ.get(name, "").strip().lower() in _TRUE for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))


def hub_endpoint() -> str:
    """The hub the client talks to (HF_ENDPOINT, else huggingface.co)."""
    return os.environ.get("HF_ENDPOINT", "https://huggingface.co").rstrip("/")


def reachable(url: str, timeout_s: float = TIMEOUT_S) -> bool:
    """Whether a TCP connection to ``url``'s host opens within ``timeout_s`` (no request is sent)."""
    parts = urlsplit(url)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        with socket.create_connection((parts.hostname or "", port), timeout=timeout_s):
            return True
    except OSError:
        return False
