"""The ``scaleout`` config section: where and how wide the pipeline runs.

Its own module so that the config schema can hold it without importing the Ray code in
:mod:`magpie_dl.run.scaleout`.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

# The role a step declares (``role: ClassVar[str]``) -> the field with its replica count.
ROLE_REPLICAS: dict[str, str] = {
    "queries": "query_replicas",
    "responses": "generation_replicas",
    "reward": "reward_replicas",
    "tagging": "tagging_replicas",
}


class ScaleoutConfig(BaseModel):
    """Where and how wide the pipeline runs (the ``scaleout`` config section)."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    ray: bool = Field(False, description="Run on a Ray cluster (also implied when RAY_ADDRESS is set).")
    ray_address: str | None = Field(
        None, description="Ray cluster to join, host:port; default RAY_ADDRESS, else a local cluster on 127.0.0.1."
    )
    query_replicas: int = Field(
        1, ge=1, description="Query-writing engines (magpie_queries); each reserves backend.tensor_parallel_size "
        "GPUs. Above 1 the query stage is query_slots >> magpie_queries >> exact_duplicates (same rows).",
    )
    generation_replicas: int | None = Field(
        None, ge=1, description="Response-generation engines, backend.tensor_parallel_size GPUs each; "
        "unset: as many as fit their stage (1 without GPUs).",
    )
    reward_replicas: int | None = Field(
        None, ge=1, description="Reward-scoring replicas, one GPU each on cuda; unset: one per GPU of their stage.",
    )
    tagging_replicas: int | None = Field(
        None, ge=1, description="Instruction-tagging judge engines (curation recipe), tensor_parallel_size GPUs each; "
        "unset: as many as fit their stage.",
    )
    gpus_per_node: int | None = Field(
        None, ge=0, description="Plan for nodes of this many GPUs (--dry-run on another machine); "
        "unset: this machine's (CUDA_VISIBLE_DEVICES honoured), or each Ray node's.",
    )
    nodes: int | None = Field(None, ge=1, description="Plan for this many nodes (Ray); unset: 1, or the Ray cluster's.")
    gpu_memory_gb: float | None = Field(
        None, gt=0, description="GPU memory per device for the weights check; unset: this machine's, else 80."
    )
    stages: Literal["auto", "together", "sequential"] = Field(
        "auto",
        description="Load GPU steps together, one after another (sequential), or sequentially "
        "only when the GPUs cannot hold one replica of each at once (auto). Local runs and Ray alike.",
    )

    def replicas_for(self, role: str | None) -> int | None:
        """Replicas of a step with this role (see :data:`ROLE_REPLICAS`), None to let the
        placement plan fill its stage; 1 for any other step."""
        field = ROLE_REPLICAS.get(role or "")
        return getattr(self, field) if field else 1
