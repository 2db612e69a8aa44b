"""Server backend: one or more ``vllm serve`` endpoints over their OpenAI-compatible API.

Magpie prompts go to ``/v1/completions`` as token ids (no template applied, no BOS added:
``add_special_tokens`` false) with vLLM's extras: ``stop_token_ids``, ``n``, a seed,
``return_token_ids`` (so finish reasons *and* token counts come back), the first-token ban
through ``vllm_xargs`` and JSON schemas through ``structured_outputs``. In chat mode,
prompts that carry ``messages`` go to ``/v1/chat/completions`` and the server applies the
model's chat template.

Requests (one per prompt, ``n`` samples each) are spread over the endpoints, the least
busy first, under one concurrency limit; transient failures (5xx, 429, dropped
connections, timeouts) are retried with exponential backoff on another endpoint where
there is one. An unreachable endpoint is a one-line error at :meth:`OpenAIBackend.load`.
A stream (:meth:`OpenAIBackend.open_stream`) sends requests the same way, but takes new
ones while earlier ones run, so the servers never wait for a batch's slowest request.
"""

from __future__ import annotations

import os
import queue
import random
import threading
import time
from collections.abc import Hashable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TYPE_CHECKING, Any, Literal

from pydantic import Field, PrivateAttr, field_validator

from magpie_dl.backends.base import (
    Completion, CompletionLLM, CompletionStream, PromptInput, Request, SamplingSpec, error_completions,
)
from magpie_dl.backends.first_token_ban import (
    FIRST_TOKEN_BAN_ARG,
    FIRST_TOKEN_BAN_V1_FQCN,
    FIRST_TOKEN_BAN_V2_FQCN,
    first_token_ban_args,
)

if TYPE_CHECKING:
    import httpx

# Worth retrying: the server or the path to it is briefly unwell, the request was fine.
_RETRY_STATUS = frozenset({408, 429, 500, 502, 503, 504})


class EndpointUnreachableError(ConnectionError):
    """An endpoint did not answer at load time."""


class _TransientError(Exception):
    """A failure worth retrying (carries a one-line description)."""

    def __init__(self, message: str, connection: bool) -> None:
        super().__init__(message)
        # True when the endpoint did not answer at all (refused, reset, timed out).
        self.connection = connection


