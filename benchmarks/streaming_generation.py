"""Long-tailed generation lengths: the response step (streaming across batches) vs one ``generate`` call.

Run in the vLLM environment (``scripts/setup_vllm_env.sh``):

    VLLM_CPU_KVCACHE_SPACE=1 .venv-vllm/bin/python benchmarks/streaming_generation.py [--serve]

Every request's length is fixed in advance (``min_tokens = max_tokens = L``,
``ignore_eos``, no stops), so all ways of running see exactly the same work. L is drawn
log-normal (median 59, p99 560, capped at 700, seeded): the shape of the released
responses' lengths (a few dozen tokens up to the 4096 cap, long right tail) scaled down
to what a tiny model on a CPU gets through in a minute.

For each step batch size (the recipe's ``responses.batch_size``, 500, and a small one):

1. **step in the pipeline**: ``LoadDataFromDicts >> MultiResponseGeneration`` in a
   distilabel pipeline, as the recipe runs it (the streaming loop, ``VLLMBackend``), one
   response per instruction with its fixed length. The backend times its stream from the
   first request submitted to the last completion returned: output tokens / that window.
   Run once (each pipeline starts an engine).
2. Then, in the same process on the same warm engine, interleaved ``--repeats`` times
   (medians reported; this machine's load moves single timings by 2x):
   - **stream replay**: the step's batches through the same stream and ordering code,
     without distilabel;
   - **one call**: one ``LLM.generate`` over exactly the requests the step sent (same
     token ids and seeds);
   - **batch by batch**: one ``generate`` per step batch, one after another: what the
     step did before it streamed (distilabel's hand-offs not included).

Each measurement starts with an empty prefix cache. ``--serve`` repeats the comparison
through ``vllm serve`` (one, then two endpoints) with ``OpenAIBackend``: the step's
stream against all requests sent at once under the same concurrency limit.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import random
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # run from a checkout
sys.path.insert(1, str(REPO / "benchmarks"))

from pydantic import PrivateAttr  # noqa: E402

from magpie_dl.backends.base import Completion, CompletionStream, PromptInput, SamplingSpec  # noqa: E402
from magpie_dl.backends.openai import OpenAIBackend  # noqa: E402
from magpie_dl.backends.vllm import VLLMBackend  # noqa: E402
from magpie_dl.run.streaming import OrderedBatches, complete_in_batches  # noqa: E402
from magpie_dl.distilabel_compat import streaming  # noqa: E402
from magpie_dl.steps.responses import MultiResponseGeneration  # noqa: E402
from vllm_generation import instructions  # noqa: E402

Z99 = 2.3263478740408408  # the standard normal's 99th percentile


def fixed_lengths(count: int, median: float, p99: float, cap: int, seed: int) -> list[int]:
    """``count`` log-normal lengths with the given median and 99th percentile, in [1, cap]."""
    rng = random.Random(seed)
    sigma = math.log(p99 / median) / Z99
    return [max(1, min(cap, round(rng.lognormvariate(math.log(median), sigma)))) for _ in range(count)]


class FixedLengthResponses(MultiResponseGeneration):
    """The response step, each row's responses exactly ``target_tokens`` long (benchmark only)."""

    def sampling_spec(self, row: dict[str, Any]) -> SamplingSpec:
        length = row["target_tokens"]
        spec = super().sampling_spec(row)
        return replace(spec, min_tokens=length, max_tokens=length, ignore_eos=True, stop=(), stop_token_ids=())


