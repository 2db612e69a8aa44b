"""Fixtures of the vllm tier: one real CPU engine and one real `vllm serve` per session.

Run with ``.venv-vllm/bin/python -m pytest tests/vllm`` (``scripts/setup_vllm_env.sh``
builds that venv). From an interpreter without vLLM the tier is skipped only when
``.venv-vllm`` does not exist; if it exists the tests fail with the command to use.
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from serving_helpers import API_KEY, MAX_MODEL_LEN, STRUCTURED_OUTPUTS_CONFIG, served

REPO = Path(__file__).resolve().parents[2]
VENV_VLLM = REPO / ".venv-vllm"
_VLLM_SPEC = importlib.util.find_spec("vllm")
# Not this test directory: with tests/ on sys.path, tests/vllm is a namespace package "vllm".
HAS_VLLM = _VLLM_SPEC is not None and _VLLM_SPEC.origin is not None

# A small KV cache keeps each engine near 3 GB on a shared 2-core machine.
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if HAS_VLLM or VENV_VLLM.exists():
        return
    here = Path(__file__).parent
    for item in items:
        if here in Path(str(item.fspath)).parents:
            item.add_marker(pytest.mark.skip(reason="no .venv-vllm: run scripts/setup_vllm_env.sh"))


@pytest.fixture(scope="session", autouse=True)
def _needs_vllm() -> None:
    """With .venv-vllm present, running this tier from another interpreter is a mistake."""
    if not HAS_VLLM:
        pytest.fail(f"vLLM is not importable here: run {VENV_VLLM}/bin/python -m pytest tests/vllm")


@pytest.fixture(scope="session")
def tiny_generator(tiny_models: dict[str, str]) -> Path:
    """The tiny Llama-3.1-style generator (built by the root conftest if absent)."""
    return Path(tiny_models["generator"])


@pytest.fixture(scope="session")
def engine(tiny_generator: Path) -> Iterator:
    """One real vLLM engine (CPU build, V1 model runner) for the whole session."""
    from magpie_dl.backends.vllm import VLLMBackend

    backend = VLLMBackend(
        model=str(tiny_generator),
        dtype="float32",
        max_model_len=MAX_MODEL_LEN,
        engine_kwargs={"structured_outputs_config": STRUCTURED_OUTPUTS_CONFIG},
    )
    backend.load()
    yield backend
    backend.unload()


@pytest.fixture(scope="session")
def server(tiny_generator: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real `vllm serve` on 127.0.0.1 (its root URL), with the ban processor and an API key."""
    with served(tiny_generator, tmp_path_factory.mktemp("server") / "vllm_serve.log", REPO) as (url, _):
        yield url


@pytest.fixture()
def api_key(monkeypatch: pytest.MonkeyPatch) -> str:
    """The server's key in the env var the OpenAI backend reads."""
    monkeypatch.setenv("MAGPIE_DL_API_KEY", API_KEY)
    return API_KEY
