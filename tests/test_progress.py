"""Live progress lines and the dry-run estimate."""

from __future__ import annotations

import io
import re
import time

import pytest

from recipe_cli import run_recipe_cli
from magpie_dl.backends.base import Completion, CompletionLLM, CompletionStream, PromptInput, SamplingSpec
from magpie_dl.config.estimate import EstimateConfig, estimate
from magpie_dl.run.progress import ProgressMonitor, RowTally, rates
from magpie_dl.run.store import ResultStore


def test_rates_count_from_first_progress_and_give_an_eta():
    first: dict = {}
    [r] = rates({"responses": (10, 1000)}, {"responses": 100}, first, now=100.0)
    assert r.rows_per_s == 0 and r.eta_s is None  # one observation: no rate yet
    [r] = rates({"responses": (30, 3000)}, {"responses": 100}, first, now=110.0)
    assert r.rows_per_s == pytest.approx(2.0) and r.tokens_per_s == pytest.approx(200.0)
    assert r.eta_s == pytest.approx(35.0)
    assert "30/100 (30%)" in r.line() and "ETA 35s" in r.line()


def test_a_step_done_in_one_batch_shows_its_real_rate():
    """The step reports its start (a zero counter), then all its rows at once."""
    first: dict = {}
    finished: dict = {}
    [r] = rates({"responses": (0, 0)}, {"responses": 24}, first, now=100.0, finished=finished)
    assert r.rows_per_s == 0 and r.done == 0
    [r] = rates({"responses": (24, 4800)}, {"responses": 24}, first, now=112.0, finished=finished)
    assert r.rows_per_s == pytest.approx(2.0) and r.tokens_per_s == pytest.approx(400.0)
    assert "24/24 (100%) 2.0 rows/s 400 tok/s" in r.line()
    [r] = rates({"responses": (24, 4800)}, {"responses": 24}, first, now=200.0, finished=finished)
    assert r.rows_per_s == pytest.approx(2.0)  # finished: its rate no longer decays with the clock


def test_monitor_reads_counters_written_by_step_processes(tmp_path):
    store = ResultStore(tmp_path)
    stream = io.StringIO()
    with ProgressMonitor(ResultStore(tmp_path), {"reward": 50}, interval_s=0.05, stream=stream):
        for _ in range(5):
            store.count_progress("reward", 5, 100)
            time.sleep(0.06)
    lines = [l for l in stream.getvalue().splitlines() if l.startswith("[progress]")]
    assert lines and "reward 25/50" in lines[-1]


def test_estimate_scales_with_the_recipe():
    work = estimate(100_000, 5, True, EstimateConfig(query_tokens=100, response_tokens=500, template_tokens=0,
                                                        generation_tokens_per_gpu_s=1000, scoring_tokens_per_gpu_s=10_000))
    assert work.completions == 500_000 and work.generated_tokens == 100_000 * 100 + 500_000 * 500
    assert work.gpu_hours_generation == pytest.approx(work.generated_tokens / 1000 / 3600)
    assert estimate(1000, 5, False, EstimateConfig()).query_prompts == 0


def test_dry_run_loads_nothing_and_prints_graph_config_estimate(tmp_path):
    out = tmp_path / "dry"
    result = run_recipe_cli("--dry-run", "--output-dir", str(out), "--estimate.response_tokens", "1000")
    assert result.returncode == 0, result.stderr[-2000:]
    text = result.stdout
    assert "magpie_generator [MagpieGenerator] -> responses" in text and "pairing [BestWorstPairing] -> (output)" in text
    assert "meta-llama/Llama-3.1-70B-Instruct" in text and "response_tokens: 1000" in text
    assert "response requests: 100,000 (500,000 completions)" in text and "GPU-hours:" in text
    assert not out.exists()  # nothing ran, nothing was written


