"""The whole smoke recipe on tiny models: schema, invariants, counts, pipeline.yaml reload."""

from __future__ import annotations

import json

import pytest

pytestmark = pytest.mark.slow

RELEASED_COLUMNS = [
    "uuid", "instruction", "gen_input_configs", "input_length", "responses", "gen_response_configs",
    "rewards_armorm", "chosen", "rejected",
]


@pytest.fixture(scope="module")
def dataset(smoke_output):
    from datasets import load_from_disk

    return load_from_disk(str(smoke_output / "dataset"))


def test_splits_and_released_columns(dataset):
    assert set(dataset) == {"train", "test"}
    for split in dataset.values():
        assert split.column_names[: len(RELEASED_COLUMNS)] == RELEASED_COLUMNS
    total = len(dataset["train"]) + len(dataset["test"])
    assert total >= 64
    share = total * 0.02  # no test row when 2% is under one row
    assert len(dataset["test"]) == (round(share) if share >= 1 else 0)


def test_pair_invariants(dataset):
    for split in dataset.values():
        for row in split:
            assert len(row["responses"]) == 5 and len(row["rewards_armorm"]) == 5
            assert row["chosen"][0] == {"role": "user", "content": row["instruction"]}
            assert row["rejected"][0] == {"role": "user", "content": row["instruction"]}
            assert row["chosen"][1]["content"] != row["rejected"][1]["content"] or (
                row["chosen_index"] != row["rejected_index"]
            )
            assert row["chosen_index"] != row["rejected_index"]
            scores = [r["score"] for r in row["rewards_armorm"]]
            assert scores[row["chosen_index"]] == row["chosen_score"]
            assert row["chosen_score"] > row["rejected_score"]
            assert row["chosen"][1]["content"] == row["responses"][row["chosen_index"]]
            assert row["finish_reasons"][row["chosen_index"]] == "stop"
            assert row["gen_response_configs"]["temperature"] == 0.8
            assert row["gen_response_configs"]["prompt"].count(row["instruction"]) >= 1
            assert row["input_length"] == len(row["instruction"])


def test_summary_accounts_for_every_row(smoke_output, dataset):
    from datasets import load_from_disk

    summary = json.loads((smoke_output / "summary.json").read_text())
    left_out = load_from_disk(str(smoke_output / "left_out"))
    kept = len(dataset["train"]) + len(dataset["test"])
    assert summary["instructions"] == 96
    assert summary["pairs_kept"] == kept
    assert sum(summary["left_out"].values()) == len(left_out) == 96 - kept
    if len(left_out):
        assert all(status != "kept" for status in left_out["pair_status"])
    uuids = list(dataset["train"]["uuid"]) + list(dataset["test"]["uuid"]) + list(left_out["uuid"] if len(left_out) else [])
    assert len(set(uuids)) == 96  # every instruction is somewhere, exactly once


def test_pipeline_yaml_reloads_our_steps(smoke_output):
    from distilabel.pipeline import Pipeline

    pipeline = Pipeline.from_yaml(smoke_output / "pipeline.yaml")
    steps = {name: pipeline.dag.get_step(name)["step"] for name in pipeline.dag}
    assert type(steps["magpie_generator"]).__name__ == "MagpieGenerator"
    assert type(steps["magpie_generator"].llm).__name__ == "TransformersBackend"
    assert steps["responses"].num_generations == 5
    assert type(steps["pairing"]).__name__ == "BestWorstPairing"


def test_cli_prints_where_the_dataset_is_and_a_summary(tiny_models, tmp_path):
    from recipe_cli import run_recipe_cli

    out = tmp_path / "tiny-run"
    result = run_recipe_cli("--preset", "smoke", "--output-dir", str(out), "--num-instructions", "6",
                            "--responses.num_generations", "3")
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"dataset: {out / 'dataset'}" in result.stdout
    assert "instructions: 6" in result.stdout and "pairs kept:" in result.stdout and "rows left out:" in result.stdout


def test_the_run_leaves_no_copy_of_its_rows_in_the_datasets_cache(smoke_output):
    cache = smoke_output.parent / "hf-datasets"
    assert cache.is_dir()  # distilabel did load its output through it
    assert not list(cache.rglob("*.arrow"))
