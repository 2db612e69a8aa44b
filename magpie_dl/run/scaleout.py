"""Scale-out: the same pipeline on a Ray cluster, with tensor- and data-parallel placement.

``as_ray(pipeline, cfg)`` turns a recipe's ``Pipeline`` into distilabel's ``RayPipeline``
and gives each step its placement through the step's own ``resources``:

* a step whose LLM is an in-process engine (vLLM, or transformers on a GPU) reserves
  ``tensor_parallel_size`` GPUs per replica (Ray packs one actor's GPUs on one node);
* query writing, response generation, reward scoring and tagging get ``replicas``: one
  engine per GPU group (data parallel). Every row's sampling seed derives from (run seed,
  row index or uuid), exact duplicate queries are marked in row order after the query
  replicas, and the export sorts by uuid, so which replica served a row never changes
  the dataset;
* when the GPU steps together need more GPUs than the cluster has (a 70B model on
  8 GPUs for queries, then again for responses, then the reward model), they are loaded
  one stage at a time (distilabel ``load_groups``) instead of waiting forever for GPUs
  (with a fix for distilabel's handling of replicas at the end of a stage).

Addresses: with no cluster address (or a loopback one), everything Ray starts or joins
is pinned to 127.0.0.1. Ray otherwise replaces 127.0.0.1 with the machine's outward
interface address (``resolve_ip_for_localhost``), even when told ``--node-ip-address``.
It does not on single-node setups where ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0``, which
is what :func:`pin_loopback` sets. Usage statistics are switched off in that mode too.

Nothing here imports ray at module import; ``pip install -e '.[ray]'`` adds it.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from magpie_dl import distilabel_compat
from magpie_dl.run.placement import DEFAULT_GPU_MEMORY_GB
from magpie_dl.config.scaleout import ROLE_REPLICAS, ScaleoutConfig

if TYPE_CHECKING:
    from distilabel.pipeline import Pipeline, RayPipeline
    from magpie_dl.distilabel_compat import AnyStep

    from magpie_dl.config.dpo import RecipeConfig
    from magpie_dl.run.placement import Plan, StepNeed

LOOPBACK = "127.0.0.1"
# Ray reads these at import time: set them before the first `import ray` in the process.
_LOOPBACK_ENV = {
    # Single-node mode: get_node_ip_address() is the loopback address, not the outward one.
    "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
    # No usage report to the internet.
    "RAY_USAGE_STATS_ENABLED": "0",
}

_logger = logging.getLogger("magpie_dl.run.scaleout")
# Step fields that name a path on the driver's machine (the result store, a report file).
_LOCAL_PATHS = ("cache_dir", "report_path")


def scaleout_of(cfg: RecipeConfig) -> ScaleoutConfig:
    """The config's ``scaleout`` section (defaults where the config has none)."""
    return getattr(cfg, "scaleout", None) or ScaleoutConfig()


def wants_ray(scale: ScaleoutConfig) -> bool:
    """``--ray``, or a cluster named in the config or in ``RAY_ADDRESS``."""
    return scale.ray or bool(scale.ray_address) or bool(os.environ.get("RAY_ADDRESS"))


def cluster_address(scale: ScaleoutConfig) -> str | None:
    """The cluster to join; None starts a local single-node cluster."""
    return scale.ray_address or os.environ.get("RAY_ADDRESS") or None


def is_loopback(address: str | None) -> bool:
    """True for no address (a local cluster) or one on this machine's loopback."""
    if address is None or address in ("local", "auto"):
        return True
    host = address.split("://")[-1].rsplit(":", 1)[0]
    return host in (LOOPBACK, "localhost", "::1", "[::1]")


def pin_loopback() -> None:
    """Make this process (and every Ray process it starts) use 127.0.0.1 only.

    If ray was already imported, its constants were read from the old environment:
    set the one that decides the node address as well.
    """
    os.environ.update(_LOOPBACK_ENV)
    constants = sys.modules.get("ray._private.ray_constants")
    if constants is not None:
        constants.ENABLE_RAY_CLUSTER = False


