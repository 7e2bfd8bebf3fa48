"""The second ``Dispatch``: a run's pending work as provider batch jobs, at half the price.

Each step is small, and each keeps what was paid for:

1. **attach**: jobs already submitted for these rows (by a run that was killed, or by another
   process on the same cache) are taken over, never submitted again;
2. **submit**: the rest, split at the provider's limits, each file's keys recorded in the cache's
   database before it is uploaded, and its job id the moment the job exists;
3. **poll**: every open job, backing off from ``batch_poll_s`` to ``POLL_MAX_S``; a poll that
   fails for a transient reason is tried again at the next turn; ``batch_timeout_s`` bounds it
   all (the jobs stay recorded: the same call run again collects them);
4. **collect**: a finished job's output and error files, streamed line by line; each answer is
   checked by the output as an online answer is, and settled (cached) at once;
5. **again**: lines that failed for a transient reason, or that an expired or cancelled job
   left unanswered, go in a new job, each row sent at most ``ROUNDS`` times;
6. **repair**: answers that do not fit the schema are re-asked online, through the executor's
   policies: a follow-up job would wait up to another day for each round of repairs.
"""

from __future__ import annotations

import asyncio
import functools
import random
import uuid
from collections.abc import Awaitable, Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from dfllm._exceptions import AuthenticationError, ConfigurationError, EngineError, SchemaError
from dfllm.engines.base import Completion
from dfllm.engines.openai_batch import (
    MAX_FILE_BYTES,
    MAX_REQUESTS_PER_FILE,
    BatchClient,
    BatchJob,
    BatchJobError,
    input_files,
)
from dfllm.prompt.keys import Key
from dfllm.runtime.dispatch import Outcome, Settle, TaskKind, Work
from dfllm.runtime.jobs import JobRecord, JobStore
from dfllm.runtime.limiter import Clock, Sleep
from dfllm.runtime.progress import RunStats
from dfllm.runtime.retry import backoff_s, server_wait_s

Check = Callable[[Completion], Awaitable[Completion | SchemaError]]
Fit = Callable[[Any, Outcome, float], Awaitable[Outcome]]


@dataclass
class _Open:
    """A job this run waits on, and the keys of this run's rows it covers."""

    submission: str
    job_id: str
    keys: set[Key]
    job: BatchJob | None = None
    others: frozenset[Key] = frozenset()  # the job's other rows (another call's): their answers are cached too


@dataclass
class _Round:
    """What one round of jobs left to do: rows to send again, answers to re-ask online."""

    again: dict[Key, EngineError] = field(default_factory=dict)
    repairs: list[tuple[Key, Completion, SchemaError]] = field(default_factory=list)


