"""Stand-in for vLLM on the simulated GPU node (tests/gpu_node/simulated_node.py): the API
surface magpie_dl.backends.vllm uses, on a "CUDA" platform, with an engine that loads nothing."""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Any

from simulated_node import record


class SamplingParams:
    def __init__(self, **kwargs: Any) -> None:
        self.n = 1
        self.seed = None
        self.stop_token_ids = None
        self.max_tokens = 16
        self.output_kind = None
        self.__dict__.update(kwargs)


@dataclass
class CompletionOutput:
    index: int
    text: str
    token_ids: list[int]
    finish_reason: str = "stop"
    stop_reason: Any = None


@dataclass
class RequestOutput:
    request_id: str
    prompt_token_ids: list[int]
    outputs: list[CompletionOutput] = field(default_factory=list)
    finished: bool = True


class _ModelConfig:
    def __init__(self, max_model_len: int) -> None:
        self.max_model_len = max_model_len


class _Engine:
    """What VLLMStream drives: add_request / step / abort_request."""

    def __init__(self, llm: LLM) -> None:
        self._llm = llm
        self._pending: list[RequestOutput] = []
        self.model_config = _ModelConfig(llm.max_model_len)

    def add_request(self, request_id: str, prompt: dict, params: SamplingParams) -> None:
        self._pending.append(self._llm._complete(request_id, prompt, params))

    def step(self) -> list[RequestOutput]:
        done, self._pending = self._pending, []
        return done

    def abort_request(self, request_ids: list[str]) -> None:
        self._pending = [o for o in self._pending if o.request_id not in set(request_ids)]


class LLM:
    """An engine that loads nothing: every request completes at once with a finished text."""

    _ids = itertools.count()

    def __init__(self, model: str, tokenizer: str | None = None, tensor_parallel_size: int = 1,
                 gpu_memory_utilization: float = 0.9, max_model_len: int | None = None, **kwargs: Any) -> None:
        from transformers import AutoTokenizer

        self.model = model
        self.max_model_len = max_model_len or 8192
        self.tokenizer = AutoTokenizer.from_pretrained(tokenizer or model)
        self.llm_engine = _Engine(self)
        record("load", "engine", model=model, tp=tensor_parallel_size, memory_fraction=gpu_memory_utilization,
               dtype=kwargs.get("dtype"))
        self._closed = False

    def shutdown(self) -> None:
        if not self._closed:
            record("unload", "engine", model=self.model)
            self._closed = True

    def _complete(self, request_id: str, prompt: dict, params: SamplingParams) -> RequestOutput:
        outputs = []
        for i in range(params.n):
            text = f"Could you explain idea {params.seed} {i} step by step?"
            stop = (params.stop_token_ids or [self.tokenizer.eos_token_id])[0]
            ids = self.tokenizer.encode(text, add_special_tokens=False) + [stop]
            outputs.append(CompletionOutput(i, text, ids, "stop", stop))
        return RequestOutput(request_id, list(prompt["prompt_token_ids"]), outputs)

    def generate(self, prompts: list[dict], params: list[SamplingParams], use_tqdm: bool = False) -> list[RequestOutput]:
        return [self._complete(f"gen-{next(self._ids)}", p, s) for p, s in zip(prompts, params)]


__all__ = ["LLM", "RequestOutput", "SamplingParams"]
