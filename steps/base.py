"""What our steps share: durable results in the output directory, and process hygiene."""

from typing import ClassVar, Optional

from pydantic import BaseModel, Field, PrivateAttr

from magpie_dl.procs import die_with_parent
from magpie_dl.store import ResultStore


class StoredResults(BaseModel):
    """Mixin: a step whose expensive calls go through a :class:`ResultStore`.

    Attributes:
        cache_dir: directory of the durable result store; ``None`` stores nothing.

    ``CACHE_VERSION`` is part of every key: bump it when a change to the step alters
    its results, and stored results of the old code are no longer used.
    """

    CACHE_VERSION: ClassVar[str] = "1"

    cache_dir: Optional[str] = Field(default=None, description="Durable result store directory.")

    _store: Optional[ResultStore] = PrivateAttr(default=None)

    def open_store(self) -> None:
        """Call from ``load()``: open the store (if any) and tie this worker to its parent."""
        die_with_parent()
        self._store = ResultStore(self.cache_dir) if self.cache_dir else None

    @property
    def store(self) -> Optional[ResultStore]:
        return self._store

    def report_started(self) -> None:
        """Call when a batch starts: the live display times the step's rate from its first one."""
        self.report_progress(0, 0)

    def report_progress(self, rows: int, tokens: int) -> None:
        """Count finished rows and tokens for the run's live progress display."""
        if self._store is not None:
            self._store.count_progress(self.name, rows, tokens)
