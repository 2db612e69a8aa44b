"""Curation steps over ``magpie_dl.curation``: tag instructions, find near-duplicates, select a subset."""

# No `from __future__ import annotations`: distilabel reads the evaluated `StepInput` hint.
import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, ClassVar, Dict, List, Optional, Union

from distilabel.mixins.runtime_parameters import RuntimeParameter
from distilabel.steps import Step, StepInput
from pydantic import BeforeValidator, Field, PrivateAttr

from magpie_dl.backends.base import CompletionLLM, PromptInput, SamplingSpec
from magpie_dl.backends.chat_llm import refuse_chat_llm_for_tagging
from magpie_dl.curation.embeddings import PACKAGED_MINILM
from magpie_dl.config.sections import DedupSection, TaggingConfig
from magpie_dl.curation.selection import SelectionConfig
from magpie_dl.curation.tagging import (
    SAFETY_TASK, TAG_TASKS, TagTask, TagTaskNames, parse_guard_output, record_answer, taggable, unguarded_columns,
    untagged_columns,
)
from magpie_dl.steps.base import ModelStep, RecipeGlobalStep, RecipeStep
from magpie_dl.config.sections import setting
from magpie_dl.steps.base import OptionalRuntimeParameter

if TYPE_CHECKING:
    from distilabel.typing import StepColumns, StepOutput

    from magpie_dl.curation.embeddings import SentenceEmbedder
    from magpie_dl.curation.language import LanguageDetector

TASK_COLUMNS = {task: list(TAG_TASKS[task].columns.values()) for task in TAG_TASKS}

_log = logging.getLogger("magpie_dl.config.curation")


class InstructionTagging(ModelStep):
    """Tags instructions with an LLM judge (``llm``): difficulty, input quality, task category.

    One greedy prompt per (instruction, task), its answer held to the task's JSON schema. A failed
    answer leaves the task's columns ``None`` and is recorded in ``tagging_errors``; the row is kept.

    Runtime parameters:
        - `max_tokens`: answer budget per task.

    Input columns:
        - instruction (str); rows whose optional instruction_status is not ``ok`` are skipped.

    Output columns:
        - each of ``tasks``' columns (``TAG_TASKS``), tagging_model (str), tagging_errors (list[dict]).
    """

    role: ClassVar[str] = "tagging"  # replicated by scaleout.tagging_replicas

    llm: Annotated[CompletionLLM, BeforeValidator(refuse_chat_llm_for_tagging)]
    tasks: TagTaskNames = setting(TaggingConfig, "tasks")
    # The recipe's section sets its own floor; a standalone step may ask for less.
    max_tokens: RuntimeParameter[int] = setting(TaggingConfig, "max_tokens", ge=1)


    @property
    def inputs(self) -> "StepColumns":
        return ["instruction"]

    @property
    def outputs(self) -> "StepColumns":
        return [col for task in self.tasks for col in TASK_COLUMNS[task]] + ["tagging_model", "tagging_errors"]

    def prompt(self, task: TagTask, instruction: str) -> PromptInput:
        """The judge prompt for one (task, instruction), encoded as text so that turn markup in the
        instruction cannot end the judge's user turn."""
        return self.llm.chat_prompt([{"role": "user", "content": task.render(instruction)}])

    def process(self, inputs: StepInput) -> "StepOutput":  # type: ignore[override]
        self.report_started()
        tasks = [TAG_TASKS[name] for name in self.tasks]
        jobs = [(r, row, task) for r, row in enumerate(inputs) if taggable(row) for task in tasks]
        answers = self.complete(
            [self.prompt(task, row["instruction"]) for _, row, task in jobs],
            [SamplingSpec(n=1, temperature=0.0, max_tokens=self.max_tokens, seed=0, json_schema=task.schema)
             for _, _, task in jobs],
            self.row_tally(len(inputs), [r for r, _, _ in jobs]),  # a row counts once all its tasks are judged
        )
        for row in inputs:
            row.update(untagged_columns(tasks, self.llm.provenance_name))
        parsed = [record_answer(row, task.name, task.parse, answer) for (_, row, task), [answer] in zip(jobs, answers)]
        failures = parsed.count(False)
        if failures:
            self._logger.info(f"{failures} of {len(jobs)} judge answers could not be parsed (see tagging_errors)")
        yield inputs


