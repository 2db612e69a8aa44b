"""The placement plan: which GPUs each model step holds, how many replicas, in which stage.

One plan serves a local run (one node; device ids pinned per replica here) and a Ray run
(Ray packs each replica's GPUs on one node and sets its devices). The inputs are plain
data (:class:`StepNeed` per step, in the graph's order, and the :class:`Node` shape);
:mod:`magpie_dl.run.scaleout` reads them from a pipeline and applies the result.

Rules, in order:

* a step holds ``gpus`` per replica: an engine its tensor-parallel size, a scorer or judge
  on cuda one; a replica never spans nodes;
* stages: the GPU steps between two global steps load together when one replica of each
  fits the GPUs; otherwise one GPU step per stage (distilabel ``load_groups``), the CPU
  steps around it streaming with it (``scaleout.stages`` forces either way);
* replicas: a count set in ``scaleout`` is kept; unset, a staged step fills its stage (as
  many engines as fit, one scorer per GPU) and steps loaded together get one each;
* local device ids: each stage hands out the node's devices (``CUDA_VISIBLE_DEVICES`` when
  set, else 0..N-1) in order, so no two models loaded at once share one.

A plan that cannot work raises :class:`PlacementError`, one line naming the setting to change.
Nothing here imports torch, distilabel or pydantic.
"""

from __future__ import annotations

import json
import math
import os
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# Bytes per parameter of each dtype name a config may give.
DTYPE_BYTES = {"float32": 4, "float": 4, "bfloat16": 2, "float16": 2, "half": 2}
# Memory of a GPU when nothing says otherwise (an 80 GB H100 / A100).
DEFAULT_GPU_MEMORY_GB = 80.0


class PlacementError(ValueError):
    """A plan that cannot run on the GPUs at hand; the message names the setting to change.

    (A ``ValueError``, not the config's ``ConfigError``: this module imports nothing of the
    config, so scripts/gpu_reward_check.py runs it where only torch and transformers are.)
    """


@dataclass(frozen=True)
class Node:
    """The GPUs a run can use: ``nodes`` nodes of ``gpus_per_node`` devices of ``memory_gb``.

    ``device_ids`` are the ids a local run pins (``CUDA_VISIBLE_DEVICES`` when set).
    """

    gpus_per_node: int
    nodes: int = 1
    memory_gb: float = DEFAULT_GPU_MEMORY_GB
    device_ids: tuple[int, ...] = ()

    @property
    def total(self) -> int:
        return self.gpus_per_node * self.nodes

    @property
    def ids(self) -> tuple[int, ...]:
        return self.device_ids or tuple(range(self.gpus_per_node))


@dataclass(frozen=True)
class StepNeed:
    """What the plan needs to know about one step (graph order).

    Attributes:
        name: the step's name.
        gpus: GPUs per replica (0: a CPU step).
        replicas: replicas asked for; ``None`` lets the plan choose (generator and global
            steps always run once: give 1).
        is_global: a global step (a stage boundary in distilabel).
        flag: the setting that changes ``gpus`` (named in refusals).
        replicas_flag: the setting that changes ``replicas``.
        weights_gb: the model's weights in its dtype, when known (for the fit check).
        memory_fraction: the share of each GPU the model may take (vLLM's ``gpu_memory_utilization``).
        work: what the step's time is estimated as (``queries``, ``responses``, ``reward``), or None.
    """

    name: str
    gpus: int = 0
    replicas: int | None = 1
    is_global: bool = False
    flag: str = ""
    replicas_flag: str = ""
    weights_gb: float | None = None
    memory_fraction: float = 1.0
    work: str | None = None


@dataclass(frozen=True)
class Placed:
    """One step in the plan: ``replicas`` x ``gpus``, the device ids of each replica (local runs)."""

    name: str
    replicas: int
    gpus: int
    stage: int
    devices: tuple[tuple[int, ...], ...] = ()
    work: str | None = None

    def shown(self) -> str:
        if not self.gpus:
            return f"{self.name}: {self.replicas} x CPU"
        ids = " ".join("[" + ",".join(map(str, d)) + "]" for d in self.devices)
        return f"{self.name}: {self.replicas} x {self.gpus} GPU{'s' if self.gpus > 1 else ''}" + (f" {ids}" if ids else "")


