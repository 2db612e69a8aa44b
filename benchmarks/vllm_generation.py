"""Generation throughput on vLLM: the pipeline's response step vs one ``LLM.generate`` call.

Run in the vLLM environment (``scripts/setup_vllm_env.sh``):

    VLLM_CPU_KVCACHE_SPACE=1 .venv-vllm/bin/python benchmarks/vllm_generation.py

Three measurements on the same tiny model and engine configuration, one after another:

1. **pipeline**: a distilabel pipeline ``LoadDataFromDicts >> MultiResponseGeneration``
   (our step, ``VLLMBackend``, the recipe's 5 responses per instruction). Its backend
   records every request it gets and the window from the start of its first
   ``complete`` to the end of its last: output tokens / window is the step's throughput,
   batching, distilabel's hand-offs and the engine's idle time between batches included.
2. **one call**: a fresh engine replays exactly those requests (same token ids, same
   seeds, so the same samples) in a single ``LLM.generate`` call: the ceiling.
3. **n=5 vs 5 calls**: that one call (``n=5`` per prompt) against the reference
   scripts' way, five ``generate`` calls with ``n=1`` (seeds ``seed + i``, so again the
   same samples). Direct measurements are repeated, interleaved, and the medians compared.

Engine start-up is excluded everywhere (each engine is warmed up before timing).
Results print as a table and go to ``--json``.
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import platform
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout

from pydantic import PrivateAttr  # noqa: E402

from magpie_dl.backends.base import Completion, PromptInput, SamplingSpec  # noqa: E402
from magpie_dl.backends.vllm import VLLMBackend  # noqa: E402
from magpie_dl.distilabel_compat import streaming  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
_VERBS = ["learn", "explain", "plan", "fix", "compare", "improve", "write", "organize"]
_TOPICS = [
    "python lists", "a sourdough starter", "compound interest", "binary search", "a job interview",
    "photosynthesis", "SQL joins", "a wedding toast", "a budget spreadsheet", "black holes",
    "Git branches", "a chess opening", "unit tests", "probability", "a road trip", "meditation",
]  # fmt: skip
_FORMS = ["How do I {v} {t}?", "Can you {v} {t} for a beginner?", "What is the best way to {v} {t}?",
          "Give me three tips to {v} {t}.", "Why is it hard to {v} {t}?"]  # fmt: skip


def instructions(count: int) -> list[str]:
    """``count`` distinct, query-like instructions."""
    pool = [f.format(v=v, t=t) for f in _FORMS for v in _VERBS for t in _TOPICS]
    if count > len(pool):
        pool += [f"{q} (variant {i})" for i in range(count // len(pool) + 1) for q in pool]
    return pool[:count]


class RecordingVLLMBackend(VLLMBackend):
    """VLLMBackend that records its requests and the window they took (benchmark only).

    It runs inside distilabel's step process, so it writes its record to ``record_path``
    at unload for the parent to read.
    """

    record_path: str
    warmup: bool = True

    _calls: list[tuple[float, float, list[PromptInput], list[SamplingSpec], int]] = PrivateAttr(default_factory=list)

    def load(self) -> None:
        super().load()
        if self.warmup:
            warm_up(self)
            self._calls.clear()

    def complete(self, prompts: list[PromptInput], sampling: list[SamplingSpec]) -> list[list[Completion]]:
        start = time.perf_counter()
        results = super().complete(prompts, sampling)
        tokens = sum(c.num_tokens for cs in results for c in cs)
        self._calls.append((start, time.perf_counter(), prompts, sampling, tokens))
        return results

    def unload(self) -> None:
        if self._calls:
            Path(self.record_path).write_bytes(pickle.dumps(self._calls))
        super().unload()


def warm_up(backend: VLLMBackend) -> None:
    """A few short requests so lazy initialisation is not timed."""
    prompt = PromptInput((backend.tokenizer.bos_token_id or 0, 10, 11))
    backend.complete([prompt] * 4, [SamplingSpec(n=2, max_tokens=8, seed=1)] * 4)


def engine_config(args: argparse.Namespace) -> dict[str, Any]:
    return {"model": args.model, "dtype": args.dtype, "max_model_len": args.max_model_len, "seed": 0}


def run_pipeline(args: argparse.Namespace, record: Path) -> dict[str, Any]:
    """The response step inside a distilabel pipeline; its recorded window and tokens."""
    from distilabel.pipeline import Pipeline
    from distilabel.steps import LoadDataFromDicts

    from magpie_dl.recipe.queries import row_uuid
    from magpie_dl.steps.responses import MultiResponseGeneration

    queries = instructions(args.instructions)
    rows = [{"instruction": q, "uuid": row_uuid(args.model, 0, i)} for i, q in enumerate(queries)]
    with Pipeline(name="bench-vllm-generation") as pipeline:
        load = LoadDataFromDicts(name="load", data=rows, batch_size=args.batch_size)
        respond = MultiResponseGeneration(
            name="responses",
            llm=RecordingVLLMBackend(record_path=str(record), **engine_config(args)),
            engine="vllm",
            num_generations=5,
            max_tokens=args.max_tokens,
            temperature=0.8,
            input_batch_size=args.batch_size,
        )
        load >> respond
    started = time.perf_counter()
    with streaming(pipeline):  # as the recipe's driver runs it
        distiset = pipeline.run(use_cache=False)
    total = time.perf_counter() - started
    out_rows = distiset["default"]["train"].to_list()
    calls = pickle.loads(record.read_bytes())
    window = calls[-1][1] - calls[0][0]
    busy = sum(end - start for start, end, *_ in calls)
    tokens = sum(c[4] for c in calls)
    assert tokens == sum(sum(r["generation_tokens"]) for r in out_rows), "the record and the dataset disagree"
    return {
        "rows": len(out_rows),
        "batches": len(calls),
        "output_tokens": tokens,
        "window_s": window,
        "in_complete_s": busy,
        "tokens_per_s": tokens / window,
        "pipeline_wall_s_incl_startup": total,
        "calls": calls,
    }


def timed_generate(llm: Any, prompts: list[Any], params: list[Any]) -> tuple[float, int]:
    start = time.perf_counter()
    outputs = llm.generate(prompts, params, use_tqdm=False)
    seconds = time.perf_counter() - start
    return seconds, sum(len(o.token_ids) for out in outputs for o in out.outputs)


def run_direct(args: argparse.Namespace, calls: list[Any]) -> dict[str, Any]:
    """Replay the step's requests on a fresh engine: one call; then n=5 vs five n=1 calls."""
    from vllm.inputs import TokensPrompt

    backend = VLLMBackend(**engine_config(args))
    backend.load()
    try:
        warm_up(backend)
        prompts = [p for call in calls for p in call[2]]
        specs = [s for call in calls for s in call[3]]
        tokens_prompts = [TokensPrompt(prompt_token_ids=list(p.token_ids)) for p in prompts]
        llm = backend.engine

        one_params = [backend.sampling_params(s) for s in specs]
        # The reference scripts' way: one generate call per sample index, n=1, seed + i.
        single_params = [
            [backend.sampling_params(replace(s, n=1, seed=None if s.seed is None else s.seed + i)) for s in specs]
            for i in range(5)
        ]
        one, five = [], []
        # Interleaved repeats: on a shared machine the load drifts; medians of alternating
        # runs compare like with like.
        for _ in range(args.repeats):
            one.append(timed_generate(llm, tokens_prompts, one_params))
            runs = [timed_generate(llm, tokens_prompts, params) for params in single_params]
            five.append((sum(r[0] for r in runs), sum(r[1] for r in runs)))
        # Same requests, same seeds: the same samples, so the same amount of work.
        expected = sum(c[4] for c in calls)
        assert {t for _, t in one} == {t for _, t in five} == {expected}, (one, five, expected)
    finally:
        backend.unload()
    return {"one_call": _summary(one), "n1_five_calls": _summary(five)}