def test_dry_run_under_ray_prints_the_placement_without_a_cluster(tmp_path):
    out = tmp_path / "dry"
    result = run_recipe_cli(
        "--dry-run", "--ray", "--output-dir", str(out), "--backend.tensor_parallel_size", "4",
        "--scaleout.query_replicas", "2", "--scaleout.generation_replicas", "2", "--scaleout.reward_replicas", "8",
    )
    assert result.returncode == 0, result.stderr[-2000:]
    text = result.stdout
    for line in ("magpie_queries: 2 x 4 GPUs", "responses: 2 x 4 GPUs", "reward: 8 x 1 GPU", "pairing: 1 x CPU",
                 "placement: 1 node x 8 GPUs (80 GB each), 3 stages", "stage 3: 8/8 GPUs busy"):
        assert line in text
    logs = result.stdout + result.stderr
    assert "Ray instance" not in logs and "existing Ray cluster" not in logs  # none started or joined
    assert not out.exists()


def test_a_step_done_between_two_looks_shows_the_rate_it_ran_at(tmp_path):
    """Started and finished before the display first looked: its rate comes from its own clock."""
    store = ResultStore(tmp_path)
    started = time.time()
    store.count_progress("magpie_generator", 0, 0)  # the step's report_started
    time.sleep(0.2)
    store.count_progress("magpie_generator", 64, 640)
    ran = time.time() - started
    time.sleep(0.3)  # the display looks only now
    [r] = ProgressMonitor(ResultStore(tmp_path), {"magpie_generator": 64}).snapshot()
    assert r.done == 64
    assert 64 / ran <= r.rows_per_s <= 64 / 0.2, r.line()  # its own run time, not the time until the look
    assert r.tokens_per_s == pytest.approx(10 * r.rows_per_s)


# --- counts as work finishes, rates over a recent window, the line on a terminal or not ----


def test_rates_follow_the_recent_window_not_the_average_since_the_start():
    """Fast for 100 s, then ten times slower: the rate and ETA are the recent pace, and the ETA
    comes from the token rate (at the tokens a row has taken so far)."""
    looks: dict = {}
    for t in range(0, 101, 5):  # 10 rows/s, 100 tokens a row
        [r] = rates({"responses": (10 * t, 1000 * t)}, {"responses": 2000}, looks, now=float(t))
    for t in range(105, 161, 5):  # then 1 row/s
        [r] = rates({"responses": (1000 + (t - 100), 100_000 + 100 * (t - 100))}, {"responses": 2000}, looks, now=float(t))
    assert r.done == 1060
    assert r.rows_per_s == pytest.approx(1.0) and r.tokens_per_s == pytest.approx(100.0)  # not 6.6 rows/s
    assert r.eta_s == pytest.approx(940 * 100 / 100.0)  # 940 rows left, 100 tokens a row, 100 tok/s
    assert "ETA 15m40s" in r.line()


def test_a_row_counts_when_its_last_request_finishes():
    counts: list[tuple[int, int]] = []
    tally = RowTally(lambda rows, tokens: counts.append((rows, tokens)), num_rows=4, row_of=[0, 0, 1, 1, 2, 2])
    assert counts == [(1, 0)]  # row 3 has nothing to run: done at once
    tally.done([0], 10)
    tally.done([2, 1], 30)
    assert counts[1:] == [(0, 10), (1, 30)]  # row 0 once both its requests finished
    tally.close()  # rows 1 and 2 were read back from the store
    assert counts[-1] == (2, 0) and sum(rows for rows, _ in counts) == 4


class FakeTerminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def count_steadily(store: ResultStore, pause_s: float) -> None:
    """responses: 40 rows in four steps, then reward all at once."""
    store.count_progress("responses", 0, 0)
    for _ in range(4):
        time.sleep(pause_s)
        store.count_progress("responses", 10, 1000)
    store.count_progress("reward", 0, 0)
    store.count_progress("reward", 40, 900)