def connect(scale: ScaleoutConfig) -> dict[str, Any]:
    """Join (or start) the Ray cluster; returns what it reports about itself.

    The report has the driver's node address and every node's address, so callers
    (and the test) can check that nothing advertises a non-loopback address.
    """
    address = cluster_address(scale)
    loopback = is_loopback(address)
    if loopback:
        pin_loopback()
    try:
        import ray
    except ImportError as e:
        raise ImportError("Ray is not installed: pip install -e '.[ray]'") from e

    if not ray.is_initialized():
        kwargs: dict[str, Any] = {"include_dashboard": False, "log_to_driver": True}
        if loopback:
            kwargs["_node_ip_address"] = LOOPBACK
        ray.init(address=address, **kwargs)
    report = {
        "driver": ray.util.get_node_ip_address(),
        "nodes": sorted({n["NodeManagerAddress"] for n in ray.nodes() if n.get("Alive")}),
        "gcs": ray.get_runtime_context().gcs_address,
        "gpus": int(ray.cluster_resources().get("GPU", 0)),
        # Replicas never span nodes: the smallest node's GPUs bound one engine.
        "gpus_per_node": min((int(n["Resources"].get("GPU", 0)) for n in ray.nodes() if n.get("Alive")), default=0),
    }
    if loopback and (report["driver"] != LOOPBACK or report["nodes"] != [LOOPBACK]):
        raise RuntimeError(f"Ray did not stay on loopback: {report}")
    _logger.info("Ray cluster: %s", report)
    return report


def engine_gpus(step: AnyStep, cfg: RecipeConfig) -> int:
    """GPUs one replica of ``step`` must hold: its engine's tensor-parallel size, or 0.

    An engine that declares ``gpus_per_replica`` (vLLM: its ``tensor_parallel_size``; the
    backend checks that its step reserves them) takes that many; any other model on cuda
    (transformers, the reward model) takes one.
    """
    llm = getattr(step, "llm", None)
    holder = llm if llm is not None else step  # a step without an LLM holds its model itself
    declared = getattr(holder, "gpus_per_replica", None)
    if declared is not None:
        return int(declared)
    device = str(getattr(holder, "device", "") or "")
    return 1 if device.startswith("cuda") else 0


def step_replicas(step: AnyStep, scale: ScaleoutConfig) -> int:
    """Data-parallel replicas for ``step`` by the role it declares; generator and global steps run once.

    distilabel runs one instance of a generator step and of a global step (it sees all
    rows at once). That is why replicated queries come from ``MagpieQueries`` (a normal
    step fed row slots), not from ``MagpieGenerator``.
    """
    if not step.is_normal:
        return 1
    return scale.replicas_for(getattr(step, "role", None)) or 1


def place_steps(
    pipeline: Pipeline, cfg: RecipeConfig, scale: ScaleoutConfig, with_gpus: bool = True
) -> dict[str, tuple[int, int]]:
    """Set each step's ``resources`` (replicas, GPUs per replica); returns them by step name.

    ``with_gpus=False`` (a cluster without GPUs: vLLM's CPU build, the tests) reserves
    none, since Ray would never schedule an actor that asks for one.
    """
    placement: dict[str, tuple[int, int]] = {}
    for name in pipeline.dag:
        step = pipeline.dag.get_step(name)["step"]
        for attr in _LOCAL_PATHS:
            if getattr(step, attr, None):
                # Ray workers do not run in the driver's working directory.
                setattr(step, attr, str(Path(getattr(step, attr)).resolve()))
        replicas, gpus = step_replicas(step, scale), engine_gpus(step, cfg) if with_gpus else 0
        step.resources.replicas = replicas
        if gpus:
            step.resources.gpus = gpus
        placement[name] = (replicas, gpus)
    return placement


def load_groups(
    pipeline: Pipeline, placement: dict[str, tuple[int, int]], cluster_gpus: int, stages: str = "auto"
) -> list[list[str]] | None:
    """distilabel ``load_groups``: None (all steps at once) or one group per GPU step.

    Each group holds one GPU step; the CPU steps around it (the query slots before the
    query writers, pairing after reward) join it, so they stream along with it.
    Sequential loading is chosen when asked, or (``auto``) when the GPU steps between
    two global steps together want more GPUs than the cluster has; otherwise the later
    steps would wait for GPUs that the earlier ones never release. distilabel already
    loads each global step alone, and what comes after it only once it is done, so the
    GPU steps on either side of one never compete.
    """
    import networkx as nx

    order = list(nx.topological_sort(pipeline.dag.G))
    segments: list[list[str]] = [[]]
    for name in order:
        if pipeline.dag.get_step(name)["step"].is_global:
            segments.append([])
        else:
            segments[-1].append(name)
    wanted = max(sum(placement[name][0] * placement[name][1] for name in segment) for segment in segments)
    if stages == "together" or (stages == "auto" and wanted <= cluster_gpus):
        return None
    groups: list[list[str]] = []
    for segment in segments:
        current: list[str] = []
        for name in segment:
            if placement[name][1] > 0 and any(placement[n][1] > 0 for n in current):
                groups.append(current)
                current = []
            current.append(name)
        if current:
            groups.append(current)
    return groups or None


