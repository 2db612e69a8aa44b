"""The one secret scrubber: what a message, a log line, a card or a report must never show.

Secrets are the values of the secret environment variables (:data:`SECRET_ENV_NAMES`), or
the values a caller names (an Argilla key), and the ``user:password@`` part of any URL.
Messages and logs mask them with :data:`MASK`; published files (card, report) with
:data:`REDACTED`, and they also redact config values under secret-looking keys.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Mapping
from typing import Any

MASK = "***"  # in messages and logs
REDACTED = "<redacted>"  # in published files
SECRET_ENV_NAMES: tuple[str, ...] = ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "ARGILLA_API_KEY", "OPENAI_API_KEY", "VLLM_API_KEY")
# Shorter values would mask ordinary text (a key "abc" would eat every "abc").
MIN_SECRET_LENGTH = 4
_SECRET_KEY = re.compile(r"(^|_)(token|hf_token|api_key|apikey|password|secret|access_token)$", re.IGNORECASE)
_USERINFO = re.compile(r"(?<=://)[^/\s@]+@")


def secret_env_names() -> tuple[str, ...]:
    """Environment variables that hold secrets; their values must never be written out."""
    return SECRET_ENV_NAMES


def secret_values() -> list[str]:
    """The values of the secret environment variables set now (long enough to be told from text)."""
    return [v for name in SECRET_ENV_NAMES if (v := os.environ.get(name)) and len(v) >= MIN_SECRET_LENGTH]


def scrub_text(text: str, secrets: Iterable[str] | None = None, *, mask: str = MASK) -> str:
    """``text`` with every secret replaced by ``mask`` and credentials cut out of URLs.

    ``secrets`` defaults to :func:`secret_values`; longer secrets go first, so a secret
    that contains another is masked whole.
    """
    values = secret_values() if secrets is None else [s for s in secrets if s]
    for secret in sorted(set(values), key=len, reverse=True):
        text = text.replace(secret, mask)
    return _USERINFO.sub("", text)


def scrub(value: Any, secrets: Iterable[str] | None = None, *, mask: str = REDACTED) -> Any:
    """A copy of ``value`` (mappings, lists, text) with secret-looking keys and secret values masked.

    For published files: the config holds no secrets by design, and this is the second
    line of defence, because a card is public the moment it is pushed.
    """
    secrets = secret_values() if secrets is None else list(secrets)
    if isinstance(value, Mapping):
        return {
            key: (mask if _SECRET_KEY.search(str(key)) and item not in (None, "") else scrub(item, secrets, mask=mask))
            for key, item in value.items()
        }
    if isinstance(value, (list, tuple)):
        return [scrub(item, secrets, mask=mask) for item in value]
    if isinstance(value, str):
        return scrub_text(value, secrets, mask=mask)
    return value

