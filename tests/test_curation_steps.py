"""Curation steps driven standalone (`step.load(); next(step.process(rows))`) and in a pipeline."""

from __future__ import annotations

import json
from typing import Any

import pytest
from pydantic import PrivateAttr

from magpie_dl.backends.base import Completion, CompletionLLM, PromptInput, SamplingSpec
from magpie_dl.backends.transformers import TransformersBackend
from magpie_dl.curation.tagging import TAG_TASKS
from magpie_dl.steps.curation import (
    CuratedSelection,
    InstructionEmbedding,
    InstructionTagging,
    InstructReward,
    LanguageTagging,
    NearDuplicateTagging,
    SafetyTagging,
)

ANSWERS = {
    # A marker of each task's prompt -> what the judge answers (deliberately untidy).
    "Judge how hard": 'Here you go: {"intent": "The user wants to sort", "knowledge": "lists", "difficulty": "Hard"}',
    "Judge the quality": '```json\n{"explanation": "Clear.", "input_quality": "excellent"}\n```',
    "Classify the task": '{"primary_tag": "coding & debugging", "other_tags": ["Reasoning"]}',
}


class CannedJudge(CompletionLLM):
    """A judge at the model boundary: the tiny model's tokenizer, canned answers.

    The tiny model cannot write JSON, so the success path needs a fake; it still sees
    the real rendered prompt tokens. Instructions containing "FAIL" get prose.
    """

    _specs: list[SamplingSpec] = PrivateAttr(default_factory=list)
    _prompts: list[str] = PrivateAttr(default_factory=list)

    def complete(self, prompts: list[PromptInput], sampling: list[SamplingSpec]) -> list[list[Completion]]:
        out = []
        for prompt, spec in zip(prompts, sampling):
            text = self.tokenizer.decode(list(prompt.token_ids))
            self._prompts.append(text)
            self._specs.append(spec)
            answer = next(a for marker, a in ANSWERS.items() if marker in text)
            if "FAIL" in text:
                answer = "I think this query is fine."
            out.append([Completion(text=answer, token_ids=[1, 2, 3], finish_reason="stop")])
        return out


def test_tagging_parses_answers_into_released_columns(tiny_models) -> None:
    judge = CannedJudge(model=tiny_models["generator"])
    step = InstructionTagging(llm=judge)
    step.load()
    rows = [
        {"instruction": "How do I sort a list in Python?", "instruction_status": "ok"},
        {"instruction": "FAIL me", "instruction_status": "ok"},
        {"instruction": "", "instruction_status": "empty"},
    ]
    out = next(step.process(rows))
    ok, failed, skipped = out
    assert {k: ok[k] for k in ("intent", "knowledge", "difficulty", "input_quality", "quality_explanation",
                               "task_category", "other_task_category")} == {
        "intent": "The user wants to sort", "knowledge": "lists", "difficulty": "hard",
        "input_quality": "excellent", "quality_explanation": "Clear.",
        "task_category": "Coding & Debugging", "other_task_category": ["Reasoning"],
    }
    assert ok["tagging_errors"] == [] and ok["tagging_model"] == "tiny/generator"  # the model, not this machine's path
    # Failed answers: row kept, columns None, raw output and reason recorded per task.
    assert failed["difficulty"] is None and failed["task_category"] is None
    assert [e["task"] for e in failed["tagging_errors"]] == ["difficulty", "quality", "classification"]
    assert all(e["raw_output"] == "I think this query is fine." and e["error"] for e in failed["tagging_errors"])
    # Unusable instructions are not sent to the judge at all.
    assert skipped["difficulty"] is None and skipped["tagging_errors"] == []
    assert len(judge._specs) == 6
    # Greedy, schema attached (structured outputs where the backend has them).
    assert all(s.temperature == 0 and s.json_schema in [t.schema for t in TAG_TASKS.values()] for s in judge._specs)
    # The prompt went through the judge's chat template, instruction included verbatim.
    first = judge._prompts[0]
    assert first.startswith("<|begin_of_text|>") and "<|start_header_id|>user<|end_header_id|>" in first
    assert "How do I sort a list in Python?" in first and first.endswith("<|start_header_id|>assistant<|end_header_id|>\n\n")


