"""The curated set as written by the curation recipe, read back as the DPO recipe's input."""

from __future__ import annotations

import json

import pytest

from magpie_dl.config.curation import InstructionsConfig, PRESETS, build_parser, resolve
from magpie_dl.release.curation import write_outputs
from magpie_dl.release.export import TAG_COLUMNS, released_row
from magpie_dl.run.inputs import load_instructions


def curated_rows() -> list[dict]:
    tags = {
        "intent": "The user wants to sort", "knowledge": "lists", "difficulty": "medium",
        "input_quality": "good", "quality_explanation": "Clear.", "task_category": "Coding & Debugging",
        "other_task_category": ["Reasoning"], "language": "EN", "instruct_reward": 1.25,
        "min_neighbor_distance": 0.3, "repeat_count": 0, "min_similar_uuid": None,
    }
    return [
        {"uuid": "a", "instruction": "How do I sort a list in Python?", "gen_input_configs": {"seed": 1},
         "instruction_status": "ok", "selection_reason": None, "tagging_errors": [], **tags},
        {"uuid": "b", "instruction": "How can I sort a list in Python?", "gen_input_configs": {"seed": 2},
         "instruction_status": "ok", "selection_reason": "near_duplicate", "tagging_errors": [],
         **{**tags, "repeat_count": 1, "min_similar_uuid": "a"}},
    ]


@pytest.mark.parametrize("source", ["dataset", "instructions.jsonl"])
def test_curated_set_feeds_the_dpo_recipe_with_every_tag(tmp_path, source) -> None:
    assert write_outputs(curated_rows(), tmp_path) == (1, 1)
    [row] = load_instructions(str(tmp_path / source))
    assert row["uuid"] == "a" and row["instruction_status"] == "ok"
    out = released_row({**row, "gen_response_configs": {}, "generations": ["x", "y"], "ratings": [1.0, 0.0]})
    assert {c: out[c] for c in TAG_COLUMNS} == {c: curated_rows()[0][c] for c in TAG_COLUMNS}
    [left] = [json.loads(line) for line in (tmp_path / "left_out.jsonl").read_text().splitlines()]
    assert left["uuid"] == "b" and left["selection_reason"] == "near_duplicate"


def test_rerun_replaces_outputs_instead_of_appending(tmp_path) -> None:
    write_outputs(curated_rows(), tmp_path)
    write_outputs(curated_rows(), tmp_path)  # the reference opened its output in append mode
    assert len((tmp_path / "instructions.jsonl").read_text().splitlines()) == 1


def test_config_presets_and_flags() -> None:
    full = resolve(build_parser("x").parse_args([]))
    assert isinstance(full, InstructionsConfig)
    assert (full.selection.min_difficulty, full.selection.min_input_quality, full.selection.min_instruct_reward) == (
        "medium", "good", -5.0)
    assert full.dedup.threshold == 0.05 and full.dedup.embedding_model == "sentence-transformers/all-mpnet-base-v2"
    smoke = resolve(build_parser("x").parse_args(
        ["--preset", "smoke", "--selection.target_size", "10", "--selection.min_difficulty", "hard",
         "--selection.category_mix", "{Math: 2, Reasoning: 1}", "--output-dir", "out/x"]))
    assert smoke.selection.target_size == 10 and smoke.selection.min_difficulty == "hard"
    assert smoke.selection.category_mix == {"Math": 2, "Reasoning": 1}
    assert str(smoke.output_dir) == "out/x" and smoke.generator.num_instructions == PRESETS["smoke"]["generator"]["num_instructions"]
    cfg = smoke.selection.to_selection_config(seed=3)
    assert cfg.target_size == 10 and cfg.seed == 3
    from magpie_dl.config.dpo import ConfigError

    with pytest.raises(ConfigError, match="min_difficulty"):
        resolve(build_parser("x").parse_args(["--selection.min_difficulty", "medium-rare"]))


def test_full_curation_recipe_uses_the_references_instruct_reward_model_and_mix(capsys) -> None:
    from magpie_dl.run.recipes import MAGPIE_INSTRUCTIONS
    from magpie_dl.run.driver import main_for
    from magpie_dl.steps.curation import CuratedSelection

    assert main_for(MAGPIE_INSTRUCTIONS, _no_build, "x", ["--print-config"]) == 0
    import yaml

    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["reward"]["model"] == "sfairXC/FsfairX-LLaMA3-RM-v0.1"
    assert printed["selection"]["min_instruct_reward"] == -5.0
    assert printed["selection"]["category_mix"] == "reference"
    assert CuratedSelection().category_mix == "reference"
    # Another flag in the reward section keeps the reference's model.
    cfg = resolve(build_parser("x").parse_args(["--reward.max_length", "2048"]))
    assert cfg.reward.model == "sfairXC/FsfairX-LLaMA3-RM-v0.1" and cfg.reward.max_length == 2048


def _no_build(cfg):  # a recipe whose config is refused never gets this far
    raise AssertionError("the pipeline was built")


def test_another_instruct_reward_model_needs_its_own_threshold(capsys) -> None:
    from magpie_dl.config.dpo import ConfigError
    from magpie_dl.run.recipes import MAGPIE_INSTRUCTIONS
    from magpie_dl.run.driver import main_for

    armorm = ["--reward.model", "RLHFlow/ArmoRM-Llama3-8B-v0.1"]
    with pytest.raises(ConfigError, match=r"min_instruct_reward.*scale"):
        resolve(build_parser("x").parse_args(armorm))
    # One clear line, exit 2, before any model loads (the pipeline is never built).
    assert main_for(MAGPIE_INSTRUCTIONS, _no_build, "x", armorm + ["--output-dir", "out/never"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--selection.min_instruct_reward" in err and "FsfairX" in err
    # Set explicitly (a value on that model's scale, or null), or no instruct reward at all: accepted.
    assert resolve(build_parser("x").parse_args(armorm + ["--selection.min_instruct_reward", "0.05"])
                   ).selection.min_instruct_reward == 0.05
    assert resolve(build_parser("x").parse_args(armorm + ["--selection.min_instruct_reward", "null"])
                   ).selection.min_instruct_reward is None
    assert resolve(build_parser("x").parse_args(armorm + ["--no-instruct_reward.enabled"])).reward.model == armorm[1]
    # The smoke preset's tiny reward model comes with its threshold.
    assert resolve(build_parser("x").parse_args(["--preset", "smoke"])).selection.min_instruct_reward == -5.0
