"""``predict`` / ``apredict``: an in-memory frame planned, run and written back, orchestration only.

Everything a caller can get wrong is found by ``make_plan`` before the first request and
reported at once. ``run_plan`` hands the unique prompts to the executor; ``write_back`` puts
the answers into a new frame of the caller's library.
"""

from __future__ import annotations

import threading
import time
from typing import Any, TypeVar, cast

from typing_extensions import Unpack

from dfllm import frames
from dfllm._exceptions import ParameterError
from dfllm.config import models
from dfllm.config.options import Options, PredictOptions
from dfllm.engines.base import Engine, EngineInfo
from dfllm.plan import ALL_NULL, Plan, make_plan, write_back
from dfllm.prompt.template import Template
from dfllm.runtime.bulk import gc_paused
from dfllm.runtime.executor import Executor, Outcome
from dfllm.runtime.progress import RunStats
from dfllm.runtime.sync import run_sync

Frame = TypeVar("Frame")

_last_run: RunStats | None = None
_last_run_lock = threading.Lock()


def last_run() -> RunStats | None:
    """Counters of the latest finished ``predict`` in this process (a notebook convenience).

    Concurrent callers should pass ``stats=RunStats()`` to ``predict`` instead: that object
    receives the counters of that call alone.
    """
    return _last_run


def predict(df: Frame, engine: Any, model: str | None = None, template: str | Template | None = None,
            target: str | None = None, *, stats: RunStats | None = None,
            **options: Unpack[PredictOptions]) -> Frame:
    """Add a column of LLM answers to a copy of ``df``, one request per unique rendered prompt.

    ``engine``: a name from ``create_engine``, a provider name (key from its environment
    variable), an engine object, or a model from ``create_model`` (then model, template and
    target come from it). ``template`` fills ``{{column}}`` placeholders from each row.
    ``stats``: a ``RunStats`` to receive this call's counters. Options: see ``PredictOptions``.
    A lazy frame (a Dask DataFrame, a Polars LazyFrame) gives back a lazy frame of its kind:
    nothing is sent until it is computed.
    """
    lazy = frames.lazy_predict_for(df)
    if lazy is not None:
        return cast(Frame, lazy(df, engine, model, template, target, stats=stats, **options))
    return run_sync(apredict(df, engine, model, template, target, stats=stats, **options))


async def apredict(df: Frame, engine: Any, model: str | None = None, template: str | Template | None = None,
                   target: str | None = None, *, stats: RunStats | None = None,
                   **options: Unpack[PredictOptions]) -> Frame:
    """The async form of ``predict``."""
    if frames.lazy_predict_for(df) is not None:
        raise ParameterError(
            f"apredict answers eager frames; a {type(df).__module__}.{type(df).__name__} is lazy: call "
            "dfllm.predict on it (it returns a lazy frame, answered when computed)."
        )
    if stats is not None and not isinstance(stats, RunStats):
        raise ParameterError(f"stats must be a dfllm.RunStats to receive the counters, got {stats!r}.")
    with gc_paused():
        plan = make_plan(df, engine, model, template, target, options)
    run_stats = stats if stats is not None else RunStats()
    outcomes = await run_plan(plan, run_stats)
    with gc_paused():
        result: Frame = write_back(plan, outcomes, run_stats)
    return result


models.use_drivers(predict, apredict)


async def run_plan(plan: Plan, stats: RunStats) -> list[Outcome]:
    """Send the plan's unique prompts through the executor; fills ``stats``."""
    global _last_run
    stats.rows = len(plan.row_work)
    stats.unique_prompts = len(plan.work)
    stats.skipped_null_rows = plan.row_work.count(ALL_NULL)
    opened = plan.config.connect() if plan.config is not None else None
    runner = opened or plan.engine
    assert runner is not None
    started = time.perf_counter()
    try:
        return await make_executor(plan, runner, stats).run(plan.work)
    finally:
        stats.elapsed_s = time.perf_counter() - started
        with _last_run_lock:
            _last_run = stats
        if opened is not None:
            await opened.aclose()


def make_executor(plan: Plan, engine: Engine, stats: RunStats, *, options: Options | None = None,
                  gate: Any = None) -> Executor:
    """The executor for ``plan``'s calls: its options, cap, cacheability and output (the answers' check).

    The cap is what the engine that runs declared (``EngineInfo.of``: a built-in engine opened from
    its config and a custom object alike), within the plan's when it has one.
    """
    options = options or plan.options
    hint = plan.template.prefix_cache_hint() if plan.template is not None else None
    if hint is not None and hint not in stats.warnings:  # once a call, however many executors it makes
        stats.warnings.append(hint)
    if options.prices is not None and stats.cost_usd is None:
        stats.cost_usd = 0.0  # with prices, a run all from the cache cost nothing, and says so
    caps = [c for c in (plan.info.max_concurrency, EngineInfo.of(engine).max_concurrency) if c is not None]
    return Executor(engine, options, stats, plan.spec, concurrency_cap=min(caps, default=None),
                    cacheable=plan.info.identity is not None, output=plan.output, gate=gate)
