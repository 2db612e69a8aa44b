"""Placement decisions for Ray (no cluster needed): GPUs per engine, replicas, load stages."""

from __future__ import annotations

import importlib.util
import json

import pytest

from magpie_dl.config.dpo import PRESETS, REPO_ROOT, validate
from magpie_dl.run.outdir import in_progress_dir
from magpie_dl.run.scaleout import ScaleoutConfig, is_loopback, load_groups, place_steps, wants_ray


@pytest.fixture(scope="module")
def recipe():
    spec = importlib.util.spec_from_file_location("dpo_100k", REPO_ROOT / "pipelines" / "dpo_100k.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def full_config(tp: int):
    """The full recipe (vLLM 70B, ArmoRM on cuda); building it loads no model."""
    data = json.loads(json.dumps(PRESETS["full"]))
    data["backend"] = {"kind": "vllm", "tensor_parallel_size": tp}
    return validate(data)


def test_full_recipe_on_one_node_of_8_gpus_loads_in_stages(recipe):
    cfg = full_config(tp=4)
    pipeline = recipe.build_pipeline(cfg)
    placement = place_steps(pipeline, cfg, ScaleoutConfig(generation_replicas=2, reward_replicas=8))
    assert placement == {"magpie_generator": (1, 4), "responses": (2, 4), "reward": (8, 1), "pairing": (1, 0)}
    step = pipeline.dag.get_step("responses")["step"]
    assert (step.resources.replicas, step.resources.gpus) == (2, 4)
    # The result store path is absolute: Ray workers run elsewhere.
    assert step.cache_dir == str((cfg.cache_dir).resolve())
    # 4 + 8 + 8 GPUs wanted, 8 there: one stage per GPU step, pairing streams with reward.
    assert load_groups(pipeline, placement, cluster_gpus=8) == [["magpie_generator"], ["responses"], ["reward", "pairing"]]
    # 32 GPUs hold everything at once: no stages, all steps stream.
    assert load_groups(pipeline, placement, cluster_gpus=32) is None
    assert load_groups(pipeline, placement, cluster_gpus=32, stages="sequential") is not None
    assert load_groups(pipeline, placement, cluster_gpus=8, stages="together") is None


def test_replicated_queries_use_every_gpu_group(recipe):
    cfg = full_config(tp=4)
    cfg.scaleout.query_replicas = 2
    pipeline = recipe.build_pipeline(cfg)
    scale = ScaleoutConfig(query_replicas=2, generation_replicas=2, reward_replicas=8)
    placement = place_steps(pipeline, cfg, scale)
    assert placement == {
        "query_slots": (1, 0), "magpie_queries": (2, 4), "exact_duplicates": (1, 0),
        "responses": (2, 4), "reward": (8, 1), "pairing": (1, 0),
    }
    step = pipeline.dag.get_step("magpie_queries")["step"]
    assert (step.resources.replicas, step.resources.gpus) == (2, 4)
    assert step.cache_dir == str((cfg.cache_dir).resolve())
    # The slots and the duplicate marking (CPU) stream with the query writers.
    assert load_groups(pipeline, placement, cluster_gpus=8) == [
        ["query_slots", "magpie_queries", "exact_duplicates"], ["responses"], ["reward", "pairing"]
    ]
    assert load_groups(pipeline, placement, cluster_gpus=24) is None


def test_one_query_replica_keeps_the_single_generator(recipe):
    cfg = full_config(tp=4)
    names = list(recipe.build_pipeline(cfg).dag)
    assert names == ["magpie_generator", "responses", "reward", "pairing"]


def test_curation_recipe_placement():
    from magpie_dl.config.curation import InstructionsConfig

    spec = importlib.util.spec_from_file_location(
        "magpie_instructions", REPO_ROOT / "pipelines" / "magpie_instructions.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    cfg = validate({"backend": {"kind": "vllm", "tensor_parallel_size": 2},
                    "tagging": {"guard_model": "meta-llama/Llama-Guard-3-8B"},
                    "scaleout": {"query_replicas": 4}}, InstructionsConfig)
    pipeline = module.build_pipeline(cfg)
    scale = ScaleoutConfig(query_replicas=4, generation_replicas=3, reward_replicas=8, tagging_replicas=4)
    placement = place_steps(pipeline, cfg, scale)
    assert placement == {
        "query_slots": (1, 0), "magpie_queries": (4, 2), "exact_duplicates": (1, 0), "language": (1, 0),
        "judge_tags": (4, 2), "safety": (4, 2), "instruct_response": (3, 2), "instruct_reward_model": (8, 1),
        "instruct_reward": (1, 0), "columns_read": (1, 0), "set_aside": (1, 0), "near_duplicates": (1, 1),
        "selection": (1, 0),
    }
    # The selection report is written by a Ray worker: an absolute path.
    report = pipeline.dag.get_step("selection")["step"].report_path
    assert report == str((in_progress_dir(cfg.output_dir) / "selection.json").resolve())


