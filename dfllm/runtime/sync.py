"""The one sync door: run a coroutine to completion from plain code or from inside a running loop."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import signal
import threading
from collections.abc import Coroutine, Iterator
from typing import Any, TypeVar

T = TypeVar("T")


def run_sync(coro: Coroutine[Any, Any, T]) -> T:
    """``asyncio.run`` it; inside a running loop (Jupyter), run it on a fresh loop in a thread.

    A thread rather than ``nest_asyncio``: the caller's loop is left alone, and everything
    loop-bound (sessions, limiters) is created in the thread's own loop.
    """
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro)
    return _run_in_thread(coro)


def _run_in_thread(coro: Coroutine[Any, Any, T]) -> T:
    loop = asyncio.new_event_loop()
    outcome: dict[str, Any] = {}
    finished = threading.Event()

    def target() -> None:
        task = loop.create_task(coro)
        outcome["task"] = task
        try:
            outcome["result"] = loop.run_until_complete(task)
        except BaseException as exc:  # carried back to the caller's thread
            outcome["error"] = exc
        finally:
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()
            finished.set()

    thread = threading.Thread(target=target, name="dfllm-predict")
    thread.start()
    # Waited for with an event, not thread.join(timeout): before Python 3.13, a join that Ctrl-C
    # interrupts marks the thread stopped while it still runs, so later joins, and the
    # interpreter's exit, no longer wait for it, and the answers its cache had yet to write
    # were lost.
    try:
        with _ctrl_c_raises():
            while not finished.wait(0.1):
                pass
    except KeyboardInterrupt:
        # Ctrl-C: cancel the run so it stops promptly and flushes its cache, then say so.
        task = outcome.get("task")
        if task is not None:
            with contextlib.suppress(RuntimeError):  # the run ended (and closed its loop) just now
                loop.call_soon_threadsafe(task.cancel)
        finished.wait()
        raise
    thread.join()
    if "error" in outcome:
        raise outcome["error"]
    result: T = outcome["result"]
    return result


@contextlib.contextmanager
def _ctrl_c_raises() -> Iterator[None]:
    """Let Ctrl-C raise ``KeyboardInterrupt`` here while we block the caller's loop.

    ``asyncio.run`` replaces Python's SIGINT handler with one that cancels its main task; that
    task is blocked in this very call, so the cancel would only land after the whole run, and
    its result would be thrown away. The default handler is put back for the wait.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.getsignal(signal.SIGINT)
    handler = previous.func if isinstance(previous, functools.partial) else previous
    if not isinstance(getattr(handler, "__self__", None), asyncio.Runner):
        yield  # a handler of the caller's own (or the default, which raises already): keep it
        return
    signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


class LoopThread:
    """An event loop running on its own daemon thread, for plain code that outlives one call.

    Pipelines driven by Polars' threads and Dask workers submit coroutines to it from their own
    threads and wait; everything loop-bound (sessions, executors) lives on this loop.
    """

    def __init__(self, name: str) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name=name, daemon=True)
        self._thread.start()

    def submit(self, coro: Coroutine[Any, Any, T], timeout: float | None = None) -> T:
        """Run ``coro`` on the loop and wait for it (from any thread but the loop's own)."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def stop(self, timeout: float | None = None) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout)
        if not self._thread.is_alive():
            self.loop.close()
