"""Kill or stop it anywhere, rerun, get the same dataset; one run per output directory; no secrets out.

The harness runs a reduced smoke recipe uninterrupted once, then, for each trial,
starts it in a fresh output directory, SIGKILLs it at a random moment (some trials
exactly while the final dataset is being written, some killing only the main process
so the step workers must die with it), reruns it to completion and compares. The stop
trials do the same with SIGINT (Ctrl-C) and SIGTERM over an earlier finished dataset,
which the stopped run must leave exactly as it was.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from compare import assert_same  # floats within a stated tolerance: a resumed run may score in another batch
from magpie_dl.config.dpo import REPO_ROOT

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


def group_alive(sid: int) -> bool:
    """Whether any live (non-zombie) process is left in the run's session (its step
    workers have process groups of their own, within it)."""
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[3]) == sid and fields[0] != "Z":
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
        wait_for(proc, out, moment, rng, ref_seconds)
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
        reused_total += rerun_to_the_reference(out, ref_out, f"trial{number}")
    assert reused_total > 0  # reruns really read back stored work


def wait_for(proc: subprocess.Popen, out: Path, moment: str, rng: random.Random, ref_seconds: float) -> None:
    """Return at the trial's moment: a random one, or while the release is being written."""
    if moment == "started":
        # The pipeline is built and starting: distilabel is setting up its workers.
        deadline = time.time() + 300
        while not any(out.rglob("in_progress/pipeline.yaml")):
            assert proc.poll() is None and time.time() < deadline, "the run never started its pipeline"
            time.sleep(0.002)
    elif moment == "writing":
        # Wait until the release (dataset, card, ...) is being staged, then strike at once.
        deadline = time.time() + 300
        while not any(out.glob(".release-*")):
            assert proc.poll() is None and time.time() < deadline, "run ended before writing was seen"
            time.sleep(0.002)
    else:
        time.sleep(rng.uniform(0.5, 0.8 * ref_seconds))


def rerun_to_the_reference(out: Path, ref_out: Path, label: str) -> int:
    """Rerun in ``out``: the same dataset and description as the uninterrupted run, no
    staging left behind; returns how many stored results it reused."""
    rerun = finish(out)
    assert_same(rows_of(out), rows_of(ref_out), label)
    assert config_of(out) == config_of(ref_out), f"{label}: config.yaml is not the run's"
    leftovers = [p.name for p in out.iterdir() if p.name.startswith(".") and p.name not in (".lock", ".magpie_dl.json")]
    assert not leftovers, f"{label}: staging left behind: {leftovers}"
    assert not (out / "cache" / "in_progress").exists(), label
    line = next(l for l in rerun.stdout.splitlines() if "stored results reused" in l)
    return sum(int(part.split("/")[0].split()[-1]) for part in line.split(":", 1)[1].split(","))


def config_of(out: Path) -> dict:
    """config.yaml, but for where it was written."""
    import yaml

    cfg = yaml.safe_load((out / "config.yaml").read_text())
    cfg.get("output", {}).pop("dir", None)
    cfg.pop("output_dir", None)  # the curation recipe's spelling
    return cfg


def release_of(out: Path) -> dict[str, bytes]:
    """Every file of a finished run's release (not its stored work or lock), with its bytes."""
    return {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("*"))
            if p.is_file() and p.relative_to(out).parts[0] not in ("cache", ".lock")}


@pytest.fixture(scope="module")
def earlier(tmp_path_factory, tiny_models):
    """A finished run with another seed: the dataset an interrupted run must leave alone."""
    out = tmp_path_factory.mktemp("earlier") / "out"
    finish(out, "--seed", "7")
    return out


