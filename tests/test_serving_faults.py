"""Serving faults, model-free: the server backend's retries and liveness against a tiny local
HTTP server on 127.0.0.1 that speaks the endpoints it uses, and what a failed request becomes
in the rows, the summary, the card and the run's exit (magpie_dl.backends.openai, reasons,
scoring, pairing, export, runner). The same faults against real `vllm serve` processes:
tests/vllm/test_serving_faults.py."""

from __future__ import annotations

import json
import logging
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from magpie_dl.backends.base import Completion, PromptInput, SamplingSpec
from magpie_dl.backends.openai import OpenAIBackend
from magpie_dl.release.export import summarize
from magpie_dl.recipe.pairing import pair_columns
from magpie_dl.release.report.facts import left_out_reasons, stage_counts
from magpie_dl.run.driver import RequestsFailedError
from magpie_dl.reward.scoring import set_ratings

SERVED = "tiny"


class FakeServer:
    """A stand-in `vllm serve` on 127.0.0.1: /v1/models and /v1/completions (``n`` choices of
    fixed text). ``fail_every`` answers HTTP 500 to every that-many-th completion; ``delay_s``
    answers completions that late (a live, slow server: /v1/models stays prompt); ``freeze()``
    stops answering anything (as SIGSTOP does: connections are accepted, nothing comes
    back) until ``thaw()``; ``stop()`` / ``start()`` close and reopen the port (a restart)."""

    def __init__(self, port: int = 0) -> None:
        self.fail_every = 0
        self.delay_s = 0.0
        self.completions = 0
        self._running = threading.Event()
        self._running.set()
        self._lock = threading.Lock()
        self.port = port
        self._server: ThreadingHTTPServer | None = None
        self._connections: set[socket.socket] = set()
        self.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        server = ThreadingHTTPServer(("127.0.0.1", self.port), self._handler())
        server.daemon_threads = True
        server.request_queue_size = 1024  # a client's burst of connections, as a real server takes it
        self.port = server.server_address[1]
        self._server = server
        threading.Thread(target=server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        """Down as a killed process is: the port closed and every open connection dropped."""
        assert self._server is not None
        self._server.shutdown()
        self._server.server_close()
        with self._lock:
            for connection in self._connections:
                try:
                    connection.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
            self._connections.clear()

    def freeze(self) -> None:
        self._running.clear()

    def thaw(self) -> None:
        self._running.set()

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:
                pass

            def setup(self) -> None:
                super().setup()
                with fake._lock:
                    fake._connections.add(self.connection)

            def _reply(self, status: int, payload: dict) -> None:
                body = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self) -> None:
                fake._running.wait()
                self._reply(200, {"data": [{"id": SERVED}]})

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)))
                fake._running.wait()
                if "vllm_xargs" in body:  # the ban-processor probe at load: not loaded here
                    self._reply(200, {"choices": [{"index": 0, "text": "", "token_ids": [1], "finish_reason": "length"}]})
                    return
                with fake._lock:
                    fake.completions += 1
                    fail = fake.fail_every and fake.completions % fake.fail_every == 0
                if fail:
                    self._reply(500, {"error": "injected"})
                    return
                time.sleep(fake.delay_s)
                seed = body.get("seed", 0)
                choices = [
                    {"index": i, "text": f"answer {seed}-{i}", "token_ids": [seed, i], "finish_reason": "stop"}
                    for i in range(body["n"])
                ]
                self._reply(200, {"choices": choices})

        return Handler


@pytest.fixture()
def servers():
    made: list[FakeServer] = []

    def make() -> FakeServer:
        made.append(FakeServer())
        return made[-1]

    yield make
    for server in made:
        server.thaw()
        try:
            server.stop()
        except Exception:
            pass


def backend(tiny_models, urls: list[str], **knobs) -> OpenAIBackend:
    settings = dict(max_retries=2, backoff_s=0.01, stall_timeout_s=0.5, probe_timeout_s=0.3, probe_interval_s=0.2,
                    restart_grace_s=5.0, connect_timeout_s=1.0)
    made = OpenAIBackend(model=tiny_models["generator"], base_urls=urls, **{**settings, **knobs})
    made.load()
    return made


def ask(llm: OpenAIBackend, count: int) -> list[list[Completion]]:
    return llm.complete([PromptInput((1, 2, 3))] * count, [SamplingSpec(n=2, seed=s) for s in range(count)])


def expected(count: int) -> list[list[str]]:
    return [[f"answer {s}-{i}" for i in range(2)] for s in range(count)]


def test_a_request_failing_after_its_retries_says_so_with_the_endpoint(tiny_models, servers, monkeypatch) -> None:
    flaky = servers()
    monkeypatch.setenv("HF_TOKEN", "hf_secret_value_123")
    llm = backend(tiny_models, [flaky.url.replace("http://", "http://user:pw@")], max_retries=0)
    flaky.fail_every = 3
    try:
        results = ask(llm, 9)
    finally:
        llm.unload()
    failed = [r for r in results if r[0].finish_reason == "error"]
    assert len(failed) == 3 and all(c.request_failed for r in failed for c in r)
    error = failed[0][0].error
    assert error.startswith(f"HTTP 500 from {flaky.url}") and "gave up after 1 attempt" in error
    assert "pw@" not in error and "user" not in error
    assert all(not c.request_failed and c.finish_reason == "stop" for r in results if r not in failed for c in r)