def _summary(runs: list[tuple[float, int]]) -> dict[str, Any]:
    """Median time of repeated runs of the same work, with the spread."""
    seconds = sorted(s for s, _ in runs)
    median = seconds[len(seconds) // 2]
    tokens = runs[0][1]
    return {
        "output_tokens": tokens,
        "seconds": median,
        "tokens_per_s": tokens / median,
        "tokens_per_s_range": [tokens / seconds[-1], tokens / seconds[0]],
        "repeats": len(runs),
    }


def _line(tokens: int, seconds: float) -> str:
    return f"{tokens:>8} tokens in {seconds:6.1f} s  {tokens / seconds:8.0f} tok/s"


def _spread(summary: dict[str, Any]) -> str:
    low, high = summary["tokens_per_s_range"]
    return f"  (median of {summary['repeats']}; range {low:.0f}-{high:.0f})"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=str(REPO / "models" / "tiny" / "generator"))
    parser.add_argument("--instructions", type=int, default=1500)
    parser.add_argument("--batch-size", type=int, default=500, help="rows per step batch (the recipe's default: 500)")
    parser.add_argument("--repeats", type=int, default=3, help="interleaved repeats of the direct measurements")
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--max-model-len", type=int, default=1024)
    parser.add_argument("--json", type=Path, default=None, help="write the results here")
    args = parser.parse_args(argv)
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    load_at_start = [round(x, 1) for x in os.getloadavg()]

    with tempfile.TemporaryDirectory() as tmp:
        piped = run_pipeline(args, Path(tmp) / "record.pkl")
    direct = run_direct(args, piped.pop("calls"))
    ratio = piped["tokens_per_s"] / direct["one_call"]["tokens_per_s"]
    n5_speedup = direct["one_call"]["tokens_per_s"] / direct["n1_five_calls"]["tokens_per_s"]
    import vllm

    result = {
        "config": {**vars(args), "json": str(args.json) if args.json else None},
        "environment": {
            "vllm": vllm.__version__,
            "machine": platform.machine(),
            "cpus": os.cpu_count(),
            "load_average": load_at_start,
        },
        "pipeline_step": piped,
        "direct": direct,
        "pipeline_vs_one_call": ratio,
        "n5_one_request_vs_five_calls": n5_speedup,
    }
    print(f"\nvLLM {vllm.__version__}, {args.instructions} instructions x 5 responses, max_tokens {args.max_tokens}, "
          f"step batches of {args.batch_size}")  # fmt: skip
    print(f"  pipeline step:          {_line(piped['output_tokens'], piped['window_s'])}"
          f"  ({piped['batches']} batches; {piped['in_complete_s']:.1f} s inside complete())")  # fmt: skip
    one, n1 = direct["one_call"], direct["n1_five_calls"]
    print(f"  one LLM.generate call:  {_line(one['output_tokens'], one['seconds'])}{_spread(one)}")
    print(f"  -> pipeline / one call: {ratio:.1%}")
    print(f"  5 calls with n=1:       {_line(n1['output_tokens'], n1['seconds'])}{_spread(n1)}")
    print(f"  -> n=5 in one request vs 5 calls: {n5_speedup:.2f}x")
    print(f"  load average at start: {result['environment']['load_average']}")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
