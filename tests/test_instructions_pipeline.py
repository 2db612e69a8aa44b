"""End to end: `pipelines/magpie_instructions.py --preset smoke`, then the DPO recipe on its output."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from magpie_dl.config.dpo import REPO_ROOT
from magpie_dl.release.export import TAG_COLUMNS


def run(script: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(REPO_ROOT / "pipelines" / script), *args],
        capture_output=True, text=True, timeout=1200, cwd=REPO_ROOT,
    )


@pytest.mark.slow
def test_curated_instructions_feed_the_dpo_recipe(tiny_models, tmp_path) -> None:
    curated = tmp_path / "instructions"
    result = run("magpie_instructions.py", "--preset", "smoke", "--output-dir", str(curated),
                 "--generator.num_instructions", "24", "--generator.batch_size", "24",
                 "--selection.target_size", "12")
    assert result.returncode == 0, result.stderr[-4000:]
    report = json.loads((curated / "selection.json").read_text())
    selected = [json.loads(line) for line in (curated / "instructions.jsonl").read_text().splitlines()]
    left_out = [json.loads(line) for line in (curated / "left_out.jsonl").read_text().splitlines()]
    # Every generated row is accounted for: selected, or left out with its reason.
    assert report["input_rows"] == 24 == len(selected) + len(left_out)
    # The target is met unless fewer rows were eligible: how many are depends on what the tiny
    # model wrote on this machine (unusable or near-duplicate queries), not on the code.
    eligible = sum(report["category_mix_eligible"].values())
    assert report["selected_rows"] == len(selected) == min(12, eligible) > 0
    assert sum(report["dropped"].values()) == len(left_out)
    assert all(r["selection_reason"] in report["dropped"] for r in left_out)
    # The tiny judge's unparsable answers are counted, with the raw output kept on the row.
    failures = sum(report["tagging_failures"].values())
    assert failures == sum(len(r["tagging_errors"]) for r in selected + left_out)
    assert all(e["raw_output"] is not None for r in selected for e in r["tagging_errors"])
    for row in selected:
        assert set(TAG_COLUMNS) <= set(row)
        assert row["language"] is not None and isinstance(row["instruct_reward"], float)
        assert row["min_similar_uuid"] in (None, row["uuid"]) and "embedding" not in row

    dpo = tmp_path / "dpo"
    result = run("dpo_100k.py", "--preset", "smoke", "--instructions", str(curated / "dataset"),
                 "--output-dir", str(dpo))
    assert result.returncode == 0, result.stderr[-4000:]
    from datasets import load_from_disk

    rows = [r for split in load_from_disk(str(dpo / "dataset")).values() for r in split]
    by_uuid = {r["uuid"]: r for r in selected}
    assert rows and all(r["uuid"] in by_uuid for r in rows)
    for row in rows:
        assert {c: row[c] for c in ("language", "instruct_reward", "repeat_count", "min_similar_uuid")} == {
            c: by_uuid[row["uuid"]][c] for c in ("language", "instruct_reward", "repeat_count", "min_similar_uuid")
        }