def step_needs(pipeline: Pipeline, cfg: RecipeConfig, scale: ScaleoutConfig, with_gpus: bool = True) -> list[StepNeed]:
    """What :func:`magpie_dl.run.placement.plan` needs of each step, in the graph's order."""
    import networkx as nx

    from magpie_dl.run.placement import StepNeed, weights_gb

    needs = []
    for name in nx.topological_sort(pipeline.dag.G):
        step = pipeline.dag.get_step(name)["step"]
        role = getattr(step, "role", None)
        gpus = engine_gpus(step, cfg) if with_gpus else 0
        holder = getattr(step, "llm", None) or step
        tp = getattr(holder, "tensor_parallel_size", None) is not None
        model = getattr(holder, "model", None)  # a step around its own model (dedup) may name none
        weights = weights_gb(model, str(getattr(holder, "dtype", "auto"))) if gpus and isinstance(model, str) else None
        needs.append(StepNeed(
            name=name, gpus=gpus,
            replicas=scale.replicas_for(role) if step.is_normal else 1,
            is_global=step.is_global,
            flag="backend.tensor_parallel_size" if tp else f"{role or name}.device",
            replicas_flag=f"scaleout.{ROLE_REPLICAS.get(role or '', 'stages')}",
            weights_gb=weights,
            memory_fraction=float(getattr(holder, "gpu_memory_utilization", None) or 1.0),
            work=getattr(step, "work", None) or role,  # a step's own kind of work where its role's is shared
        ))
    return needs


@contextmanager
def refused_as_config_error() -> Iterator[None]:
    """A plan the GPUs cannot hold is a config error (one line, exit 2 before any model loads)."""
    from magpie_dl.config.dpo import ConfigError
    from magpie_dl.run.placement import PlacementError

    try:
        yield
    except PlacementError as exc:
        raise ConfigError(str(exc)) from None


# The node --dry-run shows on a machine without GPUs when no --gpus-per-node is given.
DRY_RUN_GPUS = 8


def plan_local(pipeline: Pipeline, cfg: RecipeConfig, dry_run: bool = False) -> Plan:
    """The plan of a run on this machine (or on the node ``scaleout.gpus_per_node`` describes).

    ``dry_run`` on a machine without GPUs plans for a node of :data:`DRY_RUN_GPUS` and says so.
    """
    from magpie_dl.run.placement import Node, plan, this_node

    scale = scaleout_of(cfg)
    needs = step_needs(pipeline, cfg, scale)
    notes = []
    with refused_as_config_error():  # CUDA_VISIBLE_DEVICES can be refused too
        if any(n.gpus for n in needs):
            node = this_node(scale.gpus_per_node, scale.nodes, scale.gpu_memory_gb)
            if dry_run and node.total == 0:
                node = Node(DRY_RUN_GPUS, scale.nodes or 1, scale.gpu_memory_gb or DEFAULT_GPU_MEMORY_GB)
                notes.append(f"this machine has no GPU: shown for nodes of {DRY_RUN_GPUS} (--gpus-per-node N for others)")
        else:  # a CPU run: no device probe (it imports torch in a child)
            node = Node(scale.gpus_per_node or 0, scale.nodes or 1)
        placement = plan(needs, node, scale.stages, local=node.nodes == 1 and not wants_ray(scale))
    placement.notes.extend(notes)
    return placement