class SafetyTagging(ModelStep):
    """A guard model's (``llm``, e.g. Llama Guard) verdict on each instruction, through its own chat template.

    Runtime parameters:
        - `max_tokens`: answer budget.

    Input columns:
        - instruction (str); optional instruction_status, tagging_errors.

    Output columns:
        - safety (``safe`` | ``unsafe`` | None), safety_categories, safety_model, tagging_errors.
    """

    role: ClassVar[str] = "tagging"  # replicated by scaleout.tagging_replicas
    # The `tagging` section's max_tokens is the judge's: a guard's verdict is a few tokens.
    config_names = {**ModelStep.config_names, "max_tokens": None}

    llm: Annotated[CompletionLLM, BeforeValidator(refuse_chat_llm_for_tagging)]
    max_tokens: RuntimeParameter[int] = Field(default=16, description="Answer budget.")

    @property
    def inputs(self) -> "StepColumns":
        return ["instruction"]

    @property
    def outputs(self) -> "StepColumns":
        return ["safety", "safety_categories", "safety_model", "tagging_errors"]

    def prompt(self, instruction: str) -> PromptInput:
        """The guard's prompt for one instruction (encoded as text, see ``chat_prompt``)."""
        return self.llm.chat_prompt([{"role": "user", "content": instruction}])

    def process(self, inputs: StepInput) -> "StepOutput":  # type: ignore[override]
        self.report_started()
        todo = [row for row in inputs if taggable(row)]
        spec = SamplingSpec(n=1, temperature=0.0, max_tokens=self.max_tokens, seed=0)
        answers = self.complete(
            [self.prompt(row["instruction"]) for row in todo], [spec] * len(todo), self.row_tally(len(inputs), range(len(todo)))
        )
        for row in inputs:
            row.update(unguarded_columns(self.llm.provenance_name, row.get("tagging_errors")))
        for row, [answer] in zip(todo, answers):
            record_answer(row, SAFETY_TASK, parse_guard_output, answer)
        yield inputs


class LanguageTagging(RecipeStep):
    """Adds the ISO 639-1 language (``EN``, ``ZH``, ...) of each instruction, via lingua.

    Runtime parameters:
        - `languages`: codes to choose among (fewer is faster); `low_accuracy`: lingua's fast mode.

    Input columns:
        - instruction (str)

    Output columns:
        - language (str | None when undetectable)
    """


    languages: OptionalRuntimeParameter[List[str]] = setting(TaggingConfig, "languages")
    low_accuracy: RuntimeParameter[bool] = Field(default=False, description="lingua's low-accuracy mode.")

    _detector: Optional["LanguageDetector"] = PrivateAttr(default=None)

    def load(self) -> None:
        super().load()
        from magpie_dl.curation.language import LanguageDetector

        self._detector = LanguageDetector(self.languages, low_accuracy=self.low_accuracy)

    @property
    def inputs(self) -> "StepColumns":
        return ["instruction"]

    @property
    def outputs(self) -> "StepColumns":
        return ["language"]

    def process(self, inputs: StepInput) -> "StepOutput":  # type: ignore[override]
        for row, lang in zip(inputs, self._detector.detect([r.get("instruction") or "" for r in inputs])):
            row["language"] = lang
        yield inputs


class InstructReward(RecipeStep):
    """Lifts the reward of an instruction's single response into Magpie's ``instruct_reward``
    (``MultiResponseGeneration`` and ``RewardScoring`` before it, as in ``pipelines/magpie_instructions.py``).

    Input columns:
        - instruct_ratings (list[float | None]): the reward step's ``ratings``, mapped aside.

    Output columns:
        - instruct_reward (float | None)
    """

    @property
    def inputs(self) -> "StepColumns":
        return ["instruct_ratings"]

    @property
    def outputs(self) -> "StepColumns":
        return ["instruct_reward"]

    def process(self, inputs: StepInput) -> "StepOutput":  # type: ignore[override]
        for row in inputs:
            ratings = row.get("instruct_ratings") or []
            row["instruct_reward"] = ratings[0] if ratings else None
        yield inputs


