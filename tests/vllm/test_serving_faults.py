"""Serving faults on real `vllm serve` processes (CPU build, 127.0.0.1), run as a user runs
the recipe: an endpoint killed, one frozen (SIGSTOP) and resumed, a proxy answering HTTP 500
to every third request, then answering slowly (the reruns of that one disturbed run). Each
run ends as documented and its dataset (or its rerun's) equals an undisturbed run's. The
backend's logic without a model, and the runs this file leaves out: tests/test_serving_faults.py."""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

import pytest
from compare import assert_same
from serving_helpers import API_KEY, Proxy, served
from test_pipeline_e2e import run_smoke

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.vllm
ENV = {"MAGPIE_DL_API_KEY": API_KEY}
SMALL = ("--num-instructions", "16", "--quiet")
# Liveness in seconds a test can afford; the defaults are minutes.
QUICK = ("--backend.stall_timeout_s", "3", "--backend.probe_timeout_s", "2", "--backend.probe_interval_s", "1")


def served_run(out: Path, *urls: str, extra: tuple[str, ...] = ()) -> tuple[int, str]:
    code, output, leftovers = run_smoke(
        out, "--backend", "openai", "--base-url", ",".join(urls), *SMALL, *extra, env=ENV
    )
    assert leftovers == [], output
    return code, output


def dataset_rows(out: Path) -> dict[str, dict]:
    """Every published row (pairs and left-out rows) by uuid."""
    from datasets import load_from_disk

    rows = {}
    for part in ("dataset", "left_out"):
        loaded = load_from_disk(str(out / part))
        for split in (loaded.values() if hasattr(loaded, "values") else [loaded]):
            rows.update({row["uuid"]: row for row in split})
    return rows


@pytest.fixture(scope="module")
def undisturbed(server: str, tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict]:
    out = tmp_path_factory.mktemp("undisturbed") / "out"
    code, output = served_run(out, server)
    assert code == 0, output
    return dataset_rows(out)


@pytest.fixture(scope="module")
def second_server(tiny_generator: Path, tmp_path_factory: pytest.TempPathFactory):
    """One more real server (the session's must survive these tests): frozen, then killed."""
    with served(tiny_generator, tmp_path_factory.mktemp("second") / "vllm_serve.log", REPO) as (url, proc):
        yield url, proc


def when_seen(proxy: Proxy, completions: int, action) -> threading.Thread:
    """Run ``action`` once ``proxy`` has forwarded ``completions`` completion requests (mid-run)."""
    def watch() -> None:
        deadline = time.monotonic() + 300
        while proxy.completions_seen() < completions and time.monotonic() < deadline:
            time.sleep(0.05)
        action()

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    return thread


def test_failed_requests_exit_7_allowed_they_are_counted_and_the_rerun_on_a_slow_endpoint_completes(
    server: str, undisturbed: dict, tmp_path: Path
) -> None:
    """One disturbed run, rerun three ways: the same command while the proxy still sheds
    load (exit 7), then with --allow-failed-requests, then once it is healthy but slow."""
    import json

    out = tmp_path / "out"
    no_retry = ("--backend.max_retries", "0")
    with Proxy(server) as shedding:
        shedding.fail_every = 3
        code, output = served_run(out, shedding.url, extra=no_retry)
        assert code == 7, output
        last = output.strip().splitlines()[-1]
        assert last.startswith("error: ") and " requests failed after retries (last: HTTP 500 from " in last, last
        assert shedding.url in last and "rerun the same command to retry them" in last
        assert int(last.removeprefix("error: ").split()[0]) >= 3, last  # a third of ~30 requests
        assert not (out / "dataset").exists() and not (out / "summary.json").exists()

        # Publishing what succeeded is an explicit choice; the failures are counted and named.
        code, output = served_run(out, shedding.url, extra=(*no_retry, "--allow-failed-requests"))
        assert code == 0, output
        summary = json.loads((out / "summary.json").read_text())
        left_out = summary["left_out"]
        assert summary["requests_failed"] >= 1 and "instruction_empty" not in left_out
        assert left_out.get("instruction_request_failed", 0) + left_out.get("request_failed", 0) \
            == summary["requests_failed"]
        assert "requests failed after retries" in (out / "README.md").read_text()
        failed = [row for row in dataset_rows(out).values() if row["request_error"]]
        assert len(failed) == summary["requests_failed"]
        assert all(row["request_error"].startswith(f"HTTP 500 from {shedding.url}") for row in failed)

        # Recovered, but slow: each answer takes longer than the stall timeout. Only the probe
        # tells the endpoint is alive; abandoning a request would fail it (no retries): exit 7.
        shedding.fail_every, shedding.delay_s = 0, 1.5
        code, output = served_run(out, shedding.url, extra=(
            *no_retry, "--backend.stall_timeout_s", "1", "--backend.probe_timeout_s", "1"))
    assert code == 0, output
    assert "stopped answering" not in output
    assert_same(dataset_rows(out), undisturbed)  # scores batched differently: within tolerance


def test_a_frozen_endpoint_is_set_aside_and_the_run_goes_on(
    server: str, second_server, undisturbed: dict, tmp_path: Path
) -> None:
    url, proc = second_server
    out = tmp_path / "out"

    def freeze() -> None:
        os.killpg(proc.pid, signal.SIGSTOP)
        # Resumed 10 s later, while the run goes on without it (it must not wait for it).
        threading.Timer(10, lambda: os.killpg(proc.pid, signal.SIGCONT)).start()

    with Proxy(url) as watched:
        when_seen(watched, 4, freeze)  # the ban probes at load, then requests in flight
        started = time.monotonic()
        code, output = served_run(out, watched.url, server, extra=QUICK)
        took = time.monotonic() - started
    os.killpg(proc.pid, signal.SIGCONT)
    assert code == 0, output
    assert f"WARNING: endpoint {watched.url} stopped answering (" in output, output  # one line, for the user
    assert_same(dataset_rows(out), undisturbed)  # scores batched differently: within tolerance
    assert took < 300


def test_a_killed_endpoint_leaves_the_run_to_the_other(
    server: str, second_server, undisturbed: dict, tmp_path: Path
) -> None:
    import psutil

    url, proc = second_server
    out = tmp_path / "out"
    with Proxy(url) as watched:
        # The whole process group, as the README says: the server and its engine processes.
        when_seen(watched, 4, lambda: os.killpg(proc.pid, signal.SIGKILL))
        code, output = served_run(out, watched.url, server, extra=QUICK)
    assert code == 0, output
    assert_same(dataset_rows(out), undisturbed)  # scores batched differently: within tolerance
    proc.wait(timeout=30)
    left = [p for p in psutil.process_iter(["pid"]) if _session_of(p.info["pid"]) == proc.pid]
    assert left == [], "a killed server's engine processes outlived it"


def _session_of(pid: int) -> int | None:
    try:
        return os.getsid(pid)
    except (ProcessLookupError, PermissionError):
        return None
