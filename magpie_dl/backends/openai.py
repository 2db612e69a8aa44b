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

Liveness, not only timeouts: a request unanswered for ``stall_timeout_s`` makes the
backend ask its endpoint for ``/v1/models``. A live server answers that at once however
long its generations take; a frozen one (stopped, swapping, wedged) does not, and is set
aside: its requests are abandoned and retried elsewhere, one line says so, and it is
probed every ``probe_interval_s`` until it answers again. An endpoint that refuses
connections (killed, restarting) is set aside the same way. While every endpoint is set
aside, requests wait up to ``restart_grace_s`` for one to come back (a server restart)
before they fail. A request that fails after all its retries comes back as completions
with ``request_failed`` set, carrying the endpoint and the last error.
"""

from __future__ import annotations

import logging
import os
import queue
import random
import threading
import time
from collections.abc import Hashable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, ClassVar, Literal, TYPE_CHECKING

from pydantic import Field, PrivateAttr, field_validator

from magpie_dl.backends.base import (
    Completion, CompletionLLM, CompletionStream, PromptInput, Request, SamplingSpec, error_completions,
)
from magpie_dl.scrub import scrub_text
from magpie_dl.config.sections import BackendConfig
from magpie_dl.config.sections import setting
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
# How often a request waiting for its answer looks at its endpoint's state.
_WATCH_S = 0.2

_log = logging.getLogger("magpie_dl.backends.openai")


class EndpointUnreachableError(ConnectionError):
    """An endpoint did not answer at load time."""


class _TransientError(Exception):
    """A failure worth retrying: what happened (``HTTP 500``, ``ConnectError``) and its detail."""

    def __init__(self, message: str, connection: bool, detail: str = "") -> None:
        super().__init__(message)
        # True when the endpoint did not answer at all (refused, reset, timed out, frozen).
        self.connection = connection
        self.detail = detail


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
        connect_timeout_s: time to open a connection (and to answer at load).
        request_timeout_s: longest one request may take, however live its server
            (long generations take minutes).
        stall_timeout_s: a request unanswered this long has its endpoint probed; an
            endpoint that does not answer the probe is set aside and the request retried.
        probe_timeout_s: how long a probe (``GET /v1/models``) may take before the
            endpoint counts as not answering.
        probe_interval_s: how often a set-aside endpoint is probed.
        restart_grace_s: how long requests wait for a set-aside endpoint to come back
            when every endpoint is set aside (a server restart) before they fail.
        api_key_env: name of the environment variable holding the API key, if the
            servers were started with ``--api-key``. The key is read at load, sent as a
            bearer token and never stored in the config or logged.
    """

    kind: ClassVar[str] = "openai"

    base_urls: list[str] = Field(min_length=1, description="Endpoint roots (http://host:port).")
    served_model_name: str | None = Field(default=None, description="Model name the servers serve.")
    mode: Literal["completions", "chat"] = Field(default="completions")
    # Declared once, in the recipes' ``backend`` section.
    max_concurrency: int = setting(BackendConfig, "max_concurrency")
    max_retries: int = setting(BackendConfig, "max_retries")
    backoff_s: float = setting(BackendConfig, "backoff_s")
    connect_timeout_s: float = setting(BackendConfig, "connect_timeout_s")
    request_timeout_s: float = setting(BackendConfig, "request_timeout_s")
    stall_timeout_s: float = setting(BackendConfig, "stall_timeout_s")
    probe_timeout_s: float = setting(BackendConfig, "probe_timeout_s")
    probe_interval_s: float = setting(BackendConfig, "probe_interval_s")
    restart_grace_s: float = setting(BackendConfig, "restart_grace_s")
    api_key_env: str = Field(default="MAGPIE_DL_API_KEY")

    # One client per endpoint: requests abandoned on a frozen server hold its connections
    # until it answers or dies, and must not take the healthy endpoints' connections.
    _clients: dict[str, httpx.Client] = PrivateAttr(default_factory=dict)
    _served: str | None = PrivateAttr(default=None)
    _ban_ready: dict[str, bool] = PrivateAttr(default_factory=dict)
    _in_flight: dict[str, int] = PrivateAttr(default_factory=dict)
    _sent: dict[str, int] = PrivateAttr(default_factory=dict)
    # url -> when it was set aside (monotonic clock); absent while in use.
    _aside: dict[str, float] = PrivateAttr(default_factory=dict)
    # url -> (when last probed, whether it answered): one probe serves every waiting request.
    _probed: dict[str, tuple[float, bool]] = PrivateAttr(default_factory=dict)
    # Created in load(): distilabel deep-copies steps (and their LLMs) before running them.
    _lock: threading.Lock | None = PrivateAttr(default=None)
    _changed: threading.Condition | None = PrivateAttr(default=None)
    _closed: threading.Event | None = PrivateAttr(default=None)

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
        self._clients = {
            url: httpx.Client(
                headers=headers,
                timeout=httpx.Timeout(self.request_timeout_s, connect=self.connect_timeout_s),
                limits=httpx.Limits(max_connections=self.max_concurrency, max_keepalive_connections=self.max_concurrency),
            )
            for url in self.base_urls
        }
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._closed = threading.Event()
        self._in_flight = {url: 0 for url in self.base_urls}
        self._sent = {url: 0 for url in self.base_urls}
        self._aside, self._probed = {}, {}
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

        try:
            response = self._clients[url].get(f"{url}/v1/models", timeout=self.connect_timeout_s)
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
        body = {
            "model": self._served,
            "prompt": [0],
            "max_tokens": 1,
            "vllm_xargs": {FIRST_TOKEN_BAN_ARG: "not-a-list"},
        }
        tries = max(3, self.max_retries + 1)
        for _ in range(tries):
            response = self._clients[url].post(f"{url}/v1/completions", json=body, timeout=self.connect_timeout_s * 6)
            # A transient answer (a proxy shedding load) says nothing about the processor: ask again.
            if response.status_code not in _RETRY_STATUS:
                return response.status_code == 400 and FIRST_TOKEN_BAN_ARG in response.text
        raise EndpointUnreachableError(
            f"endpoint {url} answered HTTP {response.status_code} at load ({tries} tries)"
        )

    def unload(self) -> None:
        if self._closed is not None:
            self._closed.set()  # requests waiting for an endpoint give up at once
        for client in self._clients.values():
            client.close()
        self._clients = {}
        super().unload()

    @property
    def requests_sent(self) -> dict[str, int]:
        """Requests sent per endpoint since load (retries included)."""
        return dict(self._sent)

    def complete(
        self, prompts: list[PromptInput], sampling: list[SamplingSpec]
    ) -> list[list[Completion]]:
        """One request per prompt, ``max_concurrency`` in flight; results in prompt order."""
        if not self._clients:
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
        if not self._clients:
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
        last_error = "no endpoint in use"
        connection = True
        tried: list[str] = []
        failures = 0
        while failures <= self.max_retries:
            if failures:
                delay = min(30.0, self.backoff_s * 2 ** (failures - 1))
                time.sleep(delay * (0.5 + random.random()))  # jitter spreads a burst of retries
            url = self._pick(avoid=tried[-1:])
            if url is None:  # every endpoint set aside past the grace time, or unloading
                break
            tried.append(url)
            try:
                return self._post(url, path, body, spec.n), False
            except _TransientError as e:
                last_error, connection = f"{e} from {url}" + (f" ({e.detail})" if e.detail else ""), e.connection
                # An endpoint found not answering is set aside: the request waits for one in
                # use (restart_grace_s bounds that) instead of spending a retry on it.
                if not (e.connection and self._aside_now(url, str(e))):
                    failures += 1
            finally:
                with self._lock:  # type: ignore[union-attr]
                    self._in_flight[url] -= 1
        attempts = f"{len(tried)} attempt" + ("s" if len(tried) != 1 else "")
        reason = scrub_text(f"{last_error}; gave up after {attempts}", self._secrets())
        return error_completions(spec.n, reason, request_failed=True), connection

    def _secrets(self) -> list[str]:
        key = os.environ.get(self.api_key_env)
        return [key] if key else []

    def _pick(self, avoid: list[str]) -> str | None:
        """The endpoint in use with the fewest requests in flight (not the one that just
        failed); while every endpoint is set aside, waits up to ``restart_grace_s`` for one
        to come back. None when none did (or the backend is unloading)."""
        assert self._changed is not None and self._closed is not None
        with self._changed:
            while not (in_use := [u for u in self.base_urls if u not in self._aside]):
                deadline = max(self._aside.values()) + self.restart_grace_s
                left = deadline - time.monotonic()
                if left <= 0 or self._closed.is_set():
                    return None
                self._changed.wait(min(self.probe_interval_s, left))
            candidates = [u for u in in_use if u not in avoid] or in_use
            url = min(candidates, key=lambda u: (self._in_flight[u], self._sent[u]))
            self._in_flight[url] += 1
            self._sent[url] += 1
            return url

    def _answers(self, url: str, fresh: bool = False) -> bool:
        """Whether ``url`` answers ``GET /v1/models`` within ``probe_timeout_s``: a live
        server does at once, however busy; a frozen or dead one does not. One probe per
        ``probe_interval_s`` serves every request waiting on the endpoint (``fresh``: probe now)."""
        import httpx

        assert self._lock is not None
        with self._lock:
            last = self._probed.get(url)
        now = time.monotonic()
        if last is not None and not fresh and now - last[0] < self.probe_interval_s:
            return last[1]
        try:
            # A client of its own: the endpoint's connections may all be held by stuck requests.
            with httpx.Client(headers=self._clients[url].headers, timeout=self.probe_timeout_s) as probe:
                answered = probe.get(f"{url}/v1/models").status_code < 500
        except (httpx.HTTPError, KeyError):
            answered = False
        with self._lock:
            self._probed[url] = (time.monotonic(), answered)
        return answered

    def _aside_now(self, url: str, why: str) -> bool:
        """Whether ``url`` is set aside after a request to it got no answer: already, or now
        because it does not answer a probe either."""
        if url in self._aside:
            return True
        if self._answers(url, fresh=True):
            return False
        self._set_aside(url, why)
        return True

    def _set_aside(self, url: str, why: str) -> None:
        """Stop sending to ``url`` (one line says so) and probe it until it answers again."""
        assert self._changed is not None
        with self._changed:
            if url in self._aside:
                return
            self._aside[url] = time.monotonic()
            everyone = len(self._aside) == len(self.base_urls)
        wait = (
            f"; every endpoint is set aside: requests wait up to {self.restart_grace_s:g} s (backend.restart_grace_s) "
            "for one to come back" if everyone else "; its requests go to the other endpoints"
        )
        _log.warning(scrub_text(
            f"endpoint {url} stopped answering ({why}): set aside, probed every {self.probe_interval_s:g} s{wait}",
            self._secrets(),
        ))
        threading.Thread(target=self._probe_until_back, args=(url,), daemon=True, name="openai-probe").start()

    def _probe_until_back(self, url: str) -> None:
        """Probe a set-aside endpoint until it answers (then back in use) or the backend unloads."""
        assert self._changed is not None and self._closed is not None
        while not self._closed.wait(self.probe_interval_s):
            if self._answers(url, fresh=True):
                with self._changed:
                    self._aside.pop(url, None)
                    self._changed.notify_all()
                _log.warning(scrub_text(f"endpoint {url} answers again: back in use", self._secrets()))
                return

    def _post(self, url: str, path: str, body: dict[str, Any], n: int) -> list[Completion]:
        """One attempt on ``url``, watched: abandoned (a transient failure) when its endpoint
        is set aside, or when it has waited ``stall_timeout_s`` and the endpoint does not
        answer a probe."""
        import httpx

        outcome: list[Any] = []
        finished = threading.Event()
        client = self._clients[url]

        def send() -> None:
            try:
                outcome.append(client.post(url + path, json=body))
            except BaseException as e:  # handed to the waiting thread
                outcome.append(e)
            finished.set()

        # A daemon thread: an abandoned request on a frozen server must not hold up exit.
        threading.Thread(target=send, daemon=True, name="openai-request").start()
        started = time.monotonic()
        while not finished.wait(_WATCH_S):
            if url in self._aside:
                raise _TransientError("no answer", connection=True, detail="endpoint set aside")
            waited = time.monotonic() - started
            if waited >= self.stall_timeout_s and not self._answers(url):
                raise _TransientError(
                    "no answer", connection=True,
                    detail=f"nothing for {waited:.0f} s and /v1/models unanswered within {self.probe_timeout_s:g} s",
                )
        [response] = outcome
        if isinstance(response, (httpx.TransportError, httpx.TimeoutException)):
            raise _TransientError(type(response).__name__, connection=True, detail=str(response))
        if isinstance(response, BaseException):
            raise response
        if response.status_code in _RETRY_STATUS:
            raise _TransientError(f"HTTP {response.status_code}", connection=False, detail=_short(response.text))
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
