"""Reward scoring of a one-label classifier: vLLM's pooling runner vs our transformers scorer.

Both score the same token sequences (the long-tail length profile of
``benchmarks/reward_scoring.py``: log-normal response lengths, median ~80 words, tail to 700) with
the same tiny ``LlamaForSequenceClassification`` (``magpie_dl.local.tiny.build_classifier``, float32)
in one process: ours ``--repeats`` times, then the engine starts (timed apart) and scores
``--repeats`` times with its prefix cache off (each repeat would otherwise find every sequence
cached), then ours again ``--repeats`` times beside the idle engine (an in-process engine changes
the process's CPU threads and affinity: the second figure shows what ours gets beside one).
Reported: real (unpadded) tokens per second, median and best, the ratio, and the largest score
difference between the two.

    VLLM_CPU_KVCACHE_SPACE=1 .venv-vllm/bin/python benchmarks/pooling_scoring.py --pairs 512
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from reward_scoring import sample_pairs  # noqa: E402

from magpie_dl.backends.vllm_pooling import VLLMPoolingScorer  # noqa: E402
from magpie_dl.local import tiny  # noqa: E402
from magpie_dl.reward.scoring import RewardScorer, conversations_token_ids  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=512)
    parser.add_argument("--lengths", choices=["long", "short"], default="long")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--max-length", type=int, default=2048)
    parser.add_argument("--batch-tokens", type=int, default=1024, help="transformers: padded tokens per pass (CPU)")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads for ours (vLLM's CPU engine runs its model on one bound core, one "
                        "more reserved; on a loaded machine two threads' barriers stall the tiny model's many small ops)")
    parser.add_argument("--model", default=None, help="a one-label classifier (default: the tiny Llama one, built)")
    args = parser.parse_args()

    model = args.model or tiny.build_classifier(Path(tempfile.mkdtemp()) / "llama", "llama",
                                                tiny.ensure(REPO / "models" / "tiny")["generator"])
    ours = RewardScorer(model, max_length=args.max_length, batch_size=64, batch_tokens=args.batch_tokens,
                        dtype="float32")
    ours.load()
    sequences = [ids[: args.max_length] for ids in conversations_token_ids(ours.tokenizer, sample_pairs(args.pairs, 0, args.lengths))]
    tokens = sum(map(len, sequences))
    lengths = sorted(map(len, sequences))
    print(f"{len(sequences)} sequences, {tokens} tokens, length median {lengths[len(lengths) // 2]}, "
          f"p99 {lengths[int(len(lengths) * 0.99)]}, max {lengths[-1]}", flush=True)
    import torch

    rates: dict[str, list[float]] = {}
    scores: dict[str, list] = {}

    def timed(name: str, scorer) -> None:
        for _ in range(args.repeats):
            t = time.perf_counter()
            scores[name] = scorer.score_token_ids(sequences)
            rates.setdefault(name, []).append(tokens / (time.perf_counter() - t))

    torch.set_num_threads(args.threads)
    print(f"torch threads {torch.get_num_threads()}", flush=True)
    timed("transformers (ours)", ours)
    started = time.perf_counter()
    pooling = VLLMPoolingScorer(model, max_length=args.max_length, dtype="float32",
                                engine_kwargs={"enable_prefix_caching": False})
    pooling.load()
    print(f"pooling engine start: {time.perf_counter() - started:.1f} s", flush=True)
    timed("vLLM pooling", pooling)
    torch.set_num_threads(args.threads)  # the engine's start may have changed it
    print(f"torch threads beside the engine {torch.get_num_threads()}", flush=True)
    timed("ours beside the engine", ours)
    pooling.unload()
    diff = max(abs(a.score - b.score) for a, b in zip(scores["transformers (ours)"], scores["vLLM pooling"]))
    for name, values in rates.items():
        print(f"{name:>20}: median {statistics.median(values):8.0f} tok/s, best {max(values):8.0f} tok/s "
              f"({', '.join(f'{v:.0f}' for v in values)})")
    ratio = statistics.median(rates["vLLM pooling"]) / statistics.median(rates["transformers (ours)"])
    print(f"ratio (vLLM / ours, medians): {ratio:.2f}; largest score difference {diff:.2e}")


if __name__ == "__main__":
    main()