def test_a_frozen_endpoint_is_set_aside_its_requests_retried_elsewhere_and_it_comes_back(
    tiny_models, servers, caplog
) -> None:
    healthy, frozen = servers(), servers()
    llm = backend(tiny_models, [frozen.url, healthy.url], request_timeout_s=300)
    frozen.freeze()
    caplog.set_level(logging.WARNING, "magpie_dl.backends.openai")
    try:
        started = time.monotonic()
        results = ask(llm, 8)
        took = time.monotonic() - started
        assert [[c.text for c in r] for r in results] == expected(8)
        assert took < 10, f"{took:.1f} s: the frozen endpoint held requests up"
        assert frozen.url in llm._aside
        lines = [r.getMessage() for r in caplog.records]
        assert any(f"endpoint {frozen.url} stopped answering" in m and "set aside" in m for m in lines), lines
        frozen.thaw()
        deadline = time.monotonic() + 5
        while frozen.url in llm._aside and time.monotonic() < deadline:
            time.sleep(0.05)
        assert frozen.url not in llm._aside
        assert any(f"endpoint {frozen.url} answers again" in r.getMessage() for r in caplog.records)
    finally:
        llm.unload()


def test_a_slow_but_live_endpoint_is_waited_for_not_abandoned(tiny_models, servers) -> None:
    slow = servers()
    llm = backend(tiny_models, [slow.url], stall_timeout_s=0.2)
    slow.delay_s = 1.0  # five times the stall timeout: the probe says it is alive
    try:
        results = ask(llm, 3)
        sent = sum(llm.requests_sent.values())
    finally:
        llm.unload()
    assert [[c.text for c in r] for r in results] == expected(3)
    assert sent == 3 and slow.completions == 3  # nothing abandoned, nothing sent twice


def test_the_only_server_restarting_within_the_grace_time_is_ridden_out(tiny_models, servers) -> None:
    server = servers()
    llm = backend(tiny_models, [server.url], restart_grace_s=10.0, max_retries=1)
    server.stop()
    threading.Timer(1.5, server.start).start()  # back on the same port 1.5 s later
    try:
        results = ask(llm, 4)
    finally:
        llm.unload()
    assert [[c.text for c in r] for r in results] == expected(4)


def test_past_the_grace_time_a_server_that_stays_down_fails_the_backend(tiny_models, servers) -> None:
    server = servers()
    llm = backend(tiny_models, [server.url], restart_grace_s=0.5)
    server.stop()
    started = time.monotonic()
    try:
        with pytest.raises(ConnectionError, match="no endpoint answered"):
            ask(llm, 2)
    finally:
        llm.unload()
    assert time.monotonic() - started < 8


def test_knobs_reach_the_backend_from_the_config() -> None:
    from magpie_dl.backends import make_backend
    from magpie_dl.config.sections import BackendConfig

    config = BackendConfig(kind="openai", base_urls=["http://127.0.0.1:1"], max_retries=10, stall_timeout_s=7,
                           restart_grace_s=40, max_concurrency=3)
    llm = make_backend(config, "models/tiny/generator")
    assert (llm.max_retries, llm.stall_timeout_s, llm.restart_grace_s, llm.max_concurrency) == (10, 7, 40, 3)


# --------------------------------------------------------------------------- what the rows say

FAILED_ERROR = "HTTP 500 from http://10.0.0.1:8000 (injected); gave up after 5 attempts"


def responses_row(request_error: str) -> dict:
    failed = bool(request_error)
    return {
        "uuid": "u1", "instruction": "Why is the sky blue?", "instruction_status": "ok",
        "generations": [""] * 3 if failed else ["a", "bb", "ccc"],
        "finish_reasons": ["error"] * 3 if failed else ["stop"] * 3,
        "request_error": request_error,
    }


def test_failed_responses_are_request_failed_never_empty_response() -> None:
    row = responses_row(FAILED_ERROR)
    set_ratings([row], [], [])
    assert row["rating_errors"] == ["request_failed"] * 3
    columns = pair_columns(row)
    assert columns["pair_status"] == "request_failed" and columns["response_status"] == ["request_failed"] * 3
    # An empty response that did not fail stays empty.
    empty = {**responses_row(""), "generations": ["", "b", "c"]}
    set_ratings([empty], [], [])
    assert empty["rating_errors"][0] == "empty_response"


def test_the_summary_and_the_card_count_failed_requests() -> None:
    rows = [
        {**responses_row(""), "pair_status": "kept", "response_status": ["ok"] * 3},
        {**responses_row(FAILED_ERROR), "pair_status": "request_failed", "response_status": ["request_failed"] * 3},
        {"instruction_status": "request_failed", "generations": [], "response_status": [],
         "pair_status": "instruction_request_failed", "request_error": FAILED_ERROR},
    ]
    summary = summarize(rows)
    assert summary.requests_failed == 2
    assert summary.left_out == {"request_failed": 1, "instruction_request_failed": 1}
    assert summary.lines()[0].startswith("requests failed after retries: 2")
    stages = stage_counts(summary.__dict__)
    assert ("requests failed after retries", 2) in [(name, n) for name, n, _ in stages]
    meanings = {reason: meaning for reason, _, meaning in left_out_reasons(summary.__dict__)}
    assert "failed after all its retries" in meanings["instruction_request_failed"]
    assert "failed after all its retries" in meanings["request_failed"]


def test_the_run_line_names_the_count_the_last_error_and_the_rerun() -> None:
    line = str(RequestsFailedError.of(11, FAILED_ERROR))
    assert line.startswith("11 requests failed after retries (last: HTTP 500 from http://10.0.0.1:8000); ")
    assert "rerun the same command to retry them" in line and "\n" not in line