def test_on_a_terminal_one_line_is_redrawn_in_place_cut_to_the_width(tmp_path):
    term = FakeTerminal()
    with ProgressMonitor(ResultStore(tmp_path), {"responses": 40, "reward": 40}, interval_s=0.05, stream=term, width=60):
        count_steadily(ResultStore(tmp_path), 0.15)
    out = term.getvalue()
    before_done = out[: out.index("responses 40/40")]
    assert "\n" not in before_done and before_done.count("\r\x1b[K") >= 3, repr(out)  # one line, redrawn
    # What is redrawn: after each return to the line's start, up to a line's end if any.
    drawn = [part.split("\n")[0] for part in out.split("\r\x1b[K") if part and not part.startswith("[progress] responses 40/40")]
    assert len(drawn) >= 3 and all(len(part) <= 59 for part in drawn), drawn
    assert any(part.endswith("…") for part in drawn)  # both steps do not fit in 60 columns
    # Each step's 100% line stays, and the live line is ended: the shell's prompt starts on a line of its own.
    assert out.endswith("\n")
    kept = [line.split("\r\x1b[K")[-1] for line in out.split("\n")[:-1]]
    assert [line.split(" (")[0] for line in kept] == ["[progress] responses 40/40", "[progress] reward 40/40"], kept
    assert all("(100%)" in line for line in kept)


def test_elsewhere_a_plain_line_each_interval(tmp_path):
    stream = io.StringIO()
    with ProgressMonitor(ResultStore(tmp_path), {"responses": 40, "reward": 40}, interval_s=0.05, stream=stream):
        count_steadily(ResultStore(tmp_path), 0.15)
    out = stream.getvalue()
    assert "\r" not in out and "\x1b" not in out
    lines = out.splitlines()
    assert all(line.startswith("[progress] ") for line in lines)
    running = [line for line in lines if "responses" in line and "ETA" in line]
    assert len(running) >= 3 and "responses 10/40 (25%)" in "\n".join(running)
    assert lines[-2].startswith("[progress] responses 40/40 (100%)") and lines[-1].startswith("[progress] reward 40/40 (100%)")


def test_every_step_ends_on_its_100_percent_line_even_when_the_run_ends_between_looks(tmp_path):
    """A run shorter than one interval (the demo's reward step): the last look still shows each step done."""
    stream = io.StringIO()
    with ProgressMonitor(ResultStore(tmp_path), {"responses": 40, "reward": 40}, interval_s=60, stream=stream):
        count_steadily(ResultStore(tmp_path), 0.01)
    lines = stream.getvalue().splitlines()
    assert [line.split(" (")[0] for line in lines] == ["[progress] responses 40/40", "[progress] reward 40/40"]
    assert all("(100%)" in line and " in " in line and "ETA" not in line for line in lines)


class TrickleStream(CompletionStream):
    """A slow engine: one request finishes every ``every_s`` seconds, in the order submitted,
    each of its samples ``tokens`` tokens long."""

    def __init__(self, every_s: float, tokens: int) -> None:
        self.every_s, self.tokens = every_s, tokens
        self.running: list = []
        self.next_at = 0.0

    def submit(self, requests) -> None:
        if not self.running:
            self.next_at = time.monotonic() + self.every_s
        self.running.extend(requests)

    def poll(self, timeout: float):
        wait = self.next_at - time.monotonic()
        if not self.running or wait > timeout:
            time.sleep(timeout)
            return []
        time.sleep(max(wait, 0.0))
        self.next_at += self.every_s
        tag, _, spec = self.running.pop(0)
        return [(tag, [Completion("A fine answer.", [5] * self.tokens, "stop") for _ in range(spec.n)])]

    @property
    def in_flight(self) -> int:
        return len(self.running)


class TrickleLLM(CompletionLLM):
    """The model boundary of a slow engine (the tiny model's tokenizer renders the prompts)."""

    every_s: float = 0.15

    def complete(self, prompts, sampling):  # all at once, as a batch-at-a-time caller gets them
        return [[Completion("A fine answer.", [5] * 7, "stop") for _ in range(spec.n)] for spec in sampling]

    def open_stream(self) -> TrickleStream:
        return TrickleStream(self.every_s, tokens=7)