class OpenAIBackend(CompletionLLM):
    """Completes prompts on ``vllm serve`` endpoints.

    Attributes:
        model: the tokenizer / model path used locally (token ids, ban-list checks); also
            the served model name unless ``served_model_name`` is set.
        base_urls: endpoint roots, e.g. ``["http://10.0.0.1:8000", "http://10.0.0.2:8000"]``
            (a trailing ``/v1`` is accepted).
        served_model_name: the ``model`` field sent; None asks the first endpoint.
        mode: ``completions`` (token-id prompts, Magpie) or ``chat`` (prompts with
            ``messages`` go to the chat endpoint; the server applies the chat template).
        max_concurrency: requests in flight across all endpoints.
        max_retries: retries of one request after a transient failure.
        backoff_s: first retry delay; doubles each retry (with jitter), capped at 30 s.
        request_timeout_s: read timeout of one request (long generations take minutes).
        api_key_env: name of the environment variable holding the API key, if the
            servers were started with ``--api-key``. The key is read at load, sent as a
            bearer token and never stored in the config or logged.
    """

    base_urls: list[str] = Field(min_length=1, description="Endpoint roots (http://host:port).")
    served_model_name: str | None = Field(default=None, description="Model name the servers serve.")
    mode: Literal["completions", "chat"] = Field(default="completions")
    max_concurrency: int = Field(default=64, ge=1)
    max_retries: int = Field(default=4, ge=0)
    backoff_s: float = Field(default=0.5, ge=0.0)
    connect_timeout_s: float = Field(default=10.0, gt=0.0)
    request_timeout_s: float = Field(default=900.0, gt=0.0)
    api_key_env: str = Field(default="MAGPIE_DL_API_KEY")

    _client: httpx.Client | None = PrivateAttr(default=None)
    _served: str | None = PrivateAttr(default=None)
    _ban_ready: dict[str, bool] = PrivateAttr(default_factory=dict)
    _in_flight: dict[str, int] = PrivateAttr(default_factory=dict)
    _sent: dict[str, int] = PrivateAttr(default_factory=dict)
    # Created in load(): distilabel deep-copies steps (and their LLMs) before running them.
    _lock: threading.Lock | None = PrivateAttr(default=None)

    @field_validator("base_urls")
    @classmethod
    def _normalise_urls(cls, urls: list[str]) -> list[str]:
        roots = []
        for url in urls:
            url = url.strip().rstrip("/")
            if url.endswith("/v1"):
                url = url[: -len("/v1")]
            if not url.startswith(("http://", "https://")):
                raise ValueError(f"base url {url!r} must start with http:// or https://")
            roots.append(url)
        if len(set(roots)) != len(roots):
            raise ValueError(f"duplicate base urls in {urls}")
        return roots

    @property
    def model_name(self) -> str:
        return self.served_model_name or self._served or self.model

    def load(self) -> None:
        """Check every endpoint answers and serves the model; learn whether each has the ban processor."""
        super().load()
        import httpx

        headers = {}
        key = os.environ.get(self.api_key_env)
        if key:
            headers["Authorization"] = f"Bearer {key}"
        self._client = httpx.Client(
            headers=headers,
            timeout=httpx.Timeout(self.request_timeout_s, connect=self.connect_timeout_s),
            limits=httpx.Limits(max_connections=self.max_concurrency, max_keepalive_connections=self.max_concurrency),
        )
        self._lock = threading.Lock()
        self._in_flight = {url: 0 for url in self.base_urls}
        self._sent = {url: 0 for url in self.base_urls}
        for url in self.base_urls:
            served = self._models(url)
            if self._served is None:
                self._served = self.served_model_name or served[0]
            if self._served not in served:
                raise ValueError(f"endpoint {url} serves {served}, not {self._served!r}")
            self._ban_ready[url] = self._has_ban_processor(url)

    def _models(self, url: str) -> list[str]:
        """The model names an endpoint serves (raises one clear line when it is not there)."""
        import httpx

        assert self._client is not None
        try:
            response = self._client.get(f"{url}/v1/models", timeout=self.connect_timeout_s)
        except httpx.HTTPError as e:
            raise EndpointUnreachableError(
                f"endpoint {url} is unreachable ({type(e).__name__}: {e}); is `vllm serve` running there?"
            ) from None
        if response.status_code in (401, 403):
            raise PermissionError(
                f"endpoint {url} refused the API key (HTTP {response.status_code}); "
                f"set ${self.api_key_env} to the server's --api-key"
            )
        if response.status_code != 200:
            raise EndpointUnreachableError(f"endpoint {url} answered HTTP {response.status_code} on /v1/models")
        return [m["id"] for m in response.json().get("data", [])]

    def _has_ban_processor(self, url: str) -> bool:
        """Whether the server loaded our ban processor: it validates the argument, so a
        malformed one is refused (400) with it and silently ignored (200) without it."""
        assert self._client is not None
        body = {
            "model": self._served,
            "prompt": [0],
            "max_tokens": 1,
            "vllm_xargs": {FIRST_TOKEN_BAN_ARG: "not-a-list"},
        }
        response = self._client.post(f"{url}/v1/completions", json=body, timeout=self.connect_timeout_s * 6)
        return response.status_code == 400 and FIRST_TOKEN_BAN_ARG in response.text

    def unload(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None
        super().unload()

    @property
    def requests_sent(self) -> dict[str, int]:
        """Requests sent per endpoint since load (retries included)."""
        return dict(self._sent)

    def complete(
        self, prompts: list[PromptInput], sampling: list[SamplingSpec]
    ) -> list[list[Completion]]:
        """One request per prompt, ``max_concurrency`` in flight; results in prompt order."""
        if self._client is None:
            raise RuntimeError("OpenAIBackend is not loaded: call load() first")
        if len(prompts) != len(sampling):
            raise ValueError(f"{len(prompts)} prompts but {len(sampling)} sampling specs")
        self._check_ban(sampling)
        workers = min(self.max_concurrency, max(1, len(prompts)))
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="openai-backend") as pool:
            outcomes = list(pool.map(self._complete_one, prompts, sampling))
        if outcomes and all(unreachable for _, unreachable in outcomes):
            # Nothing got through anywhere: that is the backend failing, not the prompts.
            raise ConnectionError(f"no endpoint answered: {outcomes[0][0][0].error}")
        return [completions for completions, _ in outcomes]

    def _check_ban(self, sampling: Sequence[SamplingSpec]) -> None:
        """A first-token ban needs the processor on every endpoint (else it would be ignored)."""
        if any(s.first_token_ban_ids for s in sampling):
            missing = [url for url, ready in self._ban_ready.items() if not ready]
            if missing:
                raise ValueError(
                    f"first_token_ban_ids requested but {', '.join(missing)} run without the ban "
                    f"processor: start vllm serve with --logits-processors {FIRST_TOKEN_BAN_V1_FQCN} "
                    f"(CPU / V1 model runner) or {FIRST_TOKEN_BAN_V2_FQCN} (GPU V2 model runner)"
                )

    def open_stream(self) -> OpenAIStream:
        """A stream over the endpoints: ``max_concurrency`` requests in flight, retries as in ``complete``."""
        if self._client is None:
            raise RuntimeError("OpenAIBackend is not loaded: call load() first")
        return OpenAIStream(self)

    def request_body(self, prompt: PromptInput, spec: SamplingSpec) -> tuple[str, dict[str, Any]]:
        """The endpoint path and JSON body for one prompt."""
        body: dict[str, Any] = {
            "model": self.model_name,
            "n": spec.n,
            "temperature": spec.temperature,
            "top_p": spec.top_p,
            "max_tokens": spec.max_tokens,
            "repetition_penalty": spec.repetition_penalty,  # a vLLM server extra
            "stop": list(spec.stop),
            "stop_token_ids": list(spec.stop_token_ids),
            "skip_special_tokens": True,
            "return_token_ids": True,
        }
        if spec.seed is not None:
            body["seed"] = spec.seed
        if spec.min_tokens:
            body["min_tokens"] = spec.min_tokens  # vLLM server extras, like the two below
        if spec.ignore_eos:
            body["ignore_eos"] = True
        if spec.first_token_ban_ids:
            body["vllm_xargs"] = first_token_ban_args(spec.first_token_ban_ids)
        if spec.json_schema is not None:
            body["structured_outputs"] = {"json": spec.json_schema}
        if self.mode == "chat":
            if prompt.messages is None:
                raise ValueError("chat mode needs PromptInput.messages")
            body["messages"] = [dict(m) for m in prompt.messages]
            return "/v1/chat/completions", body
        body["prompt"] = list(prompt.token_ids)
        # Token ids go through untouched; the flag also guards a text prompt against a second BOS.
        body["add_special_tokens"] = False
        return "/v1/completions", body

    def _complete_one(self, prompt: PromptInput, spec: SamplingSpec) -> tuple[list[Completion], bool]:
        """The prompt's completions, and whether it failed because no endpoint answered."""
        try:
            path, body = self.request_body(prompt, spec)
        except ValueError as e:
            return error_completions(spec.n, str(e)), False
        last_error = ""
        connection = False
        tried: list[str] = []
        for attempt in range(self.max_retries + 1):
            if attempt:
                delay = min(30.0, self.backoff_s * 2 ** (attempt - 1))
                time.sleep(delay * (0.5 + random.random()))  # jitter spreads a burst of retries
            url = self._pick(avoid=tried[-1:])
            tried.append(url)
            try:
                return self._post(url, path, body, spec.n), False
            except _TransientError as e:
                last_error, connection = f"{url}: {e}", e.connection
            finally:
                with self._lock:  # type: ignore[union-attr]
                    self._in_flight[url] -= 1
        reason = f"gave up after {self.max_retries + 1} attempts; last: {last_error}"
        return error_completions(spec.n, reason), connection

    def _pick(self, avoid: list[str]) -> str:
        """The endpoint with the fewest requests in flight (not the one that just failed)."""
        assert self._lock is not None
        with self._lock:
            candidates = [u for u in self.base_urls if u not in avoid] or list(self.base_urls)
            url = min(candidates, key=lambda u: (self._in_flight[u], self._sent[u]))
            self._in_flight[url] += 1
            self._sent[url] += 1
            return url

    def _post(self, url: str, path: str, body: dict[str, Any], n: int) -> list[Completion]:
        import httpx

        assert self._client is not None
        try:
            response = self._client.post(url + path, json=body)
        except (httpx.TransportError, httpx.TimeoutException) as e:
            raise _TransientError(f"{type(e).__name__}: {e}", connection=True) from None
        if response.status_code in _RETRY_STATUS:
            raise _TransientError(f"HTTP {response.status_code}: {_short(response.text)}", connection=False)
        if response.status_code != 200:
            # A request the server refuses (too long, bad parameter) fails alone, unretried.
            return error_completions(n, f"HTTP {response.status_code}: {_short(response.text)}")
        return _parse_choices(response.json(), n, chat=path.endswith("chat/completions"))


