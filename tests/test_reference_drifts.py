"""Small drifts from the reference recipe (magpie-align/magpie), each pinned here.

Query stops per family (the reference's `Assistant` stop for Qwen and its `\\n` early
stop), stripped responses, stops resolved once per load, the repetition penalty end to
end, the split of tiny sets, and `--help` naming each default and flag once.
"""

from __future__ import annotations

import importlib.util
import random
from typing import Any

import pytest
import torch
from datasets import load_from_disk
from pydantic import PrivateAttr

import magpie_dl.steps.magpie as magpie_steps
import magpie_dl.steps.responses as response_steps
from magpie_dl.backends.base import Completion, CompletionLLM, PromptInput, SamplingSpec
from magpie_dl.backends.openai import OpenAIBackend
from magpie_dl.backends.transformers import TransformersBackend
from magpie_dl.config.dpo import REPO_ROOT, ConfigError, build_parser, resolve
from magpie_dl.release.export import split_order, split_rows, write_dataset
from magpie_dl.templates.families import FAMILIES
from magpie_dl.steps.magpie import MagpieGenerator
from magpie_dl.steps.pairing import BestWorstPairing
from magpie_dl.steps.responses import MultiResponseGeneration
from magpie_dl.steps.reward import RewardScoring

# ---------------------------------------------------------------- query stops per family

# Which families stop queries at the first "\n": the reference's query writer does by
# default (exp/gen_ins.py), and only the llama-3.1, llama-3.3 and gemma-2 scripts pass
# --disable_early_stopping.
NEWLINE_STOP = {
    "llama-3": True, "llama-3.1": False, "llama-3.3": False, "qwen2": True, "qwen2.5": True,
    "gemma-2": False, "phi-3": True, "mistral-v0.3": True,
}


@pytest.mark.parametrize("name", ["qwen2", "qwen2.5"])
def test_qwen_queries_stop_on_both_spellings_of_assistant(name):
    assert {"Assistant", "assistant"} <= set(FAMILIES[name].stop)


@pytest.mark.parametrize("name,newline", sorted(NEWLINE_STOP.items()))
def test_newline_early_stop_is_the_reference_default_per_family(name, newline):
    family = FAMILIES[name]
    assert family.stop_at_newline is newline
    assert ("\n" in family.query_stop(family.stop_at_newline)) is newline
    assert "\n" in family.query_stop(True) and "\n" not in family.query_stop(False)
    assert "\n" not in family.response_stop  # responses never stop at a newline


def _generator(tiny_models, **kw: Any) -> MagpieGenerator:
    step = MagpieGenerator(
        llm=TransformersBackend(model=tiny_models["generator"], dtype="float32"),
        **{"num_rows": 6, "batch_size": 6, "max_tokens": 24, "temperature": 1.0, "seed": 5, **kw},
    )
    step.load()
    return step


def _rows(step: MagpieGenerator) -> list[dict[str, Any]]:
    return [row for batch, _ in step.process() for row in batch]


@pytest.mark.parametrize(
    "kw,newline",
    [({"family": "llama-3"}, True), ({"family": "llama-3.1"}, False),
     ({"family": "llama-3.1", "stop_at_newline": True}, True),
     ({"family": "llama-3", "stop_at_newline": False}, False)],
)
def test_newline_stop_is_applied_and_recorded_in_every_row(tiny_models, kw, newline):
    step = _generator(tiny_models, **kw)
    assert ("\n" in step.sampling_spec(0).stop) is newline
    rows = _rows(step)
    assert all(row["gen_input_configs"]["stop_at_newline"] is newline for row in rows)
    if newline:  # whatever the model wrote, the raw query ends before its first newline
        assert not any("\n" in row["raw_instruction"] for row in rows)


def test_generator_config_sets_the_newline_stop(tiny_models):
    cfg = resolve(build_parser("t").parse_args(["--preset", "smoke", "--generator.stop_at_newline", "true"]))
    assert cfg.generator.stop_at_newline is True
    assert resolve(build_parser("t").parse_args(["--preset", "smoke"])).generator.stop_at_newline is None


# ---------------------------------------------------------------- stops resolved once per load


class _Counter:
    """Wraps a function and counts its calls."""

    def __init__(self, fn):
        self.fn, self.calls = fn, 0

    def __call__(self, *args, **kwargs):
        self.calls += 1
        return self.fn(*args, **kwargs)


