"""Reward scores from vLLM's pooling runner: an offline engine, or ``vllm serve --runner pooling``.

A one-label sequence classifier (Skywork-Reward-V2 and the like: ``LlamaForSequenceClassification``,
``Qwen3ForSequenceClassification``) runs on vLLM's pooling runner with the classify task. The
scorers here take the very token ids the transformers scorer builds
(:func:`magpie_dl.reward.scoring.conversations_token_ids`: the model's chat template, one BOS, the
texts as text) and return the same :class:`~magpie_dl.reward.scoring.Scored` results:

* prompts go in as token ids, never strings (a string would get a second BOS);
* ``use_activation=False``: the raw logit, as the transformers scorer gives (vLLM's classify
  task would otherwise apply a sigmoid to a one-label model's output);
* inputs are cut to their first ``max_length`` tokens (the smaller of the configured length and
  the model's own limit), and the engine's context is that length, so nothing is refused;
* no length grouping: the engine batches by its own token budget (continuous batching), so the
  sequences go in input order, in chunks only so that progress can be reported.

ArmoRM is not a classifier vLLM serves (custom gating head): the recipe refuses
``--reward.engine vllm`` with it before any model loads.

vLLM is imported in ``load`` only, so this module imports anywhere.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from typing import Any

from magpie_dl.recipe.reasons import non_finite_score
from magpie_dl.reward import armorm
from magpie_dl.reward.scoring import Scored, model_length_limit

_INSTALL_HINT = (
    "vLLM is not installed in this environment. GPU: `pip install vllm`; CPU: run "
    "scripts/setup_vllm_env.sh and use .venv-vllm/bin/python."
)
# Sequences handed to the engine (or one request) at a time: big enough that the engine's
# scheduler, not this loop, decides the batches; small enough for steady progress reports.
CHUNK = 256


def _clip(sequences: Sequence[Sequence[int]], max_length: int) -> list[list[int]]:
    return [list(seq[:max_length]) for seq in sequences]


def _scored(values: Sequence[float], clipped: Sequence[list[int]], sequences: Sequence[Sequence[int]],
            max_length: int) -> list[Scored]:
    """Results of one chunk: a non-finite logit is no score, with the reason."""
    return [
        Scored(score=v if math.isfinite(v) else None, num_tokens=len(ids), truncated=len(seq) > max_length,
               error=None if math.isfinite(v) else non_finite_score(v))
        for v, ids, seq in zip(values, clipped, sequences)
    ]


class PoolingScorer:
    """What both pooling scorers share: the tokenizer, the effective length, the chunked loop.

    Same interface as :class:`magpie_dl.reward.scoring.RewardScorer` (``load``, ``unload``,
    ``tokenizer``, ``max_length``, ``score_token_ids``).
    """

    def __init__(self, model: str, *, max_length: int = 4096, trust_remote_code: bool = False) -> None:
        self.model_path = model
        self.max_length = max_length
        self.trust_remote_code = trust_remote_code
        self.tokenizer: Any = None

    def _load_tokenizer(self) -> None:
        from transformers import AutoTokenizer

        config = armorm.read_config(self.model_path)
        if armorm.is_armorm(config):
            raise ValueError(f"{self.model_path} is ArmoRM, which vLLM does not serve: use --reward.engine transformers")
        self.max_length = min(self.max_length, model_length_limit(config))
        self.tokenizer = AutoTokenizer.from_pretrained(self.model_path, trust_remote_code=self.trust_remote_code)

    def score_token_ids(
        self, sequences: list[list[int]], done: Callable[[list[int], int], None] | None = None
    ) -> list[Scored]:
        """Score token-id sequences (input order); ``done`` hears of each chunk's indices and tokens."""
        results: list[Scored] = []
        for start in range(0, len(sequences), CHUNK):
            part = sequences[start : start + CHUNK]
            clipped = _clip(part, self.max_length)
            results += _scored(self.classify(clipped), clipped, part, self.max_length)
            if done is not None:
                done(list(range(start, start + len(part))), sum(map(len, clipped)))
        return results

    def classify(self, sequences: list[list[int]]) -> list[float]:
        """The raw logit of each (already clipped) sequence."""
        raise NotImplementedError


