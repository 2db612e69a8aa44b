"""The curation recipe's run flags: ``--dry-run`` (plan only) and ``--fresh`` (stored results dropped)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from magpie_dl.config import REPO_ROOT

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
    assert "  judge_tags: 2 x 0" in lines  # the Ray placement, computed without a cluster
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
