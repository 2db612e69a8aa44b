"""The README's real run on a simulated GPU node: placed, staged and complete.

The recipe runs as a user runs it (``python pipelines/dpo_100k.py ...``, the real
distilabel pipeline, the real steps, store and export) on a node whose torch reports N
CUDA devices, with stand-ins only at the engine and scorer boundary
(``tests/gpu_node/``: they load nothing, log the devices they were started on, their
tensor-parallel size, memory fraction, load and unload times, and complete every
request). The models are the recipe's hub ids, resolved offline from a cache holding
their real ``config.json`` (layer sizes, for the weights check) and the tiny models'
tokenizers. ~1 min.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from gpu_node.hub import recipe_hub
from magpie_dl.config.dpo import REPO_ROOT
from magpie_dl.run.placement import Node, PlacementError, StepNeed, parameter_count, plan

pytestmark = pytest.mark.slow

SIM_DIR = Path(__file__).parent / "gpu_node"
RECIPE = REPO_ROOT / "pipelines" / "dpo_100k.py"
ROWS = 64
# The README's real-run command takes these only to stay small; placement is the recipe's own.
SMALL = ("--num-instructions", str(ROWS), "--generator.batch_size", "16", "--responses.batch_size", "8",
         "--reward.input_batch_size", "8", "--quiet")


@pytest.fixture(scope="module")
def hub(tiny_models, tmp_path_factory) -> Path:
    return recipe_hub(tmp_path_factory.mktemp("hub"), tiny_models)


def node_env(hub: Path, spec_path: Path, gpus: int, log: Path) -> dict[str, str]:
    """The environment of a process on a simulated node of ``gpus`` devices (80 GB each)."""
    spec_path.write_text(json.dumps({"gpus": gpus, "memory_gb": 80, "log": str(log)}))
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_") and k != "CUDA_VISIBLE_DEVICES"}
    return {**env, "PYTHONPATH": os.pathsep.join([str(SIM_DIR), str(REPO_ROOT)]),
            "MAGPIE_DL_SIMULATED_NODE": str(spec_path), "HF_HUB_CACHE": str(hub), "HF_HUB_OFFLINE": "1"}


def run_on_node(hub: Path, tmp: Path, gpus: int, *args: str) -> tuple[subprocess.CompletedProcess, list[dict]]:
    """``python pipelines/dpo_100k.py ARGS`` on a simulated node; its result and the models' log."""
    log = tmp / "models.jsonl"
    env = node_env(hub, tmp / "node.json", gpus, log)
    done = subprocess.run([sys.executable, str(RECIPE), *args], env=env, cwd=REPO_ROOT,
                          capture_output=True, text=True, timeout=600)
    events = [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []
    return done, events


def loaded_models(events: list[dict]) -> list[dict]:
    """One entry per model process: what it was started with, when it loaded and unloaded."""
    models: dict[int, dict] = {}
    for e in sorted(events, key=lambda e: e["t"]):
        if e["event"] == "load":
            models[e["pid"]] = {**e, "devices": e["devices"], "loaded": e["t"], "unloaded": None}
        else:
            models[e["pid"]]["unloaded"] = e["t"]
    return sorted(models.values(), key=lambda m: m["loaded"])


def devices(model: dict) -> list[int]:
    return [int(d) for d in (model["devices"] or "").split(",") if d]


def assert_no_shared_device(models: list[dict]) -> None:
    """No two models whose load..unload intervals overlap hold the same device."""
    for i, a in enumerate(models):
        for b in models[i + 1:]:
            if a["loaded"] < b["unloaded"] and b["loaded"] < a["unloaded"]:
                assert not set(devices(a)) & set(devices(b)), (a, b)


def assert_complete(out: Path) -> None:
    """Every instruction reached the end: its pair, or a row left out with its reason."""
    from datasets import load_from_disk

    pairs = load_from_disk(str(out / "dataset"))
    rows = sum(len(split) for split in pairs.values()) + len(load_from_disk(str(out / "left_out")))
    assert rows == ROWS
    assert json.loads((out / "summary.json").read_text())["pairs_kept"] == ROWS


def test_readme_real_run_on_one_node_of_8_gpus(hub, tmp_path):
    """Queries 70B TP8, then responses 70B TP8, then ArmoRM on each of the 8 GPUs, in that order."""
    out = tmp_path / "dpo_100k"
    done, events = run_on_node(hub, tmp_path, 8, "--output-dir", str(out), *SMALL)
    assert done.returncode == 0, done.stderr[-3000:]
    models = loaded_models(events)
    engines = [m for m in models if m["kind"] == "engine"]
    scorers = [m for m in models if m["kind"] == "scorer"]
    # Two engines (queries, then responses), each with its tensor-parallel count of distinct devices.
    assert [(m["model"], m["tp"], m["memory_fraction"]) for m in engines] == [
        ("meta-llama/Llama-3.1-70B-Instruct", 8, 0.9)] * 2
    for m in engines:
        assert sorted(devices(m)) == list(range(8)), m
    # One scorer per GPU, each on its own device (not all on cuda:0).
    assert len(scorers) == 8 and sorted(d for m in scorers for d in devices(m)) == list(range(8))
    assert all(m["device"] == "cuda" and len(devices(m)) == 1 for m in scorers)
    # Stages in order, each unloaded before the next loads.
    queries, responses = engines
    assert queries["unloaded"] <= responses["loaded"]
    assert responses["unloaded"] <= min(m["loaded"] for m in scorers)
    assert all(m["unloaded"] for m in models)
    assert_no_shared_device(models)
    assert_complete(out)


def test_readme_two_node_run_on_ray(ray_head, tiny_models, tmp_path):
    """2 x 8 GPUs on Ray: queries on one TP8 engine, then two TP8 response engines at once on
    disjoint devices, then the scorers each on a device of its own; Ray sets every actor's devices.

    Ray refuses several nodes on loopback, so the session's head is one Ray node
    advertising 16 GPUs and the plan is told the cluster's shape (``--nodes 2
    --gpus-per-node 8``). Two scorers instead of the plan's 16: each Ray actor is a
    fresh interpreter importing torch (~20 s each on 2 cores); the plan's 16 is
    checked without a run (test_plan_fills_stages_and_refuses_what_cannot_run).
    Everything else is the README's two-node command.
    """
    from ray_cluster import simulated_node_hub, simulated_node_spec

    address, _, temp_dir = ray_head
    hub = recipe_hub(Path(simulated_node_hub(temp_dir)), tiny_models)  # where the head's workers look
    log, spec = tmp_path / "models.jsonl", Path(simulated_node_spec(temp_dir))
    env = {**node_env(hub, spec, 8, log), "RAY_ADDRESS": address}
    out = tmp_path / "dpo_100k"
    try:
        done = subprocess.run([sys.executable, str(RECIPE), "--output-dir", str(out), "--nodes", "2",
                               "--gpus-per-node", "8", "--scaleout.reward_replicas", "2", *SMALL],
                              env=env, cwd=REPO_ROOT, capture_output=True, text=True, timeout=400)
    finally:
        spec.unlink()  # the head's workers serve other tests afterwards
    assert done.returncode == 0, done.stderr[-3000:]
    models = loaded_models([json.loads(line) for line in log.read_text().splitlines()])
    engines = [m for m in models if m["kind"] == "engine"]
    scorers = [m for m in models if m["kind"] == "scorer"]
    assert [(m["tp"], len(set(devices(m)))) for m in engines] == [(8, 8)] * 3
    queries, responses = engines[0], engines[1:]
    assert queries["unloaded"] <= min(m["loaded"] for m in responses)
    # Both response engines were up at once, on 16 distinct devices.
    assert max(m["loaded"] for m in responses) < min(m["unloaded"] for m in responses)
    assert sorted(d for m in responses for d in devices(m)) == list(range(16))
    assert len(scorers) == 2 and len({d for m in scorers for d in devices(m)}) == 2
    assert all(len(devices(m)) == 1 for m in scorers)
    assert max(m["unloaded"] for m in responses) <= min(m["loaded"] for m in scorers)
    assert_no_shared_device(models)
    assert_complete(out)


def test_four_gpu_node(hub, tmp_path):
    """The README command wants TP8: refused before anything loads. An 8B chat model at TP1:
    queries, responses and the scorer all fit at once, each on a device of its own."""
    refused, events = run_on_node(hub, tmp_path, 4, "--output-dir", str(tmp_path / "refused"), *SMALL)
    assert refused.returncode == 2 and not events
    assert refused.stderr.strip().splitlines() == [
        "error: --backend.tensor_parallel_size 8: a node has 4 GPUs and one engine cannot span nodes; "
        "set --backend.tensor_parallel_size 4 or less"]

    out = tmp_path / "tp1"
    done, events = run_on_node(hub, tmp_path, 4, "--output-dir", str(out), "--backend.tensor_parallel_size", "1",
                               "--generator.model", "meta-llama/Llama-3.1-8B-Instruct", *SMALL)
    assert done.returncode == 0, done.stderr[-3000:]
    models = loaded_models(events)
    assert sorted((m["kind"], m["tp"]) for m in models) == [("engine", 1), ("engine", 1), ("scorer", 1)]
    assert all(len(devices(m)) == 1 for m in models)
    # All three at once (1 + 1 + 1 GPUs fit 4): loaded together, no device shared.
    assert max(m["loaded"] for m in models) < min(m["unloaded"] for m in models)
    assert len({d for m in models for d in devices(m)}) == 3
    assert_no_shared_device(models)
    assert_complete(out)


def test_weights_that_cannot_fit_are_refused(hub):
    """70B in bf16 (~141 GB, from its config.json in the cache) on one 80 GB GPU: the line names the setting."""
    from magpie_dl.run.placement import weights_gb

    snap = hub / "models--meta-llama--Llama-3.1-70B-Instruct" / "snapshots" / "simulated"
    assert weights_gb(str(snap), "bfloat16") == pytest.approx(141, rel=0.01)
    assert weights_gb(str(snap), "float32") == pytest.approx(282, rel=0.01)
    need = StepNeed("magpie_generator", 1, 1, flag="backend.tensor_parallel_size",
                    weights_gb=weights_gb(str(snap), "auto"), memory_fraction=0.9)
    with pytest.raises(PlacementError, match=r"^--backend.tensor_parallel_size 1: magpie_generator's weights take "
                       r"~141 GB .* set --backend.tensor_parallel_size 2 or more"):
        plan([need], Node(8))
    assert plan([StepNeed(**{**need.__dict__, "gpus": 2})], Node(8)).steps["magpie_generator"].gpus == 2


def test_dry_run_prints_the_three_stage_plan_for_an_8_gpu_node(tmp_path):
    """On a machine without GPUs, for a node it does not have: stages, replicas x GPUs, device ids, hours."""
    done = subprocess.run([sys.executable, str(RECIPE), "--dry-run", "--gpus-per-node", "8",
                           "--output-dir", str(tmp_path / "out")], cwd=REPO_ROOT, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    plan_lines = done.stdout[done.stdout.index("placement:"):done.stdout.index("\nestimate (")].splitlines()
    assert plan_lines[0] == "placement: 1 node x 8 GPUs (80 GB each), 3 stages"
    assert [line.split(";")[0].strip() for line in plan_lines[1:]] == [
        "stage 1: 8/8 GPUs busy", "magpie_generator: 1 x 8 GPUs [0,1,2,3,4,5,6,7]",
        "stage 2: 8/8 GPUs busy", "responses: 1 x 8 GPUs [0,1,2,3,4,5,6,7]",
        "stage 3: 8/8 GPUs busy", "reward: 8 x 1 GPU [0] [1] [2] [3] [4] [5] [6] [7]", "pairing: 1 x CPU",
    ]
    # Hours from the estimate: 100K queries x 120 tokens at 2,500 tokens/s per GPU = 1.3 GPU-h on 8 GPUs.
    assert plan_lines[1].endswith("~0.2 h wall, 1.3 GPU-h")
    assert plan_lines[3].endswith("~4.2 h wall, 33.3 GPU-h") and plan_lines[5].endswith("~0.7 h wall, 5.3 GPU-h")


# --------------------------------------------------------------------------- the plan's rules, no run


def gpu_steps(tp: int, reward_replicas: int | None = None) -> list[StepNeed]:
    return [StepNeed("queries", tp, 1, flag="backend.tensor_parallel_size", work="queries"),
            StepNeed("responses", tp, None, flag="backend.tensor_parallel_size",
                     replicas_flag="scaleout.generation_replicas", work="responses"),
            StepNeed("reward", 1, reward_replicas, flag="reward.device", replicas_flag="scaleout.reward_replicas"),
            StepNeed("pairing")]


def test_plan_fills_stages_and_refuses_what_cannot_run():
    staged = plan(gpu_steps(4), Node(8))
    assert staged.load_groups == [["queries"], ["responses"], ["reward", "pairing"]]
    assert staged.steps["responses"].devices == ((0, 1, 2, 3), (4, 5, 6, 7))
    assert staged.steps["reward"].devices == tuple((i,) for i in range(8))
    # CUDA_VISIBLE_DEVICES=2,3,6,7: the plan pins those ids.
    visible = plan(gpu_steps(2), Node(4, device_ids=(2, 3, 6, 7)))
    assert visible.steps["responses"].devices == ((2, 3), (6, 7))
    # On Ray, replicas fill every node; Ray picks the devices.
    two_nodes = plan(gpu_steps(8), Node(8, nodes=2), local=False)
    assert (two_nodes.steps["responses"].replicas, two_nodes.steps["reward"].replicas) == (2, 16)
    with pytest.raises(PlacementError, match=r"^--scaleout.reward_replicas 9: 9 x 1 GPUs for reward and 8 GPUs"):
        plan(gpu_steps(8, reward_replicas=9), Node(8))
    with pytest.raises(PlacementError, match=r"^--backend.tensor_parallel_size 16: a node has 8 GPUs"):
        plan(gpu_steps(16), Node(8, nodes=2), local=False)
    with pytest.raises(PlacementError, match="needs GPUs and this machine has none"):
        plan(gpu_steps(1), Node(0))


def test_parameter_count_from_config_matches_the_published_sizes():
    from gpu_node.hub import ARMORM_8B, LLAMA_70B

    assert parameter_count(LLAMA_70B) == pytest.approx(70.6e9, rel=0.01)
    assert parameter_count(ARMORM_8B) == pytest.approx(8.03e9, rel=0.01)


def test_the_node_honours_cuda_visible_devices(monkeypatch):
    """The devices a local run pins are the ones CUDA_VISIBLE_DEVICES lists, not 0..N-1."""
    import magpie_dl.run.preflight as preflight
    from magpie_dl.run.placement import this_node

    monkeypatch.setattr(preflight, "cuda_devices", lambda: (2, 141.0))  # what torch reports under the variable
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "5,7")
    assert this_node(None, None, None) == Node(2, 1, 141.0, (5, 7))
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "GPU-1234")
    with pytest.raises(PlacementError, match="CUDA_VISIBLE_DEVICES='GPU-1234': give device indices"):
        this_node(None, None, None)
    assert this_node(4, 2, None) == Node(4, 2, 80.0)  # --gpus-per-node 4 --nodes 2: no probe


def test_a_replica_pins_its_planned_devices(monkeypatch):
    """distilabel names each replica's model ``<step>-replica-<N>`` (its local step wrapper, checked
    here against the installed version); the model pins the plan's devices for that N."""
    import inspect

    from distilabel.pipeline.step_wrapper import _StepWrapper

    from magpie_dl.backends.vllm import VLLMBackend

    assert '-replica-{self.replica}"' in inspect.getsource(_StepWrapper._init_cuda_device_placement)
    llm = VLLMBackend(model="unused", tensor_parallel_size=2, device_plan=["0,1", "2,3"])
    llm._llm_identifier = "responses-replica-1"
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    assert llm.pin_planned_devices() == [2, 3] and os.environ["CUDA_VISIBLE_DEVICES"] == "2,3"
    llm.disable_cuda_device_placement = True  # on Ray: Ray set the devices
    assert llm.pin_planned_devices() is None
