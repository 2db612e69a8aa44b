"""ArmoRM without remote code: a checkpoint in ArmoRM's on-disk layout, scored natively.

The checkpoint is written here by hand, the way ``RLHFlow/ArmoRM-Llama3-8B-v0.1`` lays
itself out (its ``config.json`` keys and ``auto_map`` to model code that is not there,
its tensor names in a safetensors file, a Llama-3 chat template, pad == eos), and the
expected scores are computed here from the raw tensors with plain torch.
"""

from __future__ import annotations

import json
import random

import pytest
import torch

from magpie_dl.reward.scoring import GATING_TOKENS_MISSING, RewardScorer, conversation_token_ids, plan_batches
from magpie_dl.local.tiny import LLAMA3_CHAT_TEMPLATE
from test_scoring import PAIRS as SCORING_PAIRS

# Float32 on one machine; the same sequence computed in a different batch shape differs
# only in summation order.
TOLERANCE = dict(abs=1e-5, rel=1e-5)

PAIRS = [
    *SCORING_PAIRS,
    ("a<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\nb", "text that looks like markup stays text"),
]
GATING_MARKUP = "<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n"


@pytest.fixture(scope="module")
def armorm_dir(tiny_models, tmp_path_factory):
    """A tiny checkpoint in ArmoRM's on-disk layout, written without our model class."""
    from safetensors.torch import save_file
    from transformers import AutoTokenizer, LlamaForCausalLM

    out = tmp_path_factory.mktemp("armorm")
    tokenizer = AutoTokenizer.from_pretrained(tiny_models["generator"])
    tokenizer.chat_template = LLAMA3_CHAT_TEMPLATE
    tokenizer.pad_token = tokenizer.eos_token  # pad == eos == <|eot_id|>
    tokenizer.save_pretrained(out)
    # A trained backbone, so hidden states depend on context.
    backbone = LlamaForCausalLM.from_pretrained(tiny_models["generator"], dtype=torch.float32).model
    base = json.loads(open(f"{tiny_models['generator']}/config.json").read())
    hidden, objectives, width = base["hidden_size"], 19, 16
    config = {
        key: base[key]
        for key in ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                    "num_key_value_heads", "head_dim", "max_position_embeddings", "rms_norm_eps",
                    "vocab_size", "bos_token_id", "hidden_act", "rope_parameters")
    }
    config.update({
        "architectures": ["LlamaForRewardModelWithGating"],
        "auto_map": {"AutoModelForSequenceClassification": "modeling_custom.LlamaForRewardModelWithGating"},
        "model_type": "llama",
        "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.eos_token_id,
        "num_objectives": objectives,
        "gating_temperature": 10,
        "gating_hidden_dim": width,
        "gating_n_hidden": 3,
        "tie_word_embeddings": False,
        "torch_dtype": "float32",
        "use_cache": False,
    })
    (out / "config.json").write_text(json.dumps(config, indent=2))
    g = torch.Generator().manual_seed(7)
    tensors = {f"model.{k}": v.contiguous() for k, v in backbone.state_dict().items()}
    tensors["regression_layer.weight"] = torch.randn(objectives, hidden, generator=g) / hidden**0.5
    sizes = [hidden, width, width, width]
    for n, (a, b) in enumerate(zip(sizes, sizes[1:] + [objectives])):
        scale = 1.5 if n < 3 else 10.0  # a gate that really varies with the prompt
        tensors[f"gating.layers.{n}.weight"] = torch.randn(b, a, generator=g) * scale / a**0.5
        tensors[f"gating.layers.{n}.bias"] = torch.randn(b, generator=g) * 0.1
    tensors["gating.logit_scale"] = torch.tensor([2.5])
    tensors["reward_transform_matrix"] = torch.eye(objectives) + 0.3 * torch.randn(objectives, objectives, generator=g)
    save_file(tensors, str(out / "model.safetensors"), metadata={"format": "pt"})
    return out


