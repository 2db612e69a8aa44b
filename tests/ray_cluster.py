"""A Ray head on loopback for the test session (tests/conftest.py's ``ray_head``).

Started with ``ray start --head`` in its own process group and stopped by ending that group,
so only the processes it started are touched; ~15 s, once per session.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

TESTS = Path(__file__).parent
# What the head advertises: a simulated 2 x 8 GPU cluster's worth (Ray multi-node is refused on
# loopback, see magpie_dl.run.scaleout: the two nodes are one Ray node, the plan is told --nodes 2).
RAY_GPUS = 16


def simulated_node_spec(temp_dir: str) -> str:
    """Where a test writes the simulated GPU node's spec for the head's workers (tests/gpu_node)."""
    return os.path.join(temp_dir, "simulated_node.json")


def simulated_node_hub(temp_dir: str) -> str:
    """The hub cache the head's workers read (HF_HUB_CACHE): the simulated node's models."""
    return os.path.join(temp_dir, "hub")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def ray_head_cluster():
    """A Ray head on 127.0.0.1 (its own process group) with 16 GPUs it does not have (Ray
    only counts them: CPU steps reserve none, and the simulated GPU node's steps see them
    through tests/gpu_node); yields (address, env, temp dir). One per test session."""
    port = _free_port()
    # Short path: Ray's unix sockets live under it (108-byte limit).
    temp_dir = tempfile.mkdtemp(prefix="ray", dir="/tmp")
    env = {
        **os.environ,
        "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",  # see magpie_dl.run.scaleout: keeps 127.0.0.1
        "RAY_USAGE_STATS_ENABLED": "0",
        # The workers (which inherit the head's environment) rebuild the runs' steps, the stub
        # backend of tests/forced_queries.py among them: they must be able to import it.
        # tests/gpu_node first: a run that writes simulated_node_spec(temp_dir) simulates its GPU node in
        # every worker (inert otherwise).
        "PYTHONPATH": os.pathsep.join(filter(None, [str(TESTS / "gpu_node"), str(TESTS), os.environ.get("PYTHONPATH")])),
    }
    env["MAGPIE_DL_SIMULATED_NODE"] = simulated_node_spec(temp_dir)
    # The simulated node's models resolve from a hub cache only (tests/gpu_node/hub.py); the other
    # runs name local directories.
    env.update({"HF_HUB_CACHE": simulated_node_hub(temp_dir), "HF_HUB_OFFLINE": "1"})
    ray_cli = str(Path(sys.executable).parent / "ray")
    head = subprocess.Popen(
        [ray_cli, "start", "--head", "--block", f"--port={port}", "--include-dashboard=false",
         "--num-cpus=2", f"--num-gpus={RAY_GPUS}", "--node-ip-address=127.0.0.1", f"--temp-dir={temp_dir}",
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