class InstructionEmbedding(Step):
    """Sentence embedding of each instruction (masked mean pooling, L2-normalised).

    Runtime parameters:
        - `embedding_batch_size`: texts per forward pass (``model`` and ``device`` are fields).

    Input columns:
        - instruction (str)

    Output columns:
        - embedding (list[float])
    """

    # Standalone: the packaged encoder on the CPU, which works offline anywhere.
    model: str = setting(DedupSection, "embedding_model", default=PACKAGED_MINILM)
    device: str = setting(DedupSection, "device", default="cpu")
    embedding_batch_size: RuntimeParameter[int] = setting(DedupSection, "embedding_batch_size")

    _embedder: Optional["SentenceEmbedder"] = PrivateAttr(default=None)

    def load(self) -> None:
        super().load()
        from magpie_dl.curation.embeddings import SentenceEmbedder

        self._embedder = SentenceEmbedder(self.model, batch_size=self.embedding_batch_size, device=self.device)

    def unload(self) -> None:
        self._embedder = None
        super().unload()

    @property
    def inputs(self) -> "StepColumns":
        return ["instruction"]

    @property
    def outputs(self) -> "StepColumns":
        return ["embedding"]

    def process(self, inputs: StepInput) -> "StepOutput":  # type: ignore[override]
        vectors = self._embedder.encode([r.get("instruction") or "" for r in inputs])
        for row, vec in zip(inputs, vectors):
            row["embedding"] = vec.tolist()
        yield inputs


class NearDuplicateTagging(RecipeGlobalStep):
    """Tags near-duplicate instructions over all rows at once (see ``magpie_dl.curation.dedup``).

    Nothing is dropped: ``min_similar_uuid`` names each group's survivor, whatever the input order.
    Rows without an ``embedding`` are embedded here (``embedding_model``, ``device``), which keeps a
    list of Python floats per row out of distilabel's queues (~7 GB for 300K x 768).

    Runtime parameters:
        - `threshold`, `k`, `method`, `index_min_rows`, `nprobe`, `embedding_batch_size`: the search.
        - `keep_embedding`: pass an incoming ``embedding`` column on (it is large).

    Input columns:
        - uuid (str), instruction (str); optional embedding (list[float])

    Output columns:
        - min_neighbor_distance (float | None), repeat_count (int), min_similar_uuid (str | None)
    """

    # Standalone: the packaged encoder on the CPU, which works offline anywhere.
    embedding_model: str = setting(DedupSection, "embedding_model", default=PACKAGED_MINILM)
    device: str = setting(DedupSection, "device", default="cpu")
    threshold: RuntimeParameter[float] = setting(DedupSection, "threshold")
    k: RuntimeParameter[int] = setting(DedupSection, "k")
    method: RuntimeParameter[str] = setting(DedupSection, "method")
    index_min_rows: RuntimeParameter[int] = setting(DedupSection, "index_min_rows")
    nprobe: RuntimeParameter[int] = setting(DedupSection, "nprobe")
    embedding_batch_size: RuntimeParameter[int] = setting(DedupSection, "embedding_batch_size")
    keep_embedding: RuntimeParameter[bool] = Field(default=False, description="Keep the embedding column.")
    stand_in: bool = Field(False, description="Embed with magpie_dl's instant stand-in (scale runs and tests: "
                           "never real embeddings).")

    @property
    def inputs(self) -> "StepColumns":
        return {"uuid": True, "instruction": True, "embedding": False}

    @property
    def outputs(self) -> "StepColumns":
        return ["min_neighbor_distance", "repeat_count", "min_similar_uuid"]

    def embeddings(self, rows: List[Dict[str, Any]]) -> Any:
        """The rows' vectors: their ``embedding`` column if every row has one, else encoded here."""
        import numpy as np

        if rows and all(r.get("embedding") is not None for r in rows):
            return np.asarray([r["embedding"] for r in rows], dtype=np.float32)
        if self.stand_in:
            from magpie_dl.backends.standin import StandInEmbedder

            return StandInEmbedder().encode([r.get("instruction") or "" for r in rows])
        from magpie_dl.curation.embeddings import SentenceEmbedder

        embedder = SentenceEmbedder(self.embedding_model, batch_size=self.embedding_batch_size, device=self.device)
        return embedder.encode([r.get("instruction") or "" for r in rows])

    def process(self, inputs: StepInput) -> "StepOutput":  # type: ignore[override]
        from magpie_dl.curation.dedup import DedupConfig, find_near_duplicates

        config = DedupConfig(
            threshold=self.threshold, k=self.k, method=self.method,  # type: ignore[arg-type]
            index_min_rows=self.index_min_rows, nprobe=self.nprobe,
        )
        result = find_near_duplicates(self.embeddings(inputs), [r["uuid"] for r in inputs], config)
        self._logger.info(f"near-duplicates: {json.dumps(result.stats)}")
        for i, row in enumerate(inputs):
            row.update(result.row(i))
            if not self.keep_embedding:
                row.pop("embedding", None)
        yield inputs