def test_global_steps_split_what_must_fit_at_once():
    """Steps on either side of a global step never run together: only one side must fit."""
    from magpie_dl.config.curation import InstructionsConfig

    spec = importlib.util.spec_from_file_location(
        "magpie_instructions", REPO_ROOT / "pipelines" / "magpie_instructions.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    cfg = validate({"backend": {"kind": "vllm", "tensor_parallel_size": 2}}, InstructionsConfig)
    pipeline = module.build_pipeline(cfg)
    placement = place_steps(pipeline, cfg, ScaleoutConfig(tagging_replicas=2))
    # generator 2 + judge 2 x 2 + instruct response 2 + reward model 1 before the global
    # near-duplicate search (1 GPU, loaded after them): 9 wanted at once, not 10.
    assert load_groups(pipeline, placement, cluster_gpus=9) is None
    assert load_groups(pipeline, placement, cluster_gpus=8) == [
        ["magpie_generator", "language"], ["judge_tags"], ["instruct_response"],
        ["instruct_reward_model", "instruct_reward", "columns_read", "set_aside"],
    ]


# A replicated step ends the first load stage. Plain distilabel 1.5 never stops its idle
# replica and spins forever waiting for the stage to unload.
STAGE_END = """
import sys
from distilabel.pipeline import Pipeline
from distilabel.steps import LoadDataFromDicts, Step, StepInput, StepResources
from magpie_dl.distilabel_compat import stop_replicas_at_stage_end

class Double(Step):
    @property
    def inputs(self):
        return ["i"]

    @property
    def outputs(self):
        return ["i"]

    def process(self, inputs: StepInput):
        yield [{"i": r["i"] * 2} for r in inputs]

with Pipeline(name="stage-end-replicas") as pipeline:
    load = LoadDataFromDicts(name="load", data=[{"i": i} for i in range(8)], batch_size=2)
    first = Double(name="first", input_batch_size=2, resources=StepResources(replicas=2))
    load >> first >> Double(name="second", input_batch_size=2)
stop_replicas_at_stage_end(pipeline)
data = pipeline.run(use_cache=False, load_groups=[["load", "first"], ["second"]])
print(sorted(r["i"] for r in data["default"]["train"]))
"""


@pytest.mark.slow
def test_replicas_ending_a_load_stage_are_stopped(tmp_path):
    import os
    import signal
    import subprocess
    import sys

    env = {**os.environ, "DISTILABEL_LOG_LEVEL": "WARNING", "HOME": str(tmp_path)}  # distilabel's cache in tmp
    # Its own process group: on a hang, end the run and every worker it started.
    proc = subprocess.Popen([sys.executable, "-c", STAGE_END], env=env, cwd=REPO_ROOT, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=120)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        pytest.fail("the pipeline hung at the end of its first load stage")
    assert proc.returncode == 0, err[-3000:]
    assert out.strip().splitlines()[-1] == str([4 * i for i in range(8)])


def test_no_gpus_reserved_on_a_cpu_cluster(recipe):
    cfg = full_config(tp=8)
    placement = place_steps(recipe.build_pipeline(cfg), cfg, ScaleoutConfig(generation_replicas=3), with_gpus=False)
    assert placement["responses"] == (3, 0)
    assert all(gpus == 0 for _, gpus in placement.values())


def test_when_ray_is_used(monkeypatch):
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    assert not wants_ray(ScaleoutConfig())
    assert wants_ray(ScaleoutConfig(ray=True))
    monkeypatch.setenv("RAY_ADDRESS", "10.0.0.5:6379")
    assert wants_ray(ScaleoutConfig())


@pytest.mark.parametrize(
    ("address", "loopback"),
    [(None, True), ("127.0.0.1:6379", True), ("localhost:1", True), ("ray://127.0.0.1:10001", True),
     ("10.0.0.5:6379", False), ("head.cluster:6379", False)],
)
def test_loopback_addresses(address, loopback):
    assert is_loopback(address) is loopback
