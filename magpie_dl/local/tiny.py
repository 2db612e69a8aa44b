"""Tiny local models, built deterministically offline: the embedded default.

``python -m magpie_dl.local.tiny --out models/tiny`` writes

* ``generator/``: a Llama-3.1-style byte-level BPE tokenizer (the real special tokens
  and a Llama-3.1-style chat template), and a tiny ``LlamaForCausalLM`` briefly trained
  on a synthetic chat corpus so that it writes query-like text and ends its turns;
* ``reward/``: a tiny ArmoRM (``LlamaForRewardModelWithGating``: ArmoRM's config keys,
  weight names and safetensors layout, a Llama-3 chat template) on the same tokenizer,
  its backbone taken from the generator and its heads random.

Real tokenizer machinery, real chat templates, real model classes: the pipeline runs
the same code paths it runs on Llama-3.1-70B-Instruct and ArmoRM, only smaller.

The build is as deterministic as torch allows (one thread, deterministic algorithms,
fixed seeds), but float results still depend on the CPU's instruction set, so two
machines may build different weights. Each build prints a fingerprint of each model's
weights (also kept in ``manifest.json``), so such a difference is visible: tests must
not depend on what a particular build samples.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import random
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

# Bump when a change here changes the built models: older builds are then rebuilt.
BUILD_VERSION = 4

SPECIAL_TOKENS = [
    "<|begin_of_text|>",
    "<|end_of_text|>",
    "<|start_header_id|>",
    "<|end_header_id|>",
    "<|eot_id|>",
    "<|finetune_right_pad_id|>",
]

# A Llama-3.1-style chat template, written for these models: BOS, a system block that
# always carries the knowledge-cutoff lines (as Llama-3.1's does), then the turns.
CHAT_TEMPLATE = (
    "{{- bos_token }}"
    "{%- if messages[0]['role'] == 'system' %}"
    "{%- set system_message = messages[0]['content'] | trim %}"
    "{%- set messages = messages[1:] %}"
    "{%- else %}{%- set system_message = '' %}{%- endif %}"
    "{{- '<|start_header_id|>system<|end_header_id|>\\n\\n' }}"
    "{{- 'Cutting Knowledge Date: December 2023\\nToday Date: 26 Jul 2024\\n\\n' }}"
    "{{- system_message }}{{- '<|eot_id|>' }}"
    "{%- for message in messages %}"
    "{{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' + message['content'] | trim + '<|eot_id|>' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{%- endif %}"
)

# Llama-3-8B-Instruct's chat template (no system block): the one ArmoRM's tokenizer ships.
LLAMA3_CHAT_TEMPLATE = (
    "{% set loop_messages = messages %}{% for message in loop_messages %}"
    "{% set content = '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n'"
    "+ message['content'] | trim + '<|eot_id|>' %}"
    "{% if loop.index0 == 0 %}{% set content = bos_token + content %}{% endif %}{{ content }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{% endif %}"
)

_TOPICS = [
    "python lists", "a sourdough starter", "compound interest", "binary search", "a job interview",
    "the French revolution", "photosynthesis", "a marathon training plan", "SQL joins", "a wedding toast",
    "climate change", "a small vegetable garden", "machine learning", "the stock market", "a cover letter",
    "black holes", "a budget spreadsheet", "JavaScript promises", "a birthday party", "the water cycle",
    "a rust borrow checker error", "meditation", "a short story", "quantum computing", "a road trip",
    "linear regression", "a noisy neighbour", "Git branches", "healthy breakfasts", "a chess opening",
    "the Roman empire", "a podcast", "unit tests", "time management", "a React component", "probability",
]
_VERBS = ["learn", "improve", "explain", "start", "plan", "fix", "understand", "write", "organize", "compare"]
_QUESTIONS = [
    "How do I {verb} {topic}?",
    "What is the best way to {verb} {topic}?",
    "Can you explain {topic} to a beginner?",
    "I want to {verb} {topic}. Where should I begin?",
    "What are the pros and cons of {topic}?",
    "Write a short poem about {topic}.",
    "Give me three tips to {verb} {topic}.",
    "Why is {topic} so hard to {verb}?",
    "I'm struggling with {topic}. Can you help me {verb} it step by step?",
    "Compare two ways to {verb} {topic} and tell me which one you prefer.",
]
_ANSWERS = [
    "Sure! To {verb} {topic}, start small. First, read a short guide. Then practise a little every day. "
    "Finally, ask for feedback and adjust.",
    "Great question. {Topic} becomes easier when you break it into parts: the basics, the common "
    "mistakes, and a few worked examples.",
    "## Overview\n{Topic} is a broad subject. Here are the key steps:\n1. Set a clear goal.\n"
    "2. Gather what you need.\n3. Review your progress each week.",
    "There are pros and cons. On the plus side, {topic} teaches patience. On the other hand, it "
    "takes time to {verb} it well.",
    "Here is a simple plan to {verb} {topic}: spend ten minutes a day, keep notes, and celebrate "
    "small wins.",
]
_MATH = [
    ("Solve for x: {a}x + {b} = {c}.", "Subtract {b} from both sides to get {a}x = {cb}, so x = {cb}/{a}."),
    ("What is {a} times {b}?", "{a} times {b} is {ab}."),
    ("A train travels {a} km in {b} hours. What is its average speed?", "Its speed is {a}/{b} km per hour."),
]


def synthetic_conversations(n: int, seed: int = 0) -> list[tuple[str | None, str, str]]:
    """``n`` (system, user, assistant) conversations from fixed templates, seeded."""
    rng = random.Random(seed)
    out: list[tuple[str | None, str, str]] = []
    for _ in range(n):
        if rng.random() < 0.15:
            a, b, c = rng.randint(2, 9), rng.randint(1, 30), rng.randint(31, 99)
            q, ans = rng.choice(_MATH)
            slots = dict(a=a, b=b, c=c, cb=c - b, ab=a * b)
            out.append(("You are a helpful math tutor.", q.format(**slots), ans.format(**slots)))
            continue
        topic, verb = rng.choice(_TOPICS), rng.choice(_VERBS)
        slots = dict(topic=topic, Topic=topic[0].upper() + topic[1:], verb=verb)
        system = None if rng.random() < 0.8 else "You are a helpful assistant."
        out.append((system, rng.choice(_QUESTIONS).format(**slots), rng.choice(_ANSWERS).format(**slots)))
    return out


def build_tokenizer(texts: list[str], vocab_size: int = 2048):
    """A byte-level BPE with the Llama-3 special tokens and chat template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    core = Tokenizer(models.BPE())
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    core.train_from_iterator(texts, trainer=trainer)
    # Like Llama-3's, this tokenizer prepends BOS to plain text: a prompt that already
    # starts with BOS and is encoded with special tokens on gets two (the trap to avoid).
    bos = "<|begin_of_text|>"
    core.post_processor = processors.TemplateProcessing(
        single=f"{bos} $A", pair=f"{bos} $A {bos} $B", special_tokens=[(bos, core.token_to_id(bos))]
    )
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=core,
        bos_token="<|begin_of_text|>",
        eos_token="<|eot_id|>",
        pad_token="<|finetune_right_pad_id|>",
        additional_special_tokens=["<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>"],
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def _conversation_messages(system: str | None, user: str, assistant: str) -> list[dict[str, str]]:
    messages = [{"role": "system", "content": system}] if system else []
    return messages + [{"role": "user", "content": user}, {"role": "assistant", "content": assistant}]


