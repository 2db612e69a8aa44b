"""The curation recipe's run flags: ``--dry-run`` (plan only) and ``--fresh`` (stored results dropped)."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

from magpie_dl.config.dpo import REPO_ROOT

RECIPE = str(REPO_ROOT / "pipelines" / "magpie_instructions.py")


def _run(*args: str, timeout: int = 900) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, RECIPE, "--preset", "smoke", *args], capture_output=True, text=True,
                          timeout=timeout, cwd=REPO_ROOT)


def test_dry_run_prints_the_plan_and_writes_nothing(tmp_path, tiny_models):
    out = tmp_path / "out"
    result = _run("--dry-run", "--output-dir", str(out), "--ray", "--scaleout.tagging_replicas", "2")
    assert result.returncode == 0, result.stderr[-2000:]
    lines = result.stdout.splitlines()
    assert lines[0] == "graph:"
    assert "  selection [CuratedSelection] -> (output)" in lines
    assert f"  output_dir: {out}" in lines
    assert "    judge_tags: 2 x CPU" in lines  # the Ray placement (smoke: CPU models), computed without a cluster
    assert not out.exists()


@pytest.mark.slow
def test_fresh_drops_stored_results(tmp_path, tiny_models):
    out = tmp_path / "out"
    first = _run("--output-dir", str(out))
    assert first.returncode == 0, first.stderr[-2000:]
    stored = sorted(p.relative_to(out) for p in (out / "cache").rglob("*") if p.is_file())
    assert stored
    marker = out / "cache" / "left-over-from-an-old-run"
    marker.write_text("x")
    again = _run("--output-dir", str(out), "--fresh")
    assert again.returncode == 0, again.stderr[-2000:]
    assert not marker.exists()
    assert sorted(p.relative_to(out) for p in (out / "cache").rglob("*") if p.is_file()) == stored


def test_dry_run_estimates_the_work_and_every_run_flag_is_there(tmp_path, tiny_models):
    """As the DPO recipe's: the plan ends with an estimate (counts of requests; the judge's and the
    encoder's throughput are not modelled, so no GPU-hours), and --quiet / --verbose exist."""
    out = tmp_path / "out"
    result = _run("--dry-run", "--output-dir", str(out), "--generator.num_instructions", "1000",
                  "--tagging.tasks", "difficulty,quality", "--quiet", "--verbose")
    assert result.returncode == 0, result.stderr[-2000:]
    lines = result.stdout.splitlines()
    estimate = lines[lines.index("estimate (counts of work only; no token or GPU-hour figures for this recipe):"):]
    assert estimate[1:4] == ["  query prompts: 1,000", "  judge requests: up to 2,000 (2 tag tasks per usable query)",
                             f"  instruct responses: up to 1,000 (1 each, max 48 tokens), scored by {tiny_models['reward']}"]
    assert estimate[-1] == "  selected: up to 32"
    assert not out.exists()


@pytest.mark.slow
def test_live_progress_unless_quiet(tmp_path, tiny_models):
    """Progress lines on stderr for the steps that count their rows; none with --quiet (the rerun,
    from the stored results, says so); the libraries' logs stay out either way."""
    out = tmp_path / "out"
    small = ["--generator.num_instructions", "16", "--generator.batch_size", "8", "--tagging.batch_size", "8",
             "--tagging.max_tokens", "24", "--instruct_reward.batch_size", "8", "--instruct_reward.max_tokens", "24",
             "--reward.input_batch_size", "8", "--selection.target_size", "8", "--output-dir", str(out)]
    first = _run(*small)
    assert first.returncode == 0, first.stderr[-2000:]
    progress = [line for line in first.stderr.splitlines() if line.startswith("[progress] ")]
    # The steps followed, over all lines: a fast step can finish (and leave the live line) before
    # the first look at the others.
    followed = {name for line in progress for name in re.findall(r"(\w+) \d+/16", line)}
    assert {"magpie_generator", "instruct_reward_model"} <= followed, progress
    # Every step followed ends on a line of its own at 100%, once.
    ended = [m[1] for line in progress if (m := re.fullmatch(r"\[progress\] (\w+) 16/16 \(100%\) .* in \S+", line))]
    assert sorted(ended) == sorted(followed), progress
    assert "INFO" not in first.stderr
    quiet = _run(*small, "--quiet")
    assert quiet.returncode == 0, quiet.stderr[-2000:]
    assert "[progress]" not in quiet.stderr
    assert "magpie_generator 16/16" in next(l for l in quiet.stdout.splitlines() if "stored results reused" in l)


def test_an_unknown_tag_task_is_one_line_before_any_model(tmp_path):
    out = tmp_path / "out"
    result = _run("--tagging.tasks", "difficulty,safety", "--output-dir", str(out), timeout=120)
    assert result.returncode == 2, result.stderr[-2000:]
    assert result.stderr.strip().splitlines() == [
        "error: --tagging.tasks: unknown tag task safety; use some of: difficulty, quality, classification"
    ]
    assert not out.exists()


def test_help_shows_the_recipes_own_defaults():
    """A section whose recipe sets another default (300K queries to curate, not the DPO recipe's 100K) shows it."""
    result = subprocess.run([sys.executable, RECIPE, "--help"], capture_output=True, text=True, timeout=120,
                            cwd=REPO_ROOT)
    assert result.returncode == 0
    flat = " ".join(result.stdout.split())
    assert ("--generator.num_instructions VALUE, --num-instructions VALUE How many queries to write. "
            "(default: 300000)") in flat
