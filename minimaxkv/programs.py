"""Compiled programs and the memory mappings they hold.

XLA:CPU maps the code of every program it compiles into the process and keeps it mapped while the
program is cached. The kernel caps the mappings of a process (``vm.max_map_count``, 65,530 by
default on Linux); a process that compiles programs without end dies with "LLVM ERROR: Unable to
allocate section memory", whatever memory is free. Long sweeps therefore compile once per shape
class (:func:`minimaxkv.model.bucket`, :meth:`minimaxkv.rules.Rule.padded`) and clear every cache
when mappings grow past a share of the limit (:func:`relieve`). :class:`PeakMappings` records the peak of a run.

Example:
    >>> from minimaxkv import programs
    >>> now = programs.mappings()   # (count, limit), or None where the system has no /proc
    >>> with programs.PeakMappings() as peak:
    ...     pass
    >>> peak.peak is None or peak.peak >= 1
    True
"""

from __future__ import annotations

import threading
from pathlib import Path

MAPS = Path("/proc/self/maps")
LIMIT = Path("/proc/sys/vm/max_map_count")


def mappings() -> tuple[int, int] | None:
    """``(mappings of this process, the system's limit)``, or ``None`` where either is unknown."""
    try:
        with MAPS.open("rb") as f:
            count = sum(1 for _ in f)
        limit = int(LIMIT.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None
    return count, limit


def relieve(share: float = 0.2) -> bool:
    """Clear every compiled program (``jax.clear_caches``) if this process holds more than
    ``share`` of the mapping limit; True if it did. Results are unchanged: what is needed again
    compiles again."""
    now = mappings()
    if now is None or now[0] <= share * now[1]:
        return False
    import jax

    jax.clear_caches()
    return True


class PeakMappings:
    """Context manager sampling :func:`mappings` every ``every`` seconds in a background thread;
    ``peak`` (the largest count seen, ``None`` without /proc) and ``limit`` after exit."""

    def __init__(self, every: float = 1.0):
        self.every = every
        self.peak: int | None = None
        self.limit: int | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _sample(self):
        now = mappings()
        if now is not None:
            self.peak = now[0] if self.peak is None else max(self.peak, now[0])
            self.limit = now[1]

    def _run(self):
        while not self._stop.wait(self.every):
            self._sample()

    def __enter__(self) -> "PeakMappings":
        self._sample()
        self._thread = threading.Thread(target=self._run, name="peak-mappings", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self._sample()
        return False

    def report(self) -> str:
        """``"peak memory mappings P of the limit L (x %)"``, or a note that they are unknown."""
        if self.peak is None:
            return "peak memory mappings unknown (no /proc on this system)"
        return (f"peak memory mappings {self.peak:,} of the limit {self.limit:,} "
                f"({100 * self.peak / self.limit:.1f} %)")
