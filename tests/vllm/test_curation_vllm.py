"""Judge tagging through a real vLLM engine: structured outputs constrain the tiny model."""

from __future__ import annotations

from distilabel.steps import Step

from magpie_dl.curation.tagging import DIFFICULTY_LEVELS, QUALITY_LEVELS, TASK_CATEGORIES
from magpie_dl.steps.curation import InstructionTagging
from magpie_dl.steps.base import ModelRun

INSTRUCTIONS = [
    "How do I sort a list of tuples by the second element in Python?",
    "Write a short poem about autumn leaves.",
    "What is the derivative of x^3 + 2x?",
]


def test_tagging_with_structured_outputs(engine) -> None:
    step = InstructionTagging(llm=engine, max_tokens=320)
    Step.load(step)  # the session's engine is already loaded: do not start a second one
    step._run = ModelRun(step.name, step.cache_dir, step.CACHE_VERSION)  # the step's store and counts alone
    rows = next(step.process([{"instruction": text} for text in INSTRUCTIONS]))
    parsed = 0
    for row in rows:
        failed = {e["task"]: e for e in row["tagging_errors"]}
        if "difficulty" not in failed:
            assert row["difficulty"] in DIFFICULTY_LEVELS and isinstance(row["intent"], str)
            parsed += 1
        if "quality" not in failed:
            assert row["input_quality"] in QUALITY_LEVELS
            parsed += 1
        if "classification" not in failed:
            assert row["task_category"] in TASK_CATEGORIES
            assert set(row["other_task_category"]) <= set(TASK_CATEGORIES)
            parsed += 1
        # The grammar keeps the output JSON; a miss can only be a budget cut, kept and counted.
        assert all(e["finish_reason"] == "length" and e["raw_output"] for e in failed.values())
    # Seen with the tiny model: difficulty always parses; long quality explanations and
    # classification near the 1024-token context sometimes hit the budget.
    assert parsed >= len(INSTRUCTIONS), [r["tagging_errors"] for r in rows]
