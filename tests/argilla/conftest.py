"""Fixtures for the Argilla review tests: DPO rows built here, one real server per session.

The server is the unmodified argilla-server 2.8.0 from ``.venv-argilla-server`` (created on first
use by ``argilla/server/setup_env.sh``, which is a no-op once the venv works), started through
``argilla/server/serve.py`` on 127.0.0.1 with SQLite, Debian's redis-server on a Unix socket and the in-memory search
engine. A server that cannot be set up or started fails the tests that need it; nothing is skipped.
"""

from __future__ import annotations

import json
import os
import random
import secrets
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid as uuid_lib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List

import pytest

REPO = Path(__file__).resolve().parents[2]
SERVER_VENV = REPO / ".venv-argilla-server"
SETUP_SCRIPT = REPO / "argilla" / "server" / "setup_env.sh"
SERVE_SCRIPT = REPO / "argilla" / "server" / "serve.py"
STARTUP_TIMEOUT_S = 120.0

TASK_CATEGORIES = ["Information seeking", "Reasoning", "Coding & Debugging", "Math", "Creative writing"]


def make_row(index: int, scores: List[float] | None = None, seed: int = 0) -> Dict[str, Any]:
    """One DPO row in the released Magpie schema plus our pairing columns.

    ``scores`` are the five ArmoRM-like rewards (bf16-ish values around 0.1); chosen is the
    first highest, rejected the first lowest, as the recipe's pairing does.
    """
    rng = random.Random(seed * 100_003 + index)
    if scores is None:
        scores = [round(rng.uniform(0.09, 0.13), 5) for _ in range(5)]
    instruction = f"Question {index}: how do I keep a local copy of data sent to a web service?"
    responses = [f"Answer {k} to question {index}. Use a local queue and retry (variant {k})." for k in range(5)]
    chosen_index = scores.index(max(scores))
    rejected_index = scores.index(min(scores))
    prompt = (
        "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\n"
        f"{instruction}<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n"
    )
    return {
        "uuid": str(uuid_lib.uuid5(uuid_lib.NAMESPACE_URL, f"magpie-dl-test/{seed}/{index}")),
        "instruction": instruction,
        "gen_input_configs": {
            "input_generator": "tiny/llama-3.1-instruct",
            "temperature": 1.0,
            "top_p": 1.0,
            "seed": seed,
            "pre_query_template": "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\n",
        },
        "intent": "The user wants to store data locally.",
        "knowledge": "Data storage and web services.",
        "difficulty": rng.choice(["easy", "medium", "hard"]),
        "input_quality": rng.choice(["average", "good", "excellent"]),
        "quality_explanation": "Clear and specific.",
        "task_category": TASK_CATEGORIES[index % len(TASK_CATEGORIES)],
        "other_task_category": ["Advice seeking"],
        "language": "EN",
        "instruct_reward": round(rng.uniform(-5, 5), 3),
        "responses": responses,
        "gen_response_configs": {
            "engine": "vllm",
            "max_tokens": 4096,
            "output_generator": "tiny/llama-3.1-70b-instruct",
            "prompt": prompt,
            "repetition_penalty": 1.0,
            "stop_tokens": ["<|eot_id|>", "<|end_of_text|>"],
            "temperature": 0.8,
            "top_p": 1.0,
        },
        "rewards_armorm": [{"score": s} for s in scores],
        "chosen": [
            {"role": "user", "content": instruction},
            {"role": "assistant", "content": responses[chosen_index]},
        ],
        "rejected": [
            {"role": "user", "content": instruction},
            {"role": "assistant", "content": responses[rejected_index]},
        ],
        "chosen_index": chosen_index,
        "rejected_index": rejected_index,
        "chosen_score": scores[chosen_index],
        "rejected_score": scores[rejected_index],
        "score_margin": scores[chosen_index] - scores[rejected_index],
    }


@pytest.fixture
def make_dpo_row() -> Callable[..., Dict[str, Any]]:
    """``make_row`` as a fixture, so test modules need not import this conftest."""
    return make_row


@dataclass(frozen=True)
class ArgillaServer:
    """A running test server: its URL, the owner's API key, and where its log goes."""

    url: str
    api_key: str
    log_path: Path
    startup_s: float


def _ensure_server_venv() -> Path:
    python = SERVER_VENV / "bin" / "python"
    result = subprocess.run(["bash", str(SETUP_SCRIPT)], cwd=REPO, capture_output=True, text=True)
    if result.returncode != 0 or not python.exists():
        pytest.fail(f"argilla server env setup failed:\n{result.stdout}\n{result.stderr}", pytrace=False)
    return python


def _wait_ready(process: subprocess.Popen, port_file: Path, log_path: Path) -> str:
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            log_tail = log_path.read_text()[-4000:]
            pytest.fail(f"argilla server exited with {process.returncode}:\n{log_tail}", pytrace=False)
        if port_file.exists():
            url = f"http://127.0.0.1:{port_file.read_text().strip()}"
            try:
                with urllib.request.urlopen(f"{url}/api/v1/version", timeout=2) as response:
                    if json.load(response).get("version"):
                        return url
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
        time.sleep(0.2)
    pytest.fail(f"argilla server not ready after {STARTUP_TIMEOUT_S}s:\n{log_path.read_text()[-4000:]}", pytrace=False)


@pytest.fixture(scope="session")
def argilla_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ArgillaServer]:
    """One argilla-server for the whole test session, on loopback, torn down at the end."""
    python = _ensure_server_venv()
    home = tmp_path_factory.mktemp("argilla-home")
    port_file = home / "port"
    log_path = home / "server.log"
    api_key = f"magpie-test-{secrets.token_hex(12)}"
    env = {**os.environ, "MAGPIE_ARGILLA_SERVER_API_KEY": api_key}
    # The server venv must not see the main venv's packages or our ARGILLA_* client settings.
    for name in ("PYTHONPATH", "VIRTUAL_ENV", "ARGILLA_API_URL", "ARGILLA_API_KEY"):
        env.pop(name, None)
    started = time.monotonic()
    with open(log_path, "w") as log:
        process = subprocess.Popen(
            [str(python), str(SERVE_SCRIPT), "--home", str(home), "--port", "0", "--port-file", str(port_file)],
            cwd=home,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        url = _wait_ready(process, port_file, log_path)
        server = ArgillaServer(url=url, api_key=api_key, log_path=log_path, startup_s=time.monotonic() - started)
        print(f"\nargilla-server ready at {url} in {server.startup_s:.1f}s", file=sys.stderr)
        yield server
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.fixture
def argilla_env(argilla_server: ArgillaServer, monkeypatch: pytest.MonkeyPatch) -> ArgillaServer:
    """The server's URL and key in ARGILLA_API_URL / ARGILLA_API_KEY, as users configure it."""
    monkeypatch.setenv("ARGILLA_API_URL", argilla_server.url)
    monkeypatch.setenv("ARGILLA_API_KEY", argilla_server.api_key)
    return argilla_server


@pytest.fixture
def dataset_name(request: pytest.FixtureRequest) -> str:
    """A dataset name unique to the test, so tests sharing the server never collide."""
    stem = request.node.name.replace("_", "-").replace("[", "-").replace("]", "")[:40].strip("-")
    return f"{stem}-{secrets.token_hex(3)}"
