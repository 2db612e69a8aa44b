"""Both recipes' CLIs on a real local Ray head (loopback only), data parallel, same rows as a local run.

The session's Ray head (tests/ray_cluster.py) serves them. The head, the driver and the workers are pinned to 127.0.0.1 and the test
checks the addresses Ray reports. The tiny models run on CPU (~3-4 min in all).
"""

from __future__ import annotations

from collections import Counter
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from compare import assert_same
from forced_queries import query_seeds, run_args
from magpie_dl.config.dpo import REPO_ROOT

pytest.importorskip("ray")
pytestmark = pytest.mark.slow

# Run in a fresh interpreter against the head after the recipe ran: what Ray recorded about
# the run (jobs' driver addresses, the step actors and where they lived, the nodes), through
# our own connect() so the probe is pinned the way the CLI is.
PROBE = textwrap.dedent(
    """
    import json, sys
    import ray._private.state as state
    from magpie_dl.run.scaleout import ScaleoutConfig, connect
    report = connect(ScaleoutConfig(ray_address=sys.argv[1]))
    actors = state.actors()
    print(json.dumps({
        "report": report,
        "drivers": sorted({j["DriverIPAddress"] for j in state.jobs()}),
        "actors": sorted(a["Name"] for a in actors.values() if a["Name"]),
        "actor_ips": sorted({a["Address"]["IPAddress"] for a in actors.values() if a["Address"]["IPAddress"]}),
    }))
    """
)
# Row 15's query repeats row 3's (case and spacing folded), an exact duplicate across the two
# query batches: forced at the model boundary (tests/forced_queries.py), so both runs hold it
# whatever the tiny model samples on this machine; every other query is the model's own.
SEED = 35
FORCED = query_seeds(SEED, {3: "Which rows repeat this exact query?", 15: "which rows  repeat this EXACT query?"})
SMOKE = ("--preset", "smoke", "--seed", str(SEED), "--num-instructions", "16", "--generator.batch_size", "8",
         "--responses.batch_size", "4", "--responses.max_tokens", "24", "--reward.input_batch_size", "4", "--quiet")
RECIPE = REPO_ROOT / "pipelines" / "dpo_100k.py"
CURATION = REPO_ROOT / "pipelines" / "magpie_instructions.py"
CURATION_SMOKE = ("--preset", "smoke", "--seed", str(SEED), "--generator.num_instructions", "16",
                  "--generator.batch_size", "8", "--tagging.batch_size", "8", "--tagging.max_tokens", "24",
                  "--instruct_reward.batch_size", "8", "--instruct_reward.max_tokens", "24",
                  "--reward.input_batch_size", "8", "--selection.target_size", "8")


def _rows(out_dir: Path) -> list[dict]:
    """Every row the run wrote (pairs of both splits and the rows left out), by uuid."""
    from datasets import load_from_disk

    pairs = load_from_disk(str(out_dir / "dataset"))
    rows = [r for split in pairs.values() for r in split.to_list()] + load_from_disk(str(out_dir / "left_out")).to_list()
    return sorted(rows, key=lambda r: r["uuid"])


def test_recipe_on_ray_matches_local_run(ray_head, tiny_models, tmp_path):
    address, head_env, _ = ray_head
    # The CLI's environment does not carry the head's loopback pinning: the recipe must pin itself.
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    local = subprocess.run(
        [sys.executable, *run_args(FORCED, RECIPE), *SMOKE, "--output-dir", str(tmp_path / "local")],
        env=env, cwd=REPO_ROOT, capture_output=True, text=True, timeout=600,
    )
    assert local.returncode == 0, local.stderr[-3000:]
    # The head is shared by the session's Ray tests: this run's actors are those added from here on.
    before = _probe(address, env)
    on_ray = subprocess.run(
        [sys.executable, *run_args(FORCED, RECIPE), *SMOKE, "--output-dir", str(tmp_path / "ray"),
         "--scaleout.query_replicas", "2", "--scaleout.generation_replicas", "2", "--scaleout.reward_replicas", "2"],
        env={**env, "RAY_ADDRESS": address}, cwd=REPO_ROOT, capture_output=True, text=True, timeout=600,
    )
    assert on_ray.returncode == 0, on_ray.stderr[-3000:]

    seen = _probe(address, env)
    # Loopback only: drivers (the recipe's and the probe's), nodes and every step actor.
    assert seen["report"]["driver"] == "127.0.0.1" and seen["report"]["nodes"] == ["127.0.0.1"]
    assert seen["report"]["gcs"] == address
    assert seen["drivers"] == ["127.0.0.1"]
    assert seen["actor_ips"] == ["127.0.0.1"]
    # The steps ran as Ray actors, data parallel as configured: two query writers (fed row
    # slots; duplicates marked after them, in row order), two response engines, two scorers.
    this_run = {"actors": list((Counter(seen["actors"]) - Counter(before["actors"])).elements())}
    assert _step_actors(this_run, "magpie-dpo-100k") == {
        "query_slots-0", "magpie_queries-0", "magpie_queries-1", "exact_duplicates-0",
        "responses-0", "responses-1", "reward-0", "reward-1", "pairing-0",
    }

    # Per-row seeds and duplicates marked in row order: every row equal to the single-generator
    # local run (queries, provenance, responses, pairs exactly; scores, computed in other
    # batches and processes, within tests/compare.py's tolerance), whichever replica served it.
    local_rows, ray_rows = _rows(tmp_path / "local"), _rows(tmp_path / "ray")
    assert len(local_rows) == 16
    assert [r["uuid"] for r in local_rows] == [r["uuid"] for r in ray_rows]
    for a, b in zip(local_rows, ray_rows):
        assert_same(a, b, a["uuid"])
    assert sum(len(r["responses"]) for r in ray_rows) > 0
    original, repeat = _forced_rows(ray_rows)
    assert repeat["pair_status"] == "instruction_duplicate" and repeat["responses"] == []
    # The original is kept (no pair_status) or left out for another reason, never as a duplicate.
    assert original.get("pair_status") != "instruction_duplicate" and len(original["responses"]) == 5