def _training_ids(tokenizer, conversations, rng: random.Random, family=None, turn_end: str = "<|eot_id|>") -> list[list[int]]:
    """Token ids of training sequences: chat-template conversations and Magpie-style ones.

    Half the conversations use the bare Magpie form (no system block), so the model also
    learns to write a query right after the pre-query template and to end it.
    """
    from magpie_dl.templates.families import FAMILIES

    family = family or FAMILIES["llama-3.1"]
    seqs = []
    for system, user, assistant in conversations:
        if rng.random() < 0.5:
            text = family.pre_query_prompt(system) + user + family.assistant_header + assistant + turn_end
            seqs.append(tokenizer.encode(text, add_special_tokens=False))
        else:
            seqs.append(
                tokenizer.apply_chat_template(
                    _conversation_messages(system, user, assistant), tokenize=True, return_dict=True
                )["input_ids"]
            )
    return seqs


def fingerprint(model) -> str:
    """A short hex digest of a model's weights (names, dtypes, shapes and bytes)."""
    import torch

    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)}".encode())
        raw = tensor.detach().cpu().contiguous().view(-1).view(torch.uint8)  # any dtype, bf16 too
        digest.update(raw.numpy().tobytes())
    return digest.hexdigest()[:16]


@contextlib.contextmanager
def _deterministic_torch() -> Iterator[None]:
    """One thread and deterministic algorithms for the build; the caller's settings after."""
    import torch

    threads, deterministic = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    torch.set_num_threads(1)  # thread count changes the summation order of reductions
    torch.use_deterministic_algorithms(True)
    try:
        yield
    finally:
        torch.set_num_threads(threads)
        torch.use_deterministic_algorithms(deterministic)