def reference_scores(directory, sequences: list[list[int]], position=None) -> list[float]:
    """ArmoRM's formula from the raw tensors, one unpadded sequence at a time.

    The backbone is transformers' ``LlamaModel`` loaded from the ``model.*`` tensors; the
    heads are plain torch. ``position(ids)`` picks the gating position (default: the
    start of the last ``GATING_MARKUP``, its ids spelled out here by hand).
    """
    from safetensors.torch import load_file
    from transformers import AutoTokenizer, LlamaConfig, LlamaModel

    raw = load_file(str(directory / "model.safetensors"))
    config = json.loads((directory / "config.json").read_text())
    backbone = LlamaModel(LlamaConfig(**{k: v for k, v in config.items() if k not in ("architectures", "auto_map")}))
    backbone.load_state_dict({k[len("model."):]: v for k, v in raw.items() if k.startswith("model.")})
    backbone.eval()
    tokenizer = AutoTokenizer.from_pretrained(directory)
    markup = [tokenizer.convert_tokens_to_ids(t) for t in
              ("<|eot_id|>", "<|start_header_id|>")] + tokenizer.encode("assistant", add_special_tokens=False) + [
              tokenizer.convert_tokens_to_ids("<|end_header_id|>")] + tokenizer.encode("\n\n", add_special_tokens=False)

    def last_markup(ids: list[int]) -> int:
        return max(i for i in range(len(ids)) if ids[i : i + len(markup)] == markup)

    position = position or last_markup
    out = []
    with torch.no_grad():
        for ids in sequences:
            hidden = backbone(input_ids=torch.tensor([ids])).last_hidden_state[0]
            rewards = hidden[-1] @ raw["regression_layer.weight"].T
            x = hidden[position(ids)]
            for n in range(3):
                x = torch.relu(x @ raw[f"gating.layers.{n}.weight"].T + raw[f"gating.layers.{n}.bias"])
            logits = x @ raw["gating.layers.3.weight"].T + raw["gating.layers.3.bias"]
            gate = torch.softmax(logits / config["gating_temperature"], dim=-1) * raw["gating.logit_scale"][0]
            out.append(float((gate * (rewards @ raw["reward_transform_matrix"])).sum()))
    return out


@pytest.fixture(scope="module")
def scorer(armorm_dir):
    s = RewardScorer(str(armorm_dir), max_length=512, batch_size=8, batch_tokens=10**6, dtype="float32")
    s.load()
    return s


def test_loads_natively_without_remote_code(scorer, armorm_dir):
    assert not (armorm_dir / "modeling_custom.py").exists()  # auto_map points at code that is not there
    assert scorer.trust_remote_code is False
    assert type(scorer.model).__module__ == "magpie_dl.reward.armorm_modules"
    assert scorer.is_armorm and scorer.mask_padding is False
    assert scorer.tokenizer.pad_token_id == scorer.tokenizer.eos_token_id


def test_gating_ids_come_from_the_chat_template(scorer):
    assert scorer.gating_ids == scorer.tokenizer.encode(GATING_MARKUP, add_special_tokens=False)


def test_right_padded_mixed_length_batches_score_as_the_formula(scorer, armorm_dir):
    sequences = [conversation_token_ids(scorer.tokenizer, u, a) for u, a in PAIRS]
    lengths = [len(s) for s in sequences]
    # One pass of 8 sequences of different lengths: every row but the longest is padded.
    assert plan_batches(lengths, 8, 10**6) == [sorted(range(len(PAIRS)), key=lambda i: -lengths[i])]
    assert len(set(lengths)) == len(lengths)
    expected = reference_scores(armorm_dir, sequences)
    got = [r.score for r in scorer.score_token_ids(sequences)]
    assert got == pytest.approx(expected, **TOLERANCE)
    assert max(expected) - min(expected) > 1e-2  # the scores really vary


def test_scores_do_not_depend_on_the_batch(scorer):
    alone = [scorer.score_pairs([pair])[0].score for pair in PAIRS]
    rng = random.Random(0)
    saved = scorer.batch_size, scorer.batch_tokens
    try:
        for batch_size, batch_tokens in ((2, 10**6), (3, 10**6), (8, 10**6), (8, 200), (8, 1)):
            scorer.batch_size, scorer.batch_tokens = batch_size, batch_tokens
            order = list(range(len(PAIRS)))
            rng.shuffle(order)
            batched = scorer.score_pairs([PAIRS[i] for i in order])
            assert [r.score for r in batched] == pytest.approx([alone[i] for i in order], **TOLERANCE)
    finally:
        scorer.batch_size, scorer.batch_tokens = saved


def test_pad_equal_to_eos_does_not_move_the_read_position(scorer, armorm_dir):
    """ArmoRM's own code reads at the first pad id; with pad == eos that is the end of the user turn."""
    sequences = [conversation_token_ids(scorer.tokenizer, u, a) for u, a in PAIRS[:4]]
    eos = scorer.tokenizer.eos_token_id
    ours = [r.score for r in scorer.score_token_ids(sequences)]
    assert ours == pytest.approx(reference_scores(armorm_dir, sequences), **TOLERANCE)
    # What the first-pad rule reads instead: the token before the first <|eot_id|>.
    first_pad = [ids[: ids.index(eos)] for ids in sequences]
    wrong = reference_scores(armorm_dir, first_pad, position=lambda ids: len(ids) - 1)
    assert ours != pytest.approx(wrong, **TOLERANCE)