def test_curation_recipe_on_ray_matches_local_run(ray_head, tiny_models, tmp_path):
    address, _, _ = ray_head
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    local = subprocess.run(
        [sys.executable, *run_args(FORCED, CURATION), *CURATION_SMOKE, "--output-dir", str(tmp_path / "local")],
        env=env, cwd=REPO_ROOT, capture_output=True, text=True, timeout=600,
    )
    assert local.returncode == 0, local.stderr[-3000:]
    on_ray = subprocess.run(
        [sys.executable, *run_args(FORCED, CURATION), *CURATION_SMOKE, "--output-dir", str(tmp_path / "ray"), "--ray",
         "--scaleout.ray_address", address, "--scaleout.query_replicas", "2",
         "--scaleout.tagging_replicas", "2", "--scaleout.reward_replicas", "2"],
        env=env, cwd=REPO_ROOT, capture_output=True, text=True, timeout=600,
    )
    assert on_ray.returncode == 0, on_ray.stderr[-3000:]

    seen = _probe(address, env)
    assert seen["actor_ips"] == ["127.0.0.1"]
    actors = _step_actors(seen, "magpie-instructions")
    assert {"magpie_queries-0", "magpie_queries-1", "judge_tags-0", "judge_tags-1",
            "instruct_reward_model-0", "instruct_reward_model-1", "selection-0"} <= actors
    assert "instruct_response-1" not in actors  # generation_replicas stays 1

    # The same curated set, left-out rows and selection report as the local run (instruct
    # rewards and neighbour distances within tests/compare.py's tolerance, all else exactly).
    for name in ("instructions.jsonl", "left_out.jsonl", "selection.json"):
        assert_same(_json_of(tmp_path / "ray" / name), _json_of(tmp_path / "local" / name), name)
    selected, left_out = (_json_of(tmp_path / "ray" / name) for name in ("instructions.jsonl", "left_out.jsonl"))
    original, repeat = _forced_rows(selected + left_out)
    assert repeat in left_out and repeat["instruction_status"] == "duplicate"
    assert original["instruction_status"] == "ok"


def _json_of(path: Path) -> list | dict:
    """A ``.json`` file's value, or a ``.jsonl`` file's rows."""
    text = path.read_text()
    return [json.loads(line) for line in text.splitlines()] if path.suffix == ".jsonl" else json.loads(text)


def _forced_rows(rows: list[dict]) -> tuple[dict, dict]:
    """The rows of the forced queries: (row 3's, row 15's), found by their sampling seeds."""
    by_seed = {r["gen_input_configs"]["seed"]: r for r in rows}
    original, repeat = (by_seed[int(seed)] for seed in FORCED)
    assert [original["instruction"], repeat["instruction"]] == list(FORCED.values())
    return original, repeat


def _probe(address: str, env: dict[str, str]) -> dict:
    """What Ray recorded about the runs so far (see PROBE)."""
    probe = subprocess.run([sys.executable, "-c", PROBE, address], env=env, cwd=REPO_ROOT,
                           capture_output=True, text=True, timeout=120)
    assert probe.returncode == 0, probe.stderr[-3000:]
    return json.loads(probe.stdout.strip().splitlines()[-1])


def _step_actors(seen: dict, pipeline_name: str) -> set[str]:
    """``step-replica`` of every step actor of ``pipeline_name`` (not its queues)."""
    prefix = f"distilabel-{pipeline_name}-"
    return {a.removeprefix(prefix) for a in seen["actors"] if a.startswith(prefix) and "-queue" not in a}
