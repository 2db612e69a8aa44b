"""The DPO recipe on a real local Ray head (loopback only), data parallel, same rows as a local run.

One head is started for the module with ``ray start --head`` in its own process group
and stopped by ending that group, so only the processes this test started are
touched. The head, the driver and the workers are pinned to 127.0.0.1 and the test
checks the addresses Ray reports. The tiny models run on CPU (~60-90 s in all).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import pytest

from magpie_dl.config import REPO_ROOT

pytest.importorskip("ray")
pytestmark = pytest.mark.slow

# Runs the recipe's own graph (build_pipeline) locally, then on Ray with two response
# engines and two reward replicas, and writes both runs' rows plus Ray's address report.
DRIVER = textwrap.dedent(
    """
    import importlib.util, json, sys
    from pathlib import Path
    out = Path(sys.argv[1])
    spec = importlib.util.spec_from_file_location("dpo_100k", sys.argv[2])
    recipe = importlib.util.module_from_spec(spec); spec.loader.exec_module(recipe)
    from magpie_dl.config import PRESETS, validate
    from magpie_dl.scaleout import ScaleoutConfig, as_ray, run_options

    def config(name):
        data = json.loads(json.dumps(PRESETS["smoke"]))
        data["generator"].update(num_instructions=16, batch_size=8)
        data["responses"].update(batch_size=4, max_tokens=24)
        data["reward"]["input_batch_size"] = 4
        data["output"]["dir"] = str(out / name)
        return validate(data)

    def rows_of(distiset):
        return sorted(distiset["default"]["train"].to_list(), key=lambda r: r["uuid"])

    local = rows_of(recipe.build_pipeline(config("local")).run(use_cache=False))
    cfg = config("ray")
    scale = ScaleoutConfig(ray=True, generation_replicas=2, reward_replicas=2)
    pipeline = as_ray(recipe.build_pipeline(cfg), cfg, scale)
    placed = {n: pipeline.dag.get_step(n)["step"].resources.replicas for n in pipeline.dag}
    ray_rows = rows_of(pipeline.run(use_cache=False, **run_options(pipeline)))
    import ray
    workers = ray.get([ray.remote(lambda: ray.util.get_node_ip_address()).remote() for _ in range(2)])
    (out / "result.json").write_text(json.dumps({
        "local": local, "ray": ray_rows, "cluster": pipeline._magpie_cluster,
        "replicas": placed, "worker_ips": workers,
    }, default=str))
    """
)

COMPARED = ("instruction", "generations", "finish_reasons", "ratings", "chosen", "rejected", "pair_status")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def ray_head():
    """A Ray head on 127.0.0.1 (its own process group); yields (address, env)."""
    port = _free_port()
    # Short path: Ray's unix sockets live under it (108-byte limit).
    temp_dir = tempfile.mkdtemp(prefix="ray", dir="/tmp")
    env = {
        **os.environ,
        "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",  # see magpie_dl.scaleout: keeps 127.0.0.1
        "RAY_USAGE_STATS_ENABLED": "0",
    }
    ray_cli = str(Path(sys.executable).parent / "ray")
    head = subprocess.Popen(
        [ray_cli, "start", "--head", "--block", f"--port={port}", "--include-dashboard=false",
         "--num-cpus=2", "--num-gpus=0", "--node-ip-address=127.0.0.1", f"--temp-dir={temp_dir}",
         "--object-store-memory=200000000", "--disable-usage-stats"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
    )
    address = f"127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            ready = subprocess.run([ray_cli, "status", f"--address={address}"], env=env, capture_output=True, text=True)
            if ready.returncode == 0:
                break
            assert head.poll() is None, head.stdout.read()
            time.sleep(2)
        else:
            pytest.fail("Ray head did not come up in 90 s")
        yield address, env, temp_dir
    finally:
        # End exactly the processes this head started (gcs, raylet, workers share its group).
        try:
            os.killpg(head.pid, signal.SIGTERM)
            head.wait(timeout=30)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            os.killpg(head.pid, signal.SIGKILL)
        deadline = time.monotonic() + 20
        while _session_processes(temp_dir) and time.monotonic() < deadline:
            time.sleep(1)
        left = _session_processes(temp_dir)
        for line in left:  # anything that escaped the group: end it by pid, then fail
            os.kill(int(line.split(":")[0]), signal.SIGKILL)
        assert not left, f"Ray processes outlived the head: {left}"


def _session_processes(temp_dir: str) -> list[str]:
    """Processes still running whose command line names this head's temp dir."""
    found = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            if temp_dir in cmdline:
                found.append(f"{proc.name}: {cmdline[:120]}")
    return found


def test_recipe_on_ray_matches_local_run(ray_head, tiny_models, tmp_path):
    address, env, temp_dir = ray_head
    driver = tmp_path / "driver.py"
    driver.write_text(DRIVER)
    done = subprocess.run(
        [sys.executable, str(driver), str(tmp_path), str(REPO_ROOT / "pipelines" / "dpo_100k.py")],
        env={**env, "RAY_ADDRESS": address}, cwd=REPO_ROOT, capture_output=True, text=True, timeout=600,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    result = json.loads((tmp_path / "result.json").read_text())

    # Loopback only: the driver, every node and the workers report 127.0.0.1.
    cluster = result["cluster"]
    assert cluster["driver"] == "127.0.0.1"
    assert cluster["nodes"] == ["127.0.0.1"]
    assert cluster["gcs"] == address
    assert set(result["worker_ips"]) == {"127.0.0.1"}
    # Data parallel as configured, and nothing else replicated.
    assert result["replicas"] == {"magpie_generator": 1, "responses": 2, "reward": 2, "pairing": 1}

    local, on_ray = result["local"], result["ray"]
    assert len(local) == len(on_ray) == 16
    assert [r["uuid"] for r in local] == [r["uuid"] for r in on_ray]
    # Per-row seeds: the same responses and scores whichever replica served the row.
    for a, b in zip(local, on_ray):
        assert {k: a[k] for k in COMPARED} == {k: b[k] for k in COMPARED}, a["uuid"]
    assert sum(len(r["generations"]) for r in on_ray) == 16 * 5 - 5 * sum(
        r["instruction_status"] != "ok" for r in on_ray
    )

