"""Placement decisions for Ray (no cluster needed): GPUs per engine, replicas, load stages."""

from __future__ import annotations

import importlib.util
import json

import pytest

from magpie_dl.config import PRESETS, REPO_ROOT, validate
from magpie_dl.scaleout import ScaleoutConfig, is_loopback, load_groups, place_steps, wants_ray


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
