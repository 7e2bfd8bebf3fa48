"""The one sync door: run a coroutine to completion from plain code or from inside a running loop."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine
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

    thread = threading.Thread(target=target, name="dfllm-predict")
    thread.start()
    try:
        while thread.is_alive():
            thread.join(0.1)
    except KeyboardInterrupt:
        # Ctrl-C in the notebook: cancel the run so it stops promptly and flushes its cache.
        task = outcome.get("task")
        if task is not None:
            loop.call_soon_threadsafe(task.cancel)
        thread.join()
        raise
    if "error" in outcome:
        raise outcome["error"]
    result: T = outcome["result"]
    return result
