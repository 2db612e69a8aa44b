"""Generation backends: distilabel LLMs that complete token-id prompts."""

from __future__ import annotations

from typing import TYPE_CHECKING

from magpie_dl.backends.base import Completion, CompletionLLM, PromptInput, SamplingSpec

if TYPE_CHECKING:
    from magpie_dl.config.dpo import BackendConfig

__all__ = ["Completion", "CompletionLLM", "PromptInput", "SamplingSpec", "make_backend"]

# The backend section's settings the server backend takes as they are.
SERVING_SETTINGS = (
    "max_concurrency", "max_retries", "backoff_s", "connect_timeout_s", "request_timeout_s",
    "stall_timeout_s", "probe_timeout_s", "probe_interval_s", "restart_grace_s",
)


def make_backend(config: BackendConfig, model: str, seed: int = 0) -> CompletionLLM:
    """The backend ``config.kind`` for ``model``; engine modules import lazily."""
    pinned = {"chat_template_date": config.chat_template_date.isoformat()}
    if config.kind == "transformers":
        from magpie_dl.backends.transformers import TransformersBackend

        return TransformersBackend(
            model=model, device=config.device, dtype=config.dtype, batch_size=config.transformers_batch_size, **pinned
        )
    if config.kind == "vllm":
        from magpie_dl.backends.vllm import VLLMBackend

        return VLLMBackend(
            model=model,
            dtype=config.dtype,
            tensor_parallel_size=config.tensor_parallel_size,
            max_model_len=config.max_model_len,
            gpu_memory_utilization=config.gpu_memory_utilization,
            enable_prefix_caching=config.enable_prefix_caching,
            seed=seed,
            **pinned,
        )
    if config.kind == "openai":
        from magpie_dl.backends.openai import OpenAIBackend

        serving = {name: getattr(config, name) for name in SERVING_SETTINGS}
        return OpenAIBackend(model=model, base_urls=list(config.base_urls), **serving, **pinned)
    if config.kind == "standin":
        from magpie_dl.backends.standin import StandInBackend

        return StandInBackend(model=model, seed=seed, seconds_per_prompt=config.standin_seconds_per_prompt, **pinned)
    raise ValueError(f"unknown backend {config.kind!r}; use transformers, vllm, openai or standin")