class CuratedSelection(RecipeGlobalStep):
    """Keeps rows that pass the checks and are not near-duplicates, then samples per task category
    to ``target_size`` (``magpie_dl.curation.selection``); its report is logged, and written as JSON.

    Runtime parameters:
        - the checks and sampling of ``SelectionConfig`` (a threshold of None is off).
        - `keep_rejected`: pass rejected rows on too; `report_path`: where to write the report.

    Input columns:
        - uuid, task_category, and what the enabled checks read; optional instruction_status
          (a row not ``ok`` is not selected), tagging_errors (counted in the report).

    Output columns:
        - selection_reason (str | None for selected rows)
    """

    # Declared by magpie_dl.curation.selection.SelectionConfig; a recipe's `selection` section sets them.
    min_difficulty: OptionalRuntimeParameter[str] = setting(SelectionConfig, "min_difficulty")
    min_input_quality: OptionalRuntimeParameter[str] = setting(SelectionConfig, "min_input_quality")
    min_instruct_reward: OptionalRuntimeParameter[float] = setting(SelectionConfig, "min_instruct_reward")
    remove_duplicates: RuntimeParameter[bool] = setting(SelectionConfig, "remove_duplicates")
    languages: OptionalRuntimeParameter[List[str]] = setting(SelectionConfig, "languages")
    require_safe: RuntimeParameter[bool] = setting(SelectionConfig, "require_safe")
    require_category: RuntimeParameter[bool] = setting(SelectionConfig, "require_category")
    target_size: OptionalRuntimeParameter[int] = setting(SelectionConfig, "target_size")
    category_mix: RuntimeParameter[Union[str, Dict[str, float]]] = setting(SelectionConfig, "category_mix")
    seed: RuntimeParameter[int] = setting(SelectionConfig, "seed")
    keep_rejected: RuntimeParameter[bool] = Field(default=False, description="Also output rejected rows.")
    report_path: OptionalRuntimeParameter[str] = Field(default=None, description="Write the selection report here (JSON).")

    @property
    def inputs(self) -> "StepColumns":
        cols = ["uuid", "task_category"]
        checks = {
            "difficulty": self.min_difficulty, "input_quality": self.min_input_quality,
            "instruct_reward": self.min_instruct_reward, "min_similar_uuid": self.remove_duplicates or None,
            "language": self.languages,
            "safety": self.require_safe or None,
        }
        # Read when the rows have them: the generator's verdict on each query, the report's judge failures.
        optional = {"instruction_status": False, "tagging_errors": False}
        return {col: True for col in cols + [col for col, on in checks.items() if on is not None]} | optional

    @property
    def outputs(self) -> "StepColumns":
        return ["selection_reason"]

    def config(self) -> SelectionConfig:
        """The library's config from this step's fields (declared by it, same names)."""
        return SelectionConfig(**{name: getattr(self, name) for name in SelectionConfig.model_fields})

    def process(self, inputs: StepInput) -> "StepOutput":  # type: ignore[override]
        from magpie_dl.curation.selection import select_rows

        reasons, report = select_rows(inputs, self.config())
        report_dict = report.to_dict()
        self._logger.info("selection:\n" + report.format())
        if self.report_path:
            path = Path(self.report_path)
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(report_dict, indent=2) + "\n")
        out = []
        for row, reason in zip(inputs, reasons):
            row["selection_reason"] = reason
            if reason is None or self.keep_rejected:
                out.append(row)
        yield out
