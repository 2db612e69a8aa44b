"""pipeline.yaml files reload, those written before the steps moved under magpie_dl included."""

from __future__ import annotations

from pathlib import Path

from magpie_dl.run.pipeline_file import current_module, load_pipeline

DATA = Path(__file__).parent / "data"


def test_a_pipeline_file_of_the_earlier_layout_reloads_with_every_step():
    written = (DATA / "pipeline_before_layout.yaml").read_text()
    assert "module: steps.responses" in written  # the old module names, as that release wrote them
    pipeline = load_pipeline(DATA / "pipeline_before_layout.yaml")
    steps = {name: pipeline.dag.get_step(name)["step"] for name in pipeline.dag}
    assert {name: type(step).__module__ for name, step in steps.items()} == {
        "magpie_generator": "magpie_dl.steps.magpie", "responses": "magpie_dl.steps.responses",
        "reward": "magpie_dl.steps.reward", "pairing": "magpie_dl.steps.pairing",
    }
    assert steps["responses"].num_generations == 5 and steps["responses"].max_tokens == 64


def test_a_pipeline_file_of_this_release_reloads_as_written(tmp_path):
    pipeline = load_pipeline(DATA / "pipeline_before_layout.yaml")
    pipeline.save(tmp_path / "pipeline.yaml", format="yaml")
    assert "module: steps." not in (tmp_path / "pipeline.yaml").read_text()
    again = load_pipeline(tmp_path / "pipeline.yaml")
    assert sorted(again.dag) == sorted(pipeline.dag)


def test_only_the_moved_packages_are_renamed():
    assert current_module("steps.magpie") == "magpie_dl.steps.magpie"
    assert current_module("pipelines") == "magpie_dl.pipelines"
    assert current_module("magpie_dl.backends.transformers") == "magpie_dl.backends.transformers"
    assert current_module("stepsaside.x") == "stepsaside.x"