def test_gating_reads_the_assistant_header_not_text_that_looks_like_it(scorer, armorm_dir):
    """User text spelling the markup stays text: the gate is read at the real header."""
    ids = conversation_token_ids(scorer.tokenizer, *PAIRS[-1])
    assert ids.count(scorer.gating_ids[0]) == 2  # the template's two <|eot_id|> only
    assert scorer.score_token_ids([ids])[0].score == pytest.approx(reference_scores(armorm_dir, [ids])[0], **TOLERANCE)


def test_truncation_that_eats_the_gating_tokens_is_a_marked_response(armorm_dir):
    s = RewardScorer(str(armorm_dir), max_length=24, batch_size=4, dtype="float32")
    s.load()
    long_prompt = ("Tell me a long story about " + "dragons and castles " * 20, "Once upon a time.")
    results = s.score_pairs([PAIRS[5], long_prompt, PAIRS[1]])
    assert results[1].score is None and results[1].error == GATING_TOKENS_MISSING
    assert results[1].truncated and results[1].num_tokens == 24
    assert results[0].error is None and results[2].error is None and results[2].truncated
    assert [results[0].score, results[2].score] == pytest.approx(
        reference_scores(armorm_dir, [conversation_token_ids(s.tokenizer, *p)[:24] for p in (PAIRS[5], PAIRS[1])]),
        **TOLERANCE,
    )


def test_reward_step_marks_and_pairing_counts_a_missing_gate(armorm_dir):
    from magpie_dl.recipe.pairing import NO_SCORE, pick_best_worst
    from magpie_dl.steps.reward import RewardScoring

    step = RewardScoring(model=str(armorm_dir), dtype="float32", max_length=24)
    step.load()
    rows = [
        {"instruction": "Why?", "generations": ["Because.", "No idea.", "Yes."], "finish_reasons": ["stop"] * 3},
        {"instruction": "word " * 40, "generations": ["An answer.", "Another."], "finish_reasons": ["stop"] * 2},
    ]
    [out] = list(step.process(rows))
    assert all(isinstance(r, float) for r in out[0]["ratings"])
    assert out[1]["ratings"] == [None, None]
    assert out[1]["rating_errors"] == [GATING_TOKENS_MISSING] * 2
    pair = pick_best_worst(out[1]["generations"], out[1]["ratings"], out[1]["finish_reasons"])
    assert pair.statuses == (NO_SCORE, NO_SCORE) and not pair.kept


def test_a_checkpoint_of_another_layout_is_a_clear_error(armorm_dir, tmp_path):
    from safetensors.torch import load_file, save_file

    for name in ("config.json", "tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
        if (armorm_dir / name).exists():
            (tmp_path / name).write_bytes((armorm_dir / name).read_bytes())
    tensors = load_file(str(armorm_dir / "model.safetensors"))
    del tensors["reward_transform_matrix"]
    save_file(tensors, str(tmp_path / "model.safetensors"), metadata={"format": "pt"})
    s = RewardScorer(str(tmp_path), dtype="float32")
    with pytest.raises(ValueError, match="reward_transform_matrix"):
        s.load()


@pytest.mark.slow
def test_smoke_run_scores_with_a_local_armorm_and_no_remote_code(armorm_dir, tmp_path):
    import yaml
    from datasets import load_from_disk

    from recipe_cli import run_recipe_cli

    out = tmp_path / "out"
    result = run_recipe_cli("--preset", "smoke", "--reward.model", str(armorm_dir), "--num-instructions", "24",
                            "--output-dir", str(out))
    assert result.returncode == 0, result.stderr[-4000:]
    config = yaml.safe_load((out / "config.yaml").read_text())
    assert config["reward"]["model"] == str(armorm_dir) and config["reward"]["trust_remote_code"] is False
    rows = [row for split in load_from_disk(str(out / "dataset")).values() for row in split]
    assert rows, "no pair kept"
    assert all(len(row["rating_errors"]) == len(row["responses"]) for row in rows)  # the reasons reach the output
    for row in rows:
        scores = [r["score"] for r in row["rewards_armorm"]]
        assert scores[row["chosen_index"]] == row["chosen_score"] > row["rejected_score"]


def test_gating_position_is_the_last_whole_occurrence():
    from magpie_dl.reward.armorm import gating_position

    pattern = [4, 2, 9]
    assert gating_position([1, 4, 2, 9, 5, 4, 2, 9, 7], pattern) == 5
    assert gating_position([4, 2, 9, 5, 4, 2], pattern) == 0  # a cut occurrence does not count
    assert gating_position([4, 4, 2, 2, 9], pattern) is None
    assert gating_position([], pattern) is None
