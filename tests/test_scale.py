"""The scale tier: both recipes' real graph (distilabel pipeline, result store, export, card,
report) on a few thousand rows, with the instant stand-in at every model boundary
(``--preset scale``, magpie_dl.backends.standin), which puts every rare outcome a model can
cause at random positions over the whole run, well after the first chunk the run writes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
import yaml

from magpie_dl.backends.standin import DUPLICATE_QUERIES, FRAGMENT_QUERY, STAND_IN, UNFINISHED_QUERY
from magpie_dl.config.dpo import REPO_ROOT
from magpie_dl.recipe.queries import row_uuid
from magpie_dl.recipe.reasons import GATING_TOKENS_MISSING, KEPT
from tests.recipe_cli import run_recipe_cli

ROWS = 2000
BATCH = 100  # rows per batch of the generation steps
FIRST_CHUNK = 50  # rows per batch into pairing, the leaf: distilabel writes its rows 50 at a time
LATE = 2 * BATCH  # an outcome counts as late from this row index on
SMALL = ("--generator.max_tokens", "64", "--generator.batch_size", str(BATCH))


def _dpo_args(out: Path, *more: str) -> list[str]:
    return ["--preset", "scale", *SMALL, "--responses.max_tokens", "256", "--responses.batch_size", str(BATCH),
            "--reward.input_batch_size", str(FIRST_CHUNK), "--quiet", "--output-dir", str(out), *more]


def _all_rows(out: Path) -> list[dict]:
    from datasets import load_from_disk

    pairs = load_from_disk(str(out / "dataset"))
    rows = [row | {"pair_status": KEPT} for split in pairs.values() for row in split]
    return rows + list(load_from_disk(str(out / "left_out")))


def _run_index(rows: list[dict], out: Path, count: int) -> dict[str, int]:
    """Each row's position in the run (its query index), from its uuid."""
    seed = yaml.safe_load((out / "config.yaml").read_text())["seed"]
    generator = rows[0]["gen_input_configs"]["input_generator"]
    return {row_uuid(generator, seed, i): i for i in range(count)}


@pytest.fixture(scope="module")
def dpo_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("dpo_scale") / "out"
    started = time.perf_counter()
    done = run_recipe_cli(*_dpo_args(out, "--num-instructions", str(ROWS)))
    assert done.returncode == 0, done.stderr[-3000:]
    rows = _all_rows(out)
    return out, rows, _run_index(rows, out, ROWS), time.perf_counter() - started


# Each outcome the stand-in injects, told from a row.
DPO_OUTCOMES = {
    "query_empty": lambda r: r["pair_status"] == "instruction_empty" and r["raw_instruction"] == "",
    "query_error": lambda r: r["gen_input_configs"]["finish_reason"] == "error",
    "query_truncated": lambda r: r["pair_status"] == "instruction_truncated",
    "query_duplicate": lambda r: r["pair_status"] == "instruction_duplicate",
    "query_fragment": lambda r: r["pair_status"] == "instruction_fragment" and r["raw_instruction"] == FRAGMENT_QUERY,
    "query_unfinished": lambda r: r["pair_status"] == "instruction_unfinished",
    "query_too_short": lambda r: r["pair_status"] == "instruction_too_short",
    "query_no_letters": lambda r: r["pair_status"] == "instruction_no_letters",
    "response_empty": lambda r: "empty" in (r["response_status"] or []),
    "response_error": lambda r: "error" in (r["finish_reasons"] or []),
    "response_truncated": lambda r: "length" in (r["finish_reasons"] or []),
    "fewer_than_two_usable": lambda r: r["pair_status"] == "fewer_than_two_usable",
    "score_nan": lambda r: any((e or "").startswith("non_finite_score:nan") for e in r["rating_errors"] or []),
    "gating_tokens_missing": lambda r: GATING_TOKENS_MISSING in (r["rating_errors"] or []),
    "all_scores_tied": lambda r: r["pair_status"] == "all_scores_tied",
    "some_scores_tied": lambda r: r["pair_status"] == KEPT and _some_tied(r),
}


def _some_tied(row: dict) -> bool:
    scores = [s["score"] for s, ok in zip(row["rewards_armorm"], row["response_status"]) if ok == "ok"]
    return len(set(scores)) < len(scores) and len(set(scores)) > 1


