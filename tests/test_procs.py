"""Process hygiene: what forked step workers inherit stays shared."""

from __future__ import annotations

import gc
import sys

from magpie_dl.run.procs import shared_with_workers


def test_workers_inherit_imports_and_a_frozen_heap_then_the_heap_thaws():
    assert gc.get_freeze_count() == 0
    with shared_with_workers():
        # Imported before any fork, so every worker shares the pages instead of importing again.
        assert "torch" in sys.modules and "transformers" in sys.modules
        # Everything alive now is out of the collector's reach: a worker's collections do
        # not write to the inherited pages.
        assert gc.get_freeze_count() > 1000
    assert gc.get_freeze_count() == 0
