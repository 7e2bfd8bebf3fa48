"""One runtime per worker process: one event loop on a background thread, shared by all tasks.

A Dask worker runs partition tasks on its own threads, and its own event loop belongs to Dask.
Each task hands its coroutine to this runtime and waits: the tasks of one call share one
executor (one limiter, one open cache, one pool of connections) however many run at once, and
the engines' HTTP sessions live as long as the worker rather than one partition.
"""

from __future__ import annotations

import atexit
import collections
import threading
from collections.abc import Callable, Coroutine, Hashable
from typing import Any, TypeVar

from dfllm.config.secrets import Secret
from dfllm.engines.base import Engine
from dfllm.runtime.executor import Executor
from dfllm.runtime.sync import LoopThread

T = TypeVar("T")

# API keys known in this process, by key id: put here by the client (a threaded scheduler runs
# tasks in its own process) or by ``coordinator.KeyPlugin`` on each worker; never in a task graph.
KEYS: dict[str, Secret] = {}

# Executors kept open at once (each holds an open cache): calls beyond this close the oldest.
_KEPT_EXECUTORS = 8


class WorkerRuntime:
    def __init__(self) -> None:
        self._loop = LoopThread("dfllm-worker-runtime")
        self._engines: dict[Hashable, Engine] = {}
        self._executors: collections.OrderedDict[Hashable, Executor] = collections.OrderedDict()
        self._shared: dict[Hashable, Any] = {}
        self._closed = False

    def submit(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run ``coro`` on the runtime's loop and wait for it (from any thread but the runtime's)."""
        if self._closed:
            coro.close()
            raise RuntimeError("the dfllm worker runtime is closed")
        return self._loop.submit(coro)

    # The getters below run on the runtime's loop, so loop-bound objects are created there.
    def engine(self, key: Hashable, connect: Callable[[], Engine]) -> Engine:
        if key not in self._engines:
            self._engines[key] = connect()
        return self._engines[key]

    def shared(self, key: Hashable, build: Callable[[], T]) -> T:
        """One object per key for the worker's lifetime (the cluster gate of one rate budget)."""
        if key not in self._shared:
            self._shared[key] = build()
        value: T = self._shared[key]
        return value

    async def executor(self, key: Hashable, build: Callable[[], Executor]) -> Executor:
        executor = self._executors.get(key)
        if executor is None:
            executor = await build().__aenter__()
            self._executors[key] = executor
            while len(self._executors) > _KEPT_EXECUTORS:
                _, oldest = self._executors.popitem(last=False)
                await oldest.__aexit__(None, None, None)
        self._executors.move_to_end(key)
        return executor

    def close(self) -> None:
        """Close every executor (flushing its cache) and engine, then stop the loop."""
        if self._closed:
            return
        self._closed = True
        self._loop.submit(self._aclose(), timeout=30)
        self._loop.stop(timeout=10)

    async def _aclose(self) -> None:
        for executor in self._executors.values():
            await executor.__aexit__(None, None, None)
        for engine in self._engines.values():
            await engine.aclose()
        for value in self._shared.values():
            close = getattr(value, "close", None)
            if callable(close):  # open caches: blocking is fine, the process is on its way out
                close()
        self._executors.clear()
        self._engines.clear()


_runtime: WorkerRuntime | None = None
_lock = threading.Lock()


def worker_runtime() -> WorkerRuntime:
    """This process's runtime, started on first use and closed when the process exits."""
    global _runtime
    with _lock:
        if _runtime is None:
            _runtime = WorkerRuntime()
            # Before the interpreter stops thread pools (atexit would be too late: closing the
            # cache hands its last flush to one); threading's hook runs first.
            getattr(threading, "_register_atexit", atexit.register)(_runtime.close)
        return _runtime