def test_the_dpo_recipe_at_scale_meets_every_outcome_late_and_publishes(dpo_run):
    out, rows, index, _ = dpo_run
    assert len(rows) == ROWS and set(index) == {r["uuid"] for r in rows}
    for outcome, seen in DPO_OUTCOMES.items():
        late = [index[r["uuid"]] for r in rows if seen(r) and index[r["uuid"]] >= LATE]
        assert len(late) >= 3, f"{outcome}: {len(late)} rows at or after row {LATE}"
    # The case of the issue: the leaf's first chunk holds no cut query (its cleaning_actions are
    # all [], list<null> to a chunk alone), later ones do; distilabel's own buffer fails on it.
    cut = sorted(index[r["uuid"]] for r in rows if DPO_OUTCOMES["query_fragment"](r))
    assert cut and cut[0] >= FIRST_CHUNK, cut[:3]

    summary = json.loads((out / "summary.json").read_text())
    left = Counter(r["pair_status"] for r in rows if r["pair_status"] != KEPT)
    assert summary["left_out"] == dict(left)
    assert summary["pairs_kept"] == sum(r["pair_status"] == KEPT for r in rows)
    assert summary["response_status"] == dict(Counter(s for r in rows for s in r["response_status"] or []))
    # The counts are those of what was injected (told from the injected texts and finish reasons).
    raw = Counter(r["raw_instruction"] for r in rows)
    assert left["instruction_fragment"] == raw[FRAGMENT_QUERY]
    assert left["instruction_unfinished"] == raw[UNFINISHED_QUERY.strip()] + raw[UNFINISHED_QUERY]
    assert left["instruction_too_short"] == raw["Hi"]
    assert left["instruction_duplicate"] >= sum(raw[q] - 1 for q in DUPLICATE_QUERIES if raw[q])
    assert left["instruction_truncated"] == sum(r["gen_input_configs"]["finish_reason"] == "length" for r in rows)
    finish = Counter(f for r in rows for f in r["finish_reasons"] or [])
    assert summary["response_status"]["failed"] == finish["error"]
    # A response cut at max_tokens counts as truncated whatever its score.
    errors = Counter((e or "").split(":")[0] for r in rows
                     for e, f in zip(r["rating_errors"] or [], r["finish_reasons"] or []) if f != "length")
    assert summary["response_status"]["no_score"] == errors["non_finite_score"] + errors[GATING_TOKENS_MISSING]

    # Never passes for real data: the rows, the store keys and the card name the stand-in.
    assert rows[0]["gen_input_configs"]["input_generator"].startswith(STAND_IN)
    assert rows[0]["gen_response_configs"]["output_generator"].startswith(STAND_IN)
    assert rows[0]["gen_response_configs"]["engine"] == "standin"
    assert "instant stand-in" in (out / "README.md").read_text() and (out / "report.html").is_file()