@dataclass(frozen=True)
class Plan:
    """Steps with their replicas, GPUs and devices, grouped in stages (load order)."""

    node: Node
    steps: dict[str, Placed]
    stages: list[list[str]]
    staged: bool
    local: bool = True
    notes: list[str] = field(default_factory=list)

    @property
    def load_groups(self) -> list[list[str]] | None:
        """distilabel's ``load_groups``: None when everything loads at once."""
        return [list(stage) for stage in self.stages] if self.staged else None

    def gpus_busy(self, stage: list[str]) -> int:
        return sum(self.steps[n].replicas * self.steps[n].gpus for n in stage)

    def lines(self, hours: dict[str, float] | None = None) -> list[str]:
        """The plan as ``--dry-run`` prints it; ``hours``: GPU-hours of each kind of work."""
        node = self.node
        where = f"{node.nodes} node{'s' if node.nodes > 1 else ''} x {node.gpus_per_node} GPUs ({node.memory_gb:g} GB each)"
        out = [f"placement: {where}, {len(self.stages)} stage{'s' if len(self.stages) > 1 else ''}"
               + ("" if self.staged else " (all steps load at once)")]
        if not self.local:
            out.append("  (Ray packs each replica's GPUs on one node and sets its devices)")
        # Steps sharing a kind of work (a multi-turn run's turns) share its hours evenly.
        sharing = Counter(step.work for step in self.steps.values() if step.gpus)
        for i, stage in enumerate(self.stages, 1):
            busy = self.gpus_busy(stage)
            cost = ""
            if hours is not None and busy:
                gpu_h = sum(hours.get(self.steps[n].work or "", 0.0) / max(sharing[self.steps[n].work], 1) for n in stage)
                cost = f"; ~{gpu_h / busy:,.1f} h wall, {gpu_h:,.1f} GPU-h"
            out.append(f"  stage {i}: {busy}/{node.total} GPUs busy{cost}")
            out.extend(f"    {self.steps[n].shown()}" for n in stage)
        out.extend(f"  note: {note}" for note in self.notes)
        return out


def plan(needs: Sequence[StepNeed], node: Node, stages: str = "auto", local: bool = True) -> Plan:
    """The placement of ``needs`` (graph order) on ``node``; raises :class:`PlacementError`."""
    gpu_steps = [n for n in needs if n.gpus > 0]
    if gpu_steps and node.total == 0:
        first = gpu_steps[0]
        raise PlacementError(f"--{first.flag}: {first.name} needs GPUs and this machine has none; "
                             f"run its model on cpu, or plan for a GPU node with --gpus-per-node N")
    for need in gpu_steps:
        _check_fits(need, node)
    segments = _segments(needs)
    wanted = max((sum(n.gpus * (n.replicas or 1) for n in seg) for seg in segments), default=0)
    staged = stages == "sequential" or (stages == "auto" and wanted > node.total)
    if not staged and wanted > node.total:  # stages=together on too few GPUs
        raise PlacementError(f"--scaleout.stages together: the GPU steps want {wanted} GPUs at once and "
                             f"{node.total} are here; use --scaleout.stages auto")
    groups = _groups(segments, staged)
    by_name = {n.name: n for n in needs}
    placed: dict[str, Placed] = {}
    for index, group in enumerate(groups):
        free = list(node.ids) if local else []
        for need in (by_name[name] for name in group):
            replicas = need.replicas or (_fit(need.gpus, node) if staged and need.gpus else 1)
            if need.gpus and replicas * need.gpus > node.total:
                raise PlacementError(
                    f"--{need.replicas_flag} {replicas}: {replicas} x {need.gpus} GPUs for {need.name} and "
                    f"{node.total} GPUs are here; ask for at most {_fit(need.gpus, node)}")
            devices: tuple[tuple[int, ...], ...] = ()
            if local and need.gpus:
                if replicas * need.gpus > len(free):
                    raise PlacementError(
                        f"--{need.replicas_flag}: {need.name} wants {replicas} x {need.gpus} GPUs while the rest of "
                        f"its stage holds {len(node.ids) - len(free)} of {len(node.ids)}; lower it or use "
                        f"--scaleout.stages sequential")
                devices = tuple(tuple(free[r * need.gpus:(r + 1) * need.gpus]) for r in range(replicas))
                free = free[replicas * need.gpus:]
            placed[need.name] = Placed(need.name, replicas, need.gpus, index, devices, need.work)
    return Plan(node, placed, groups, staged, local)


def _check_fits(need: StepNeed, node: Node) -> None:
    if need.gpus > node.gpus_per_node:
        raise PlacementError(
            f"--{need.flag} {need.gpus}: a node has {node.gpus_per_node} GPUs and one engine cannot span nodes; "
            f"set --{need.flag} {node.gpus_per_node} or less")
    if need.weights_gb is not None:
        room = need.gpus * node.memory_gb * need.memory_fraction
        if need.weights_gb > room:
            least = math.ceil(need.weights_gb / (node.memory_gb * need.memory_fraction))
            raise PlacementError(
                f"--{need.flag} {need.gpus}: {need.name}'s weights take ~{need.weights_gb:,.0f} GB in its dtype and "
                f"{need.gpus} GPU(s) x {node.memory_gb:g} GB x {need.memory_fraction:g} hold {room:,.0f} GB; "
                f"set --{need.flag} {least} or more, or a smaller dtype")