def build(out: Path, seed: int = 0, steps: int = 150, log: bool = True) -> dict[str, str]:
    """Build the tiny generator and reward models under ``out``; returns their paths."""
    with _deterministic_torch():
        return _build(out, seed=seed, steps=steps, log=log)


def _train_generator(tokenizer, conversations, rng: random.Random, eos_ids: list[int], steps: int, log: bool,
                     family=None, turn_end: str = "<|eot_id|>") -> tuple[Any, Any, Any]:
    """A tiny ``LlamaForCausalLM`` over ``tokenizer``, briefly trained on ``conversations``."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=128,
        intermediate_size=256,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        head_dim=64,  # vLLM's CPU attention needs a supported head size; 64 works.
        max_position_embeddings=2048,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=eos_ids,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=True,
    )
    model = LlamaForCausalLM(config)
    seqs = [s[:160] for s in _training_ids(tokenizer, conversations, rng, family, turn_end)]
    pad = config.pad_token_id
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.0)
    model.train()
    batch_size = 16
    for step in range(steps):
        batch = rng.sample(seqs, batch_size)
        width = max(map(len, batch))
        ids = torch.full((batch_size, width), pad, dtype=torch.long)
        mask = torch.zeros((batch_size, width), dtype=torch.long)
        for i, s in enumerate(batch):
            ids[i, : len(s)] = torch.tensor(s)
            mask[i, : len(s)] = 1
        labels = ids.masked_fill(mask == 0, -100)
        loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        if log and (step % 100 == 0 or step == steps - 1):
            print(f"  tiny generator step {step + 1}/{steps} loss {loss.item():.3f}", flush=True)
    model.eval()
    return model, config, loss


def _build(out: Path, seed: int, steps: int, log: bool) -> dict[str, str]:
    import torch
    from transformers import GenerationConfig

    started = time.perf_counter()
    torch.manual_seed(seed)
    rng = random.Random(seed)
    conversations = synthetic_conversations(4000, seed=seed)
    tokenizer = build_tokenizer([f"{s or ''}\n{u}\n{a}" for s, u, a in conversations])
    vocab = tokenizer.get_vocab()
    eos_ids = [vocab["<|eot_id|>"], vocab["<|end_of_text|>"]]

    model, config, loss = _train_generator(tokenizer, conversations, rng, eos_ids, steps, log)

    gen_dir, rm_dir = out / "generator", out / "reward"
    model.generation_config = GenerationConfig(
        bos_token_id=config.bos_token_id, eos_token_id=eos_ids, pad_token_id=config.pad_token_id
    )
    model.save_pretrained(gen_dir)
    tokenizer.save_pretrained(gen_dir)

    reward = build_reward(config, model.model.state_dict(), seed=seed)
    reward.save_pretrained(rm_dir)
    tokenizer.chat_template = LLAMA3_CHAT_TEMPLATE  # ArmoRM's tokenizer is Llama-3's
    tokenizer.save_pretrained(rm_dir)

    # Equal fingerprints on two machines: the same weights. Different ones: the same build
    # gave other floats there (another CPU), and the models will sample differently.
    fingerprints = {"generator": fingerprint(model), "reward": fingerprint(reward)}
    if log:
        for name, value in fingerprints.items():
            print(f"  tiny {name} weights sha256 {value}", flush=True)
    manifest = {
        "version": BUILD_VERSION,
        "seed": seed,
        "steps": steps,
        "final_loss": round(float(loss.item()), 4),
        "vocab_size": len(tokenizer),
        "fingerprints": fingerprints,
        "seconds": round(time.perf_counter() - started, 1),
    }
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2))
    return {"generator": str(gen_dir), "reward": str(rm_dir)}


def build_reward(config: Any, backbone: dict[str, Any], seed: int = 0, gating_hidden_dim: int = 64) -> Any:
    """A tiny ArmoRM over ``backbone`` (a ``LlamaModel`` state dict), its heads random.

    ArmoRM's config keys (19 objectives, gating at temperature 10, ``gating_n_hidden`` 3)
    with a narrower gating MLP. The heads are drawn large enough that the gate differs
    from response to response (the default 0.02 init would make it near-uniform), and the
    transform matrix is not the identity, so every part of the formula shows in the score.
    """
    import torch

    from magpie_dl.reward.armorm import armorm_config
    from magpie_dl.reward.armorm_modules import LlamaForRewardModelWithGating

    rm_config = armorm_config(config, gating_hidden_dim=gating_hidden_dim, tie_word_embeddings=False)
    reward = LlamaForRewardModelWithGating(rm_config)
    loaded = reward.model.load_state_dict(backbone)
    assert not loaded.missing_keys and not loaded.unexpected_keys
    generator = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        layers = list(reward.gating.layers)
        for layer in layers:
            scale = (2.0 if layer is not layers[-1] else 100.0) / layer.in_features
            layer.weight.copy_(torch.randn(layer.weight.shape, generator=generator) * scale**0.5)
            layer.bias.zero_()
        head = reward.regression_layer.weight
        head.copy_(torch.randn(head.shape, generator=generator) / head.shape[1] ** 0.5)
        objectives = reward.reward_transform_matrix.shape[0]
        reward.reward_transform_matrix.copy_(
            torch.eye(objectives) + 0.1 * torch.randn((objectives, objectives), generator=generator)
        )
    return reward.eval()


# The one-label sequence classifiers (today's reward models: Skywork-Reward-V2 is a
# LlamaForSequenceClassification or a Qwen3ForSequenceClassification) built by build_classifier.
CLASSIFIER_ARCHITECTURES = ("llama", "qwen3")


def build_classifier(out: Path, architecture: str, tokenizer_dir: str | Path, seed: int = 0,
                     max_position_embeddings: int = 2048) -> str:
    """A tiny one-label ``*ForSequenceClassification`` under ``out``; returns its path.

    ``architecture`` is ``llama`` or ``qwen3``; the tokenizer is the one in ``tokenizer_dir``
    (the tiny generator's) with the Llama-3 chat template, as a reward model ships it. The
    weights are random from ``seed`` (no training: a classifier here only has to be a real
    model of that architecture), the score head drawn large enough that responses score
    apart (the default 0.02 init gives near-equal logits). ``config.json`` carries one label
    (a one-entry ``id2label``, as transformers 5 writes ``num_labels=1``) and ``pad_token_id``, which transformers and vLLM both need to find each
    sequence's last token.
    """
    with _deterministic_torch():
        return _build_classifier(out, architecture, tokenizer_dir, seed, max_position_embeddings)


def _build_classifier(out: Path, architecture: str, tokenizer_dir: str | Path, seed: int,
                      max_position_embeddings: int) -> str:
    import torch
    from transformers import (AutoTokenizer, LlamaConfig, LlamaForSequenceClassification, Qwen3Config,
                              Qwen3ForSequenceClassification)

    if architecture not in CLASSIFIER_ARCHITECTURES:
        raise ValueError(f"architecture must be one of {CLASSIFIER_ARCHITECTURES}, got {architecture!r}")
    tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_dir))
    tokenizer.chat_template = LLAMA3_CHAT_TEMPLATE
    shape = dict(
        vocab_size=len(tokenizer), hidden_size=128, intermediate_size=256, num_hidden_layers=2,
        num_attention_heads=2, num_key_value_heads=2,
        head_dim=64,  # vLLM's CPU attention needs a supported head size; 64 works.
        max_position_embeddings=max_position_embeddings, bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, num_labels=1,
        tie_word_embeddings=False,
    )
    config_class, model_class = ((LlamaConfig, LlamaForSequenceClassification) if architecture == "llama"
                                 else (Qwen3Config, Qwen3ForSequenceClassification))
    torch.manual_seed(seed)
    model = model_class(config_class(**shape))
    with torch.no_grad():
        head = model.score.weight
        head.copy_(torch.randn(head.shape, generator=torch.Generator().manual_seed(seed + 1)) * 4.0 / head.shape[1] ** 0.5)
    model.eval()
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    (out / "manifest.json").write_text(json.dumps(
        {"version": BUILD_VERSION, "architecture": architecture, "seed": seed, "fingerprint": fingerprint(model)},
        indent=2))
    return str(out)


def build_family(out: Path, family: str, seed: int = 0, steps: int = 150, log: bool = True) -> str:
    """A tiny generator under ``out`` whose tokenizer carries ``family``'s special tokens and
    reproduced chat template (:mod:`magpie_dl.templates.published`); returns its path.

    Trained like the default generator, in that family's format, so it writes queries
    and ends its turns with the family's own turn end.
    """
    with _deterministic_torch():
        return _build_family(out, family, seed=seed, steps=steps, log=log)


def _build_family(out: Path, name: str, seed: int, steps: int, log: bool) -> str:
    import torch
    from transformers import GenerationConfig

    from magpie_dl.templates.chat import derive_parts
    from magpie_dl.templates.families import detect_family
    from magpie_dl.templates.published import FAMILY_TEMPLATES, UNSEEN, family_tokenizer

    spec = {**FAMILY_TEMPLATES, **UNSEEN}[name]
    torch.manual_seed(seed)
    rng = random.Random(seed)
    conversations = synthetic_conversations(4000, seed=seed)
    tokenizer = family_tokenizer(spec, [f"{s or ''}\n{u}\n{a}" for s, u, a in conversations], vocab_size=2048)
    if tokenizer.pad_token is None:  # Mistral's tokenizers have none; padding is masked anyway
        tokenizer.pad_token = tokenizer.eos_token
    family = detect_family(tokenizer)
    if family.system_template is None and family.system_in_user is None:  # no system role (gemma-2)
        conversations = [(None, user, assistant) for _, user, assistant in conversations]
    turn_end = derive_parts(tokenizer).turn_end_tokens()[0]
    eos_ids = list(dict.fromkeys(i for i in (tokenizer.convert_tokens_to_ids(turn_end), tokenizer.eos_token_id) if i is not None))
    model, config, loss = _train_generator(tokenizer, conversations, rng, eos_ids, steps, log, family, turn_end)
    model.generation_config = GenerationConfig(
        bos_token_id=config.bos_token_id, eos_token_id=eos_ids, pad_token_id=config.pad_token_id
    )
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    manifest = {"version": BUILD_VERSION, "family": name, "seed": seed, "steps": steps,
                "final_loss": round(float(loss.item()), 4), "fingerprint": fingerprint(model)}
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2))
    return str(out)


def is_current(out: Path) -> bool:
    """Whether ``out`` holds a complete build made by this version of the builder."""
    try:
        manifest = json.loads((out / "manifest.json").read_text())
    except (OSError, ValueError):
        return False
    return manifest.get("version") == BUILD_VERSION and (out / "reward" / "config.json").exists()


def ensure(out: Path, seed: int = 0, steps: int = 150) -> dict[str, str]:
    """Build the tiny models unless a current, complete build already exists under ``out``.

    Concurrent callers (parallel runs, a test session) wait on a lock for one build.
    """
    import fcntl

    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out.parent / f".{out.name}.lock", "a") as lock:
        fcntl.lockf(lock, fcntl.LOCK_EX)
        if not is_current(out):
            build(out, seed=seed, steps=steps)
    return {"generator": str(out / "generator"), "reward": str(out / "reward")}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Build the tiny local models (offline, deterministic).")
    parser.add_argument("--out", type=Path, default=Path("models/tiny"), help="output directory")
    parser.add_argument("--seed", type=int, default=0, help="seed for data, tokenizer and weights")
    parser.add_argument("--steps", type=int, default=150, help="training steps for the generator")
    parser.add_argument("--force", action="store_true", help="rebuild even if a build exists")
    parser.add_argument("--family", default=None,
                        help="build one generator with this family's tokens and reproduced chat template instead")
    args = parser.parse_args(argv)
    if args.family:
        print(json.dumps({"generator": build_family(args.out, args.family, seed=args.seed, steps=args.steps)}))
        return
    if args.force:
        paths = build(args.out, seed=args.seed, steps=args.steps)
    else:
        paths = ensure(args.out, seed=args.seed, steps=args.steps)
    print(json.dumps(paths))


if __name__ == "__main__":
    main()
