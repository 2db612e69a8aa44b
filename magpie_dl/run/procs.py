"""Process hygiene for step workers."""

from __future__ import annotations

import ctypes
import gc
import os
import signal
import sys
from collections.abc import Iterator
from contextlib import contextmanager

_PR_SET_PDEATHSIG = 1


def die_with_parent() -> None:
    """Have the kernel kill this process when its parent dies (Linux; elsewhere a no-op).

    distilabel runs steps in forked, non-daemon pool workers. If the main process is
    killed (SIGKILL, OOM killer), those workers would live on as orphans, blocked on
    their queues and holding model memory (GPU memory, for a vLLM engine). A killed run
    must leave nothing behind, so a rerun can start clean.
    """
    if not sys.platform.startswith("linux"):
        return
    parent = os.getppid()
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    except (OSError, AttributeError):
        return
    if os.getppid() != parent:  # the parent died before the request took effect
        os._exit(1)


def own_process_group() -> None:
    """In a forked step worker: leave the run's process group, and its signal handlers.

    A terminal's Ctrl-C (and a kill of the group) then reaches only the run's main
    process, which stops the pipeline in order and ends its workers itself. Delivered to
    the workers too, it can kill one while it starts or while it holds the pool's task
    queue lock, and distilabel then fails to load its steps or waits forever.

    The run's Python-level SIGINT / SIGTERM handlers are not the worker's: SIGTERM goes
    back to the kernel's default, since that is how the pool ends its workers, and a
    Python handler can miss it (a signal landing just before a blocking wait leaves the
    worker waiting on the queue lock forever, and the run waiting for the worker).
    """
    try:
        os.setpgid(0, 0)
    except OSError:
        pass
    try:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.default_int_handler)
    except (ValueError, OSError):  # not the main thread: leave them
        pass


def preload_worker_imports() -> None:
    """Import what every step worker imports (torch, transformers' tokenizers); a missing
    package is skipped. Recipes call it before their stop handling takes over: a Ctrl-C that
    lands inside torch's import, raised there as KeyboardInterrupt, aborts the process."""
    try:
        import torch  # noqa: F401
        from transformers import AutoTokenizer, PreTrainedTokenizerFast  # noqa: F401
    except ImportError:
        pass


@contextmanager
def shared_with_workers() -> Iterator[None]:
    """Around a pipeline run: make what the step workers inherit stay shared.

    distilabel forks its local step workers from this process (Ray actors are separate
    processes; for them this only costs the driver the imports). Each worker that loads a
    tokenizer or a model imports torch and transformers' tokenizer machinery (~200 MB of
    heap each); imported here first, those pages are shared copy-on-write instead. Then
    ``gc.freeze()``: the objects that exist now move to a generation the cyclic collector
    never scans, so a worker's collections do not write to every inherited page and turn
    the shared copies into private ones. Nothing is loaded that the run would not import
    anyway; a missing package is skipped. The objects are unfrozen afterwards.
    """
    preload_worker_imports()
    gc.collect()
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()
