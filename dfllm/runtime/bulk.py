"""The cyclic garbage collector around the phases of a run.

``gc_paused``: run a bulk, allocation-heavy phase without the cyclic garbage collector.

Rendering, cache lookup and write-back each allocate a few objects per row: at 100,000 rows
that triggers collections that rescan every live object, the frame's included, over and over.
They create no reference cycles, so collecting during them finds nothing.

``gc_relaxed``: the network phase keeps the collector on (asyncio's futures and exceptions do
make cycles) but collects the youngest generation less often. Hundreds of requests in flight
keep thousands of young objects alive, and each young collection (every 700 new objects by
default) scans all of them again.
"""

from __future__ import annotations

import gc
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager

NETWORK_YOUNG_THRESHOLD = 50_000


@contextmanager
def gc_paused() -> Iterator[None]:
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


class _Relaxed:
    """Raises the young generation's threshold while any run is in its network phase.

    Thresholds are process-wide and runs may overlap (threads, a Dask worker's runtime): the
    first run in saves the young one, the last one out restores it, unless something else
    changed it meanwhile (the older generations' thresholds are never touched). A threshold of 0
    (automatic collection off) or above ours is left alone. A forked child starts afresh.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._depth = 0
        self._saved: int | None = None  # the young threshold to restore
        os.register_at_fork(after_in_child=self._after_fork)

    def _after_fork(self) -> None:
        # The child has none of the parent's runs in flight: it starts with the thresholds they found.
        self._lock = threading.Lock()
        self._depth = 0
        self._restore()

    @contextmanager
    def __call__(self) -> Iterator[None]:
        with self._lock:
            if self._depth == 0:
                young, *older = gc.get_threshold()
                if 0 < young < NETWORK_YOUNG_THRESHOLD:
                    self._saved = young
                    gc.set_threshold(NETWORK_YOUNG_THRESHOLD, *older)
            self._depth += 1
        try:
            yield
        finally:
            with self._lock:
                self._depth -= 1
                if self._depth == 0:
                    self._restore()

    def _restore(self) -> None:
        """The young threshold back as it was, unless something else changed it meanwhile."""
        young, *older = gc.get_threshold()
        if self._saved is not None and young == NETWORK_YOUNG_THRESHOLD:
            gc.set_threshold(self._saved, *older)
        self._saved = None


gc_relaxed = _Relaxed()