class BatchDispatch:
    """Submits, polls and collects; the executor gives it the output's check (``check``) and its
    online re-ask loop (``fit``); ``settle`` stores, caches and counts each row once."""

    POLL_MAX_S = 60.0
    POLL_GROWTH = 1.5
    ROUNDS = 3

    def __init__(self, client: BatchClient, jobs: JobStore, engine: str, kind: TaskKind[Any, Any], *,
                 check: Check, fit: Fit, stats: RunStats, timeout_s: float, poll_s: float, max_retries: int,
                 concurrency: int,
                 clock: Clock, sleep: Sleep, keep: Callable[[Key, Completion], None] = lambda key, answer: None,
                 paid: Callable[[Completion], None] = lambda answer: None,
                 max_requests: int = MAX_REQUESTS_PER_FILE, max_bytes: int = MAX_FILE_BYTES) -> None:
        self._client, self._jobs, self._engine, self._kind = client, jobs, engine, kind
        self._check, self._fit, self.stats = check, fit, stats
        self._timeout_s, self._max_retries, self._concurrency = timeout_s, max_retries, concurrency
        self._poll_s = poll_s
        self._keep = keep  # an answer for a row of another call, in a job this one collects: to the cache
        self._paid = paid  # every answer a job gave: its tokens and cost, at the batch price
        self._rng = random.Random()
        self._attached: dict[str, _Open] = {}  # submissions attached already (a stream's batches share jobs)
        self._clock, self._sleep = clock, sleep
        self._limits = (max_requests, max_bytes)
        # The rows being submitted: their work, and each one's position in it by key (no Work held per row).
        self._work: Sequence[Work] = ()
        self._at: dict[Key, int] = {}
        self._settled: set[Key] = set()
        self._sink: Callable[[Key, Outcome], None] = lambda key, outcome: None
        self._probed = False
        # Across the batches of a stream (files, LazyFrames): the jobs waited on, the keys they
        # cover, and the rows no job will answer, with why.
        self._open: list[_Open] = []
        self._covered: set[Key] = set()
        self.failed: dict[Key, Outcome] = {}
        self._deadline: float | None = None
        self._unsent: list[tuple[Key, bytes]] = []
        self.report: Callable[[str], None] = lambda text: None  # the jobs' states, after each round of polls
        self._unsent_bytes = 0

    def close(self) -> None:
        self._jobs.close()

    async def __call__(self, pending: Iterator[int], count: int, work: Sequence[Work], settle: Settle) -> None:
        """One frame's rows, from submission to the last answer (the eager drivers)."""
        where = {work[i].key: i for i in pending}
        self._work, self._at = work, where
        self._sink = lambda key, outcome: settle(where[key], outcome)
        deadline = self._clock() + self._timeout_s
        waiting = set(where)
        for sent in range(1, self.ROUNDS + 1):
            opened = await self._attach_and_submit(waiting)
            result = await self._poll(opened, deadline)
            await self._repair(result.repairs)
            if sent == self.ROUNDS or self._clock() >= deadline:
                self._settle_all(result.again.items())
                break
            waiting = set(result.again)
            self.stats.batch_resubmitted += len(waiting)
            if not waiting:
                break
        # Whatever path a row took, it ends settled (the executor counts on every row).
        self._settle_all((k, BatchJobError("The batch jobs ended without an answer for this row."))
                         for k in list(where) if k not in self._settled)

    # -- a stream: submit every batch, collect once, write every batch ------------------
    async def submit(self, work: Sequence[Work], misses: Iterable[int]) -> int:
        """A stream's batch: its misses not yet covered (nor known to fail) attached or submitted,
        without waiting for them. The rows newly submitted."""
        if self._deadline is None:
            self._deadline = self._clock() + self._timeout_s
        await self._jobs.claim()  # held until collect has sent what is held back: see _attach_and_submit
        self._work = work
        self._at = {work[i].key: i for i in misses
                    if work[i].key not in self._covered and work[i].key not in self.failed}
        attached = await self._attach(set(self._at))
        self._open += attached
        self._covered.update(k for o in attached for k in o.keys)
        fresh = list(self._lines(set(self._at) - self._covered))
        self._covered.update(k for k, _ in fresh)
        # Held until a file is full: a stream's small batches make a few large jobs, not many small.
        self._unsent += fresh
        self._unsent_bytes += sum(len(body) for _, body in fresh)
        if len(self._unsent) >= self._limits[0] or self._unsent_bytes >= self._limits[1]:
            await self._flush()
        return len(fresh)

    async def flush(self) -> list[str]:
        """Send what ``submit`` holds; the ids of every job this dispatch waits on (``dfllm.submit``)."""
        await self._flush()
        return [o.job_id for o in self._open]

    async def _flush(self) -> None:
        lines, self._unsent, self._unsent_bytes = self._unsent, [], 0
        self._open += await self._send(lines)

    async def collect(self, keep: Callable[[Key, Completion], None], *, final: bool) -> int:
        """Wait for every job submitted so far; each answer that fits is given to ``keep`` (the
        cache), every other outcome remembered in ``failed``. Rows to send again are forgotten
        (the next pass over the stream submits them) unless ``final``: their number is returned.
        Answers that do not fit are not re-asked here (the rows are gone from memory): they are
        ``failed`` with the reason."""

        def sink(key: Key, outcome: Outcome) -> None:
            if isinstance(outcome, Completion):
                keep(key, outcome)
            else:
                self.failed[key] = outcome

        self._sink, self._settled = sink, set()
        assert self._deadline is not None, "submit before collect"
        try:
            await self._flush()
        finally:
            self._jobs.release()
        result = await self._poll(self._open, self._deadline)
        self._settle_all((key, problem) for key, _, problem in result.repairs)
        again = 0
        if final or self._clock() >= self._deadline:
            self._settle_all(result.again.items())
        else:
            again = len(result.again)
            self.stats.batch_resubmitted += again
        self._open, self._covered = [], set()
        return again

    def outcome_of(self, key: Key) -> Outcome:
        """A stream's row that the cache does not hold after collecting: why no job answered it."""
        return self.failed.get(key) or BatchJobError("The batch jobs ended without an answer for this row.")

    async def _attach_and_submit(self, wanted: set[Key]) -> list[_Open]:
        """Jobs for ``wanted``: those recorded, and new ones for the rest, under the cache's batch lock
        (two runs on one cache must not both submit the same rows)."""
        await self._jobs.claim()
        try:
            opened = await self._attach(wanted)
            covered = {k for o in opened for k in o.keys}
            return opened + await self._submit(wanted - covered)
        finally:
            self._jobs.release()

    # -- 1. attach ----------------------------------------------------------------------
    async def _attach(self, wanted: set[Key]) -> list[_Open]:
        """The recorded jobs that cover some of ``wanted``: each key taken by the oldest."""
        opened: list[_Open] = []
        for record in self._jobs.open_jobs(self._engine):
            keys = {k for k in record.keys if k in wanted}
            if not keys:
                continue
            wanted -= keys
            if (known := self._attached.get(record.submission)) is not None:  # a stream's later batch
                known.keys |= keys
                known.others = known.others - keys
                self._covered |= keys
                continue
            job_id = record.job_id or await self._found(record)
            if job_id is None:
                wanted |= keys
                continue
            self._attached[record.submission] = _Open(record.submission, job_id, keys,
                                                      others=frozenset(record.keys) - keys)
            opened.append(self._attached[record.submission])
        self.stats.batch_jobs_attached += len(opened)
        return opened

    async def _found(self, record: JobRecord) -> str | None:
        """A job created before its id was recorded, found by its submission id; a submission
        never created (nothing paid) is forgotten and its rows submitted again."""
        job = await self._client.find(record.submission)
        if job is None:
            self._jobs.finished(record.submission)
            return None
        self._jobs.created(record.submission, job.id)
        return job.id

    # -- 2. submit ----------------------------------------------------------------------
    async def _submit(self, keys: set[Key]) -> list[_Open]:
        """``keys``' rows in jobs now, in the rows' order, split at the provider's limits."""
        return await self._send(self._lines(keys))

    def _lines(self, keys: set[Key]) -> Iterator[tuple[Key, bytes]]:
        """Each row's request body, made as the file being written needs it (one file's lines in
        memory at a time); in the rows' order, so a job's lines read as the frame does."""
        for key in (k for k in self._at if k in keys):
            yield key, self._client.engine.request_body(self._kind.build(self._work[self._at[key]]).loaded())

    async def _send(self, lines: Iterable[tuple[Key, bytes]]) -> list[_Open]:
        opened = []
        files = input_files(lines, max_requests=self._limits[0], max_bytes=self._limits[1])
        # Each file is made on a worker thread: its lines' images are read, downscaled and encoded there.
        while (made := await asyncio.to_thread(next, files, None)) is not None:
            file_keys, content = made
            await self._probe()
            submission = uuid.uuid4().hex
            self._jobs.record(submission, self._engine, file_keys)  # before anything is paid for
            file_id = await self._retried(functools.partial(self._client.upload, f"dfllm-{submission}.jsonl", content))
            job = await self._created(file_id, submission)
            self._jobs.created(submission, job.id)
            opened.append(_Open(submission, job.id, set(file_keys), job))
            self.stats.batch_jobs += 1
            self.stats.batch_lines += len(file_keys)
        return opened

    async def _retried(self, call: Callable[[], Awaitable[Any]]) -> Any:
        """``call``, tried again after a transient failure (5xx, 429, a dropped connection) with the
        usual backoff, up to ``max_retries`` times."""
        for attempt in range(self._max_retries + 1):
            try:
                return await call()
            except EngineError as exc:
                if not exc.retryable or attempt == self._max_retries:
                    raise
                await self._sleep(server_wait_s(exc) or backoff_s(attempt, self._rng))
        raise AssertionError("unreachable")

    async def _created(self, file_id: str, submission: str) -> BatchJob:
        """The job over ``file_id``; after a failed create, the provider is asked first whether it made
        the job anyway (a 5xx after the fact), so a retry never makes a second one."""
        tried = False

        async def create() -> BatchJob:
            nonlocal tried
            found = await self._client.find(submission) if tried else None
            tried = True
            return found or await self._client.create(file_id, {"dfllm_submission": submission})

        job: BatchJob = await self._retried(create)
        return job

    async def _probe(self) -> None:
        """A server of OpenAI's API may lack the Batch API: asked once, before any upload."""
        if self._probed:
            return
        try:
            await self._client.engine.request_json("GET", "batches?limit=1", timeout_s=60.0)
        except EngineError as exc:
            if exc.status in (404, 405, 501):
                raise ConfigurationError(
                    f"{self._client.engine.base_url} has no Batch API (GET /batches answered HTTP {exc.status}), so "
                    "mode='batch' cannot be used with it; nothing was uploaded. Use mode='online'.") from None
            raise
        self._probed = True

    # -- 3. poll ------------------------------------------------------------------------
    async def _poll(self, opened: list[_Open], deadline: float) -> _Round:
        result = _Round()
        live = list(opened)
        delay, failures = self._poll_s, 0
        while live:
            for o in list(live):
                try:
                    o.job = await self._client.retrieve(o.job_id)
                    failures = 0
                except EngineError as exc:
                    if isinstance(exc, AuthenticationError):
                        raise
                    if exc.retryable and failures < self._max_retries:
                        failures += 1
                        continue
                    self._give_up(o, exc, result)
                    live.remove(o)
                    continue
                if o.job.done:
                    live.remove(o)
                    await self._collect(o, o.job, result)
            if not live:
                break
            self.report(_states(o.job for o in opened))
            if self._clock() >= deadline:
                for o in live:
                    self._timed_out(o)
                break
            await self._sleep(min(delay, max(0.0, deadline - self._clock())))
            delay = min(delay * self.POLL_GROWTH, max(self.POLL_MAX_S, self._poll_s))
        return result

    def _give_up(self, o: _Open, error: EngineError, result: _Round) -> None:
        """A job that cannot be read: its rows take the error; the record stays unless the job is
        gone (404), so a re-run tries it again."""
        if error.status == 404:
            self._jobs.finished(o.submission)
        self._settle_all((k, BatchJobError(f"Batch job {o.job_id} could not be read: {error}")) for k in o.keys)

    def _timed_out(self, o: _Open) -> None:
        status = o.job.status if o.job is not None else "unknown"
        error = BatchJobError(
            f"Batch job {o.job_id} was still {status} when batch_timeout_s={self._timeout_s:g} ran out. It is "
            "recorded in the cache: run the same call again to collect it (nothing is submitted or paid twice).")
        self._settle_all((k, error) for k in o.keys)

    # -- 4. collect ---------------------------------------------------------------------
    async def _collect(self, o: _Open, job: BatchJob, result: _Round) -> None:
        """Every line of a finished job's files, settled; rows it left unanswered sent again
        (expired, cancelled) or given its reason (a failed job)."""
        seen: set[Key] = set()
        for file_id in (job.output_file_id, job.error_file_id):
            if file_id is not None and not await self._read(file_id, o, seen, result):
                self._settle_all((k, BatchJobError(
                    f"The files of batch job {job.id} could not be read; run the same call again to collect "
                    "them (nothing is paid twice).")) for k in o.keys - seen)
                return  # the record stays
        for key in o.keys - seen:
            self._unanswered(key, job, result)
        self._jobs.finished(o.submission)

    async def _read(self, file_id: str, o: _Open, seen: set[Key], result: _Round) -> bool:
        """One result file into ``seen``, tried again from its start on a transient failure
        (lines already settled are skipped); False when it could not be read."""
        for attempt in range(self._max_retries + 1):
            try:
                async for line in self._client.results(file_id):
                    if line is None or line[0] in seen:
                        continue
                    if isinstance(line[1], Completion) and (line[0] in o.keys or line[0] in o.others):
                        self._paid(line[1])
                    if line[0] in o.keys:
                        seen.add(line[0])
                        await self._settle_line(line[0], line[1], result)
                    elif line[0] in o.others and isinstance(line[1], Completion):
                        seen.add(line[0])
                        self._keep(line[0], line[1])  # paid for: cached for the call that wants it
                return True
            except EngineError as exc:
                if isinstance(exc, AuthenticationError) or not exc.retryable or attempt == self._max_retries:
                    return False
                await self._sleep(self._poll_s)
        return False

    async def _settle_line(self, key: Key, outcome: Completion | EngineError, result: _Round) -> None:
        if isinstance(outcome, EngineError):
            if outcome.retryable:
                result.again[key] = outcome
            else:
                self._settle_all([(key, outcome)])
            return
        checked = await self._check(outcome)
        if isinstance(checked, SchemaError) and checked.repairable:
            result.repairs.append((key, outcome, checked))
        else:
            self._settle_all([(key, checked)])

    def _unanswered(self, key: Key, job: BatchJob, result: _Round) -> None:
        if job.status == "failed":
            reason = job.errors or "the provider gave no reason"
            self._settle_all([(key, BatchJobError(f"Batch job {job.id} failed: {reason}"))])
        else:
            result.again[key] = BatchJobError(f"Batch job {job.id} ended {job.status} without answering this row.",
                                              retryable=True)

    # -- 6. repair ----------------------------------------------------------------------
    async def _repair(self, repairs: list[tuple[Key, Completion, SchemaError]]) -> None:
        """Answers that did not fit, re-asked online (the executor's policies, its concurrency)."""
        if not repairs:
            return
        gate = asyncio.Semaphore(self._concurrency)

        async def one(key: Key, answer: Completion) -> None:
            async with gate:
                task = self._kind.build(self._work[self._at[key]])
                self._settle_all([(key, await self._fit(task, answer, self._clock()))])

        await asyncio.gather(*(one(k, a) for k, a, _ in repairs))

    def _settle_all(self, outcomes: Iterable[tuple[Key, Outcome]]) -> None:
        """Each row settled once: a later outcome for a settled row (a line seen twice) is dropped."""
        for key, outcome in outcomes:
            if key not in self._settled:
                self._settled.add(key)
                self._sink(key, outcome)


def _states(jobs: Iterable[BatchJob | None]) -> str:
    """``"2 jobs: in_progress 31,000/50,000 done, 12 failed"``: what a bar shows while it waits."""
    known = [j for j in jobs if j is not None]
    states = sorted({j.status for j in known})
    done, failed, total = (sum(j.completed for j in known), sum(j.failed for j in known),
                           sum(j.total for j in known))
    return f"{len(known)} job{'s' * (len(known) != 1)}: {', '.join(states)} {done:,}/{total:,} done, {failed:,} failed"