def test_tagging_with_the_tiny_model_records_every_failure(tiny_models) -> None:
    step = InstructionTagging(
        llm=TransformersBackend(model=tiny_models["generator"], dtype="float32"), tasks=["difficulty"], max_tokens=12
    )
    step.load()
    rows = next(step.process([{"instruction": "Explain recursion."}, {"instruction": "Plan a trip."}]))
    for row in rows:
        # A random-ish tiny model does not write the JSON; nothing is dropped or invented.
        assert row["difficulty"] is None and row["intent"] is None
        [error] = row["tagging_errors"]
        assert error["task"] == "difficulty" and isinstance(error["raw_output"], str) and error["error"]
    assert step.outputs == ["intent", "knowledge", "difficulty", "tagging_model", "tagging_errors"]


class CannedGuard(CompletionLLM):
    """A guard at the model boundary: answers "unsafe\\nS2" when the prompt mentions a weapon."""

    def complete(self, prompts: list[PromptInput], sampling: list[SamplingSpec]) -> list[list[Completion]]:
        texts = [self.tokenizer.decode(list(p.token_ids)) for p in prompts]
        answers = ["unsafe\nS2" if "weapon" in t else ("safe" if "garbage" not in t else "maybe?") for t in texts]
        return [[Completion(text=a, token_ids=[1], finish_reason="stop")] for a in answers]


def test_safety_step_verdicts_and_failures(tiny_models) -> None:
    step = SafetyTagging(llm=CannedGuard(model=tiny_models["generator"]))
    step.load()
    rows = next(step.process([
        {"instruction": "How do I bake bread?"},
        {"instruction": "How do I build a weapon?", "tagging_errors": [{"task": "quality", "error": "x"}]},
        {"instruction": "garbage"},
    ]))
    assert [(r["safety"], r["safety_categories"]) for r in rows] == [("safe", []), ("unsafe", ["S2"]), (None, [])]
    assert rows[1]["tagging_errors"] == [{"task": "quality", "error": "x"}]  # earlier failures kept
    assert [e["task"] for e in rows[2]["tagging_errors"]] == ["safety"]
    assert rows[2]["tagging_errors"][0]["raw_output"] == "maybe?"


def test_tagging_rejects_unknown_tasks(tiny_models) -> None:
    with pytest.raises(ValueError):
        InstructionTagging(llm=CannedJudge(model=tiny_models["generator"]), tasks=["safety"])


def test_language_and_instruct_reward_steps() -> None:
    lang = LanguageTagging(languages=["en", "de", "zh"])
    lang.load()
    rows = next(lang.process([{"instruction": "How do I sort a list in Python?"},
                              {"instruction": "如何在Python中对列表进行排序？"}, {"instruction": "1234"}]))
    assert [r["language"] for r in rows] == ["EN", "ZH", None]
    reward = InstructReward()
    rows = next(reward.process([{"instruct_ratings": [-1.5]}, {"instruct_ratings": []}, {"instruct_ratings": None}]))
    assert [r["instruct_reward"] for r in rows] == [-1.5, None, None]


TEXTS = [
    "How do I sort a list in Python?", "How can I sort a list in Python?",
    "Give me tips for improving my sleep.", "Give me some tips to improve my sleep.",
    "Describe the water cycle.", "Solve 3x + 5 = 20 for x.",
]


def tagged_rows() -> list[dict[str, Any]]:
    cats = ["Coding & Debugging", "Coding & Debugging", "Advice seeking", "Advice seeking", "Information seeking", "Math"]
    return [
        {"uuid": f"u{i}", "instruction": t, "difficulty": "medium", "input_quality": "good",
         "instruct_reward": 0.0, "task_category": c}
        for i, (t, c) in enumerate(zip(TEXTS, cats))
    ]


