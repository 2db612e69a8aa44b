"""Devices a model pins from the run's placement plan (local runs), one list per replica.

distilabel's local step wrapper gives each ``CudaDevicePlacementMixin`` in a step the
identifier ``<step>-replica-<N>``, and on its own would pick free devices through a
shared file, one GPU unless the step reserves more. The plan
(:mod:`magpie_dl.run.placement`) has already chosen every replica's devices, so a model
with a ``device_plan`` pins exactly those: ``CUDA_VISIBLE_DEVICES`` in its own worker
process, before anything there initialises CUDA. On Ray the wrapper switches placement
off (``disable_cuda_device_placement``): Ray sets each actor's devices itself.
"""

from __future__ import annotations

import os
import re

from distilabel.models.mixins.cuda_device_placement import CudaDevicePlacementMixin
from pydantic import Field

from magpie_dl import distilabel_compat

_REPLICA = re.compile(r"-replica-(\d+)$")


class PlannedDevices(CudaDevicePlacementMixin):
    """Mixin: pin the devices the placement plan gave this replica.

    Attributes:
        device_plan: each replica's ``CUDA_VISIBLE_DEVICES`` (``"0,1"``), set by the run's
            placement plan; None: distilabel's own placement.
    """

    # Strings, not lists of ids: distilabel's step signature cannot flatten nested lists.
    device_plan: list[str] | None = Field(
        default=None, description="CUDA_VISIBLE_DEVICES of each replica, from the run's placement plan."
    )

    def pin_planned_devices(self) -> list[int] | None:
        """Set ``CUDA_VISIBLE_DEVICES`` to this replica's planned devices; returns them
        (None when there is no plan, or Ray placed the process)."""
        if self.disable_cuda_device_placement or not self.device_plan:
            return None
        found = _REPLICA.search(distilabel_compat.replica_identifier(self))
        replica = int(found.group(1)) if found else 0
        if replica >= len(self.device_plan):
            raise RuntimeError(f"{distilabel_compat.replica_identifier(self)}: the placement plan has {len(self.device_plan)} replica(s)")
        devices = [int(d) for d in self.device_plan[replica].split(",")]
        self.cuda_devices = devices
        os.environ["CUDA_VISIBLE_DEVICES"] = self.device_plan[replica]
        return devices
