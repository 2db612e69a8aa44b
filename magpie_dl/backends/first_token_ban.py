"""The request-side vocabulary of the first-token ban (no vLLM import).

Magpie bans a few markdown tokens (``#``, ``##``, ``**`` ...) at the first generated
position only, so sampled queries do not open with a heading. vLLM dropped per-request
logits processors, so the ban is an engine-level processor
(:mod:`magpie_dl.backends.vllm_logits`) that reads its per-request argument from
``SamplingParams.extra_args`` (offline) or ``vllm_xargs`` (server). Both sides agree on
the key and the format through this module, which stays importable without vLLM.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

# The extra_args / vllm_xargs key. Namespaced so it cannot collide with other plugins.
FIRST_TOKEN_BAN_ARG = "magpie_first_token_ban"

# A bound on the list length keeps the engine-side tables fixed-size (GPU interface) and
# rejects accidental "ban the vocabulary" requests at admission.
MAX_FIRST_TOKEN_BAN_IDS = 64

# FQCNs for `--logits-processors` / `LLM(logits_processors=...)`. The V1 class serves the
# CPU build and `VLLM_USE_V2_MODEL_RUNNER=0`; the V2 class serves GPU builds' default
# model runner (each runner rejects the other's classes).
FIRST_TOKEN_BAN_V1_FQCN = "magpie_dl.backends.vllm_logits:FirstTokenBanV1"
FIRST_TOKEN_BAN_V2_FQCN = "magpie_dl.backends.vllm_logits:FirstTokenBanV2"


def first_token_ban_fqcn(uses_v2_model_runner: bool) -> str:
    """The processor class (as ``module:Class``) for an engine's model runner."""
    return FIRST_TOKEN_BAN_V2_FQCN if uses_v2_model_runner else FIRST_TOKEN_BAN_V1_FQCN


def first_token_ban_args(ban_ids: Sequence[int]) -> dict[str, list[int]]:
    """The ``extra_args`` entry requesting a first-token ban ({} when nothing is banned)."""
    ids = parse_first_token_ban({FIRST_TOKEN_BAN_ARG: list(ban_ids)})
    return {FIRST_TOKEN_BAN_ARG: ids} if ids else {}


def parse_first_token_ban(extra_args: Mapping[str, Any] | None) -> list[int]:
    """The banned token ids of a request, validated; [] when it asks for no ban.

    Raises:
        ValueError: the argument is malformed. vLLM turns this into a validation error
            (HTTP 400 on the server) instead of letting it reach the sampler.
    """
    if not extra_args or FIRST_TOKEN_BAN_ARG not in extra_args:
        return []
    raw = extra_args[FIRST_TOKEN_BAN_ARG]
    if isinstance(raw, (str, bytes)) or not isinstance(raw, Sequence):
        raise ValueError(f"{FIRST_TOKEN_BAN_ARG} must be a list of token ids, got {raw!r}")
    ids: list[int] = []
    for value in raw:
        # bool is an int subclass; a float such as 3.0 is a caller bug, not an id.
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ValueError(f"{FIRST_TOKEN_BAN_ARG}: {value!r} is not a token id")
        if value not in ids:
            ids.append(value)
    if len(ids) > MAX_FIRST_TOKEN_BAN_IDS:
        raise ValueError(
            f"{FIRST_TOKEN_BAN_ARG}: {len(ids)} ids, at most {MAX_FIRST_TOKEN_BAN_IDS} allowed"
        )
    return ids
