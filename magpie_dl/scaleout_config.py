"""The ``scaleout`` config section: where and how wide the pipeline runs.

Its own module so that the config schema can hold it without importing the Ray code in
:mod:`magpie_dl.scaleout`.
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
        1, ge=1, description="Ray: query-writing engines (magpie_queries); each reserves backend.tensor_parallel_size "
        "GPUs. Above 1 the query stage is query_slots >> magpie_queries >> exact_duplicates (same rows).",
    )
    generation_replicas: int = Field(
        1, ge=1, description="Ray: response-generation engines; each reserves backend.tensor_parallel_size GPUs."
    )
    reward_replicas: int = Field(1, ge=1, description="Ray: reward-scoring replicas (one GPU each on cuda).")
    tagging_replicas: int = Field(
        1, ge=1, description="Ray: instruction-tagging judge engines (curation recipe), tensor_parallel_size GPUs each."
    )
    stages: Literal["auto", "together", "sequential"] = Field(
        "auto",
        description="Ray: load GPU steps together, one after another (sequential), or sequentially "
        "only when the cluster lacks the GPUs for all at once (auto).",
    )

    def replicas_for(self, role: str | None) -> int:
        """Replicas of a step with this role (see :data:`ROLE_REPLICAS`); 1 for any other step."""
        field = ROLE_REPLICAS.get(role or "")
        return int(getattr(self, field)) if field else 1