def test_a_long_batch_shows_rising_counts_and_tokens_before_it_is_released(tiny_models, tmp_path):
    """One batch of 8 instructions whose responses finish one by one inside the real streaming
    step: the counts rise while the batch is in flight (a batch is released only whole, so a
    count below 8 is seen before), with a token rate; the step then ends on its 100% line."""
    from distilabel.pipeline import Pipeline
    from distilabel.steps import LoadDataFromDicts

    from magpie_dl.steps.responses import MultiResponseGeneration

    rows = [{"uuid": f"u{i}", "instruction": f"Tell me about tea ({i})."} for i in range(8)]
    with Pipeline(name="trickle", cache_dir=str(tmp_path / "distilabel")) as pipeline:
        load = LoadDataFromDicts(name="load", data=rows, batch_size=8)
        respond = MultiResponseGeneration(
            name="responses", llm=TrickleLLM(model=tiny_models["generator"]), num_generations=5, max_tokens=8,
            input_batch_size=8, cache_dir=str(tmp_path / "store"),
        )  # fmt: skip
        load >> respond
    stream = io.StringIO()
    with ProgressMonitor(ResultStore(tmp_path / "store"), {"responses": 8}, interval_s=0.05, stream=stream):
        out = pipeline.run(use_cache=False)["default"]["train"].to_list()
    assert [r["generations"] for r in out] == [["A fine answer."] * 5] * 8
    lines = stream.getvalue().splitlines()
    seen = [re.search(r"responses (\d+)/8 \(\d+%\) [\d.]+ rows/s ([\d.]+K?) tok/s", line) for line in lines]
    counts = [(int(m[1]), m[2]) for m in seen if m]
    in_flight = [(done, rate) for done, rate in counts if 0 < done < 8]
    assert len({done for done, _ in in_flight}) >= 3, lines  # rising while the batch runs...
    assert [done for done, _ in counts] == sorted(done for done, _ in counts)
    assert all(rate != "0" for _, rate in in_flight), lines  # ...with tokens counted as they finish
    assert lines[-1].startswith("[progress] responses 8/8 (100%)"), lines


class CountingStore(ResultStore):
    """The result store, noting each progress count a step makes."""

    def __init__(self, directory) -> None:
        super().__init__(directory)
        self.counts: list[tuple[int, int]] = []

    def count_progress(self, step: str, rows: int, tokens: int) -> None:
        self.counts.append((rows, tokens))
        super().count_progress(step, rows, tokens)


def test_the_live_display_follows_every_model_step_generator_included(tiny_models):
    from distilabel.pipeline import Pipeline

    from magpie_dl.backends.transformers import TransformersBackend
    from magpie_dl.run.driver import progress_totals
    from magpie_dl.steps.magpie import MagpieGenerator
    from magpie_dl.steps.pairing import BestWorstPairing
    from magpie_dl.steps.responses import MultiResponseGeneration

    with Pipeline(name="followed") as pipeline:
        (MagpieGenerator(name="queries", llm=TransformersBackend(model=tiny_models["generator"]), num_rows=4)
         >> MultiResponseGeneration(name="responses", llm=TransformersBackend(model=tiny_models["generator"]))
         >> BestWorstPairing(name="pairing"))
    assert progress_totals(pipeline, 4) == {"queries": 4, "responses": 4}


def test_a_long_transformers_batch_counts_its_tokens_as_they_are_decoded(tiny_models, tmp_path, monkeypatch):
    """All of a batch's samples decode together on the transformers engine, so no row is done
    until near the batch's end: its tokens count step by step before any row does, and add
    up to the tokens the completions hold (counted once, not again when they finish)."""
    import magpie_dl.steps.base as base
    from magpie_dl.backends.transformers import TransformersBackend
    from magpie_dl.steps.responses import MultiResponseGeneration

    monkeypatch.setattr(base, "DECODED_EVERY_S", 0.0)  # count every decoding step
    step = MultiResponseGeneration(
        llm=TransformersBackend(model=tiny_models["generator"], dtype="float32"),
        num_generations=2, max_tokens=24, seed=3, cache_dir=str(tmp_path),
    )
    step.load()
    step._run.store = store = CountingStore(tmp_path)
    rows = [{"uuid": f"u{i}", "instruction": f"Tell me about topic {i}."} for i in range(3)]
    [out] = list(step.process(rows))
    first_row = next(i for i, (done, _) in enumerate(store.counts) if done)
    decoded_before = [tokens for _, tokens in store.counts[:first_row] if tokens]
    assert decoded_before and decoded_before[0] == 6  # the first step: 3 rows x 2 samples
    assert sum(done for done, _ in store.counts) == 3
    assert sum(tokens for _, tokens in store.counts) == sum(sum(r["generation_tokens"]) for r in out)


