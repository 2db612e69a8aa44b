"""One base per role: a new step is one base and its own few lines, with no class order to remember."""

from __future__ import annotations

import inspect
from typing import Any

from distilabel.steps import GeneratorStep, GlobalStep, Step

from magpie_dl.backends.base import CallStream, Completion, CompletionLLM, PromptInput, SamplingSpec
from magpie_dl.config.sections import ResponsesConfig
from magpie_dl.steps import argilla, base, curation, instructions, magpie, pairing, responses, reward

STEP_MODULES = (argilla, curation, instructions, magpie, pairing, responses, reward)
DISTILABEL_ROLES = (Step, GlobalStep, GeneratorStep)


def _steps() -> list[type]:
    return [
        obj for module in STEP_MODULES for _, obj in inspect.getmembers(module, inspect.isclass)
        if obj.__module__ == module.__name__ and issubclass(obj, DISTILABEL_ROLES)
    ]


def _ours(cls: type) -> bool:
    return cls.__module__.startswith("magpie_dl.")


def _behaviour(cls: type) -> set[str]:
    """The methods (not fields) a class defines itself."""
    return {name for name, value in vars(cls).items() if not name.startswith("__")
            and (callable(value) or isinstance(value, (property, classmethod, staticmethod)))} - {"model_post_init"}


def test_every_step_stands_on_one_base_of_ours_or_distilabels():
    """A step lists one base (ours, or distilabel's Step / GlobalStep / GeneratorStep) plus, at
    most, classes that only declare fields; our bases stand straight on distilabel's class."""
    steps = _steps()
    assert len(steps) >= 15
    ours = {obj for _, obj in inspect.getmembers(base, inspect.isclass)
            if obj.__module__ == base.__name__ and issubclass(obj, DISTILABEL_ROLES)}
    for step in steps:
        roles = [cls for cls in step.__bases__ if issubclass(cls, DISTILABEL_ROLES)]
        assert len(roles) == 1 and (roles[0] in ours or roles[0] in DISTILABEL_ROLES), (step, step.__bases__)
        others = [cls for cls in step.__bases__ if cls is not roles[0]]
        assert all(not _behaviour(cls) for cls in others), (step, others)  # fields only: no order to keep
    for cls in ours:  # each base's first base is ours or distilabel's, down to distilabel's
        parent = cls.__bases__[0]
        assert parent in ours or parent in DISTILABEL_ROLES, cls
        assert cls.__mro__.index(parent) == 1, cls


class Echo(CompletionLLM):
    """A model boundary stand-in: completes every prompt with its own token count."""

    def load(self) -> None:
        super().load()

    def complete(self, prompts: list[PromptInput], sampling: list[SamplingSpec]) -> list[list[Completion]]:
        return [[Completion(f"{len(p.token_ids)} tokens", [1], "stop")] for p in prompts]

    def open_stream(self) -> CallStream:
        return CallStream(self)


class Shout(base.StreamingStep):
    """A whole streamed step: its model, two hooks, its columns."""

    llm: CompletionLLM

    def completion_requests(self, rows: list[dict[str, Any]]) -> tuple[Any, list[PromptInput], list[SamplingSpec]]:
        prompts = [self.llm.chat_prompt([{"role": "user", "content": row["text"]}]) for row in rows]
        return None, prompts, [SamplingSpec(n=1, max_tokens=4)] * len(rows)

    def rows_from_completions(self, rows: list[dict[str, Any]], context: Any, completions: list[list[Completion]]) -> list[dict[str, Any]]:
        return [{**row, "shout": done[0].text.upper()} for row, done in zip(rows, completions)]


def test_a_new_streamed_step_is_one_base_and_two_hooks(tiny_models, tmp_path):
    step = Shout(llm=Echo(model=tiny_models["generator"]), cache_dir=str(tmp_path), name="shout")
    step.load()
    rows = next(step.process([{"text": "hello"}, {"text": "hi there"}]))
    assert [row["text"] for row in rows] == ["hello", "hi there"]
    assert all(row["shout"].endswith(" TOKENS") for row in rows)
    assert step.store is not None and step.store.progress() == {"shout": (2, 2)}  # rows, tokens
    step.unload()
    assert Shout.from_config(ResponsesConfig(batch_size=7), llm=Echo(model="m"), name="s2").input_batch_size == 7  # a section's batch_size is the step's input_batch_size


def test_the_local_models_a_preset_needs_come_from_its_data_not_its_name():
    from magpie_dl.config import curation as curation_config, dpo
    from magpie_dl.run.recipes import local_models_named

    tiny, smol = dpo.TINY_DIR, dpo.SMOLLM2_DIR
    needs = {name: local_models_named(preset) for name, preset in dpo.PRESETS.items()}
    assert needs == {"full": [], "smoke": [tiny], "demo": [tiny, smol], "scale": [smol]}
    assert {name: local_models_named(p) for name, p in curation_config.PRESETS.items()} == {
        "full": [], "smoke": [tiny], "scale": [smol]}
    assert local_models_named({"generator": {"model": str(smol / "x")}, "reward": {"model": "org/m"}}) == [smol]


def test_the_response_step_records_the_engine_its_llm_is():
    from magpie_dl.backends.standin import StandInBackend
    from magpie_dl.backends.transformers import TransformersBackend

    assert responses.MultiResponseGeneration(llm=TransformersBackend(model="m"), name="a").engine == "transformers"
    assert responses.MultiResponseGeneration(llm=StandInBackend(model="m"), name="b").engine == "standin"
    assert responses.MultiResponseGeneration(llm=StandInBackend(model="m"), name="c", engine="x").engine == "x"


def test_the_recipes_rules_import_no_engine_not_even_for_types():
    """recipe/ <- backends/ only: the circle backends.base <-> recipe.provenance (a type-only
    import back) is gone, so the rules read as what they are, independent of any engine."""
    import ast
    from pathlib import Path

    recipe = Path(__file__).resolve().parent.parent / "magpie_dl" / "recipe"
    found = [
        (path.name, node.module) for path in sorted(recipe.glob("*.py")) for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("magpie_dl.backends")
    ]
    assert found == []
