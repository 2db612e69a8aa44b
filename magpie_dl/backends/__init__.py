"""Generation backends: distilabel LLMs that complete token-id prompts."""

from magpie_dl.backends.base import Completion, CompletionLLM, PromptInput, SamplingSpec

__all__ = ["Completion", "CompletionLLM", "PromptInput", "SamplingSpec"]
