"""One call over many batches: one engine session, one executor, one cache, one set of limits.

Files and Polars LazyFrames arrive as a stream of batches. Each batch is planned with the
engine, options and cache keys resolved once (``plan_batch``), its unique prompts fan out
concurrently through the shared executor, and its answers are written back before the next
batch is read, so memory holds one batch whatever the input's size. Rates learned and pauses
asked for by the provider carry over from batch to batch, and so does the cache.

``BatchRunner`` is the async form (the command); ``BackgroundRunner`` runs one in an event loop
on its own thread for callers that are plain code driven by someone else (Polars' streaming
engine calls us from its own threads).
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import Callable, Iterable
from typing import Any, TypeVar

from dfllm.drive.eager import make_executor
from dfllm.engines.base import Engine
from dfllm.plan import ALL_NULL, Plan, plan_batch, write_back
from dfllm.runtime.batch import BatchDispatch
from dfllm.runtime.executor import Executor
from dfllm.runtime.progress import RunStats, interactive
from dfllm.runtime.sync import LoopThread

T = TypeVar("T")
_TICK_S = 0.25


class BatchRunner:
    """``async with BatchRunner(plan, stats) as runner: frame = await runner.predict(batch)``.

    ``plan`` is a validated plan (``make_plan``) whose frame has the batches' columns; its own
    rows are not sent. ``total_rows``, when known, sizes the progress bar.
    """

    def __init__(self, plan: Plan, stats: RunStats, *, total_rows: int | None = None) -> None:
        self.plan = plan
        self.stats = stats
        self._total_rows = total_rows
        self._engine: Engine | None = None
        self._opened: Engine | None = None
        self._executor: Executor | None = None
        self._started = 0.0
        self._bar: Any = None
        self._rows_before = 0
        self._from_jobs = 0  # answers this run's batch jobs gave, which the write pass reads from the cache

    async def __aenter__(self) -> BatchRunner:
        plan = self.plan
        self._started = time.perf_counter()
        self._opened = plan.config.connect() if plan.config is not None else None
        runner = self._opened or plan.engine
        assert runner is not None
        # The executor's own bar is per run, here per batch: this runner draws one bar for all.
        options = dataclasses.replace(plan.options, progress=False)
        self._executor = make_executor(plan, runner, self.stats, options=options)
        try:
            await self._executor.__aenter__()
        except BaseException:
            await self._close_engine()
            raise
        wanted = plan.options.progress
        if wanted or (wanted is None and interactive()):
            from tqdm.auto import tqdm

            self._bar = tqdm(total=self._total_rows, unit="row", desc="dfllm", mininterval=0.2)
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        try:
            if self._executor is not None:
                await self._executor.__aexit__(*exc_info)
        finally:
            await self._close_engine()
            self.stats.cache_hits = max(0, self.stats.cache_hits - self._from_jobs)
            self.stats.elapsed_s = time.perf_counter() - self._started
            if self._bar is not None:
                self._bar.close()

    async def _close_engine(self) -> None:
        opened, self._opened = self._opened, None
        if opened is not None:
            await opened.aclose()

    async def predict(self, df: Any) -> Any:
        """``df`` plus the answer columns. Raises ``BatchError`` for failed rows when errors='raise'."""
        assert self._executor is not None, "use BatchRunner as 'async with'"
        batch = plan_batch(self.plan, df)
        stats = self.stats
        stats.rows += len(batch.row_work)
        stats.unique_prompts += len(batch.work)
        stats.skipped_null_rows += batch.row_work.count(ALL_NULL)
        ticker = asyncio.ensure_future(self._tick(len(batch.row_work), len(batch.work)))
        try:
            outcomes = await self._executor.run(batch.work)
        finally:
            ticker.cancel()
        batch_stats = RunStats()
        try:
            return write_back(batch, outcomes, batch_stats)
        finally:
            if batch.spec.images is not None:
                batch.spec.images.forget()
            stats.failed_rows += batch_stats.failed_rows
            for name, count in batch_stats.errors.items():
                stats.errors[name] = stats.errors.get(name, 0) + count
            self._rows_before += len(batch.row_work)
            self._show(self._rows_before)

    async def submit_all(self, batches: Callable[[], Iterable[Any]]) -> None:
        """mode='batch': pass over the stream (``batches()`` reads it from the start) submitting what
        the cache lacks as provider batch jobs, then wait for them; again for rows to send again
        (a transient failure, an expired job), at most ``BatchDispatch.ROUNDS`` passes. Answers go
        to the cache: the write pass (``predict`` per batch) reads them, never sending a request."""
        executor = self._executor
        assert executor is not None, "use BatchRunner as 'async with'"
        if self._bar is not None:
            executor.on_jobs = self._bar.set_postfix_str
        answered = self.stats.succeeded
        for sent in range(1, BatchDispatch.ROUNDS + 1):
            for df in batches():
                await executor.submit_batch(plan_batch(self.plan, df).work)
                if self.plan.spec.images is not None:  # the batch's lines are written: its images can go
                    self.plan.spec.images.forget()
            if not await executor.collect_batches(final=sent == BatchDispatch.ROUNDS):
                break
        # The write pass reads this run's answers back from the cache: they are not cache hits.
        self._from_jobs = self.stats.succeeded - answered

    async def _tick(self, rows: int, unique: int) -> None:
        """Move the bar within a batch, by the share of its unique prompts answered so far."""
        if self._bar is None or not unique:
            return
        start = self.stats.cache_hits + self.stats.succeeded
        while True:
            await asyncio.sleep(_TICK_S)
            done = self.stats.cache_hits + self.stats.succeeded - start
            self._show(self._rows_before + rows * min(done, unique) // unique)

    def _show(self, rows_done: int) -> None:
        bar = self._bar
        if bar is None:
            return
        bar.update(rows_done - bar.n)
        s = self.stats
        bar.set_postfix(cached=s.cache_hits, sent=s.requests, r429=s.rate_limited, failed=s.failed_rows,
                        refresh=False)


class BackgroundRunner:
    """A ``BatchRunner`` on an event loop in its own thread, driven from synchronous code.

    ``predict(df)`` may be called from any thread, one batch at a time or several at once:
    all share the one session and executor. ``close()`` flushes the cache and stops the loop.
    """

    def __init__(self, plan: Plan, stats: RunStats) -> None:
        self._loop = LoopThread("dfllm-pipeline")
        self._runner = BatchRunner(plan, stats)
        try:
            self._loop.submit(self._runner.__aenter__())
        except BaseException:
            self._loop.stop()
            raise

    def predict(self, df: Any) -> Any:
        return self._loop.submit(self._runner.predict(df))

    def submit_all(self, batches: Callable[[], Iterable[Any]]) -> None:
        """mode='batch': ``BatchRunner.submit_all`` on the runner's loop."""
        self._loop.submit(self._runner.submit_all(batches))

    def close(self) -> None:
        try:
            self._loop.submit(self._runner.__aexit__(None, None, None))
        finally:
            self._loop.stop()
