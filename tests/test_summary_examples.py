"""The end-of-run summary: real example pairs, and one line when the scores come from a stand-in."""

from __future__ import annotations

from datasets import load_from_disk

from magpie_dl.config.dpo import TINY_DIR
from magpie_dl.recipe.provenance import model_label, stand_in_reward_note
from magpie_dl.release.report import example_lines


def test_two_example_pairs_from_the_published_dataset(smoke_output):
    lines = example_lines(smoke_output, k=2)
    assert len(lines) == 6 and lines[0].startswith("example 1 (margin ") and lines[3].startswith("example 2 ")
    train = load_from_disk(str(smoke_output / "dataset"))["train"]
    firsts = {" ".join(row["instruction"].split())[:40] for row in train}
    assert lines[0].split("): ", 1)[1][:40] in firsts
    assert all(len(line) < 200 and "\n" not in line for line in lines)


def test_stand_in_reward_model_is_said_in_the_summary_and_the_card(smoke_output, tiny_models):
    assert stand_in_reward_note(tiny_models["reward"]) is not None
    assert stand_in_reward_note("RLHFlow/ArmoRM-Llama3-8B-v0.1") is None
    card = (smoke_output / "README.md").read_text()
    assert "no real reward model can be had offline" in card


def test_rows_name_models_not_local_paths(tmp_path):
    assert model_label("RLHFlow/ArmoRM-Llama3-8B-v0.1") == "RLHFlow/ArmoRM-Llama3-8B-v0.1"
    assert model_label(str(TINY_DIR / "generator")) == "tiny/generator"
    named = tmp_path / "some" / "model"
    named.mkdir(parents=True)
    (named / "magpie_dl_model.json").write_text('{"model": "org/Real-Model"}')
    assert model_label(str(named)) == "org/Real-Model"
