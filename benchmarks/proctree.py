"""A process tree read from /proc: its processes, their memory and CPU (Linux only).

Shared by the benchmarks that measure a whole run: the driver and every process it
forks (distilabel's step workers and queue manager). PSS counts a page shared by k
processes as 1/k in each, so the tree's sum counts shared pages once; its anonymous part
(``Pss_Anon``) is what the run allocates, the rest is memory-mapped files (libraries,
Arrow data: clean page cache the kernel can drop).
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def tree(root: int) -> list[int]:
    """``root`` and all its live descendants."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            children.setdefault(ppid, []).append(int(entry))
    found, todo = [], [root]
    while todo:
        pid = todo.pop()
        found.append(pid)
        todo.extend(children.get(pid, []))
    return found


def kib(path: str, field: str) -> int:
    """A ``Field:  N kB`` value from a /proc file (0 when the process is gone)."""
    try:
        for line in Path(path).read_text().splitlines():
            if line.startswith(field):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def anon_pss_kib(pid: int) -> tuple[int, int]:
    """(PSS, anonymous PSS) of one process in KiB, (0, 0) when it is gone."""
    pss = anon = 0
    try:
        text = Path(f"/proc/{pid}/smaps_rollup").read_text()
    except OSError:
        return 0, 0
    for line in text.splitlines():
        if line.startswith("Pss:"):
            pss = int(line.split()[1])
        elif line.startswith("Pss_Anon:"):
            anon = int(line.split()[1])
    return pss, anon


def memory_mib(pids: list[int]) -> tuple[float, float, float]:
    """(summed PSS, summed anonymous PSS, largest single RSS) of ``pids``, in MiB."""
    each = [anon_pss_kib(pid) for pid in pids]
    pss, anon = sum(p for p, _ in each), sum(a for _, a in each)
    rss = max((kib(f"/proc/{p}/status", "VmRSS:") for p in pids), default=0)
    return pss / 1024, anon / 1024, rss / 1024


def available_mib() -> float:
    """The machine's ``MemAvailable`` in MiB (what can still be allocated without swapping or OOM)."""
    return kib("/proc/meminfo", "MemAvailable:") / 1024


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU seconds of one process so far (None when it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS  # utime, stime


class Periodic:
    """Calls :meth:`sample` on a background thread every ``every`` seconds while the ``with``
    block runs (``at_start``: once as the block opens too, before the first wait)."""

    def __init__(self, every: float, at_start: bool = False) -> None:
        self.every, self._at_start = every, at_start
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def sample(self) -> None:
        raise NotImplementedError

    def __enter__(self):  # noqa: ANN204 (returns the subclass)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _loop(self) -> None:
        if self._at_start:
            self.sample()
        while not self._stop.wait(self.every):
            self.sample()
