"""Reward scoring on a real GPU: ArmoRM at the 8B shape, throughput, attention kernels, placement.

For a machine with a GPU and only torch and transformers (no vLLM, no network, no
weights carried): builds :class:`magpie_dl.reward.armorm_modules.LlamaForRewardModelWithGating` at
ArmoRM-Llama3-8B's real layer sizes with random weights in bf16, and scores 512
mixed-length (long-tailed) responses through the recipe's own scorer
(:class:`magpie_dl.reward.scoring.RewardScorer`: length-sorted batches under its token cap).

It prints, and writes as JSON (``--out``):

* tokens/s and the share of the card's dense bf16 peak (useful FLOPs: 2 x parameters per
  token plus causal attention; the table below names the cards it knows);
* SDPA against eager attention on the same batches (time, and the largest score difference);
* the reward step's placement on this node: the plan (:mod:`magpie_dl.run.placement`) gives
  one scorer per GPU, each replica is started under its ``CUDA_VISIBLE_DEVICES``, and
  reports the physical device it landed on (all must differ).

``--tiny`` runs the same on CPU with a tiny model in seconds (a check of the script).
Run it from the repository root: ``python scripts/gpu_reward_check.py [--tiny] [--out FILE]``.
It stays well under 5 minutes on an H100 (model built in place on the GPU, ~0.5M tokens).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout

from magpie_dl.run.placement import Node, StepNeed, parameter_count, plan, visible_devices  # noqa: E402

# Dense (no sparsity) bf16 tensor-core peaks, TFLOPS, from the vendors' data sheets.
# First match of the device name wins: more specific names first.
PEAK_BF16_TFLOPS = (
    ("H200", 989.4),
    ("H100 PCIe", 756.0),
    ("H100 NVL", 835.0),
    ("H100", 989.4),  # SXM ("NVIDIA H100 80GB HBM3")
    ("A100", 312.0),
    ("L40S", 362.0),
    ("L4", 121.0),
)
# ArmoRM-Llama3-8B-v0.1's backbone (Llama-3-8B): its config.json's sizes.
ARMORM_8B = {"vocab_size": 128256, "hidden_size": 4096, "intermediate_size": 14336, "num_hidden_layers": 32,
             "num_attention_heads": 32, "num_key_value_heads": 8, "max_position_embeddings": 8192,
             "rope_theta": 500000.0, "tie_word_embeddings": False}
TINY = {"vocab_size": 1000, "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
        "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 1024,
        "tie_word_embeddings": False}
# Llama-3's <|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n and pad id (the real markup ids).
LLAMA3_GATING, LLAMA3_PAD = [128009, 128006, 78191, 128007, 271], 128004


def peak_tflops(name: str) -> float | None:
    return next((peak for key, peak in PEAK_BF16_TFLOPS if key in name), None)


def responses(count: int, max_length: int, vocab: int, gating: list[int], seed: int = 0) -> list[list[int]]:
    """``count`` conversations of long-tailed lengths (log-normal around 600 tokens, 32..max_length),
    each with the assistant markup ArmoRM gates on after a 20-200-token instruction."""
    rng = random.Random(seed)
    out = []
    for _ in range(count):
        length = int(min(max_length, max(32, rng.lognormvariate(math.log(600 * max_length / 4096), 0.8))))
        prompt = min(length - len(gating) - 1, rng.randint(20, 200))
        body = [rng.randrange(256, vocab - 512) for _ in range(length - len(gating))]
        out.append(body[:prompt] + gating + body[prompt:])
    return out


def useful_flops(lengths: list[int], config: dict[str, Any]) -> float:
    """Forward FLOPs the scores need: 2 x matmul parameters per token, plus causal attention
    (QK^T and AV: 2 x L^2 x hidden per layer, halved by the causal mask)."""
    matmul_params = parameter_count(config) - 2 * config["vocab_size"] * config["hidden_size"]
    attention = sum(2 * config["num_hidden_layers"] * n * n * config["hidden_size"] for n in lengths)
    return 2 * matmul_params * sum(lengths) + attention


def build_scorer(config: dict[str, Any], device: str, dtype: str, gating: list[int], pad: int,
                 max_length: int, batch_tokens: int) -> Any:
    """The recipe's scorer around ArmoRM built in place from ``config`` (random weights)."""
    import torch
    from transformers import LlamaConfig

    from magpie_dl.reward.armorm import armorm_config
    from magpie_dl.reward.armorm_modules import LlamaForRewardModelWithGating
    from magpie_dl.reward.scoring import RewardScorer

    torch.manual_seed(0)
    cfg = armorm_config(LlamaConfig(**config))
    cfg._attn_implementation = "sdpa"
    torch.set_default_dtype(getattr(torch, dtype))
    with torch.device(device):  # built where it runs: no 16 GB copy from the host
        model = LlamaForRewardModelWithGating(cfg).eval()
    torch.set_default_dtype(torch.float32)
    scorer = RewardScorer("random-armorm-8b", max_length=max_length, batch_size=64, batch_tokens=batch_tokens,
                          dtype=dtype, device=device, mask_padding=False)
    scorer.model, scorer.tokenizer, scorer.gating_ids = model, SimpleNamespace(pad_token_id=pad), gating
    return scorer


def timed_scores(scorer: Any, sequences: list[list[int]], attention: str) -> tuple[float, list[float | None]]:
    import torch

    scorer.model.config._attn_implementation = attention  # read by every layer at each forward
    scorer.score_token_ids(sequences[:4])  # warm-up: kernels, allocator
    if scorer.device.startswith("cuda"):
        torch.cuda.synchronize()
    start = time.perf_counter()
    scores = [s.score for s in scorer.score_token_ids(sequences)]
    if scorer.device.startswith("cuda"):
        torch.cuda.synchronize()
    return time.perf_counter() - start, scores


