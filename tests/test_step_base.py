"""The one base of model-backed steps (``magpie_dl.steps.base.ModelStep``): every such step joins its
pipeline, and its model is loaded, counted and freed in one place."""

from __future__ import annotations

from typing import ClassVar

from distilabel.pipeline import Pipeline

from magpie_dl.backends.base import CallStream, Completion, CompletionLLM, PromptInput, SamplingSpec
from magpie_dl.backends.transformers import TransformersBackend
from magpie_dl.steps.curation import InstructionTagging, SafetyTagging
from magpie_dl.steps.magpie import MagpieGenerator, MagpieQueries
from magpie_dl.steps.responses import MultiResponseGeneration
from magpie_dl.steps.reward import RewardScoring


class RecordingStream(CallStream):
    def close(self) -> None:
        RecordingGuard.events.append("close stream")
        super().close()


class RecordingGuard(CompletionLLM):
    """A guard at the model boundary (the tiny tokenizer, no weights) that notes its life cycle."""

    events: ClassVar[list[str]] = []

    def load(self) -> None:
        super().load()
        self.events.append("load")

    def unload(self) -> None:
        self.events.append("unload")
        super().unload()

    def complete(self, prompts: list[PromptInput], sampling: list[SamplingSpec]) -> list[list[Completion]]:
        return [[Completion("safe", [1, 2], "stop")] for _ in prompts]

    def open_stream(self) -> RecordingStream:
        return RecordingStream(self)


def test_every_model_step_joins_its_pipeline(tiny_models):
    # The base is listed before distilabel's class; pydantic's generated model_post_init
    # on it would hide distilabel's, which names the step and adds it to the pipeline.
    llm = TransformersBackend(model=tiny_models["generator"])
    with Pipeline(name="llm-steps") as pipeline:
        steps = [
            MagpieGenerator(llm=llm, num_rows=2), MagpieQueries(llm=llm), MultiResponseGeneration(llm=llm),
            InstructionTagging(llm=llm), SafetyTagging(llm=llm), RewardScoring(model=tiny_models["reward"]),
        ]
    assert all(step.pipeline is pipeline for step in steps)
    assert list(pipeline.dag) == [step.name for step in steps] and all(step.name for step in steps)


def test_load_opens_the_store_and_the_model_process_counts_and_unload_frees_once(tiny_models, tmp_path):
    RecordingGuard.events = []
    step = SafetyTagging(llm=RecordingGuard(model=tiny_models["generator"]), cache_dir=str(tmp_path), name="guard")
    step.load()
    assert RecordingGuard.events == ["load"] and step.store is not None
    rows = next(step.process([{"instruction": "Hello there"}, {"instruction": "x", "instruction_status": "empty"}]))
    assert [row["safety"] for row in rows] == ["safe", None]
    assert step.store.progress() == {"guard": (2, 2)}  # rows, tokens
    step.unload()
    step.unload()  # already freed: nothing is unloaded twice
    # The batch ran on a stream of its own, closed with the batch; the model went once, at unload.
    assert RecordingGuard.events == ["load", "close stream", "unload"]


def test_a_streaming_step_closes_its_stream_before_its_model_goes(tiny_models):
    RecordingGuard.events = []
    step = MultiResponseGeneration(llm=RecordingGuard(model=tiny_models["generator"]), num_generations=1)
    step.load()
    step.open_batches()
    step.unload()
    assert RecordingGuard.events == ["load", "close stream", "unload"]


def test_the_reward_step_loads_and_frees_its_scorer(tiny_models):
    step = RewardScoring(model=tiny_models["reward"])
    step.load()
    scorer = step._scorer
    assert scorer is not None and scorer.model is not None
    step.unload()
    assert scorer.model is None