def apply_plan(pipeline: Pipeline | RayPipeline, placement: Plan) -> None:
    """Set each step's ``resources`` and (local runs) the devices of each replica of its model.

    The devices go to the model that holds them (the step's engine, or the step itself for
    the reward scorer), which pins them when its replica loads (:class:`PlannedDevices`).
    """
    for name, placed in placement.steps.items():
        step = pipeline.dag.get_step(name)["step"]
        for attr in _LOCAL_PATHS:
            if getattr(step, attr, None):
                # Ray workers do not run in the driver's working directory.
                setattr(step, attr, str(Path(getattr(step, attr)).resolve()))
        step.resources.replicas = placed.replicas
        if placed.gpus:
            step.resources.gpus = placed.gpus
            if not placement.local:
                # Ray would also hold a CPU per GPU actor: on a node with fewer CPUs than
                # replicas (or than replicas + the stage's CPU steps) the rest would wait forever.
                step.resources.cpus = 0
            holder = getattr(step, "llm", None) or step
            if placed.devices and hasattr(holder, "device_plan"):
                holder.device_plan = [",".join(map(str, d)) for d in placed.devices]
    pipeline._magpie_plan = placement  # type: ignore[attr-defined]


def place_local(pipeline: Pipeline, cfg: RecipeConfig) -> Pipeline:
    """``pipeline`` placed for this machine: replicas, devices, and stages when the GPU steps
    do not fit at once (passed on by :func:`run_options`)."""
    placement = plan_local(pipeline, cfg)
    apply_plan(pipeline, placement)
    options: dict[str, Any] = {"use_fs_to_pass_data": True}
    if placement.load_groups:
        options["load_groups"] = placement.load_groups
        distilabel_compat.stop_replicas_at_stage_end(pipeline)
    pipeline._magpie_run_options = options  # type: ignore[attr-defined]
    if any(p.gpus for p in placement.steps.values()):
        _logger.info("placement: %s", "; ".join(placement.lines()))
    return pipeline


def as_ray(pipeline: Pipeline, cfg: RecipeConfig, scale: ScaleoutConfig | None = None) -> RayPipeline:
    """The same graph as a ``RayPipeline``, placed for the cluster it joins.

    The returned pipeline's ``run_options`` (a dict) holds the ``load_groups`` chosen for
    this cluster: pass it on as ``pipeline.run(..., **run_options(pipeline))``.
    """
    from magpie_dl.run.placement import Node, plan

    scale = scale or scaleout_of(cfg)
    report = connect(scale)
    with_gpus = report["gpus"] > 0
    needs = step_needs(pipeline, cfg, scale, with_gpus=with_gpus)
    per_node = scale.gpus_per_node or report["gpus_per_node"]
    nodes = scale.nodes or (max(1, report["gpus"] // per_node) if per_node else 1)
    node = Node(per_node, nodes, scale.gpu_memory_gb or DEFAULT_GPU_MEMORY_GB)
    with refused_as_config_error():
        placement = plan(needs, node, scale.stages, local=False)
    ray_pipeline = pipeline.ray()
    apply_plan(ray_pipeline, placement)
    distilabel_compat.stop_replicas_at_stage_end(ray_pipeline)
    groups = placement.load_groups
    ray_pipeline._magpie_run_options = {"load_groups": groups} if groups else {}  # type: ignore[attr-defined]
    ray_pipeline._magpie_cluster = report  # type: ignore[attr-defined]
    _logger.info("Ray placement: %s", "; ".join(placement.lines()))
    return ray_pipeline


def maybe_ray(pipeline: Pipeline, cfg: RecipeConfig) -> Pipeline | RayPipeline:
    """``as_ray(pipeline, cfg)`` when the config or environment asks for Ray, else ``pipeline``
    placed on this machine (:func:`place_local`)."""
    return as_ray(pipeline, cfg) if wants_ray(scaleout_of(cfg)) else place_local(pipeline, cfg)


def run_options(pipeline: Pipeline | RayPipeline) -> dict[str, Any]:
    """Extra ``pipeline.run`` keyword arguments: :func:`as_ray`'s on Ray (load groups).

    A local pipeline passes batches between steps through files, not through the queue
    manager's memory: distilabel has no back-pressure, so when a step outruns the next
    one (a fast query stage ahead of 5x the response work) every pending batch would wait
    in one process's memory, growing with the run (1.35 GB at a quarter of a 1M-row run
    in ``benchmarks/overhead.py``). Each file is deleted once its step has read it.
    """
    options = getattr(pipeline, "_magpie_run_options", None)
    return {"use_fs_to_pass_data": True} if options is None else dict(options)


__all__ = [
    "ScaleoutConfig", "apply_plan", "as_ray", "place_local", "plan_local", "step_needs", "connect", "load_groups", "maybe_ray", "place_steps", "run_options",
    "wants_ray",
]
