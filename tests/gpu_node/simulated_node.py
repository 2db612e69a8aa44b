"""A simulated GPU node: CUDA devices reported by torch, and stand-ins at the model boundary.

Active in any Python process started with this directory on ``PYTHONPATH`` and
``MAGPIE_DL_SIMULATED_NODE`` naming a JSON spec ``{"gpus": 8, "memory_gb": 80, "log": PATH}``
(``sitecustomize`` here installs it; without the variable nothing changes). Then:

* ``torch.cuda`` reports ``gpus`` devices of ``memory_gb`` (what the run's device probe asks);
* ``import vllm`` finds the stand-in package beside this file: its platform is CUDA, and its
  ``LLM`` is an engine that loads nothing, completes every request with a finished text,
  and appends to ``log`` when it starts and stops, with the ``CUDA_VISIBLE_DEVICES`` it was
  started under, its tensor-parallel size and memory fraction;
* the reward scorer (:class:`magpie_dl.reward.scoring.RewardScorer`) loads its tokenizer only,
  scores from the token ids, and logs its load and unload the same way.

Everything else (the recipe, distilabel's local or Ray pipeline, the steps, the placement
plan, the result store, the export) is the real code. Step workers (forked or Ray actors)
inherit the environment, so each of them simulates the same node.
"""

from __future__ import annotations

import hashlib
import importlib.abc
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

SPEC_ENV = "MAGPIE_DL_SIMULATED_NODE"


def spec() -> dict[str, Any] | None:
    path = os.environ.get(SPEC_ENV)
    if not path or not Path(path).is_file():
        return None
    return json.loads(Path(path).read_text())


def record(event: str, kind: str, **fields: Any) -> None:
    """One line in the node's log (appended whole: each worker writes its own lines)."""
    node = spec()
    line = json.dumps({"event": event, "kind": kind, "pid": os.getpid(), "t": time.time(),
                       "devices": os.environ.get("CUDA_VISIBLE_DEVICES"), **fields})
    with open(node["log"], "a") as f:
        f.write(line + "\n")


# --------------------------------------------------------------------------- torch reports the node


class _Properties:
    def __init__(self, memory_gb: float) -> None:
        self.total_memory = int(memory_gb * 1e9)
        self.name = "Simulated GPU"


def _patch_torch(torch: Any) -> None:
    node = spec()

    def count() -> int:  # read when asked: a worker pins its devices after torch was imported
        visible = os.environ.get("CUDA_VISIBLE_DEVICES")
        return len([d for d in visible.split(",") if d.strip()]) if visible is not None else int(node["gpus"])

    torch.cuda.device_count = count
    torch.cuda.is_available = lambda: count() > 0
    torch.cuda.get_device_properties = lambda device=0: _Properties(float(node.get("memory_gb", 80)))


# --------------------------------------------------------------------------- the reward scorer


def _patch_scoring(scoring: Any) -> None:
    scorer = scoring.RewardScorer

    def load(self: Any) -> None:
        from transformers import AutoTokenizer

        self.tokenizer = AutoTokenizer.from_pretrained(self.model_path)
        if self.tokenizer.pad_token_id is None:
            self.tokenizer.pad_token_id = self.tokenizer.eos_token_id
        self.model = "simulated"
        record("load", "scorer", model=self.model_path, device=self.device, tp=1, memory_fraction=None)

    def unload(self: Any) -> None:
        if self.model is not None:
            record("unload", "scorer", model=self.model_path, device=self.device)
        self.model = None

    def score_token_ids(self: Any, sequences: list[list[int]], done: Any = None) -> list[Any]:
        out = []
        for ids in sequences:
            digest = hashlib.sha256(json.dumps(list(ids)).encode()).digest()
            out.append(scoring.Scored(int.from_bytes(digest[:4], "big") / 2**32, len(ids), False))
        if done is not None:  # the live progress counts what was scored, as the real scorer reports it
            done(list(range(len(sequences))), sum(len(ids) for ids in sequences))
        return out

    scorer.load, scorer.unload, scorer.score_token_ids = load, unload, score_token_ids


# --------------------------------------------------------------------------- install


class _AfterImport(importlib.abc.MetaPathFinder):
    """Runs a patch right after a named module executes (in every process of the run)."""

    def __init__(self, patches: dict[str, Any]) -> None:
        self.patches = patches

    def find_spec(self, name: str, path: Any, target: Any = None) -> Any:
        patch = self.patches.get(name)
        if patch is None or spec() is None:  # read at import: a Ray worker may start before the spec is written
            return None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            found = finder.find_spec(name, path, target)
            if found is not None:
                break
        else:
            return None
        exec_module = found.loader.exec_module

        def exec_then_patch(module: Any) -> None:
            exec_module(module)
            patch(module)

        found.loader.exec_module = exec_then_patch
        return found


def install() -> None:
    """Simulate the node in this process when ``MAGPIE_DL_SIMULATED_NODE`` names a spec (checked
    when torch or the scorer is imported, so a process started before the spec was written joins in)."""
    if not os.environ.get(SPEC_ENV):
        return
    sys.meta_path.insert(0, _AfterImport({"torch": _patch_torch, "magpie_dl.reward.scoring": _patch_scoring}))