class VLLMPoolingScorer(PoolingScorer):
    """Scores on an in-process vLLM engine with ``runner="pooling"``.

    Args:
        model: a one-label sequence classifier (path or hub id).
        max_length: inputs are cut to their first ``max_length`` tokens (lowered to the model's limit).
        dtype: engine dtype (``auto``, ``float32``, ``bfloat16``...).
        seed: engine seed (scoring samples nothing; vLLM wants one).
        engine_kwargs: further ``vllm.LLM`` keyword arguments (``gpu_memory_utilization``,
            ``max_num_batched_tokens``...).
    """

    def __init__(self, model: str, *, max_length: int = 4096, dtype: str = "auto", seed: int = 0,
                 trust_remote_code: bool = False, engine_kwargs: dict[str, Any] | None = None) -> None:
        super().__init__(model, max_length=max_length, trust_remote_code=trust_remote_code)
        self.dtype, self.seed = dtype, seed
        self.engine_kwargs = dict(engine_kwargs or {})
        self._llm: Any = None

    def load(self) -> None:
        self._load_tokenizer()
        try:
            from vllm import LLM
            from vllm.platforms import current_platform
        except ImportError as e:
            raise ImportError(_INSTALL_HINT) from e
        kwargs: dict[str, Any] = {
            "model": self.model_path, "runner": "pooling", "dtype": self.dtype, "seed": self.seed,
            "max_model_len": self.max_length, "trust_remote_code": self.trust_remote_code,
        }
        if current_platform.is_cpu():
            # As for generation (VLLMBackend): compiling costs ~35 s per start on CPU for no gain.
            kwargs["enforce_eager"] = True
        self._llm = LLM(**{**kwargs, **self.engine_kwargs})

    def unload(self) -> None:
        import gc

        from magpie_dl.backends.vllm import shutdown_engine

        llm, self._llm = self._llm, None
        if llm is not None:
            shutdown_engine(llm)
            del llm
            gc.collect()

    def classify(self, sequences: list[list[int]]) -> list[float]:
        from vllm import PoolingParams
        from vllm.inputs import TokensPrompt

        outputs = self._llm.classify(
            [TokensPrompt(prompt_token_ids=ids) for ids in sequences],
            pooling_params=PoolingParams(use_activation=False), use_tqdm=False,
        )
        return [_one_label(out.outputs.probs) for out in outputs]


class ServedPoolingScorer(PoolingScorer):
    """Scores on ``vllm serve --runner pooling`` endpoints through their ``/classify`` API.

    Each chunk is one request of token-id inputs (``use_activation: false``), sent to the
    endpoints in turn; a transient failure (5xx, 429, a dropped connection) is retried with
    exponential backoff on the next endpoint, up to ``max_retries`` times.

    Args:
        model: the served model (its tokenizer builds the inputs; its name is sent).
        base_urls: the servers' root URLs (``http://127.0.0.1:8000``).
        max_length: inputs are cut to their first ``max_length`` tokens (lowered to the model's limit).
        timeout_s: seconds one request may take.
        max_retries: retries of one request after a transient failure.
        backoff_s: first retry delay in seconds; doubles each retry.
        api_key: sent as a bearer token when set (never logged).
    """

    RETRY_STATUS = frozenset({408, 429, 500, 502, 503, 504})

    def __init__(self, model: str, base_urls: Sequence[str], *, max_length: int = 4096, timeout_s: float = 900.0,
                 max_retries: int = 4, backoff_s: float = 0.5, api_key: str | None = None,
                 trust_remote_code: bool = False) -> None:
        super().__init__(model, max_length=max_length, trust_remote_code=trust_remote_code)
        if not base_urls:
            raise ValueError("ServedPoolingScorer needs at least one base URL")
        self.base_urls = [url.rstrip("/").removesuffix("/v1") for url in base_urls]
        self.timeout_s, self.max_retries, self.backoff_s, self.api_key = timeout_s, max_retries, backoff_s, api_key
        self._client: Any = None
        self._served_name: str | None = None
        self._turn = 0

    def load(self) -> None:
        import httpx

        self._load_tokenizer()
        headers = {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}
        self._client = httpx.Client(timeout=self.timeout_s, headers=headers)
        for url in self.base_urls:  # every endpoint answers, and serves one model, before any work
            try:
                models = self._client.get(f"{url}/v1/models", timeout=10.0)
                models.raise_for_status()
            except httpx.HTTPError as e:
                raise ConnectionError(f"reward endpoint {url} does not answer: {type(e).__name__}") from None
            self._served_name = models.json()["data"][0]["id"]

    def unload(self) -> None:
        if self._client is not None:
            self._client.close()
        self._client = None

    def classify(self, sequences: list[list[int]]) -> list[float]:
        import httpx

        body = {"model": self._served_name, "input": sequences, "use_activation": False}
        delay = self.backoff_s
        for attempt in range(self.max_retries + 1):
            url = self.base_urls[self._turn % len(self.base_urls)]
            self._turn += 1
            try:
                response = self._client.post(f"{url}/classify", json=body)
                if response.status_code not in self.RETRY_STATUS:
                    response.raise_for_status()
                    data = sorted(response.json()["data"], key=lambda item: item["index"])
                    return [_one_label(item["probs"]) for item in data]
                why = f"HTTP {response.status_code}"
            except (httpx.TransportError, httpx.TimeoutException) as e:
                why = type(e).__name__
            if attempt == self.max_retries:
                raise ConnectionError(f"/classify failed after {self.max_retries} retries ({why}) at {url}")
            time.sleep(delay)
            delay = min(delay * 2, 30.0)
        raise AssertionError("unreachable")


def _one_label(values: Sequence[float]) -> float:
    if len(values) != 1:
        raise ValueError(f"the reward model returns {len(values)} labels; a one-label sequence classifier is needed")
    return float(values[0])
