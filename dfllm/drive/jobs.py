"""``dfllm.submit``: a frame's batch jobs sent without waiting, and a handle for a notebook.

The handle holds the call, not the answers: ``result()`` is the same call made again in batch
mode, which attaches to the jobs recorded in the cache (nothing is submitted or paid twice) and
waits for them. So a job submitted here can be collected by another process, or after a restart,
by running the same call. ``status()`` asks the provider; ``cancel()`` cancels the jobs.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, TypeVar

from typing_extensions import Unpack

from dfllm._exceptions import ParameterError
from dfllm.config.engines import EngineConfig, resolve_engine
from dfllm.config.options import PredictOptions
from dfllm.drive.eager import make_executor, predict
from dfllm.engines.http import OpenAICompatibleEngine
from dfllm.engines.openai_batch import BatchClient, BatchJob
from dfllm.plan import Plan, make_plan
from dfllm.prompt.template import Template
from dfllm.runtime.jobs import JobStore, engine_tag
from dfllm.runtime.location import sqlite_path
from dfllm.runtime.progress import RunStats
from dfllm.runtime.sync import run_sync

Frame = TypeVar("Frame")


@dataclass(frozen=True)
class JobStatus:
    """One job as the provider last described it."""

    id: str
    status: str
    completed: int
    failed: int
    total: int


@dataclass
class BatchHandle(Generic[Frame]):
    """The batch jobs of one ``submit`` call. ``job_ids`` may be empty: the cache held every answer."""

    job_ids: list[str]
    _call: tuple[Any, Any, str | None, str | Template | None, str | None]
    _options: Mapping[str, Any]

    def status(self) -> list[JobStatus]:
        """Each job's state and request counts, asked of the provider now."""
        return run_sync(self._each(lambda client, job_id: client.retrieve(job_id)))

    def done(self) -> bool:
        return all(s.status in ("completed", "failed", "expired", "cancelled") for s in self.status())

    def cancel(self) -> list[JobStatus]:
        """Ask the provider to cancel every job (answers it already has stay in its output: the next
        ``result()`` collects them, and only the rest are submitted again)."""
        return run_sync(self._each(lambda client, job_id: client.cancel(job_id)))

    def result(self, **options: Unpack[PredictOptions]) -> Frame:
        """The frame with its answers: the same call in batch mode, attached to these jobs. Waits up
        to ``batch_timeout_s`` (given here, or the call's)."""
        df, engine, model, template, target = self._call
        merged: dict[str, Any] = {**self._options, **options, "mode": "batch"}
        out: Frame = predict(df, engine, model, template, target, **merged)
        return out

    async def _each(self, ask: Any) -> list[JobStatus]:
        df, engine, model, template, target = self._call
        plan = make_plan(df.head(0) if hasattr(df, "head") else df, engine, model, template, target,
                         {**self._options, "mode": "batch"})
        opened = plan.config.connect() if plan.config is not None else None
        runner = opened or plan.engine
        if not isinstance(runner, OpenAICompatibleEngine):
            raise ParameterError("Batch jobs are asked about through an HTTP engine with the Batch API.")
        try:
            jobs: list[BatchJob] = [await ask(BatchClient(runner), job_id) for job_id in self.job_ids]
        finally:
            if opened is not None:
                await opened.aclose()
        return [JobStatus(j.id, j.status, j.completed, j.failed, j.total) for j in jobs]

    def __repr__(self) -> str:
        return f"BatchHandle(job_ids={self.job_ids!r})"


def submit(df: Frame, engine: Any, model: str | None = None, template: str | Template | None = None,
           target: str | None = None, **options: Unpack[PredictOptions]) -> BatchHandle[Frame]:
    """Send ``df``'s cache misses as provider batch jobs and return at once (``mode='batch'``).

    The same arguments as ``predict``. ``handle.result()`` waits for the answers and returns the
    frame ``predict`` would; so does the same ``predict(..., mode='batch')`` call from another
    process or after a restart, attached to the jobs this one submitted.
    """
    call_options: dict[str, Any] = {**options, "mode": "batch"}
    if options.get("mode", "batch") != "batch":
        raise ParameterError(f"submit sends batch jobs; mode={options.get('mode')!r} is not one. Drop mode=.")
    plan = make_plan(df, engine, model, template, target, call_options)
    job_ids = run_sync(_submit(plan))
    return BatchHandle(job_ids, (df, engine, model, template, target), call_options)


async def _submit(plan: Plan) -> list[str]:
    assert plan.config is not None or plan.engine is not None
    opened = plan.config.connect() if plan.config is not None else None
    runner = opened or plan.engine
    assert runner is not None
    options = dataclasses.replace(plan.options, progress=False)
    try:
        async with make_executor(plan, runner, RunStats(), options=options) as executor:
            return await executor.submit_jobs(plan.work)
    finally:
        if opened is not None:
            await opened.aclose()


@dataclass(frozen=True)
class RecordedJob:
    """A job dfllm submitted and has not collected yet, as the cache's records hold it; ``state`` is
    the provider's account when an engine was given to ask it."""

    job_id: str | None  # None: killed before the job's id was recorded (the next run looks for it)
    rows: int
    created: float  # seconds since the epoch
    state: JobStatus | None = None


def batch_jobs(cache: bool | str | Path = True, engine: Any = None, *,
               cancel: str | None = None) -> list[RecordedJob]:
    """The batch jobs in flight for ``cache`` (submitted, not yet collected), oldest first.

    With ``engine`` (a name from ``create_engine``, a provider name or an engine config), only its
    jobs, each with its state asked of the provider; ``cancel`` (a job id, or ``"all"``) cancels
    those jobs first. The records stay until a run collects the jobs: run the same call again, and
    it sends the rows a cancelled job left unanswered in a new one.
    """
    path = sqlite_path(cache)
    if path is None:
        raise ParameterError(f"Batch jobs are recorded in a SQLite cache; cache={cache!r} is none.")
    if cancel is not None and engine is None:
        raise ParameterError("cancel= needs the engine the jobs were sent to (engine=).")
    if not path.exists():
        return []
    store = JobStore(path)
    try:
        if engine is None:
            return [RecordedJob(r.job_id, len(r.keys), r.created) for r in store.open_jobs()]
        return run_sync(_ask(store, resolve_engine(engine), cancel))
    finally:
        store.close()


async def _ask(store: JobStore, engine: Any, cancel: str | None) -> list[RecordedJob]:
    if not isinstance(engine, EngineConfig):
        raise ParameterError("engine= must name an engine (create_engine) or a provider: its jobs are found "
                             "by its identity.")
    runner = engine.connect()
    try:
        if not isinstance(runner, OpenAICompatibleEngine) or runner.identity is None:
            raise ParameterError(f"Engine {engine.name!r} has no Batch API.")
        client = BatchClient(runner)
        jobs = []
        for record in store.open_jobs(engine_tag(runner.identity)):
            state = None
            if record.job_id is not None:
                wanted = cancel is not None and cancel in ("all", record.job_id)
                job = await (client.cancel(record.job_id) if wanted else client.retrieve(record.job_id))
                state = JobStatus(job.id, job.status, job.completed, job.failed, job.total)
            jobs.append(RecordedJob(record.job_id, len(record.keys), record.created, state))
        return jobs
    finally:
        await runner.aclose()