def _fit(gpus: int, node: Node) -> int:
    """Replicas of a ``gpus``-GPU model that fit the cluster (never across nodes)."""
    return (node.gpus_per_node // gpus) * node.nodes


def _segments(needs: Sequence[StepNeed]) -> list[list[StepNeed]]:
    """The steps between global steps (distilabel loads a global step alone, after what precedes it)."""
    segments: list[list[StepNeed]] = [[]]
    for need in needs:
        if need.is_global:
            segments.append([need])
            segments.append([])
        else:
            segments[-1].append(need)
    return [s for s in segments if s]


def _groups(segments: list[list[StepNeed]], staged: bool) -> list[list[str]]:
    """Stages: each segment whole, or (staged) cut before each GPU step after the first."""
    groups: list[list[str]] = []
    for segment in segments:
        current: list[str] = []
        for need in segment:
            if staged and need.gpus and any(n.gpus for n in current):
                groups.append([n.name for n in current])
                current = []
            current.append(need)
        if current:
            groups.append([n.name for n in current])
    return groups


# --------------------------------------------------------------------------- the node


def visible_devices() -> tuple[int, ...] | None:
    """The ids in ``CUDA_VISIBLE_DEVICES`` (None when unset; () when it hides every device)."""
    raw = os.environ.get("CUDA_VISIBLE_DEVICES")
    if raw is None:
        return None
    ids = [part.strip() for part in raw.split(",") if part.strip()]
    if not all(part.isdigit() for part in ids):
        raise PlacementError(f"CUDA_VISIBLE_DEVICES={raw!r}: give device indices (0,1,...) so the plan can pin them")
    return tuple(int(part) for part in ids)


def this_node(gpus_per_node: int | None, nodes: int | None, memory_gb: float | None) -> Node:
    """The node a run plans for: the flags' shape, else this machine's devices (probed in a child)."""
    if gpus_per_node is not None:
        return Node(gpus_per_node, nodes or 1, memory_gb or DEFAULT_GPU_MEMORY_GB)
    from magpie_dl.run.preflight import cuda_devices

    count, probed_gb = cuda_devices()
    ids = visible_devices()
    if ids is not None:
        ids = ids[:count] if count else ids[:0]
    else:
        ids = tuple(range(count))
    return Node(len(ids), nodes or 1, memory_gb or probed_gb or DEFAULT_GPU_MEMORY_GB, ids)


# --------------------------------------------------------------------------- weights from config.json


def parameter_count(config: dict[str, Any]) -> int:
    """Parameters of a decoder-only transformer from its ``config.json`` sizes (Llama layout:
    attention with grouped KV heads, gated MLP, two norms per layer, untied head unless said)."""
    text = config.get("text_config") or config
    hidden = int(text["hidden_size"])
    layers = int(text["num_hidden_layers"])
    heads = int(text["num_attention_heads"])
    kv_heads = int(text.get("num_key_value_heads") or heads)
    head_dim = int(text.get("head_dim") or hidden // heads)
    inter = int(text["intermediate_size"])
    vocab = int(text["vocab_size"])
    attention = hidden * heads * head_dim * 2 + hidden * kv_heads * head_dim * 2
    mlp = 3 * hidden * inter
    per_layer = attention + mlp + 2 * hidden
    embeddings = vocab * hidden * (1 if text.get("tie_word_embeddings") else 2)
    return layers * per_layer + embeddings + hidden


def weights_gb(model: str, dtype: str) -> float | None:
    """GB of ``model``'s weights in ``dtype``, from a local ``config.json`` (a directory, or the hub
    cache; nothing is downloaded); None when no config is at hand or its layout is not known."""
    config_path = Path(model) / "config.json"
    if not config_path.is_file():
        try:
            from huggingface_hub import try_to_load_from_cache

            found = try_to_load_from_cache(model, "config.json")
        except Exception:
            return None
        if not isinstance(found, str):
            return None
        config_path = Path(found)
    try:
        config = json.loads(config_path.read_text())
        count = parameter_count(config)
    except (OSError, ValueError, KeyError, TypeError):
        return None
    name = dtype if dtype != "auto" else str((config.get("text_config") or config).get("torch_dtype") or "float32")
    return count * DTYPE_BYTES.get(name, 2) / 1e9


__all__ = ["Node", "Placed", "Plan", "PlacementError", "StepNeed", "parameter_count", "plan", "this_node", "weights_gb"]
