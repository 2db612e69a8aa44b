"""distilabel's copy of every batch each step outputs, which a run of ours never reads: not written.

distilabel 1.5.3 registers each batch a step sends back and writes it whole, as JSON,
under ``<cache>/<pipeline>/steps_data/<step signature>/batch_N.json``, for its own cache
to reuse in a later run (``use_cache=True``). Our runs never use that cache (its resume
hangs after a kill; our result store resumes instead), yet the copies pile up until the run
ends: every step's rows, again, so several copies of the whole dataset (measured: ~35 KB
per instruction with ~1.5 KB responses, 3.5 GB at 100K; ``BENCHMARKS.md``).
:func:`without_step_data_copies` registers the batches as distilabel does, minus the copy.

This is the one place that reaches into distilabel's batch registration. It changes nothing
at import: the hook is set on one pipeline object, for the length of its run.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

# What this module relies on in distilabel (checked before the hook is set, and by the tests).
PIPELINE_HOOK = "_register_batch"


def check_distilabel_internals(pipeline: Any) -> None:
    """Fail with one line if this distilabel lacks what :func:`without_step_data_copies` replaces."""
    from distilabel.pipeline.batch_manager import _BatchManager

    if not (callable(getattr(pipeline, PIPELINE_HOOK, None)) and callable(getattr(_BatchManager, "register_batch", None))):
        import distilabel

        raise RuntimeError(
            f"distilabel {distilabel.__version__} lacks the batch registration magpie_dl replaces "
            f"({PIPELINE_HOOK}, _BatchManager.register_batch); use distilabel 1.5.3"
        )


@contextmanager
def without_step_data_copies(pipeline: Any) -> Iterator[None]:
    """While ``pipeline`` runs, the batches its steps send back are registered (sequence
    numbers, last batch) without their JSON copy under ``steps_data``.

    Set on this pipeline object alone, for the block only: distilabel's classes and every
    other pipeline are left as they are.
    """
    check_distilabel_internals(pipeline)

    def register(batch: Any) -> None:
        pipeline._batch_manager.register_batch(batch)  # no steps_data_path: no copy written

    setattr(pipeline, PIPELINE_HOOK, register)
    try:
        yield
    finally:
        delattr(pipeline, PIPELINE_HOOK)


__all__ = ["without_step_data_copies"]
