"""The recipe's --argilla-dataset flag against the real server: push after the local write."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from magpie_dl.config.dpo import REPO_ROOT

pytestmark = [pytest.mark.argilla, pytest.mark.slow]

ARGS = ["--preset", "smoke", "--num-instructions", "8", "--responses.num_generations", "3"]


def run(*args: str, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(REPO_ROOT / "pipelines" / "dpo_100k.py"), *ARGS, *args],
                          capture_output=True, text=True, cwd=REPO_ROOT, env=env, timeout=600)


def test_recipe_pushes_pairs_for_review(argilla_server, dataset_name, tmp_path, tiny_models):
    import argilla as rg

    env = {**os.environ, "ARGILLA_API_URL": argilla_server.url, "ARGILLA_API_KEY": argilla_server.api_key}
    out = tmp_path / "out"
    result = run("--output-dir", str(out), "--argilla-dataset", dataset_name, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "argilla:" in result.stdout
    assert argilla_server.api_key not in result.stdout + result.stderr
    assert "Logging error" not in result.stderr  # distilabel's closed log queue is no longer in use
    from datasets import load_from_disk

    local = load_from_disk(str(out / "dataset"))
    client = rg.Argilla(api_url=argilla_server.url, api_key=argilla_server.api_key)
    records = list(client.datasets(dataset_name).records)
    assert {r.id for r in records} == set(local["train"]["uuid"]) | set(local["test"]["uuid"])


def test_failed_push_keeps_the_local_dataset(tmp_path, tiny_models, failing_server):
    # A server that accepts connections (checked before the run) and fails every request (the push).
    env = {**os.environ, "ARGILLA_API_URL": failing_server, "ARGILLA_API_KEY": "secret-key-not-shown-42"}
    out = tmp_path / "out"
    result = run("--output-dir", str(out), "--argilla-dataset", "nowhere", env=env)
    assert result.returncode == 4
    assert "local dataset is intact" in result.stderr and "secret-key-not-shown-42" not in result.stderr
    # The retries are logged after the run, once distilabel has closed its log queue.
    assert "retry 1/" in result.stderr and "Logging error" not in result.stderr
    assert (out / "dataset" / "dataset_dict.json").exists()


def test_missing_argilla_settings_fail_before_any_model_loads(tmp_path, tiny_models):
    env = {k: v for k, v in os.environ.items() if not k.startswith("ARGILLA_")}
    out = tmp_path / "out"
    result = run("--output-dir", str(out), "--argilla-dataset", "x", env=env)
    assert result.returncode == 2 and "ARGILLA_API_URL" in result.stderr and not out.exists()
