"""Reward scoring throughput: our RewardScorer vs one-at-a-time vs padded unsorted batches.

All methods score the same (instruction, response) token sequences with the same model in
the same process, one after another, and report real (unpadded) tokens per second:

Each method runs ``--repeats`` times, interleaved, and the median time counts.

* ``ours``: ``RewardScorer.score_token_ids``: sequences sorted by length, passes of at
  most ``--batch-size`` sequences and ``--batch-tokens`` padded tokens, right padding
  (little of it), no attention mask when the load-time probe finds the model causal;
* ``one_at_a_time``: one sequence per forward pass, no padding (the reference's way);
* ``padded_unsorted``: batches of 16 in arrival order, padded to the longest in the
  batch, with a mask (what a naive batcher does);
* ``sorted_fixed``: sorted by length, 16 sequences per pass whatever their length;
* ``ours_masked``: ours with an attention mask on every padded pass (the scorer drops it
  for causal models: real positions never see the pads after them), to measure what the
  masked attention path costs.

A fourth number bounds what any batching can reach: ``ceiling`` is the best tokens/s of
the model over a sweep of unpadded, unmasked batch shapes (B sequences x L tokens, no
work but the forward pass). If one-at-a-time already runs at a third of it, no batcher
can be 3x faster on this model and machine.

Lengths vary the way responses do (a few dozen to ~1,000 tokens). Scores of all
methods are compared: ours and one-at-a-time must agree (batch invariance).

    .venv/bin/python benchmarks/reward_scoring.py --pairs 512 --lengths short
    .venv/bin/python benchmarks/reward_scoring.py --pairs 512 --lengths long
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


NAIVE_BATCH = 16  # sequences per pass of the two fixed-size batchers


def padded_unsorted(scorer: RewardScorer, sequences: list[list[int]]) -> list[float]:
    """Batches of 16 in arrival order, padded to the longest: what a naive batcher does."""
    return _batched(scorer, sequences, [list(range(i, min(i + NAIVE_BATCH, len(sequences))))
                                        for i in range(0, len(sequences), NAIVE_BATCH)])


def sorted_fixed(scorer: RewardScorer, sequences: list[list[int]]) -> list[float]:
    """Sorted by length, 16 per pass whatever their length (our scorer before the token cap)."""
    order = sorted(range(len(sequences)), key=lambda i: len(sequences[i]))
    return _batched(scorer, sequences, [order[i : i + NAIVE_BATCH] for i in range(0, len(order), NAIVE_BATCH)])


def ours(scorer: RewardScorer, sequences: list[list[int]]) -> list[float]:
    return [s.score for s in scorer.score_token_ids(sequences)]


def ours_masked(scorer: RewardScorer, sequences: list[list[int]]) -> list[float]:
    """Ours with an attention mask on every padded pass, to see what dropping it buys.

    The scorer drops the mask when its load-time probe shows the model is causal: real
    positions never attend to the pads after them, and attention takes its causal path
    instead of materialising a (batch, 1, L, L) mask.
    """
    decided, scorer.mask_padding = scorer.mask_padding, True
    try:
        return ours(scorer, sequences)
    finally:
        scorer.mask_padding = decided


def _batched(scorer: RewardScorer, sequences: list[list[int]], plan: list[list[int]]) -> list[float]:
    import torch

    out: dict[int, float] = {}
    pad = scorer.tokenizer.pad_token_id
    with torch.inference_mode():
        for chunk in plan:
            rows = [sequences[i][: scorer.max_length] for i in chunk]
            width = max(map(len, rows))
            ids = torch.tensor([r + [pad] * (width - len(r)) for r in rows], device=scorer.device)
            mask = torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in rows], device=scorer.device)
            out.update(zip(chunk, extract_scores(scorer.model(input_ids=ids, attention_mask=mask))))
    return [out[i] for i in range(len(sequences))]


METHODS: dict[str, Callable[[RewardScorer, list[list[int]]], list[float]]] = {
    "ours": ours, "one_at_a_time": one_at_a_time, "padded_unsorted": padded_unsorted,
    "sorted_fixed": sorted_fixed, "ours_masked": ours_masked,
}


def ceiling(scorer: RewardScorer, device: str, max_tokens: int = 32768) -> tuple[float, str, dict[str, float]]:
    """Best tokens/s over unpadded batch shapes (the most any batching can get from the
    model), its shape, and the tokens/s of every shape tried."""
    import torch

    best, shape, rates = 0.0, "", {}
    with torch.inference_mode():
        for width in (64, 160, 360, 1000):
            for count in (1, 2, 4, 8, 16, 64):
                if count * width > max_tokens:
                    continue
                ids = torch.randint(10, 1000, (count, width), device=device)
                scorer.model(input_ids=ids)  # warm-up for this shape
                reps = max(2, 8000 // (count * width))
                seconds, _ = timed(lambda *_: [scorer.model(input_ids=ids) for _ in range(reps)], scorer, [], device)
                rate = reps * count * width / seconds
                rates[f"{count} x {width}"] = rate
                if rate > best:
                    best, shape = rate, f"{count} x {width}"
    return best, shape, rates


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
    parser.add_argument("--batch-size", type=int, default=64, help="ours: most sequences per pass")
    parser.add_argument("--batch-tokens", type=int, default=1024, help="ours: most padded tokens per pass")
    parser.add_argument("--max-length", type=int, default=2048)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--lengths", choices=["long", "short"], default="long")
    parser.add_argument("--repeats", type=int, default=3, help="runs per method (interleaved); the median counts")
    parser.add_argument("--sweep", action="store_true", help="also print tokens/s of every batch shape tried")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    args = parser.parse_args()

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    scorer = RewardScorer(args.model, max_length=args.max_length, batch_size=args.batch_size,
                          batch_tokens=args.batch_tokens, dtype=args.dtype, device=args.device)
    scorer.load()
    sequences = [conversation_token_ids(scorer.tokenizer, u, a) for u, a in sample_pairs(args.pairs, lengths=args.lengths)]
    tokens = sum(min(len(s), args.max_length) for s in sequences)
    lengths = sorted(len(s) for s in sequences)
    print(f"{args.lengths} lengths: {args.pairs} sequences, {tokens} tokens (median {lengths[len(lengths) // 2]}, max {lengths[-1]}), "
          f"batch {args.batch_size} seqs / {args.batch_tokens} tokens, {args.device}/{args.dtype}, torch threads {torch.get_num_threads()}")
    timed(ours, scorer, sequences[:32], args.device)  # warm-up (allocator, kernels)

    # Each method runs --repeats times, interleaved with the others (the ceiling sweep too);
    # the median counts. The first pass over a batch shape pays one-off kernel set-up,
    # whichever method meets it first.
    runs: dict[str, list[tuple[float, list[float]]]] = {name: [] for name in METHODS}
    ceilings: list[tuple[float, str, dict[str, float]]] = []
    for _ in range(args.repeats):
        for name, method in METHODS.items():
            runs[name].append(timed(method, scorer, sequences, args.device))
        ceilings.append(ceiling(scorer, args.device))
    results = {name: sorted(times, key=lambda run: run[0])[len(times) // 2] for name, times in runs.items()}
    best, shape, rates = sorted(ceilings, key=lambda c: c[0])[len(ceilings) // 2]
    base = tokens / results["one_at_a_time"][0]
    print("| method | seconds | tokens/s | vs one-at-a-time | of ceiling | max abs score diff vs one-at-a-time |")
    print("|---|---:|---:|---:|---:|---:|")
    reference = results["one_at_a_time"][1]
    for name, (seconds, scores) in results.items():
        diff = max(abs(a - b) for a, b in zip(scores, reference))
        rate = tokens / seconds
        print(f"| {name} | {seconds:.2f} | {rate:,.0f} | {rate / base:.2f}x | {rate / best:.0%} | {diff:.2e} |")
    print(f"| ceiling (best unpadded shape: {shape}) | | {best:,.0f} | {best / base:.2f}x | 100% | |")
    if args.sweep:
        print("\n| unpadded shape (sequences x tokens) | tokens/s |\n|---|---:|")
        for name, rate in rates.items():
            print(f"| {name} | {rate:,.0f} |")


if __name__ == "__main__":
    main()