def test_query_stops_and_bans_are_resolved_once_per_load_not_per_row(tiny_models, monkeypatch):
    """Resolving stops scans the whole vocabulary (~0.1 s at 128K tokens): once per load."""
    stops = _Counter(magpie_steps.resolve_stops)
    bans = _Counter(magpie_steps.resolve_single_token_ids)
    monkeypatch.setattr(magpie_steps, "resolve_stops", stops)
    monkeypatch.setattr(magpie_steps, "resolve_single_token_ids", bans)
    step = _generator(tiny_models, num_rows=10, batch_size=4, max_tokens=2)
    assert len(_rows(step)) == 10
    assert (stops.calls, bans.calls) == (1, 1)
    assert step.sampling_spec(1).stop_token_ids and step.sampling_spec(1).first_token_ban_ids


# ---------------------------------------------------------------- responses: strip, repetition penalty


class ScriptedBackend(CompletionLLM):
    """The model boundary, scripted: a real tokenizer, given completion texts, and a record
    of the sampling specs it was asked for."""

    texts: list[str]

    _specs: list[SamplingSpec] = PrivateAttr(default_factory=list)

    def complete(self, prompts: list[PromptInput], sampling: list[SamplingSpec]) -> list[list[Completion]]:
        self._specs.extend(sampling)
        return [
            [Completion(self.texts[i % len(self.texts)], [1, 2, 3], "stop") for i in range(spec.n)]
            for spec in sampling
        ]


def _responses(tiny_models, texts: list[str], **kw: Any) -> MultiResponseGeneration:
    step = MultiResponseGeneration(
        llm=ScriptedBackend(model=tiny_models["generator"], texts=texts), num_generations=len(texts), **kw
    )
    step.load()
    return step


def test_responses_are_stripped_before_scoring_and_export(tiny_models, tmp_path):
    texts = ["  \n\nThe long answer, padded.\n\n", " \n \t", "A short one.  "]
    step = _responses(tiny_models, texts)
    [rows] = list(step.process([{"uuid": "u1", "instruction": "Why is the sky blue?", "gen_input_configs": {}}]))
    assert rows[0]["generations"] == ["The long answer, padded.", "", "A short one."]

    scorer = RewardScoring(model=tiny_models["reward"], dtype="float32", max_length=128)
    scorer.load()
    [rows] = list(scorer.process(rows))
    pairing = BestWorstPairing(name="pairing")
    pairing.load()
    [rows] = list(pairing.process(rows))
    row = rows[0]
    assert row["response_status"][1] == "empty"  # whitespace only: marked, never paired
    assert row["pair_status"] == "kept"
    paired = {row["chosen"][1]["content"], row["rejected"][1]["content"]}
    assert paired == {"The long answer, padded.", "A short one."}
    write_dataset(rows, tmp_path, 0.5, seed=0)
    data = load_from_disk(str(tmp_path / "dataset"))
    exported = [*data["train"], *data["test"]]
    assert exported[0]["responses"] == ["The long answer, padded.", "", "A short one."]


def test_repetition_penalty_reaches_the_backend_and_the_record(tiny_models):
    step = _responses(tiny_models, ["a", "b"], repetition_penalty=1.3)
    [rows] = list(step.process([{"uuid": "u1", "instruction": "Hi?"}]))
    assert [spec.repetition_penalty for spec in step.llm._specs] == [1.3]
    assert rows[0]["gen_response_configs"]["repetition_penalty"] == 1.3
    default = _responses(tiny_models, ["a", "b"])
    [rows] = list(default.process([{"uuid": "u1", "instruction": "Hi?"}]))
    assert default.llm._specs[0].repetition_penalty == 1.0
    assert rows[0]["gen_response_configs"]["repetition_penalty"] == 1.0


def test_repetition_penalty_is_a_validated_recipe_setting_passed_to_the_step(tiny_models):
    def parse(*argv: str):
        return resolve(build_parser("t").parse_args(["--preset", "smoke", *argv]))

    with pytest.raises(ConfigError, match="--responses.repetition_penalty"):
        parse("--responses.repetition_penalty", "0")
    with pytest.raises(ValueError, match="repetition_penalty"):
        SamplingSpec(repetition_penalty=-1.0)
    spec = importlib.util.spec_from_file_location("dpo_100k_recipe", REPO_ROOT / "pipelines" / "dpo_100k.py")
    recipe = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(recipe)
    pipeline = recipe.build_pipeline(parse("--responses.repetition_penalty", "1.15"))
    assert pipeline.dag.get_step("responses")["step"].repetition_penalty == 1.15


def test_repetition_penalty_is_sent_to_vllm_servers():
    backend = OpenAIBackend(model="m", base_urls=["http://127.0.0.1:1"])
    _, body = backend.request_body(PromptInput((1, 2, 3)), SamplingSpec(repetition_penalty=1.2))
    assert body["repetition_penalty"] == 1.2


