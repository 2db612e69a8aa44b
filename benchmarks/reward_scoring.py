"""Reward scoring throughput: our RewardScorer vs one-at-a-time vs padded unsorted batches.

All three score the same (instruction, response) token sequences with the same model in
the same process, one after another, and report real (unpadded) tokens per second:

* ``ours``: ``RewardScorer.score_token_ids``: sequences sorted by length, batches of
  ``--batch-size``, right padding with an attention mask (little padding);
* ``one_at_a_time``: one sequence per forward pass, no padding (the reference's way);
* ``padded_unsorted``: batches of ``--batch-size`` in arrival order, padded to the
  longest in the batch (what a naive batcher does);
* ``sorted_no_mask``: ours without the attention mask (right padding + a causal model:
  real positions never see the pads), to measure what the masked attention path costs.

Lengths vary the way responses do (a few dozen to ~1,000 tokens). Scores of the three
methods are compared: ours and one-at-a-time must agree (batch invariance).

    .venv/bin/python benchmarks/reward_scoring.py --pairs 512 --batch-size 16 --lengths short
    .venv/bin/python benchmarks/reward_scoring.py --pairs 512 --batch-size 16 --lengths long
    .venv/bin/python benchmarks/reward_scoring.py --model /path/to/8b-classifier --device cuda --dtype bfloat16
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from pathlib import Path
from typing import Any, Callable

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from magpie_dl.scoring import RewardScorer, conversation_token_ids, extract_scores  # noqa: E402

_WORDS = (
    "the model data answer question time system value function process result example list "
    "number first use make way water city history write explain describe compare plan code"
).split()


def sample_pairs(count: int, seed: int = 0, lengths: str = "long") -> list[tuple[str, str]]:
    """(instruction, response) texts with skewed lengths.

    ``long``: responses like real ones (median ~80 words, tail to 700; ~360 tokens median
    with the tiny tokenizer). ``short``: what the smoke recipe's tiny models write
    (responses capped at 64 tokens, ~12 words).
    """
    rng = random.Random(seed)
    pairs = []
    for _ in range(count):
        if lengths == "short":
            words = rng.randint(1, 14)
        else:
            words = int(min(700, rng.lognormvariate(4.4, 0.9)))
        instruction = " ".join(rng.choice(_WORDS) for _ in range(rng.randint(6, 40))) + "?"
        response = " ".join(rng.choice(_WORDS) for _ in range(max(5, words)))
        pairs.append((instruction, response))
    return pairs


def one_at_a_time(scorer: RewardScorer, sequences: list[list[int]]) -> list[float]:
    import torch

    out = []
    with torch.inference_mode():
        for seq in sequences:
            ids = torch.tensor([seq[: scorer.max_length]], device=scorer.device)
            out.extend(extract_scores(scorer.model(input_ids=ids, attention_mask=torch.ones_like(ids))))
    return out


def padded_unsorted(scorer: RewardScorer, sequences: list[list[int]]) -> list[float]:
    import torch

    out, pad = [], scorer.tokenizer.pad_token_id
    with torch.inference_mode():
        for start in range(0, len(sequences), scorer.batch_size):
            chunk = [s[: scorer.max_length] for s in sequences[start : start + scorer.batch_size]]
            width = max(map(len, chunk))
            ids = torch.tensor([s + [pad] * (width - len(s)) for s in chunk], device=scorer.device)
            mask = torch.tensor([[1] * len(s) + [0] * (width - len(s)) for s in chunk], device=scorer.device)
            out.extend(extract_scores(scorer.model(input_ids=ids, attention_mask=mask)))
    return out


def ours(scorer: RewardScorer, sequences: list[list[int]]) -> list[float]:
    return [s.score for s in scorer.score_token_ids(sequences)]


def sorted_no_mask(scorer: RewardScorer, sequences: list[list[int]]) -> list[float]:
    """Ours without the attention mask, to see what the mask costs.

    With right padding a causal model's real positions never attend to the pads after
    them, so the mask changes nothing they compute (the classifier finds the last real
    token from the pad id, not the mask); without it SDPA takes its causal fast path
    instead of materialising a (batch, 1, L, L) mask.
    """
    import torch

    out: dict[int, float] = {}
    clipped = [s[: scorer.max_length] for s in sequences]
    order = sorted(range(len(clipped)), key=lambda i: len(clipped[i]))
    pad = scorer.tokenizer.pad_token_id
    with torch.inference_mode():
        for start in range(0, len(order), scorer.batch_size):
            chunk = order[start : start + scorer.batch_size]
            width = max(len(clipped[i]) for i in chunk)
            ids = torch.tensor([clipped[i] + [pad] * (width - len(clipped[i])) for i in chunk], device=scorer.device)
            for i, score in zip(chunk, extract_scores(scorer.model(input_ids=ids))):
                out[i] = score
    return [out[i] for i in range(len(clipped))]


METHODS: dict[str, Callable[[RewardScorer, list[list[int]]], list[float]]] = {
    "ours": ours, "one_at_a_time": one_at_a_time, "padded_unsorted": padded_unsorted,
    "sorted_no_mask": sorted_no_mask,
}


def timed(method: Callable, scorer: RewardScorer, sequences: list[list[int]], device: str) -> tuple[float, list[float]]:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()
    started = time.perf_counter()
    scores = method(scorer, sequences)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return time.perf_counter() - started, scores


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=str(REPO / "models" / "tiny" / "reward"))
    parser.add_argument("--pairs", type=int, default=384)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--max-length", type=int, default=2048)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--lengths", choices=["long", "short"], default="long")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    args = parser.parse_args()

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    scorer = RewardScorer(args.model, max_length=args.max_length, batch_size=args.batch_size,
                          dtype=args.dtype, device=args.device)
    scorer.load()
    sequences = [conversation_token_ids(scorer.tokenizer, u, a) for u, a in sample_pairs(args.pairs, lengths=args.lengths)]
    tokens = sum(min(len(s), args.max_length) for s in sequences)
    lengths = sorted(len(s) for s in sequences)
    print(f"{args.lengths} lengths: {args.pairs} sequences, {tokens} tokens (median {lengths[len(lengths) // 2]}, max {lengths[-1]}), "
          f"batch {args.batch_size}, {args.device}/{args.dtype}, torch threads {torch.get_num_threads()}")
    timed(ours, scorer, sequences[:32], args.device)  # warm-up (allocator, kernels)

    results: dict[str, tuple[float, list[float]]] = {}
    for name, method in METHODS.items():
        results[name] = timed(method, scorer, sequences, args.device)
    base = tokens / results["one_at_a_time"][0]
    print("| method | seconds | tokens/s | vs one-at-a-time | max abs score diff vs one-at-a-time |")
    print("|---|---:|---:|---:|---:|")
    reference = results["one_at_a_time"][1]
    for name, (seconds, scores) in results.items():
        diff = max(abs(a - b) for a, b in zip(scores, reference))
        print(f"| {name} | {seconds:.2f} | {tokens / seconds:,.0f} | {tokens / seconds / base:.2f}x | {diff:.2e} |")


if __name__ == "__main__":
    main()