def test_stopped_runs_publish_nothing_and_rerun_to_the_same_dataset(reference, earlier, tmp_path):
    """SIGINT (Ctrl-C) and SIGTERM at random moments and while the release is written:
    the run exits non-zero with one line, the earlier dataset and everything describing it
    stay byte for byte, and a rerun gives the uninterrupted run's dataset."""
    ref_out, ref_seconds = reference
    before = release_of(earlier)
    rng = random.Random(99)
    trials = [(signal.SIGINT, "random", "group"), (signal.SIGINT, "random", "main"),
              (signal.SIGTERM, "random", "main"), (signal.SIGTERM, "random", "group"),
              (signal.SIGTERM, "started", "main"), (signal.SIGINT, "started", "group"),
              (signal.SIGINT, "writing", "group"), (signal.SIGTERM, "writing", "main")]
    for number, (signum, moment, target) in enumerate(trials):
        label = f"trial{number} {signum.name} {moment} {target}"
        out = tmp_path / f"stop{number}"
        shutil.copytree(earlier, out)
        proc = start(out)
        wait_for(proc, out, moment, rng, ref_seconds)
        if target == "group":  # as a terminal's Ctrl-C, or a service manager's stop
            os.killpg(proc.pid, signum)
        else:
            proc.send_signal(signum)
        _, stderr = proc.communicate(timeout=300)
        deadline = time.time() + 20
        while group_alive(proc.pid) and time.time() < deadline:
            time.sleep(0.1)
        assert not group_alive(proc.pid), f"{label}: workers survived the stop"
        if proc.returncode == 0:
            # The signal came once the whole release was being moved into place: too late
            # to stop, and what landed is the complete run.
            assert_same(rows_of(out), rows_of(ref_out), label)
        else:
            assert proc.returncode == 128 + signum, f"{label}: rc {proc.returncode}: {stderr[-3000:]}"
            last = stderr.strip().splitlines()[-1]
            assert last.startswith(f"error: the run stopped by {signum.name} before it finished"), f"{label}: {stderr[-3000:]}"
            assert "rerun the same command to resume" in last and "Traceback" not in stderr, label
            assert release_of(out) == before, f"{label}: the earlier dataset changed"
        rerun_to_the_reference(out, ref_out, label)


def test_a_killed_rerun_leaves_the_finished_description_alone(reference, earlier, tmp_path):
    """config.yaml, pipeline.yaml, the card and the report stay the finished run's while
    a rerun with another seed is under way, and after it is killed."""
    out = tmp_path / "killed"
    shutil.copytree(earlier, out)
    before = release_of(out)
    proc = start(out)
    deadline = time.time() + 300
    while not any(out.rglob("in_progress/pipeline.yaml")) and release_of(out) == before:
        assert proc.poll() is None and time.time() < deadline, "the run never started its pipeline"
        time.sleep(0.01)
    time.sleep(2)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert release_of(out) == before


def test_ctrl_c_before_any_pair_exists_is_one_line(reference, tmp_path):
    out = tmp_path / "early"
    proc = start(out)
    deadline = time.time() + 300
    while not any(out.rglob("pipeline.yaml")):  # the pipeline is built: its steps start loading
        assert proc.poll() is None and time.time() < deadline, "the run never started its pipeline"
        time.sleep(0.01)
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 130, stderr[-3000:]
    assert "KeyError" not in stderr and "Traceback" not in stderr, stderr[-3000:]
    assert stderr.strip().splitlines()[-1].startswith("error: the run stopped by SIGINT before it finished")
    assert not (out / "dataset").exists() and not (out / "README.md").exists()