PROBE = ("import json, torch; p = torch.cuda.get_device_properties(0); "
         "x = torch.ones(1, device='cuda'); "
         "print(json.dumps({'uuid': str(getattr(p, 'uuid', '')), 'bus': getattr(p, 'pci_bus_id', None), "
         "'name': p.name, 'visible': torch.cuda.device_count()}))")


def reward_placement(count: int, memory_gb: float) -> dict[str, Any]:
    """The plan's reward stage on this node, each replica started under its devices."""
    ids = visible_devices()
    node = Node(count if ids is None else len(ids), memory_gb=memory_gb, device_ids=ids or ())
    placed = plan([StepNeed("reward", 1, None, flag="reward.device"), StepNeed("pairing")], node,
                  stages="sequential").steps["reward"]
    seen = []
    for devices in placed.devices:
        env = {**os.environ, "CUDA_VISIBLE_DEVICES": ",".join(map(str, devices))}
        done = subprocess.run([sys.executable, "-c", PROBE], env=env, capture_output=True, text=True, timeout=120)
        report = json.loads(done.stdout.strip().splitlines()[-1]) if done.returncode == 0 else {"error": done.stderr[-300:]}
        seen.append({"devices": list(devices), **report})
    physical = [s.get("uuid") or s.get("bus") for s in seen]
    return {"replicas": placed.replicas, "seen": seen,
            "distinct": len(set(physical)) == len(physical) and all(s.get("visible") == 1 for s in seen)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="a tiny model on CPU (checks the script)")
    parser.add_argument("--responses", type=int, default=None, help="sequences to score (512; tiny: 32)")
    parser.add_argument("--out", type=Path, default=None, help="write the results as JSON here")
    args = parser.parse_args(argv)

    import torch

    on_gpu = torch.cuda.is_available() and not args.tiny
    if not on_gpu and not args.tiny:
        print("error: no CUDA device here; use --tiny for the CPU check", file=sys.stderr)
        return 2
    config = TINY if args.tiny else ARMORM_8B
    device, dtype = ("cuda", "bfloat16") if on_gpu else ("cpu", "float32")
    max_length, batch_tokens = (4096, 32768) if not args.tiny else (256, 2048)
    gating, pad = (LLAMA3_GATING, LLAMA3_PAD) if not args.tiny else ([995, 996, 997, 998, 999], 0)
    count = args.responses or (32 if args.tiny else 512)
    sequences = responses(count, max_length, config["vocab_size"], gating)
    lengths = [len(s) for s in sequences]

    started = time.perf_counter()
    scorer = build_scorer(config, device, dtype, gating, pad, max_length, batch_tokens)
    built_s = time.perf_counter() - started
    name = torch.cuda.get_device_name(0) if on_gpu else "cpu"
    peak = peak_tflops(name) if on_gpu else None
    flops = useful_flops(lengths, config)
    result: dict[str, Any] = {
        "device": name, "dtype": dtype, "shape": "tiny" if args.tiny else "ArmoRM-Llama3-8B",
        "parameters": parameter_count(config), "responses": count, "tokens": sum(lengths),
        "length_min_median_max": [min(lengths), sorted(lengths)[len(lengths) // 2], max(lengths)],
        "build_s": round(built_s, 2), "peak_bf16_tflops": peak, "attention": {},
    }
    scores: dict[str, list[float | None]] = {}
    for attention in ("sdpa", "eager"):
        elapsed, scores[attention] = timed_scores(scorer, sequences, attention)
        tflops = flops / elapsed / 1e12
        result["attention"][attention] = {
            "seconds": round(elapsed, 3), "tokens_per_s": round(sum(lengths) / elapsed),
            "tflops": round(tflops, 2), "percent_of_peak": round(100 * tflops / peak, 1) if peak else None,
        }
    pairs = [(a, b) for a, b in zip(scores["sdpa"], scores["eager"]) if a is not None and b is not None]
    result["scored"] = len(pairs)
    result["sdpa_vs_eager_max_abs_diff"] = max((abs(a - b) for a, b in pairs), default=None)
    if on_gpu:
        result["memory_peak_gb"] = round(torch.cuda.max_memory_allocated() / 1e9, 1)
        del scorer
        torch.cuda.empty_cache()
        memory_gb = torch.cuda.get_device_properties(0).total_memory / 1e9
        result["reward_placement"] = reward_placement(torch.cuda.device_count(), memory_gb)
    result["total_s"] = round(time.perf_counter() - started, 1)

    print(f"{result['shape']} on {name} ({dtype}): {count} responses, {result['tokens']:,} tokens "
          f"(min/median/max {result['length_min_median_max']}), built in {result['build_s']} s")
    for attention, row in result["attention"].items():
        share = f", {row['percent_of_peak']}% of {peak:g} TFLOPS bf16 peak" if peak else ""
        print(f"  {attention:5s}: {row['seconds']:8.3f} s  {row['tokens_per_s']:>9,} tokens/s  {row['tflops']} TFLOPS{share}")
    print(f"  scores sdpa vs eager: max |diff| {result['sdpa_vs_eager_max_abs_diff']}")
    if "reward_placement" in result:
        placement = result["reward_placement"]
        print(f"  reward placement: {placement['replicas']} replicas, distinct physical devices: {placement['distinct']}")
        for seen in placement["seen"]:
            print(f"    CUDA_VISIBLE_DEVICES={','.join(map(str, seen['devices']))} -> {seen.get('bus') or seen}")
    if args.out:
        args.out.write_text(json.dumps(result, indent=2))
    ok = result["scored"] == count and (not on_gpu or result["reward_placement"]["distinct"])
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