class TimedStream(CompletionStream):
    """A stream that notes what it was sent and when its first request went in and its last came out."""

    def __init__(self, inner: CompletionStream, log: dict[str, Any]) -> None:
        self.inner, self.log = inner, log

    def submit(self, requests: Any) -> None:
        requests = list(requests)
        if self.log["recording"]:
            self.log.setdefault("first_submit", time.perf_counter())
            self.log["batches"].append([(p, s) for _, p, s in requests])
            self.log.setdefault("events", []).append((time.perf_counter(), "submit", len(requests)))
        self.inner.submit(requests)

    def poll(self, timeout: float) -> list[tuple[Any, list[Completion]]]:
        finished = self.inner.poll(timeout)
        if self.log["recording"]:
            self.log.setdefault("events", []).append((time.perf_counter(), "poll", len(finished)))
        if finished and self.log["recording"]:
            self.log["last_finish"] = time.perf_counter()
            self.log["tokens"] += sum(c.num_tokens for _, cs in finished for c in cs)
        return finished

    @property
    def in_flight(self) -> int:
        return self.inner.in_flight

    def close(self) -> None:
        self.inner.close()


def _new_log() -> dict[str, Any]:
    return {"batches": [], "tokens": 0, "recording": True}


def _reset_cache(backend: Any) -> None:
    if isinstance(backend, VLLMBackend):
        backend.engine.reset_prefix_cache()


def _timed(backend: Any, run: Any) -> tuple[int, float]:
    _reset_cache(backend)
    start = time.perf_counter()
    tokens = run()
    return tokens, time.perf_counter() - start


def baselines(backend: Any, log: dict[str, Any], repeats: int) -> dict[str, Any]:
    """Interleaved, ``repeats`` times: the step's batches replayed through the stream (the
    step's path without distilabel), one call over all its requests, one call per batch."""
    batches = log["batches"]
    prompts = [p for batch in batches for p, _ in batch]
    specs = [s for batch in batches for _, s in batch]

    def count(results: Any) -> int:
        return sum(c.num_tokens for cs in results for c in cs)

    def stream() -> int:
        ordered = OrderedBatches(backend.open_stream(), None, "bench", "1", backend.model_name)
        work = [(k, [p for p, _ in b], [s for _, s in b]) for k, b in enumerate(batches)]
        return sum(count(results) for _, results in complete_in_batches(ordered, work))

    def by_batch() -> int:
        return sum(count(backend.complete([p for p, _ in b], [s for _, s in b])) for b in batches)

    log["recording"] = False
    runs: dict[str, list] = {"stream_replay": [], "one_call": [], "batch_by_batch": []}
    for _ in range(repeats):
        runs["stream_replay"].append(_timed(backend, stream))
        runs["one_call"].append(_timed(backend, lambda: count(backend.complete(prompts, specs))))
        runs["batch_by_batch"].append(_timed(backend, by_batch))
    return runs


def _finish(backend: Any, record_path: str, log: dict[str, Any], repeats: int) -> None:
    """At unload, still in the step's process: the baselines on the same engine, then the record."""
    if log["batches"]:
        result = {
            "step": (log["tokens"], log["last_finish"] - log["first_submit"]),
            "batches": len(log["batches"]),
            "requests": sum(len(b) for b in log["batches"]),
            "expected_tokens": sum(s.max_tokens * s.n for b in log["batches"] for _, s in b),
            "events": [(t - log["first_submit"], kind, n) for t, kind, n in log.get("events", [])],
            **baselines(backend, log, repeats),
        }
        Path(record_path).write_text(json.dumps(result))


def _warm_up(backend: Any) -> None:
    prompt = PromptInput((backend.tokenizer.bos_token_id or 0, 10, 11))
    backend.complete([prompt] * 4, [SamplingSpec(n=2, max_tokens=8, seed=1)] * 4)


class TimedVLLMBackend(VLLMBackend):
    """VLLMBackend whose stream is timed; runs the baselines at unload (benchmark only)."""

    record_path: str
    repeats: int = 2
    _log: dict = PrivateAttr(default_factory=_new_log)

    def load(self) -> None:
        super().load()
        _warm_up(self)
        self.engine.reset_prefix_cache()

    def open_stream(self) -> TimedStream:
        return TimedStream(super().open_stream(), self._log)

    def unload(self) -> None:
        if self._llm is not None:
            _finish(self, self.record_path, self._log, self.repeats)
        super().unload()