def test_the_reward_step_counts_rows_and_tokens_as_it_scores_them(tiny_models, tmp_path):
    """Scored two sequences a pass: rows count as their responses are scored, with the tokens
    scored, not all at the batch's end; a row with nothing to score counts at once."""
    from magpie_dl.steps.reward import RewardScoring

    step = RewardScoring(model=tiny_models["reward"], dtype="float32", max_length=256, scoring_batch_size=2,
                         cache_dir=str(tmp_path))
    step.load()
    step._run.store = store = CountingStore(tmp_path)
    answers = ["Yes.", "Tea is a drink made from leaves.", "Owls hunt at night and sleep by day, mostly."]
    rows = [{"instruction": f"Question {i}?", "generations": [text, text]} for i, text in enumerate(answers)]
    rows.append({"instruction": "Nothing came back.", "generations": ["", ""]})
    [scored] = list(step.process(rows))
    assert all(r is not None for row in scored[:3] for r in row["ratings"])
    passes = [(rows, tokens) for rows, tokens in store.counts if tokens]
    assert len(passes) == 3 and all(rows == 1 for rows, _ in passes), store.counts  # one row's pair a pass
    assert sum(rows for rows, _ in store.counts) == 4
    assert store.progress()["reward_scoring_0"][1] == sum(tokens for _, tokens in passes) > 0


def test_the_transformers_backend_hands_back_each_prompt_as_it_finishes(tiny_models):
    """Within one call, a short prompt's completions come back while a long one still decodes,
    and they are the call's results."""
    from magpie_dl.backends.transformers import TransformersBackend

    llm = TransformersBackend(model=tiny_models["generator"], dtype="float32")
    llm.load()
    prompts = [PromptInput((5, 6, 7)), PromptInput((8, 9))]
    specs = [SamplingSpec(n=2, max_tokens=30, seed=1), SamplingSpec(n=2, max_tokens=2, seed=2)]  # length only
    order: list[int] = []
    got: dict[int, list] = {}

    def finished(i: int, completions: list) -> None:
        order.append(i)
        got[i] = completions

    llm.complete_each(prompts, specs, finished)
    assert order == [1, 0]
    assert [got[0], got[1]] == llm.complete(prompts, specs)
    assert [c.num_tokens for c in got[0] + got[1]] == [30, 30, 2, 2]


def test_the_judge_step_counts_a_row_once_all_its_tasks_are_answered(tiny_models, tmp_path):
    """Three judge tasks per instruction, answered one by one: a row counts with its last
    answer, every answer's tokens as it comes; an instruction not sent counts at once."""
    from magpie_dl.steps.curation import InstructionTagging

    step = InstructionTagging(llm=TrickleLLM(model=tiny_models["generator"], every_s=0.01),
                              tasks=["difficulty", "quality", "classification"], cache_dir=str(tmp_path))
    step.load()
    step._run.store = store = CountingStore(tmp_path)
    rows = [{"instruction": "Plan a trip."}, {"instruction": "", "instruction_status": "empty"},
            {"instruction": "Sort a list."}]
    list(step.process(rows))
    assert store.counts[0] == (0, 0)  # the step's start
    assert store.counts[1] == (1, 0)  # the empty instruction: nothing to judge
    answers = store.counts[2:]
    assert answers == [(0, 7), (0, 7), (1, 7)] * 2, store.counts  # the stand-in's answers are 7 tokens each
