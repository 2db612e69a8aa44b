"""Kill it anywhere, rerun, get the same dataset; one run per output directory; no secrets out.

The harness runs a reduced smoke recipe uninterrupted once, then, for each trial,
starts it in a fresh output directory, SIGKILLs it at a random moment (some trials
exactly while the final dataset is being written, some killing only the main process
so the step workers must die with it), reruns it to completion and compares.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from compare import assert_same  # floats within a stated tolerance: a resumed run may score in another batch
from magpie_dl.config import REPO_ROOT

pytestmark = pytest.mark.slow

ARGS = ["--preset", "smoke", "--num-instructions", "12", "--responses.num_generations", "3",
        "--responses.max_tokens", "32"]
SCRIPT = str(REPO_ROOT / "pipelines" / "dpo_100k.py")


def start(out: Path, *extra: str, env: dict | None = None) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, SCRIPT, *ARGS, "--output-dir", str(out), *extra],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO_ROOT,
        start_new_session=True, env=env,
    )


def finish(out: Path, *extra: str) -> subprocess.CompletedProcess:
    proc = start(out, *extra)
    stdout, stderr = proc.communicate(timeout=600)
    assert proc.returncode == 0, stderr[-3000:]
    return subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr)


def rows_of(out: Path) -> dict[str, list[dict]]:
    from datasets import load_from_disk

    data = load_from_disk(str(out / "dataset"))
    result = {name: sorted(split.to_list(), key=lambda r: r["uuid"]) for name, split in data.items()}
    left = load_from_disk(str(out / "left_out"))
    result["left_out"] = sorted(left.to_list(), key=lambda r: r["uuid"]) if len(left) else []
    return result


def group_alive(pgid: int) -> bool:
    """Whether any live (non-zombie) process is left in the group."""
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            return True
    return False


@pytest.fixture(scope="module")
def reference(tmp_path_factory, tiny_models):
    out = tmp_path_factory.mktemp("reference") / "out"
    started = time.perf_counter()
    finish(out)
    return out, time.perf_counter() - started


def test_killed_runs_rerun_to_the_same_dataset(reference, tmp_path):
    ref_out, ref_seconds = reference
    expected = rows_of(ref_out)
    assert sum(len(v) for v in expected.values()) == 12
    rng = random.Random(1234)
    trials = [("random", "group")] * 4 + [("random", "main")] * 3 + [("writing", "group")] * 2 + [("writing", "main")]
    reused_total = 0
    for number, (moment, target) in enumerate(trials):
        out = tmp_path / f"trial{number}"
        proc = start(out)
        if moment == "writing":
            # Wait until the final dataset is being staged, then kill at once.
            deadline = time.time() + 300
            while not any(out.glob(".dataset.tmp-*")) and not any(out.glob(".left_out.tmp-*")):
                assert proc.poll() is None and time.time() < deadline, "run ended before writing was seen"
                time.sleep(0.002)
        else:
            time.sleep(rng.uniform(0.5, 0.8 * ref_seconds))
        if target == "group":
            os.killpg(proc.pid, signal.SIGKILL)
        else:
            proc.send_signal(signal.SIGKILL)
        proc.wait()
        # Step workers must not outlive a killed main process.
        deadline = time.time() + 20
        while group_alive(proc.pid) and time.time() < deadline:
            time.sleep(0.1)
        assert not group_alive(proc.pid), f"trial {number}: workers survived the kill"
        rerun = finish(out)
        assert_same(rows_of(out), expected, f"trial{number}")
        line = next(l for l in rerun.stdout.splitlines() if "stored results reused" in l)
        reused_total += sum(int(part.split("/")[0].split()[-1]) for part in line.split(":", 1)[1].split(","))
    assert reused_total > 0  # reruns really read back stored work


def test_rerun_recomputes_nothing_and_fresh_recomputes_everything(reference):
    ref_out, _ = reference
    rerun = finish(ref_out)
    line = next(l for l in rerun.stdout.splitlines() if "stored results reused" in l)
    for part in line.split(":", 1)[1].split(","):
        done, total = part.split()[-1].split("/")
        assert done == total, line
    fresh = finish(ref_out, "--fresh")
    line = next(l for l in fresh.stdout.splitlines() if "stored results reused" in l)
    assert all(part.split()[-1].startswith("0/") for part in line.split(":", 1)[1].split(",")), line


def test_changing_a_parameter_recomputes_only_what_it_affects(reference, tmp_path):
    import shutil

    ref_out, _ = reference
    out = tmp_path / "changed"
    shutil.copytree(ref_out, out)
    run = finish(out, "--pairing.min_margin", "0.01", "--reward.max_length", "64")
    line = next(l for l in run.stdout.splitlines() if "stored results reused" in l)
    usage = {p.split()[0]: p.split()[-1].split("/") for p in line.split(":", 1)[1].split(",")}
    assert usage["magpie_generator"][0] == usage["magpie_generator"][1]  # queries reused
    assert usage["responses"][0] == usage["responses"][1]  # responses reused
    assert usage["reward"][0] == "0"  # every score recomputed under the new truncation


def test_second_run_on_the_same_directory_is_refused(reference, tmp_path):
    out = tmp_path / "busy"
    first = start(out)
    deadline = time.time() + 60
    while not (out / ".lock").exists() and time.time() < deadline:
        time.sleep(0.05)
    time.sleep(0.5)
    second = subprocess.run([sys.executable, SCRIPT, *ARGS, "--output-dir", str(out)],
                            capture_output=True, text=True, cwd=REPO_ROOT, timeout=120)
    assert second.returncode == 3
    assert second.stderr.strip().splitlines()[-1].startswith(f"error: another run is writing to {out}")
    stdout, stderr = first.communicate(timeout=600)
    assert first.returncode == 0, stderr[-2000:]
    assert sum(len(v) for v in rows_of(out).values()) == 12  # the first run's output is whole


def test_secrets_never_reach_logs_files_or_errors(tmp_path, tiny_models):
    hf, argilla = "hf_SECRETtoken1234567890", "argilla.SECRETkey0987654321"
    env = {**os.environ, "HF_TOKEN": hf, "ARGILLA_API_KEY": argilla, "HF_HUB_OFFLINE": "1"}
    out = tmp_path / "secret-run"
    proc = start(out, "--push-to-hub", "someone/magpie-test", env=env)
    stdout, stderr = proc.communicate(timeout=600)
    # The push cannot succeed offline: one line, no token, local data kept.
    assert proc.returncode == 4 and "hub push failed" in stderr and "is intact" in stderr
    for text in (stdout, stderr):
        assert hf not in text and argilla not in text
    for path in out.rglob("*"):
        if path.is_file():
            blob = path.read_bytes()
            assert hf.encode() not in blob and argilla.encode() not in blob, path
    assert (out / "pipeline.yaml").exists() and (out / "dataset").exists()