def test_rerun_recomputes_nothing_and_fresh_recomputes_everything(reference):
    ref_out, _ = reference
    # What runs killed while exporting used to leave: the next run removes it.
    (ref_out / ".dataset.tmp-999999").mkdir()
    (ref_out / ".dataset.tmp-999999" / "data.arrow").write_text("half")
    (ref_out / ".released-999999.arrow").write_text("half")
    rerun = finish(ref_out)
    assert not any(ref_out.glob(".dataset.tmp-*")) and not any(ref_out.glob(".released-*"))
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
    """While a run holds the directory, a second one stops at once and touches nothing.

    The holder is this test process (the same lock a run takes), not a live run: a
    live first run might finish before the second one starts, and the test would race.
    """
    from magpie_dl.run.driver import output_lock

    out = tmp_path / "busy"
    shutil.copytree(reference[0], out)
    before = rows_of(out)
    with output_lock(out):
        second = subprocess.run([sys.executable, SCRIPT, *ARGS, "--output-dir", str(out)],
                                capture_output=True, text=True, cwd=REPO_ROOT, timeout=300)
    assert second.returncode == 3, second.stderr[-2000:]
    assert second.stderr.strip().splitlines()[-1].startswith(f"error: another run is writing to {out}")
    assert rows_of(out) == before  # the holder's output is whole


def test_secrets_never_reach_logs_files_or_errors(tmp_path, tiny_models, failing_server):
    hf, argilla = "hf_SECRETtoken1234567890", "argilla.SECRETkey0987654321"
    # A hub that accepts connections (checked before the run) and fails every request (the push).
    env = {**{k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")},
           "HF_TOKEN": hf, "ARGILLA_API_KEY": argilla, "HF_ENDPOINT": failing_server}
    out = tmp_path / "secret-run"
    proc = start(out, "--push-to-hub", "someone/magpie-test", env=env)
    stdout, stderr = proc.communicate(timeout=600)
    # The push cannot succeed: one line, no token, local data kept.
    assert proc.returncode == 4 and "hub push failed" in stderr and "is intact" in stderr
    for text in (stdout, stderr):
        assert hf not in text and argilla not in text
    for path in out.rglob("*"):
        if path.is_file():
            blob = path.read_bytes()
            assert hf.encode() not in blob and argilla.encode() not in blob, path
    assert (out / "pipeline.yaml").exists() and (out / "dataset").exists()


CURATION = str(REPO_ROOT / "pipelines" / "magpie_instructions.py")
CURATION_ARGS = ["--preset", "smoke", "--generator.num_instructions", "16", "--generator.batch_size", "8",
                 "--tagging.batch_size", "8", "--tagging.max_tokens", "24", "--instruct_reward.batch_size", "8",
                 "--instruct_reward.max_tokens", "24", "--reward.input_batch_size", "8", "--selection.target_size", "8"]


def test_a_stopped_curation_run_publishes_nothing(tiny_models, tmp_path):
    """The curation recipe: SIGTERM mid-run leaves its earlier release as it was; a rerun finishes."""
    out = tmp_path / "curated"
    first = subprocess.run([sys.executable, CURATION, *CURATION_ARGS, "--seed", "3", "--output-dir", str(out)],
                           capture_output=True, text=True, cwd=REPO_ROOT, timeout=900)
    assert first.returncode == 0, first.stderr[-3000:]
    before = release_of(out)
    assert "selection.json" in before and "instructions.jsonl" in before
    proc = subprocess.Popen([sys.executable, CURATION, *CURATION_ARGS, "--output-dir", str(out)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO_ROOT,
                            start_new_session=True)
    deadline = time.time() + 300
    while not (out / "cache" / "in_progress" / "pipeline.yaml").exists():
        assert proc.poll() is None and time.time() < deadline, "the run never started its pipeline"
        time.sleep(0.01)
    time.sleep(3)
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 143, stderr[-3000:]
    assert stderr.strip().splitlines()[-1].startswith("error: the run stopped by SIGTERM before it finished")
    assert release_of(out) == before
    rerun = subprocess.run([sys.executable, CURATION, *CURATION_ARGS, "--output-dir", str(out)],
                           capture_output=True, text=True, cwd=REPO_ROOT, timeout=900)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert config_of(out)["seed"] == 42 and json.loads((out / "selection.json").read_text())["input_rows"] == 16
    assert not (out / "cache" / "in_progress").exists()