class OpenAIStream(CompletionStream):
    """Requests sent as they are submitted, on the backend's endpoints and retry rules;
    at most ``max_concurrency`` run at once, the rest wait their turn in order."""

    def __init__(self, backend: OpenAIBackend) -> None:
        self._backend = backend
        self._pool = ThreadPoolExecutor(max_workers=backend.max_concurrency, thread_name_prefix="openai-stream")
        self._done: queue.Queue[tuple[Hashable, SamplingSpec, Future]] = queue.Queue()
        self._in_flight = 0
        self._lock = threading.Lock()

    def submit(self, requests: Sequence[Request]) -> None:
        requests = list(requests)
        self._backend._check_ban([spec for _, _, spec in requests])
        for tag, prompt, spec in requests:
            with self._lock:
                self._in_flight += 1
            future = self._pool.submit(self._backend._complete_one, prompt, spec)
            future.add_done_callback(lambda f, tag=tag, spec=spec: self._done.put((tag, spec, f)))

    def poll(self, timeout: float) -> list[tuple[Hashable, list[Completion]]]:
        finished: list[tuple[Hashable, list[Completion]]] = []
        unreachable = 0
        block = self.in_flight > 0
        while True:
            try:
                tag, spec, future = self._done.get(block=block, timeout=timeout)
            except queue.Empty:
                break
            block = False
            with self._lock:
                self._in_flight -= 1
            try:
                completions, no_answer = future.result()
            except Exception as e:  # a bug in one request's handling fails that request only
                completions, no_answer = error_completions(spec.n, f"{type(e).__name__}: {e}"), False
            unreachable += no_answer
            finished.append((tag, completions))
        if finished and unreachable == len(finished):
            # Nothing got through anywhere: that is the backend failing, not the prompts.
            raise ConnectionError(f"no endpoint answered: {finished[0][1][0].error}")
        return finished

    @property
    def in_flight(self) -> int:
        with self._lock:
            return self._in_flight

    def close(self) -> None:
        # Requests not yet sent are dropped; those on the wire finish in the background.
        self._pool.shutdown(wait=False, cancel_futures=True)


def _parse_choices(payload: dict[str, Any], n: int, chat: bool) -> list[Completion]:
    """Completions from a (chat) completions response, in sample order."""
    choices = sorted(payload.get("choices", []), key=lambda c: c.get("index", 0))
    if len(choices) != n:
        return error_completions(n, f"server returned {len(choices)} choices for n={n}")
    completions = []
    for choice in choices:
        text = (choice.get("message") or {}).get("content") if chat else choice.get("text")
        token_ids = choice.get("token_ids")
        reason = choice.get("finish_reason")
        if token_ids is None:
            completions.append(Completion(text or "", [], "error", "server did not return token_ids"))
        elif reason in ("stop", "length"):
            completions.append(Completion(text or "", list(token_ids), reason))
        else:
            completions.append(Completion(text or "", list(token_ids), "error", f"finish_reason={reason!r}"))
    return completions


def _short(text: str, limit: int = 300) -> str:
    """One line of a server's error body, bounded (bodies can be whole HTML pages)."""
    line = " ".join(text.split())
    return line if len(line) <= limit else line[:limit] + "..."