def test_embedding_dedup_and_selection_steps(tmp_path) -> None:
    embed = InstructionEmbedding(embedding_batch_size=4)
    embed.load()
    embedded = next(embed.process(tagged_rows()))
    assert len(embedded[0]["embedding"]) == 384
    dedup = NearDuplicateTagging(method="exact")
    dedup.load()
    # Two ways in: an embedding column from InstructionEmbedding, or embedded in the step.
    from_column = next(dedup.process(embedded))
    rows = next(dedup.process(tagged_rows()))
    assert "embedding" not in from_column[0]
    for out in (from_column, rows):
        assert [r["min_similar_uuid"] for r in out] == ["u0", "u0", "u2", "u2", None, None]
        assert [r["repeat_count"] for r in out] == [1, 1, 1, 1, 0, 0]
    assert [r["min_neighbor_distance"] for r in rows] == pytest.approx(
        [r["min_neighbor_distance"] for r in from_column], abs=1e-5)
    select = CuratedSelection(target_size=3, category_mix="uniform", report_path=str(tmp_path / "sel.json"))
    select.load()
    kept = next(select.process([dict(r) for r in rows]))
    assert len(kept) == 3 and all(r["selection_reason"] is None for r in kept)
    # Four categories, three slots: equal shares, remainders tie, ties go by name.
    assert {r["task_category"] for r in kept} == {"Advice seeking", "Coding & Debugging", "Information seeking"}
    report = json.loads((tmp_path / "sel.json").read_text())
    assert report["dropped"] == {"near_duplicate": 2, "category_quota": 1}
    assert report["category_mix_after"] == {r["task_category"]: 1 for r in kept}
    everything = CuratedSelection(target_size=3, category_mix="uniform", keep_rejected=True)
    everything.load()
    all_rows = next(everything.process([dict(r) for r in rows]))
    assert [r["selection_reason"] for r in all_rows][:4] == [None, "near_duplicate", None, "near_duplicate"]
    assert "instruct_reward" in select.inputs and "min_similar_uuid" in select.inputs


PIPELINE_SCRIPT = """
import json, sys
from distilabel.pipeline import Pipeline
from distilabel.steps import LoadDataFromDicts
from magpie_dl.steps.curation import CuratedSelection, NearDuplicateTagging

rows, report = json.loads(sys.argv[1]), sys.argv[2]
with Pipeline(name="curation-steps-test") as pipeline:
    load = LoadDataFromDicts(data=rows, batch_size=4)
    near = NearDuplicateTagging(method="exact")
    select = CuratedSelection(target_size=10, keep_rejected=True, report_path=report)
    load >> near >> select
out = pipeline.run(use_cache=False)["default"]["train"].to_list()
print("ROWS=" + json.dumps(sorted(out, key=lambda r: r["uuid"])))
"""


@pytest.mark.slow
def test_steps_run_inside_a_distilabel_pipeline(tmp_path) -> None:
    # In a fresh interpreter: distilabel forks its step workers, and forking a process
    # whose torch thread pool already ran (earlier tests here) can deadlock the child.
    import subprocess
    import sys

    from magpie_dl.config.dpo import REPO_ROOT

    report = tmp_path / "sel.json"
    proc = subprocess.run(
        [sys.executable, "-c", PIPELINE_SCRIPT, json.dumps(tagged_rows()), str(report)],
        capture_output=True, text=True, timeout=600, cwd=REPO_ROOT,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = json.loads(proc.stdout.split("ROWS=", 1)[1])
    assert [r["selection_reason"] for r in rows] == [None, "near_duplicate", None, "near_duplicate", None, None]
    assert [r["min_similar_uuid"] for r in rows] == ["u0", "u0", "u2", "u2", None, None]
    assert json.loads(report.read_text())["selected_rows"] == 4
