"""Live progress lines and the dry-run estimate."""

from __future__ import annotations

import io
import time

import pytest

from recipe_cli import run_recipe_cli
from magpie_dl.estimate import EstimateConfig, estimate
from magpie_dl.progress import ProgressMonitor, rates
from magpie_dl.store import ResultStore


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
