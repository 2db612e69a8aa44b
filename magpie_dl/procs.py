"""Process hygiene for step workers."""

from __future__ import annotations

import ctypes
import os
import signal
import sys

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
