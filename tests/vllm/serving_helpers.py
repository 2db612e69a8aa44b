"""Helpers of the vllm tier: starting / stopping `vllm serve`, and a test proxy.

The proxy: a counting, fault-injecting HTTP server on 127.0.0.1 in front of a real `vllm serve`.

Two proxies make two distinct endpoints for one server (spreading is then observable per
endpoint), and scripted faults (HTTP 503, a dropped connection, HTTP 500 for every n-th
completion, slow answers) exercise the client's retries and liveness against real traffic.
An upstream that stopped (killed) drops the connection, as the server itself would. Test-only.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Literal

import httpx

Fault = Literal["503", "drop"]

MAX_MODEL_LEN = 1024
# A tiny model pads JSON with whitespace until max_tokens without disable_any_whitespace.
STRUCTURED_OUTPUTS_CONFIG = {"backend": "xgrammar", "disable_any_whitespace": True}
API_KEY = "magpie-dl-test-key"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_http(url: str, proc: subprocess.Popen | None, timeout: float, log: Path | None = None) -> None:
    """Poll ``url`` until it answers 200 (the process dying or the timeout is a failure)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            tail = log.read_text()[-3000:] if log else ""
            raise RuntimeError(f"server exited with {proc.returncode} before answering:\n{tail}")
        try:
            if httpx.get(url, timeout=2.0, headers={"Authorization": f"Bearer {API_KEY}"}).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(1.0)
    raise TimeoutError(f"{url} did not answer within {timeout:.0f} s")


def stop_process(proc: subprocess.Popen, grace: float = 30.0) -> None:
    """SIGTERM the process group we started, SIGKILL it if it lingers."""
    if proc.poll() is not None:
        return
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)


def server_command(model: Path, port: int) -> list[str]:
    """`vllm serve` as this CPU build runs it (its console script is broken: FIELD_NOTES §3)."""
    from magpie_dl.backends.first_token_ban import FIRST_TOKEN_BAN_V1_FQCN

    return [
        sys.executable, "-m", "vllm.entrypoints.openai.api_server",
        "--model", str(model),
        "--host", "127.0.0.1",
        "--port", str(port),
        "--dtype", "float32",
        "--max-model-len", str(MAX_MODEL_LEN),
        "--seed", "0",
        "--no-enable-chunked-prefill",
        "--enforce-eager",  # start-up: see VLLMBackend.enforce_eager
        "--logits-processors", FIRST_TOKEN_BAN_V1_FQCN,
        "--structured-outputs-config", json.dumps(STRUCTURED_OUTPUTS_CONFIG),
        "--api-key", API_KEY,
    ]  # fmt: skip


def pooling_server_command(model: Path, port: int) -> list[str]:
    """`vllm serve --runner pooling` of a sequence classifier (its /classify API), as this CPU build runs it."""
    return [
        sys.executable, "-m", "vllm.entrypoints.openai.api_server",
        "--model", str(model), "--runner", "pooling",
        "--host", "127.0.0.1", "--port", str(port),
        "--dtype", "float32", "--max-model-len", str(MAX_MODEL_LEN), "--seed", "0",
        "--enforce-eager", "--api-key", API_KEY,
    ]  # fmt: skip


@contextmanager
def served(model: Path, log: Path, cwd: Path,
           command: Callable[[Path, int], list[str]] = server_command) -> Iterator[tuple[str, subprocess.Popen]]:
    """A real `vllm serve` of ``model`` on 127.0.0.1 (``command``: its command line for a port): its
    root URL and process (the leader of its own process group, so signalling the group reaches its
    engine processes too)."""
    port = free_port()
    with log.open("wb") as out:
        proc = subprocess.Popen(
            command(model, port),
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=cwd,
            start_new_session=True,  # its own process group, so teardown stops its children too
            env={**os.environ, "VLLM_CPU_KVCACHE_SPACE": os.environ.get("VLLM_CPU_KVCACHE_SPACE", "1")},
        )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for_http(f"{url}/v1/models", proc, timeout=300, log=log)
        yield url, proc
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGCONT)  # a frozen server cannot stop
        stop_process(proc)


class _Server(ThreadingHTTPServer):
    """A test server that takes a client's whole burst of connections (the default backlog
    of 5 resets the rest, which no real server does) and keeps dropped clients quiet."""

    request_queue_size = 1024
    daemon_threads = True

    def handle_error(self, request: object, client_address: object) -> None:
        pass


class Proxy:
    """Forwards every request to ``upstream``; ``faults`` are consumed one per request first."""

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream.rstrip("/")
        self.counts: Counter[str] = Counter()  # path -> requests seen (faulted ones included)
        self.faults: list[Fault] = []
        self.faults_served = 0
        self.fail_every = 0  # HTTP 500 for every fail_every-th completion request (0: never)
        self.delay_s = 0.0  # completions answered this much later (a slow server; /v1/models stays prompt)
        self._lock = threading.Lock()
        self._client = httpx.Client(timeout=600)
        self._server = _Server(("127.0.0.1", 0), self._handler())
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def __enter__(self) -> Proxy:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._client.close()

    def completions_seen(self) -> int:
        return self.counts["/v1/completions"] + self.counts["/v1/chat/completions"]

    def _next_fault(self, path: str) -> Fault | Literal["500"] | None:
        with self._lock:
            self.counts[path] += 1
            if self.faults and path != "/v1/models":
                self.faults_served += 1
                return self.faults.pop(0)
            if self.fail_every and path != "/v1/models" and self.completions_seen() % self.fail_every == 0:
                self.faults_served += 1
                return "500"
            return None

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:  # keep test output quiet
                pass

            def _forward(self, method: str) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else None
                fault = proxy._next_fault(self.path)
                if fault == "drop":
                    # Close without a response: the client sees a dropped connection.
                    self.close_connection = True
                    self.connection.shutdown(2)
                    return
                if fault in ("503", "500"):
                    self._reply(int(fault), b'{"error": "injected by the test proxy"}')
                    return
                if proxy.delay_s and self.path != "/v1/models":
                    time.sleep(proxy.delay_s)
                headers = {k: v for k, v in self.headers.items() if k.lower() in ("authorization", "content-type")}
                try:
                    upstream = proxy._client.request(method, proxy.upstream + self.path, content=body, headers=headers)
                except httpx.HTTPError:  # the server is gone: so is the connection
                    self.close_connection = True
                    self.connection.shutdown(2)
                    return
                self._reply(upstream.status_code, upstream.content)

            def _reply(self, status: int, content: bytes) -> None:
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(content)))
                self.end_headers()
                self.wfile.write(content)

            def do_GET(self) -> None:
                self._forward("GET")

            def do_POST(self) -> None:
                self._forward("POST")

        return Handler
