"""Our steps in a distilabel user's own pipeline: stock tasks on our backends, stock LLMs in our
steps, distilabel's looser columns, and the README's script run from outside the checkout."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from magpie_dl.backends.chat_llm import LLMNotSupportedError
from magpie_dl.backends.transformers import TransformersBackend

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def tiny_backend(tiny_models):
    llm = TransformersBackend(model=tiny_models["generator"])
    llm.load()
    return llm


def test_generate_stops_at_the_end_of_the_turn(tiny_backend):
    """What a stock task's generate() samples with: the family's end-of-turn ids, not max tokens only."""
    tok = tiny_backend.tokenizer
    spec = tiny_backend.chat_sampling(max_new_tokens=4)
    assert tok.convert_tokens_to_ids("<|eot_id|>") in spec.stop_token_ids
    assert tok.eos_token_id in spec.stop_token_ids
    assert spec.max_tokens == 4


def test_stock_text_generation_on_smollm2_ends_with_the_turn(smol_dir):
    """SmolLM2 under distilabel's TextGeneration: the answer stops at <|im_end|> (it ran into the next turn)."""
    from distilabel.steps.tasks import TextGeneration

    question = "What is the capital of France?"
    llm = TransformersBackend(model=str(smol_dir), generation_kwargs={"temperature": 0.0, "max_new_tokens": 64})
    task = TextGeneration(llm=llm)
    task.load()
    [row] = next(task.process([{"instruction": question}]))
    answer = row["generation"]
    assert "Paris" in answer and "\nuser\n" not in answer and "system\n" not in answer
    spec = llm.chat_sampling(temperature=0.0, max_new_tokens=64)
    assert llm.tokenizer.convert_tokens_to_ids("<|im_end|>") in spec.stop_token_ids
    [[done]] = llm.complete([llm.chat_prompt([{"role": "user", "content": question}])], [spec])
    assert done.finish_reason == "stop" and done.text == answer
    [stats] = [v for k, v in row["distilabel_metadata"].items() if k.startswith("statistics")]
    assert stats["output_tokens"] == done.num_tokens and done.num_tokens < 64


def test_generation_kwargs_cap_a_stock_task(tiny_backend, tiny_models):
    """generation_kwargs.max_new_tokens reaches generate() under a stock task."""
    from distilabel.steps.tasks import TextGeneration

    task = TextGeneration(llm=TransformersBackend(model=tiny_models["generator"],
                                                  generation_kwargs={"max_new_tokens": 4, "seed": 1}))
    task.load()
    rows = next(task.process([{"instruction": f"Tell me a long story about {x}."} for x in ("cats", "ships")]))
    for row in rows:
        [stats] = [v for k, v in row["distilabel_metadata"].items() if k.startswith("statistics")]
        assert stats["output_tokens"] <= 4


def test_our_steps_neither_show_nor_ignore_generation_kwargs(tiny_models):
    from magpie_dl.steps.responses import MultiResponseGeneration

    step = MultiResponseGeneration(llm=TransformersBackend(model=tiny_models["generator"]))
    assert "generation_kwargs" not in step.runtime_parameters_names["llm"]
    [llm_info] = [i for i in step.get_runtime_parameters_info() if i["name"] == "llm"]
    assert "generation_kwargs" not in {p["name"] for p in llm_info["runtime_parameters_info"]}
    step.llm.set_runtime_parameters({"generation_kwargs": {"max_new_tokens": 4}})
    with pytest.raises(LLMNotSupportedError) as refused:
        step.load()
    message = str(refused.value)
    assert "\n" not in message and "max_tokens" in message and "max_new_tokens" in message


@pytest.fixture(scope="module")
def stock_llm(tiny_models):
    pytest.importorskip("distilabel.models.llms")
    from distilabel.models.llms import TransformersLLM

    return TransformersLLM(model=tiny_models["generator"])


def test_a_stock_llm_writes_responses_for_rows_of_instruction_alone(stock_llm):
    from magpie_dl.recipe.queries import instruction_uuid
    from magpie_dl.steps.responses import MultiResponseGeneration

    step = MultiResponseGeneration(llm=stock_llm, num_generations=2, max_tokens=8)
    step.load()
    try:
        rows = next(step.process([{"instruction": "Name a colour."}, {"instruction": "Name a fruit."}]))
    finally:
        step.unload()
    assert [r["uuid"] for r in rows] == [instruction_uuid("Name a colour."), instruction_uuid("Name a fruit.")]
    for row in rows:
        assert len(row["generations"]) == 2 and all(isinstance(g, str) for g in row["generations"])
        assert row["finish_reasons"] == [None, None]  # TransformersLLM does not say why it stopped
        assert row["gen_response_configs"]["engine"] == "distilabel"
        assert not row["gen_response_configs"]["output_generator"].startswith("/")  # never a local path


@pytest.mark.parametrize("module, names", [("magpie", ("MagpieGenerator", "MagpieQueries")),
                                           ("curation", ("InstructionTagging", "SafetyTagging"))])
def test_steps_that_need_our_backends_refuse_a_stock_llm_in_one_line(stock_llm, module, names):
    import importlib

    steps = importlib.import_module(f"magpie_dl.steps.{module}")
    for name in names:
        with pytest.raises(LLMNotSupportedError) as refused:
            getattr(steps, name)(llm=stock_llm)
        message = str(refused.value)
        assert "\n" not in message and "TransformersBackend" in message and "TransformersLLM" in message


def _scored(generations, ratings, **extra):
    return {"instruction": "Say hi.", "generations": generations, "ratings": ratings, **extra}


def test_pairing_without_finish_reasons_and_with_unscored_responses():
    """A stock TextGeneration gives no finish reasons: unknown, not truncated; a None rating (what
    RewardScoring writes for an unscorable response) only leaves that response out."""
    from magpie_dl.steps.pairing import BestWorstPairing

    step = BestWorstPairing()
    step.load()
    kept, none_scored = next(step.process([_scored(["a", "b", "c"], [0.1, 0.9, 0.5]),
                                           _scored(["a", "", "c"], [0.2, None, 0.7])]))
    assert kept["pair_status"] == "kept" and kept["chosen"][1]["content"] == "b" and kept["rejected"][1]["content"] == "a"
    assert none_scored["pair_status"] == "kept" and none_scored["chosen"][1]["content"] == "c"
    assert "finish_reasons" not in step.inputs or step.inputs["finish_reasons"] is False


def test_readme_script_runs_outside_the_checkout(tmp_path, tiny_models):
    """The README's reuse section is examples/own_pipeline.py, and it runs from anywhere."""
    script = (REPO / "examples" / "own_pipeline.py").read_text()
    readme = (REPO / "README.md").read_text()
    section = readme.split("## Using the steps in your own pipeline", 1)[1].split("\n## ", 1)[0]
    assert script.strip() in section  # one script, shown whole
    copy = tmp_path / "own_pipeline.py"
    shutil.copy(REPO / "examples" / "own_pipeline.py", copy)
    env = {**os.environ, "PYTHONPATH": str(REPO), "DISTILABEL_CACHE_DIR": str(tmp_path / "cache")}
    done = subprocess.run([sys.executable, str(copy), str(Path(tiny_models["generator"]).parent)], cwd=tmp_path,
                          env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    lines = done.stdout.strip().splitlines()
    statuses = [line.split()[0] for line in lines if line.endswith((".", "?"))]
    assert len(statuses) == 3
    assert lines[-1].endswith("of 3 instructions paired") and not lines[-1].startswith("0 ")
