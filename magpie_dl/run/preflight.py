"""Checks of the machine a run is about to use, before any model loads.

The config validates what a value says (``--reward.dtype``, a device's spelling, a local
model directory); this module checks what only the machine can answer: is there a CUDA
device for ``--reward.device cuda``, can a hub model be fetched (offline, no network,
not in the local cache), is there a token for ``--push-to-hub``, does the chat model's
tokenizer carry a chat template. Each failure is one
:class:`~magpie_dl.config.dpo.ConfigError` line saying what to change. Only the standard
library, torch, ``huggingface_hub`` and transformers' tokenizers are used.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from pydantic import BaseModel

from magpie_dl.config.dpo import ConfigError, _fields
from magpie_dl.hub import hub_endpoint, hub_offline, reachable  # noqa: F401  (re-exported)
# Model fields whose value names a sentence encoder shipped with the project, not a hub id.
_PACKAGED_PREFIX = "packaged:"


def check_before_run(cfg: BaseModel) -> None:
    """Every check below, in the order a user would fix them; raises ConfigError."""
    check_devices(cfg)
    check_model_sources(cfg)
    check_endpoints(cfg)
    check_hub_token(cfg)
    check_review_server(cfg)
    check_chat_templates(cfg)


def _values(cfg: BaseModel, leaf: str) -> Iterator[tuple[str, Any]]:
    """(dotted path, value) of every field named ``leaf`` (``device``) or ending in ``_{leaf}``."""
    for path, _ in _fields(type(cfg)):
        name = path.rsplit(".", 1)[-1]
        if name == leaf or name.endswith(f"_{leaf}"):
            value: Any = cfg
            for part in path.split("."):
                value = getattr(value, part)
            yield path, value


def _used(cfg: BaseModel, path: str) -> bool:
    """Whether a field matters for this run (the transformers backend's device only with it)."""
    backend = getattr(cfg, "backend", None)
    return not (path == "backend.device" and backend is not None and backend.kind != "transformers")


def check_devices(cfg: BaseModel) -> None:
    """Every torch device the run uses exists on this machine."""
    count: int | None = None
    for path, device in _values(cfg, "device"):
        if not _used(cfg, path) or device == "cpu":
            continue
        if device == "mps":
            import torch

            if not torch.backends.mps.is_available():
                raise ConfigError(f"--{path} mps: this machine has no MPS device; use --{path} cpu")
            continue
        count = cuda_device_count() if count is None else count
        index = int(device.split(":", 1)[1]) if ":" in device else 0
        if count == 0:
            raise ConfigError(f"--{path} {device}: this machine has no CUDA device; use --{path} cpu")
        if index >= count:
            raise ConfigError(f"--{path} {device}: this machine has {count} CUDA device(s) (cuda:0..cuda:{count - 1})")


def cuda_device_count() -> int:
    """CUDA devices visible to this run (see :func:`cuda_devices`)."""
    return cuda_devices()[0]


def cuda_devices() -> tuple[int, float]:
    """(CUDA devices visible to this run, GB of memory of the first), probed in a child process.

    The step workers are forked from this process; CUDA initialised here first (which a
    count may do when NVML is missing) would not work in them.
    """
    probe = ("import torch; n = torch.cuda.device_count(); "
             "print(n, torch.cuda.get_device_properties(0).total_memory / 1e9 if n else 0.0)")
    try:
        done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
        count, memory = done.stdout.strip().splitlines()[-1].split()
        return int(count), float(memory)
    except (OSError, ValueError, IndexError, subprocess.SubprocessError):
        return 0, 0.0


def check_model_sources(cfg: BaseModel) -> None:
    """Every hub model the run names can be had: in the local cache, or the hub is reachable.

    Without this, an offline run loads the other models first and then spends a minute in
    the hub client's retries before failing inside a step worker.
    """
    for path, ref in _values(cfg, "model"):
        if not isinstance(ref, str) or ref.startswith(_PACKAGED_PREFIX) or Path(ref).expanduser().exists():
            continue  # local directories were checked with the config
        if _in_local_cache(ref):
            continue
        if hub_offline():
            raise ConfigError(
                f"--{path} {ref}: not in the local Hugging Face cache and HF_HUB_OFFLINE is set; "
                f"download it first (hf download {ref}) or give a local model directory"
            )
        endpoint = hub_endpoint()
        if not reachable(endpoint):
            raise ConfigError(
                f"--{path} {ref}: not in the local Hugging Face cache and the hub ({endpoint}) cannot be reached; "
                f"download it first or give a local model directory"
            )


def check_endpoints(cfg: BaseModel) -> None:
    """Every ``--base-url`` of the openai backend accepts connections (the backend checks
    the served models at load; this only spares loading the other models first)."""
    backend = getattr(cfg, "backend", None)
    if backend is None or backend.kind != "openai":
        return
    for url in backend.base_urls:
        if not reachable(url):
            raise ConfigError(f"--base-url {_shown(url)}: nothing answers there; start `vllm serve` or fix the address")


def check_hub_token(cfg: BaseModel) -> None:
    """``--push-to-hub`` has a token to push with (HF_TOKEN or a saved login; its value is
    never shown) and a hub to push to, so the push does not fail after the whole run."""
    output = getattr(cfg, "output", None)
    if output is None or not getattr(output, "push_to_hub", None):
        return
    from huggingface_hub import get_token

    if not (os.environ.get("HF_TOKEN") or os.environ.get("HUGGING_FACE_HUB_TOKEN") or get_token()):
        raise ConfigError("--push-to-hub needs a Hugging Face token: set HF_TOKEN (or log in with `hf auth login`)")
    if hub_offline():
        raise ConfigError("--push-to-hub: HF_HUB_OFFLINE is set; unset it to push, or drop --push-to-hub")
    endpoint = hub_endpoint()
    if not reachable(endpoint):
        raise ConfigError(
            f"--push-to-hub: the hub ({_shown(endpoint)}) cannot be reached; check the network or HF_ENDPOINT, "
            "or drop --push-to-hub"
        )


def check_review_server(cfg: BaseModel) -> None:
    """``--argilla-dataset``: the Argilla server (ARGILLA_API_URL) accepts connections."""
    output = getattr(cfg, "output", None)
    url = os.environ.get("ARGILLA_API_URL")
    if output is None or not getattr(output, "argilla_dataset", None) or not url:
        return  # a missing URL is the recipe's own check
    if not reachable(url):
        raise ConfigError(
            f"--argilla-dataset: the Argilla server at {_shown(url)} (ARGILLA_API_URL) cannot be reached; "
            "start it or fix the address, or drop --argilla-dataset"
        )


def check_chat_templates(cfg: BaseModel) -> None:
    """The models that write queries and responses have a chat template Magpie can read,
    and a thinking switch when ``--responses.thinking`` asks for one.

    Loads their tokenizers only. With ``--generator.family`` named, the table's strings
    serve and no template is needed. A tokenizer that will not load here is left to the
    step to explain.
    """
    generator = getattr(cfg, "generator", None)
    if generator is None:
        return
    from magpie_dl.templates.chat import ChatTemplateError
    from magpie_dl.templates.families import resolve_family

    responses = getattr(cfg, "responses", None)
    response_model = (responses.model if responses is not None else None) or generator.model
    # (flag, model, writes responses): the generator writes queries unless instructions are given.
    models = [] if getattr(cfg, "instructions", None) else [("generator.model", generator.model, False)]
    models.append(("responses.model" if response_model != generator.model else "generator.model", response_model, True))
    for path, ref, writes_responses in models:
        try:
            from transformers import AutoTokenizer

            tokenizer = AutoTokenizer.from_pretrained(ref)
        except Exception:
            continue
        try:
            family = resolve_family(generator.family, tokenizer)
        except ChatTemplateError as exc:
            raise ConfigError(f"--{path} {ref}: {exc}") from None
        if writes_responses and getattr(responses, "thinking", False) and family.thinking_header is None:
            raise ConfigError(
                f"--responses.thinking: {ref} (family {family.name}) has no thinking switch in its chat template; drop it"
            )


def _shown(url: str) -> str:
    """``url`` as it may be printed: without ``user:password@``."""
    parts = urlsplit(url)
    if parts.username is None and parts.password is None:
        return url
    return parts._replace(netloc=parts.netloc.rsplit("@", 1)[1]).geturl()


def _in_local_cache(repo_id: str) -> bool:
    """Whether the hub cache holds ``repo_id``'s ``config.json`` (every model we load has one)."""
    from huggingface_hub import try_to_load_from_cache

    try:
        found = try_to_load_from_cache(repo_id, "config.json")
    except Exception:  # an id the cache cannot even name: let the hub client explain later
        return False
    return isinstance(found, str)