def test_repetition_penalty_leaves_stored_result_keys_of_the_default_unchanged():
    assert "repetition_penalty" not in SamplingSpec().as_config()
    assert SamplingSpec(repetition_penalty=1.1).as_config()["repetition_penalty"] == 1.1


def test_repetition_penalty_formula_is_vllms():
    from magpie_dl.backends.transformers import apply_repetition_penalty

    logits = torch.tensor([[2.0, -1.0, 0.5, 3.0], [2.0, -1.0, 0.5, 3.0]])
    seen = torch.tensor([[True, True, False, False], [True, True, False, False]])
    out = apply_repetition_penalty(logits, seen, torch.tensor([2.0, 1.0]))
    assert out.tolist() == [[1.0, -2.0, 0.5, 3.0], [2.0, -1.0, 0.5, 3.0]]


@pytest.fixture(scope="module")
def tiny_backend(tiny_models):
    backend = TransformersBackend(model=tiny_models["generator"], dtype="float32", batch_size=4)
    backend.load()
    return backend


def test_transformers_backend_applies_the_repetition_penalty(tiny_backend):
    """Greedy tokens follow the penalised logits (to 1e-4: the backend decodes with a KV
    cache, the test without), over the prompt and the completion so far; the prompt is
    one where the penalty changes a choice, so the check can fail."""
    tok = tiny_backend.tokenizer
    penalty, steps = 4.0, 6
    for text in ["hello hello hello hello", "the cat and the cat and the", "What is what is what is"]:
        prompt = tok.encode(text, add_special_tokens=False)
        [[completion]] = tiny_backend.complete(
            [PromptInput(tuple(prompt))],
            [SamplingSpec(n=1, temperature=0.0, max_tokens=steps, repetition_penalty=penalty)],
        )
        # Replay the backend's own tokens: each must be the best under the penalised logits.
        model, tokens, changed = tiny_backend._model, list(prompt), False
        with torch.inference_mode():
            for token in completion.token_ids:
                logits = model(input_ids=torch.tensor([tokens])).logits[0, -1].float()
                seen = torch.zeros_like(logits, dtype=torch.bool)
                seen[tokens] = True
                penalised = torch.where(seen, torch.where(logits > 0, logits / penalty, logits * penalty), logits)
                assert penalised[token] >= penalised.max() - 1e-4
                changed |= bool(penalised[int(logits.argmax())] < penalised.max() - 1e-3)
                tokens.append(token)
        if changed:
            return
    pytest.fail("no prompt where the penalty changes a greedy choice: the check would be vacuous")


# ---------------------------------------------------------------- the split of tiny sets


def _uuid_rows(n: int) -> list[dict[str, Any]]:
    return [{"uuid": f"{i:04d}"} for i in range(n)]


@pytest.mark.parametrize("n,test", [(1, 0), (2, 0), (49, 0), (50, 1), (74, 1), (76, 2), (200, 4), (1000, 20)])
def test_test_split_follows_the_ratio_and_takes_none_below_one_row(n, test):
    split = split_rows(_uuid_rows(n), 0.02, seed=42)
    assert (len(split["train"]), len(split["test"])) == (n - test, test)


def test_split_is_otherwise_the_same_seeded_shuffle():
    uuids = [f"{i:04d}" for i in range(300)]
    random.Random(1).shuffle(uuids)
    train, test = split_order(uuids, 0.02, seed=9)
    order = sorted(range(300), key=uuids.__getitem__)
    random.Random(9).shuffle(order)
    assert test == order[:6] and train == order[6:]


def test_two_pairs_export_with_no_test_row(tmp_path):
    pair = [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]
    rows = [
        {"uuid": f"u{i}", "instruction": "q", "gen_input_configs": {"temperature": 0.9},
         "generations": ["a", "b"], "gen_response_configs": {"temperature": 0.8}, "ratings": [0.2, 0.1],
         "chosen": pair, "rejected": pair, "pair_status": "kept"}
        for i in range(2)
    ]
    summary = write_dataset(rows, tmp_path, 0.02, seed=42)
    assert summary.splits == {"train": 2, "test": 0}
    data = load_from_disk(str(tmp_path / "dataset"))
    assert (len(data["train"]), len(data["test"])) == (2, 0)


# ---------------------------------------------------------------- --help


def test_help_names_each_default_and_each_flag_once():
    text = " ".join(build_parser("test").format_help().split())  # undo argparse's line wrapping
    assert ") (default:" not in text
    assert "--instructions VALUE, --instructions VALUE" not in text
    assert "Query sampling temperature. (default: 0.9) --generator.top_p" in text
    assert "Starting point for the config. (default: full)" in text
    assert "--generator.family VALUE, --family VALUE" in text  # a real alias is still listed
