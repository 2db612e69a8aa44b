"""The smoke recipe end to end on real vLLM: offline engines (--backend vllm) and a served
engine (--backend openai --base-url ...), run as a user runs it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from serving_helpers import API_KEY

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.vllm


def run_smoke(out: Path, *args: str, env: dict[str, str] | None = None) -> tuple[int, str, list[int]]:
    """Run the recipe CLI in its own session; (exit code, output tail, pids left in that session)."""
    proc = subprocess.Popen(
        [sys.executable, str(REPO / "pipelines" / "dpo_100k.py"), "--preset", "smoke", "--output-dir", str(out), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        cwd=REPO,
        env={**os.environ, **(env or {})},
        start_new_session=True,  # every process it starts (engine cores, workers) shares this session id
    )
    try:
        # A hang at unload (distilabel's own vLLM class) would sit here until the timeout.
        output, _ = proc.communicate(timeout=600)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, 9)
        output, _ = proc.communicate()
        raise AssertionError("the recipe did not finish within 600 s:\n" + output[-4000:]) from None
    import psutil

    leftovers = []
    for p in psutil.process_iter(["pid"]):
        try:
            if os.getsid(p.info["pid"]) == proc.pid and p.status() != psutil.STATUS_ZOMBIE:
                leftovers.append(p.info["pid"])
        except (ProcessLookupError, PermissionError, psutil.NoSuchProcess):
            continue
    return proc.returncode, output[-6000:], leftovers


def check_dataset(out: Path, engine: str) -> None:
    from datasets import load_from_disk

    dataset = load_from_disk(str(out / "dataset"))
    rows = [row for split in dataset.values() for row in split]
    assert len(rows) >= 32, "the trained tiny model ends turns often enough to pair most queries"
    for row in rows:
        assert len(row["responses"]) == 5
        assert row["gen_response_configs"]["engine"] == engine
        assert row["chosen"][1]["content"] == row["responses"][row["chosen_index"]]
        assert row["finish_reasons"][row["chosen_index"]] == "stop"


@pytest.fixture(scope="module")
def offline_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One smoke run with --backend vllm (two offline engines: queries and responses)."""
    out = tmp_path_factory.mktemp("smoke-vllm") / "out"
    code, output, leftovers = run_smoke(out, "--backend", "vllm")
    assert code == 0, output
    # Both generation steps unloaded their engines: nothing of the run outlives it.
    assert leftovers == [], output
    return out


def test_smoke_recipe_with_vllm_engines(offline_run: Path) -> None:
    check_dataset(offline_run, "vllm")


def test_smoke_recipe_against_a_vllm_server(server: str, offline_run: Path, tmp_path: Path) -> None:
    code, output, leftovers = run_smoke(
        tmp_path / "out", "--backend", "openai", "--base-url", server, env={"MAGPIE_DL_API_KEY": API_KEY}
    )
    assert code == 0, output
    check_dataset(tmp_path / "out", "openai")
    assert leftovers == [], output
    # Same model, same seeds, same engine code: served and offline runs write the same data.
    served, offline = rows_by_instruction(tmp_path / "out"), rows_by_instruction(offline_run)
    assert served.keys() == offline.keys()
    assert all(served[k] == offline[k] for k in served)


def rows_by_instruction(out: Path) -> dict[str, tuple]:
    from datasets import load_from_disk

    dataset = load_from_disk(str(out / "dataset"))
    return {r["instruction"]: (r["responses"], r["finish_reasons"]) for s in dataset.values() for r in s}