class TimedOpenAIBackend(OpenAIBackend):
    """OpenAIBackend whose stream is timed; runs the baselines at unload (benchmark only)."""

    record_path: str
    repeats: int = 2
    _log: dict = PrivateAttr(default_factory=_new_log)

    def load(self) -> None:
        super().load()
        _warm_up(self)

    def open_stream(self) -> TimedStream:
        return TimedStream(super().open_stream(), self._log)

    def unload(self) -> None:
        if self._client is not None:
            _finish(self, self.record_path, self._log, self.repeats)
        super().unload()


def run_step(args: argparse.Namespace, batch_size: int, llm: Any, rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The response step in a pipeline; the record its backend wrote."""
    from distilabel.pipeline import Pipeline
    from distilabel.steps import LoadDataFromDicts

    with tempfile.TemporaryDirectory() as tmp, Pipeline(name="bench-streaming", cache_dir=tmp) as pipeline:
        load = LoadDataFromDicts(name="load", data=rows, batch_size=batch_size)
        respond = FixedLengthResponses(
            name="responses", llm=llm, engine="vllm", num_generations=1, temperature=0.8,
            max_tokens=args.cap, input_batch_size=batch_size,
        )  # fmt: skip
        load >> respond
        started = time.perf_counter()
        with streaming(pipeline):  # as the recipe's driver runs it
            out = pipeline.run(use_cache=False)["default"]["train"].to_list()
        wall = time.perf_counter() - started
    record = json.loads(Path(llm.record_path).read_text())
    assert [r["uuid"] for r in out] == [r["uuid"] for r in rows], "rows out of order"
    got = sum(sum(r["generation_tokens"]) for r in out)
    totals = {tokens for way in ("stream_replay", "one_call", "batch_by_batch") for tokens, _ in record[way]}
    assert {got, record["expected_tokens"], record["step"][0]} | totals == {got}, "every way must generate exactly the fixed lengths"
    return {"batch_size": batch_size, "pipeline_wall_s_incl_startup": wall, **record}


def load_average() -> float:
    return os.getloadavg()[0]


def _median_rate(runs: list) -> float:
    return statistics.median(tokens / seconds for tokens, seconds in runs)


def report(name: str, result: dict[str, Any]) -> str:
    step = result["step"][0] / result["step"][1]
    replay, one, by_batch = (_median_rate(result[k]) for k in ("stream_replay", "one_call", "batch_by_batch"))
    spread = lambda k: "-".join(f"{t / s:,.0f}" for t, s in sorted(result[k], key=lambda r: r[0] / r[1]))  # noqa: E731
    return (
        f"| {name} | {result['batch_size']} ({result['batches']} batches) | {step:,.0f} tok/s ({result['step'][1]:.1f} s) "
        f"| **{step / one:.0%}** | {replay:,.0f} tok/s ({spread('stream_replay')}) | **{replay / one:.0%}** "
        f"| {one:,.0f} tok/s ({spread('one_call')}) | {by_batch:,.0f} tok/s ({by_batch / one:.0%}) "
        f"| {result['load_before']:.1f} / {result['load_after']:.1f} |"
    )


def measure(
    args: argparse.Namespace, batch_size: int, llm: Any, rows: list[dict[str, Any]], way: str, name: str,
    results: dict[str, Any],
) -> str:
    """One way's run of the step (with the machine's load before and after) added to
    ``results``; its table line, printed as it comes."""
    before = load_average()
    result = run_step(args, batch_size, llm, rows)
    result.update(way=way, load_before=before, load_after=load_average())
    results["runs"].append(result)
    line = report(name, result)
    print(line, flush=True)
    return line


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=str(REPO / "models" / "tiny" / "generator"))
    parser.add_argument("--requests", type=int, default=1500)
    parser.add_argument("--batch-sizes", default="500,100", help="step batch sizes (500: the recipe's)")
    parser.add_argument("--median", type=float, default=59)
    parser.add_argument("--p99", type=float, default=560)
    parser.add_argument("--cap", type=int, default=700)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--serve", action="store_true", help="also through vllm serve (one and two endpoints)")
    parser.add_argument("--skip-offline", action="store_true")
    parser.add_argument("--endpoints", default="1,2")
    parser.add_argument("--concurrency", type=int, default=256, help="OpenAIBackend.max_concurrency (both ways)")
    parser.add_argument("--repeats", type=int, default=2, help="interleaved repeats of the same-engine measurements")
    parser.add_argument("--json", type=Path, default=None, help="write the results here")
    args = parser.parse_args(argv)

    from magpie_dl.recipe.queries import row_uuid

    lengths = fixed_lengths(args.requests, args.median, args.p99, args.cap, args.seed)
    ordered = sorted(lengths)
    print(
        f"{len(lengths)} requests, lengths: median {ordered[len(ordered) // 2]}, p99 {ordered[int(len(ordered) * 0.99)]}, "
        f"max {ordered[-1]}, total {sum(lengths):,} tokens; {platform.node()}, {os.cpu_count()} CPUs"
    )
    rows = [
        {"instruction": q, "uuid": row_uuid(args.model, 0, i), "target_tokens": n}
        for i, (q, n) in enumerate(zip(instructions(args.requests), lengths))
    ]
    engine = {"model": args.model, "dtype": "float32", "max_model_len": 1024, "seed": 0}
    results: dict[str, Any] = {"lengths": {"median": args.median, "p99": args.p99, "cap": args.cap, "total": sum(lengths)}, "runs": []}
    lines = []
    with tempfile.TemporaryDirectory() as tmp:
        if not args.skip_offline:
            for size in [int(s) for s in args.batch_sizes.split(",")]:
                llm = TimedVLLMBackend(record_path=f"{tmp}/offline-{size}.json", repeats=args.repeats, **engine)
                lines.append(measure(args, size, llm, rows, "offline vLLM", "offline `VLLMBackend`", results))
        if args.serve:
            sys.path.insert(0, str(REPO / "tests" / "vllm"))
            from serving_helpers import API_KEY, free_port, server_command, stop_process, wait_for_http

            os.environ["MAGPIE_DL_API_KEY"] = API_KEY
            for count in [int(c) for c in args.endpoints.split(",")]:
                servers, urls = [], []
                try:
                    for _ in range(count):
                        port = free_port()
                        log = open(f"{tmp}/serve-{port}.log", "wb")
                        servers.append(subprocess.Popen(server_command(Path(args.model), port), stdout=log,
                                                        stderr=subprocess.STDOUT, start_new_session=True))  # fmt: skip
                        urls.append(f"http://127.0.0.1:{port}")
                    for proc, url in zip(servers, urls):
                        wait_for_http(f"{url}/v1/models", proc, timeout=600, log=Path(f"{tmp}/serve-{url.rsplit(':', 1)[1]}.log"))
                    for size in [int(s) for s in args.batch_sizes.split(",")]:
                        llm = TimedOpenAIBackend(
                            model=args.model, base_urls=urls, max_concurrency=args.concurrency,
                            record_path=f"{tmp}/serve{count}-{size}.json", repeats=args.repeats,
                        )  # fmt: skip
                        name = f"`vllm serve`, {count} endpoint{'s' if count > 1 else ''}"
                        lines.append(measure(args, size, llm, rows, f"vllm serve x{count}", name, results))
                finally:
                    for proc in servers:
                        stop_process(proc)
    print(
        "\n| way | step batch size | step in the pipeline | / one call | stream replay (median, range) "
        "| / one call | one call (median, range) | batch by batch (/ one call) | load before / after |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    print("\n".join(lines))
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