@pytest.fixture(scope="module")
def curation_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("curation_scale") / "out"
    # Loose on the judge's tags: rows whose judge answer did not parse are selected too (their
    # tag columns None, their tagging_errors filled), as a user's own set may hold.
    loose = out.parent / "loose.yaml"
    loose.write_text(yaml.safe_dump({"selection": {"min_difficulty": None, "min_input_quality": None,
                                                   "require_category": False}}))
    # The recipe's own command, its global steps recording the columns they receive (tests/global_step_probe.py).
    received = out.parent / "global_step_columns.jsonl"
    done = subprocess.run(
        [sys.executable, "-m", "tests.global_step_probe", "--preset", "scale", *SMALL,
         "--generator.num_instructions", str(ROWS), "--tagging.batch_size", str(BATCH),
         "--instruct_reward.max_tokens", "128", "--instruct_reward.batch_size", str(BATCH),
         "--reward.input_batch_size", str(BATCH), "--selection.target_size", "300", "--config", str(loose), "--quiet",
         "--output-dir", str(out)],
        capture_output=True, text=True, timeout=600, cwd=REPO_ROOT,
        env={**os.environ, "GLOBAL_STEP_COLUMNS": str(received)},
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return out


def test_the_curation_recipe_at_scale_meets_every_outcome_late_and_publishes(curation_run):
    from datasets import load_from_disk

    out = curation_run
    selected = list(load_from_disk(str(out / "dataset")))
    dropped = [json.loads(line) for line in (out / "left_out.jsonl").read_text().splitlines()]
    rows = selected + dropped
    index = _run_index(rows, out, ROWS)
    assert len(rows) == ROWS and set(index) == {r["uuid"] for r in rows}
    outcomes = {
        "judge_unparsable": lambda r: any("parse" in (e.get("error") or "") or "JSON" in (e.get("error") or "")
                                          for e in r.get("tagging_errors") or []),
        "near_duplicate": lambda r: r.get("selection_reason") == "near_duplicate",
        "instruction_unusable": lambda r: r.get("selection_reason") == "instruction_unusable",
        "instruct_reward_missing": lambda r: r.get("selection_reason") == "instruct_reward_missing",
        "query_duplicate": lambda r: r["instruction_status"] == "duplicate",
        "query_fragment": lambda r: r["instruction_status"] == "fragment",
    }
    for outcome, seen in outcomes.items():
        late = [index[r["uuid"]] for r in rows if seen(r) and index[r["uuid"]] >= LATE]
        assert late, f"{outcome}: no row at or after row {LATE}"
    report = json.loads((out / "selection.json").read_text())
    assert report["selected_rows"] == len(selected) > 0
    assert report["dropped"] == dict(Counter(r["selection_reason"] for r in dropped))
    assert rows[0]["tagging_model"].startswith(STAND_IN)


# What the global steps read (NearDuplicateTagging; CuratedSelection at the checks curation_run's
# loose config leaves on: no difficulty, no input quality), and what the first adds for the second.
READ_BY_GLOBAL_STEPS = {"uuid", "instruction", "task_category", "instruct_reward", "instruction_status",
                        "tagging_errors"}
ADDED_BY_NEAR_DUPLICATES = {"min_neighbor_distance", "repeat_count", "min_similar_uuid"}


def test_the_global_steps_get_only_the_columns_they_read_and_the_release_every_column(curation_run):
    """All rows at once, as a global step gets them, were whole rows of 10-13 KB at full size
    (17 GB at 300K queries): they hold only what the steps read, and the release still has the rest."""
    from datasets import load_from_disk

    out = curation_run
    received = {r["step"]: r for r in map(json.loads, (out.parent / "global_step_columns.jsonl").read_text().splitlines())}
    assert received["near_duplicates"]["rows"] == received["selection"]["rows"] == ROWS
    assert set(received["near_duplicates"]["columns"]) == READ_BY_GLOBAL_STEPS
    assert set(received["selection"]["columns"]) == READ_BY_GLOBAL_STEPS | ADDED_BY_NEAR_DUPLICATES

    selected = load_from_disk(str(out / "dataset"))
    dropped = [json.loads(line) for line in (out / "left_out.jsonl").read_text().splitlines()]
    wide = {"gen_input_configs", "raw_instruction", "cleaning_actions", "difficulty", "input_quality", "intent",
            "knowledge", "quality_explanation", "other_task_category", "tagging_model", "instruct_response",
            "instruct_response_configs", "instruct_ratings", "language"}
    every = READ_BY_GLOBAL_STEPS | ADDED_BY_NEAR_DUPLICATES | wide
    assert every <= set(selected.column_names) and every | {"selection_reason"} <= set(dropped[0])
    # Set aside and joined back, row by row: each row's own instruct response and configs.
    for row in [*selected.select(range(20)), *dropped[:20]]:
        assert row["gen_input_configs"]["input_generator"].startswith(STAND_IN)
        configs = row["instruct_response_configs"]
        assert configs is None or row["instruction"] in configs["prompt"], row["uuid"]


def test_a_curated_set_runs_through_the_dpo_recipe_with_its_columns(curation_run, tmp_path):
    """A user's curated set, sorted as a user may sort it (rows whose judge answers all parsed
    first): its ``tagging_errors`` are ``[]`` in the DPO run's first chunks and filled later,
    and every column it brings reads back as it was (distilabel's own buffer fails on it)."""
    from datasets import load_from_disk

    curated = sorted(load_from_disk(str(curation_run / "dataset")), key=lambda r: (len(r["tagging_errors"]), r["uuid"]))
    assert not curated[0]["tagging_errors"] and curated[-1]["tagging_errors"]
    source = tmp_path / "curated.jsonl"
    source.write_text("".join(json.dumps(row) + "\n" for row in curated))
    out = tmp_path / "dpo"
    done = run_recipe_cli(*_dpo_args(out, "--instructions", str(source)))
    assert done.returncode == 0, done.stderr[-3000:]
    rows = {r["uuid"]: r for r in _all_rows(out)}
    assert len(rows) == len(curated)
    for column in ("difficulty", "other_task_category", "instruct_reward", "min_similar_uuid"):
        assert {r["uuid"]: r[column] for r in rows.values()} == {r["uuid"]: r[column] for r in curated}, column


def test_a_stop_at_scale_is_one_line_and_the_rerun_publishes(tmp_path):
    """SIGTERM once the leaf has written its first chunk: exit 143 and one line; the rerun finishes."""
    out = tmp_path / "out"
    args = _dpo_args(out, "--num-instructions", "400", "--backend.standin_seconds_per_prompt", "0.01")
    run = subprocess.Popen([sys.executable, str(REPO_ROOT / "pipelines" / "dpo_100k.py"), *args],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO_ROOT)
    deadline = time.monotonic() + 300
    while not list((out / "cache").glob("distilabel/**/steps_outputs/pairing/*.parquet")):
        assert run.poll() is None and time.monotonic() < deadline, "the run ended before its first chunk"
        time.sleep(0.1)
    run.send_signal(signal.SIGTERM)
    _, stderr = run.communicate(timeout=120)
    assert run.returncode == 128 + signal.SIGTERM, stderr[-3000:]
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "stopped by SIGTERM" in lines[0] and "Traceback" not in stderr, stderr[-3000:]
    assert not (out / "dataset").exists()

    rerun = run_recipe_cli(*args)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert json.loads((out / "summary.json").read_text())["instructions"] == 400
