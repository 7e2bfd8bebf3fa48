"""The executor: the one place with policy.

It answers a list of unique requests, in order, with a ``Completion`` or the error that ended
that request. It owns the cache (look up first, write each answer the moment it arrives),
concurrency (a fixed pool of workers and an AIMD window), rate limits (paced ``rpm``/``tpm``,
limits learned from ``x-ratelimit-*`` headers, a pause for every worker in a 429 storm),
retries (``retry``: bounded in attempts and total time, server-requested waits included) and
progress. Warnings of the run (a header pace it would not obey, answers the cache could not
keep) are in ``RunStats.warnings`` and emitted as ``RuntimeWarning`` when the run ends.

Answers are checked here too, because a re-ask is policy: the call's ``output``
(``dfllm.outputs``) checks each answer (the answer, with a schema's typed ``values``, when it
fits, else the ``SchemaError``; each answer is parsed once, here), and a row whose answer does
not fit is asked again with the turns ``output.repair`` gives, at most ``max_repairs`` times and
within the row's ``max_retry_time_s``; then the ``SchemaError`` is that row's outcome (as is
anything ``output.check`` raises). Tasks are otherwise opaque here: a key, a size estimate, a send. Only
answers that fit are cached, and a cached answer is checked again on read (a changed schema,
or an entry written by an older dfllm, is asked afresh rather than served in a stale shape).
"""

from __future__ import annotations

import asyncio
import math
import random
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from typing import Any, NamedTuple, Protocol, TypeVar

from dfllm._exceptions import AuthenticationError, ConfigurationError, EngineError, RateLimitError, SchemaError
from dfllm.config.options import Options
from dfllm.engines.base import Completion, EngineInfo, RateLimitState
from dfllm.engines.http import OpenAICompatibleEngine
from dfllm.engines.openai_batch import BatchClient
from dfllm.engines.tasks import Message
from dfllm.outputs.base import Output
from dfllm.outputs.kinds import TextOutput
from dfllm.prompt.keys import Key
from dfllm.runtime.batch import BatchDispatch
from dfllm.runtime.bulk import gc_paused, gc_relaxed
from dfllm.runtime.dispatch import (
    DEFAULT_COMPLETION_ESTIMATE,
    Dispatch,
    Outcome,
    RequestSpec,
    Settle,
    TaskKind,
    Work,
    WorkList,
    estimate_tokens,
    run_workers,
)
from dfllm.runtime.embedding import EmbedSpec, GroupedDispatch
from dfllm.runtime.jobs import JobStore, engine_tag
from dfllm.runtime.limiter import (
    AdaptiveRate,
    Clock,
    Pacer,
    Pause,
    Sleep,
    SlowStartPacer,
    StormDetector,
    Window,
)
from dfllm.runtime.progress import Progress, RunStats
from dfllm.runtime.retry import backoff_s, retry_after_cause, seconds_text, server_wait_s, wait_refused
from dfllm.runtime.stores import Store, look_up, open_store

__all__ = ["Executor", "Gate", "Outcome", "RequestSpec", "TaskKind", "Work", "estimate_tokens"]

EngineT = TypeVar("EngineT")

# Before the first answer we know nothing of the account's limits: one request goes alone, so
# its headers are read before more are sent; then this many go in flight (doubling per round
# trip) rather than the whole pool at once into a possible cap.
_INITIAL_WINDOW = 32
# An answer longer than this is checked on a worker thread: a check written in Python lets
# the loop run between its bytecodes. pydantic-core holds the GIL while it validates, so for the
# schema validator the bound is its own (parse.MAX_SCHEMA_ANSWER_CHARS), not the thread.
_CHECKED_IN_THREAD_CHARS = 64 * 1024


class _Failure(NamedTuple):
    """A send that failed, and when: what its retry is weighed on."""

    error: EngineError
    sent_at: float
    ticket: int  # the storm detector's count of the send


class Gate(Protocol):
    """A limit shared beyond this executor (the Dask cluster's rate budget), passed right before
    each send; told of every rate-limit header and of the 429s that show a real cap (a storm, or
    any 429 at a pace), so it can tell the others. A lone 429 delays only its own row."""

    async def acquire(self, tokens: int) -> None: ...

    def on_rate_limited(self, retry_after: float | None) -> None: ...

    def on_headers(self, state: RateLimitState) -> None: ...


class Executor:
    """Answers a run's work: ``spec`` (a ``TaskKind``, the chat kind ``RequestSpec`` by default)
    makes each row's task and sends it to ``engine``; everything else is policy, here."""

    def __init__(
        self,
        engine: EngineT,
        options: Options,
        stats: RunStats,
        spec: TaskKind[EngineT, Any],
        *,
        concurrency_cap: int | None = None,
        cacheable: bool = True,
        output: Output | None = None,
        clock: Clock = time.monotonic,
        sleep: Sleep = asyncio.sleep,
        rng: random.Random | None = None,
        gate: Gate | None = None,
    ) -> None:
        _check_takes(engine, spec)
        self._engine: object = engine
        self._gate = gate
        self._cacheable = cacheable
        self._output: Output = output or TextOutput()
        self._kind: TaskKind[Any, Any] = spec
        self._options = options
        self._prices = options.prices  # what each answer received costs; None: no prices given
        self.stats = stats
        self._clock = clock
        self._sleep = sleep
        self._rng = rng or random.Random()
        pool = options.concurrency if concurrency_cap is None else min(options.concurrency, concurrency_cap)
        self._pool = pool
        self._window = Window(1, pool, clock)
        self._slow_start = SlowStartPacer(self._window, clock, sleep)
        self._opened = False
        self._pause = Pause(clock, sleep, self._rng)
        self._storm = StormDetector(clock)
        self._rpm = Pacer(options.rpm, clock, sleep) if options.rpm else None
        self._tpm = Pacer(options.tpm, clock, sleep) if options.tpm else None
        # Steers the rate unless the caller gave rpm: headers only seed and steer it.
        self._adaptive = AdaptiveRate(clock, sleep)
        self._unanswered = 0
        self._in_flight = 0  # sent, not answered: a budget reading may not count them yet
        self._warned = 0
        self._abort: AuthenticationError | None = None
        self._cache: Store | None = None
        self._entered = False
        self._batch: BatchDispatch | None = None  # mode='batch': one for the executor's life
        self._collected = False  # a stream's jobs are collected: its write pass reads the cache only
        self._long_checks: asyncio.Lock | None = None  # long answers are checked one at a time
        self.on_jobs: Callable[[str], None] = lambda text: None  # batch jobs' states while they are waited on

    async def __aenter__(self) -> Executor:
        """Open the cache once for several ``run`` calls (batches of one pipeline share it)."""
        if self._cacheable and self._cache is None:
            self._cache = open_store(self._options.cache)
        self._entered = True
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        self._entered = False
        if self._batch is not None:
            self._batch.close()
            self._batch = None
        cache, self._cache = self._cache, None
        if cache is not None:
            await asyncio.to_thread(cache.close)
            self._note_cache_failures(cache)
        self._emit_warnings()

    async def run(self, work: Sequence[Work]) -> list[Outcome]:
        """Answer ``work`` in order. Limits, learned rates and the cache carry over between calls
        on one executor; outside ``async with``, the cache is opened and closed around this call.
        """
        if not self._entered:
            async with self:
                return await self._run(work)
        try:
            return await self._run(work)
        finally:
            self._emit_warnings()

    def _warn(self, message: str) -> None:
        self.stats.warnings.append(message)

    def _emit_warnings(self) -> None:
        # Emitted after the run, never from inside a worker: a warnings filter set to "error"
        # must not turn a notice into a lost run.
        for message in self.stats.warnings[self._warned:]:
            warnings.warn(message, RuntimeWarning, stacklevel=4)
        self._warned = len(self.stats.warnings)

    def _note_cache_failures(self, cache: Store) -> None:
        total = getattr(cache, "failed", 0)
        failed = total - self.stats.cache_write_failures
        if failed > 0:
            self.stats.cache_write_failures = total
            counts = getattr(cache, "failure_causes", None)
            causes = "; ".join(f"{n} x {c}" for c, n in counts.most_common(3)) if counts else "unknown cause"
            where = getattr(cache, "path", "")
            self._warn(
                f"{failed} answer(s) could not be saved to the cache {where} ({causes}). They are in "
                "this result, but a re-run will pay for them again."
            )

    async def _run(self, work: Sequence[Work]) -> list[Outcome]:
        results: list[Outcome | None] = [None] * len(work)
        cache = self._cache
        progress = Progress(self._options.progress, len(work), self.stats)
        self.on_jobs = progress.note
        try:
            hits = self._look_up(work, results, cache, progress) if cache is not None else 0
            # Pending positions as one lazy iterator: a queue that costs no memory per row.
            pending = (i for i, r in enumerate(results) if r is None)
            n_pending = len(work) - hits
            self._unanswered = n_pending

            key_at = work.key_at if isinstance(work, WorkList) else lambda i: work[i].key

            def settle(i: int, outcome: Outcome) -> None:
                self._settle(key_at(i), outcome, cache, progress)
                results[i] = outcome

            dispatch = self._dispatch() if n_pending else self._pool_dispatch
            with gc_relaxed():
                await dispatch(pending, n_pending, work, settle)
            if self._abort is not None:
                raise self._abort
        finally:
            progress.close()
        answered = [r for r in results if r is not None]
        assert len(answered) == len(results), "a worker stopped before the queue was empty"
        return answered

    def _look_up(self, work: Sequence[Work], results: list[Outcome | None], cache: Store,
                 progress: Progress) -> int:
        """Fill ``results`` from the cache (answers that still pass the output's check); the hits."""
        with gc_paused():
            found = look_up(cache, work.keys() if isinstance(work, WorkList) else (w.key for w in work))
            if self._output.checked:
                found = [fits if c is not None and isinstance(fits := self._check_now(c), Completion) else None
                         for c in found]
            results[:] = found
        hits = len(found) - found.count(None)
        self.stats.cache_hits += hits
        progress.advance(hits)
        return hits

    def _settle(self, key: Key, outcome: Outcome, cache: Store | None, progress: Progress) -> None:
        """A row's outcome is in: counted, and an answer cached the moment it arrives."""
        self._unanswered -= 1
        if isinstance(outcome, Completion):
            self.stats.succeeded += 1
            if cache is not None:
                cache.put(key, outcome)
        progress.advance()

    async def _pool_dispatch(self, pending: Iterator[int], count: int, work: Sequence[Work],
                             settle: Settle) -> None:
        """The worker pool, one ``Dispatch`` (``dispatch.Dispatch``): a fixed pool of workers pulls
        positions from ``pending``, each row answered through the chain of policies (``_answer``)."""
        await run_workers(self._worker(pending, work, settle) for _ in range(min(self._pool, count)))

    def _dispatch(self) -> Dispatch:
        """The worker pool online; in batch mode the jobs, or once a stream's jobs are collected,
        what they left (``_from_jobs``)."""
        if isinstance(self._kind, EmbedSpec):  # many rows a request
            return GroupedDispatch(self._kind, self._attempt, self._check_now, self._clock, self._pool)
        if self._options.mode != "batch":
            return self._pool_dispatch
        return self._from_jobs if self._collected else self._batches()

    def _batches(self) -> BatchDispatch:
        """Provider batch jobs (``runtime/batch``), their records in the cache's database; the
        output's check and the online re-ask loop are this executor's."""
        if self._batch is not None:
            return self._batch
        path = self._options.cache_path()
        info = EngineInfo.of(self._engine)
        if not isinstance(self._engine, OpenAICompatibleEngine) or not info.capabilities.batch_jobs or path is None \
                or info.identity is None:
            raise ConfigurationError("mode='batch' needs an engine with the Batch API and a SQLite cache; "
                                     "make_plan checks this before any request.")
        options = self._options
        self._batch = BatchDispatch(
            BatchClient(self._engine, timeout_s=options.timeout_s), JobStore(path), engine_tag(info.identity),
            self._kind, check=self._check, fit=self._until_it_fits, stats=self.stats,
            timeout_s=options.batch_timeout_s, poll_s=options.batch_poll_s, max_retries=options.max_retries,
            concurrency=self._pool, clock=self._clock, sleep=self._sleep, keep=self._keep_other,
            paid=lambda answer: self.stats.add_usage(answer, self._prices, batch=True))
        self._batch.report = lambda text: self.on_jobs(text)
        return self._batch

    def _keep_other(self, key: Key, completion: Completion) -> None:
        """A batch job's answer for a row another call asked for: paid for, so cached for it."""
        if self._cache is not None:
            self._cache.put(key, completion)

    async def submit_batch(self, work: Sequence[Work]) -> int:
        """A stream's batch in batch mode: what the cache lacks is submitted (or attached to a job
        already submitted), not waited for. The rows newly submitted."""
        assert self._cache is not None, "batch mode runs inside 'async with' on a SQLite cache"
        results: list[Outcome | None] = [None] * len(work)
        self._look_up(work, results, self._cache, Progress(False, len(work), RunStats()))
        return await self._batches().submit(work, (i for i, r in enumerate(results) if r is None))

    async def submit_jobs(self, work: Sequence[Work]) -> list[str]:
        """``work``'s cache misses as batch jobs, sent now and not waited for; the ids of the jobs
        that cover them (``dfllm.submit``: the same call later attaches to them)."""
        await self.submit_batch(work)
        return await self._batches().flush()

    async def collect_batches(self, *, final: bool) -> int:
        """Wait for the stream's jobs; their answers go to the cache, which the write pass reads.
        The rows to submit again in another pass (none when ``final``)."""
        cache = self._cache
        assert cache is not None

        def keep(key: Key, completion: Completion) -> None:
            self.stats.succeeded += 1
            cache.put(key, completion)

        again = await self._batches().collect(keep, final=final)
        self._collected = again == 0
        return again

    async def _from_jobs(self, pending: Iterator[int], count: int, work: Sequence[Work], settle: Settle) -> None:
        """A stream's write pass: a row the cache lacks gets why no job answered it."""
        assert self._batch is not None
        for i in pending:
            settle(i, self._batch.outcome_of(work[i].key))

    async def _worker(self, pending: Iterator[int], work: Sequence[Work], settle: Settle) -> None:
        for i in pending:
            if self._abort is not None:
                return
            settle(i, await self._answer(work[i]))

    async def _answer(self, item: Work) -> Outcome:
        """The row's outcome: the engine's answer, re-asked while it does not fit the output.

        Re-asks spend the row's ``max_retry_time_s`` as retries do: the budget runs from the
        row's first send, so a model that never fits cannot keep its row busy for long.
        """
        started = self._clock()
        task = self._kind.build(item)
        outcome = await self._attempt(task, started)
        if not self._output.checked:  # nothing to check (text): no re-ask loop to enter
            return outcome
        return await self._until_it_fits(task, outcome, started)

    async def _until_it_fits(self, task: Any, outcome: Outcome, started: float) -> Outcome:
        """``outcome``, or while it does not fit the output, the task re-asked with the repair's turns
        (an answer from a batch job comes here too)."""
        repairs = 0
        while self._output.checked and isinstance(outcome, Completion):
            problem = await self._check(outcome)
            if isinstance(problem, Completion):
                return problem  # it fits, with its typed values
            turns = self._repair_turns(outcome, problem, repairs, started)
            if isinstance(turns, SchemaError):
                return turns
            repairs += 1
            self.stats.repairs += 1
            task = self._kind.reask(task, turns)
            outcome = await self._attempt(task, started)
        return outcome

    def _repair_turns(self, outcome: Completion, problem: SchemaError, repairs: int,
                      started: float) -> tuple[Message, ...] | SchemaError:
        """The turns that ask again, or the problem as the row's outcome when it may not be."""
        if not problem.repairable or repairs >= self._options.max_repairs or self._abort is not None:
            return problem
        if self._clock() - started >= self._options.max_retry_time_s:
            return _out_of_time(problem, repairs, self._options.max_retry_time_s)
        turns = self._output.repair(outcome, problem)
        return problem if turns is None else turns

    async def _check(self, completion: Completion) -> Completion | SchemaError:
        """The output's verdict on an answer. A long one is read on a worker thread, one at a time,
        and the loop then gets as long as the check took before the next long one starts: a check
        that holds the GIL (pydantic's) stalls the loop while it runs, so many of them at once would
        time out the other rows' requests (paid twice); this way checks take at most about half the
        loop's time, and no stall is longer than one check."""
        if len(completion.text) <= _CHECKED_IN_THREAD_CHARS:
            return self._check_now(completion)
        if self._long_checks is None:
            self._long_checks = asyncio.Lock()  # made in the running loop
        async with self._long_checks:
            began = time.perf_counter()  # the real time the loop lost, whatever clock policy runs on
            verdict = await asyncio.to_thread(self._check_now, completion)
            await asyncio.sleep(time.perf_counter() - began)
        return verdict

    def _check_now(self, completion: Completion) -> Completion | SchemaError:
        """``output.check``'s verdict; whatever it raises is this answer's error, never the run's."""
        try:
            return self._output.check(completion)
        except Exception as exc:
            error = SchemaError(
                f"Checking the answer failed ({type(exc).__name__}: {exc}); the row is not asked again. "
                f"Raw answer: {completion.text[:200]!r}",
                raw=completion.text, problem=f"{type(exc).__name__}: {exc}", repairable=False)
            error.__cause__ = exc
            return error

    def _open_window(self) -> None:
        """The first answer is in (and its headers read): let the window slow-start from here."""
        self._opened = True
        self._window.widen(_INITIAL_WINDOW)

    # The chain each send goes through, one policy a step (as httpx's auth -> redirects -> send):
    # _attempt: retry within the row's budget
    #   _try_once: an in-flight slot (window) -> _pass_gates -> _send -> _on_answer
    #     _pass_gates: _pass_pause_and_pace (Retry-After pause, rpm / learned / slow-start pace)
    #                  -> _pass_token_gates (tpm, the cluster's gate) -> a refused key stops
    #   _on_failure: _note_failure (storm, 429 policies) -> _retry_delay (server wait vs budget,
    #                backoff, a storm's pause for all)

    async def _attempt(self, task: Any, started: float) -> Outcome:
        """One answer for ``task``, retried within the row's budget, which runs from ``started``."""
        deadline = started + self._options.max_retry_time_s
        attempt = 0
        while True:
            tried = await self._try_once(task, deadline)
            if not isinstance(tried, _Failure):
                return tried
            delay = self._on_failure(tried, started, attempt)
            if isinstance(delay, EngineError):
                return delay
            attempt += 1
            self.stats.retries += 1
            if delay:
                await self._sleep(delay)

    async def _try_once(self, task: Any, deadline: float) -> Outcome | _Failure:
        """One send in an in-flight slot, past every gate: the answer, the failure to weigh for
        a retry, or the row's outcome when a gate refused its wait or the key was refused."""
        ticket, sent_at = 0, self._clock()  # the storm detector's count of this send, once sent
        # The slot first, then every gate right before sending: a limit learned while this
        # worker waited for its slot still applies to it.
        await self._window.acquire()
        try:
            refused = await self._pass_gates(task, deadline)
            if refused is not None:
                return refused
            sent_at, ticket = self._clock(), self._storm.sent()
            completion = await self._send(task)
        except AuthenticationError as exc:
            self._abort = self._abort or exc
            return exc
        except EngineError as exc:
            return _Failure(exc, sent_at, ticket)
        except Exception as exc:  # an engine broke its contract: fail this row, not the run
            error = EngineError(f"{type(self._engine).__name__} raised {type(exc).__name__}: {exc}")
            error.__cause__ = exc
            return _Failure(error, sent_at, ticket)
        else:
            self._on_answer(completion, sent_at, ticket)
            return completion
        finally:
            self._window.release()

    async def _pass_gates(self, task: Any, deadline: float) -> EngineError | None:
        """Wait at every gate; the row's outcome when it cannot afford a wait or the key was refused."""
        refused = await self._pass_pause_and_pace(deadline)
        if refused is not None:
            return refused
        if self._tpm is not None or self._gate is not None:
            await self._pass_token_gates(task)
        return self._abort  # the key was refused while we waited: send nothing more

    async def _pass_pause_and_pace(self, deadline: float) -> EngineError | None:
        """Out of any pause (Retry-After, a storm, a spent budget), then at the pace in force; a
        pause that began while this send waited for its pace is waited out too."""
        while True:
            if not await self._pause.wait(deadline):
                now = self._clock()
                budget = self._options.max_retry_time_s
                return wait_refused(self._pause.reason, self._pause.until - now, deadline - now, budget)
            pace = self._pace()
            await pace.acquire()
            if self._pause.until <= self._clock() and self._pace() is pace:
                return None

    async def _pass_token_gates(self, task: Any) -> None:
        """The ``tpm`` pace and the cluster's gate, each holding the task's estimated tokens."""
        size = self._kind.size(task)
        if self._tpm is not None:
            await self._tpm.acquire(min(size, self._tpm.per_minute))
        if self._gate is not None:
            await self._gate.acquire(size)

    async def _send(self, task: Any) -> Completion:
        """The task, sent once by its kind; counted as in flight until it is answered."""
        self.stats.requests += 1
        self._in_flight += 1
        try:
            return await self._kind.send(self._engine, task)
        finally:
            self._in_flight -= 1

    def _on_answer(self, completion: Completion, sent_at: float, ticket: int) -> None:
        """An answer: paid for (its tokens and cost counted now, whether it fits or not); the storm, slow
        start, window and learned rate hear of it; its headers are read."""
        self.stats.add_usage(completion, self._prices)
        self._storm.record(False, ticket)
        self._slow_start.on_round_trip(self._clock() - sent_at)
        self._window.on_success()
        self._adaptive.on_success(sent_at)
        if completion.rate_limit is not None:
            self._learn(completion.rate_limit)
            if self._gate is not None:
                self._gate.on_headers(completion.rate_limit)
        if not self._opened:
            self._open_window()

    def _on_failure(self, failure: _Failure, started: float, attempt: int) -> float | EngineError:
        """A failed send: the seconds to wait before trying again, or the row's outcome."""
        if not self._opened:
            self._open_window()
        self._note_failure(failure)
        return self._retry_delay(failure, started, attempt)

    def _note_failure(self, failure: _Failure) -> None:
        """The storm detector hears of every failure; a 429 is counted, may name a window's end
        (every send waits for it), may cut a learned pace, and the cluster gate hears of a cap."""
        error = failure.error
        limited = isinstance(error, RateLimitError)
        self._storm.record(limited, failure.ticket)
        if not isinstance(error, RateLimitError):
            return
        self.stats.rate_limited += 1
        held = self._adaptive.on_refused(server_wait_s(error))
        if held is not None and self._rpm is None:  # a window's end: nothing fits before it
            self._pause.pause_for(held, retry_after_cause(error, held))
        # Already paced: the pace may be too high, or the provider refuses some at random.
        cut = (not self._storm.storm and self._rpm is None and self._adaptive.pacer is not None
               and self._adaptive.on_rate_limited(failure.sent_at, lone=True))
        if self._gate is not None and self._is_cap(cut):
            self._gate.on_rate_limited(error.retry_after)

    def _retry_delay(self, failure: _Failure, started: float, attempt: int) -> float | EngineError:
        """The wait before the next try (the server's, else backoff), or the row's outcome: not
        retryable, out of tries, or a wait past its budget. In a storm everyone waits instead."""
        error, budget = failure.error, self._options.max_retry_time_s
        wait = server_wait_s(error)
        now = self._clock()
        storm = isinstance(error, RateLimitError) and self._storm.storm
        if error.retryable and wait is not None and wait > started + budget - now:
            cause = retry_after_cause(error, wait)
            if storm:
                self._pause.pause_for(wait, cause)  # everyone would be told the same: stop now
            return wait_refused(cause, wait, started + budget - now, budget, error)
        delay = wait if wait is not None else backoff_s(attempt, self._rng)
        if storm:
            self._pause_for_storm(error, delay, failure.sent_at)
            delay = 0.0
        if not error.retryable or attempt >= self._options.max_retries or now - started + delay > budget:
            return error
        return delay

    def _pause_for_storm(self, error: EngineError, delay: float, sent_at: float) -> None:
        """A storm means a real cap: more requests into it only buy more 429s, so everyone waits
        and the window and rate are cut. A lone 429 (a provider's hiccup) delays only its own row."""
        self._window.on_rate_limited(sent_at)
        if self._rpm is None:
            self._adaptive.on_rate_limited(sent_at)
        self._pause.pause_for(delay, retry_after_cause(error, delay))

    def _pace(self) -> Pacer | SlowStartPacer:
        """The pace in force: the caller's ``rpm``, else the learned rate, else slow start's."""
        return self._rpm or self._adaptive.pacer or self._slow_start

    def _is_cap(self, cut: bool) -> bool:
        """Whether the last 429 shows a real cap rather than a provider's random 429s: it is part
        of a storm; or the learned rate took it as the cap (``cut``); or, at a pace the caller
        gave (``rpm``), 429s have been a steady share of the sends (a cap a little under it).
        Only then is the cluster gate told, to pause the other workers: any other 429 delays
        only its own row, here and on every other worker.
        """
        return self._storm.storm or cut or (self._rpm is not None and self._storm.steady)

    def _learn(self, state: RateLimitState) -> None:
        """Take the account's limits from the provider's headers when the caller gave none.

        Headers are hints: a value that is not a positive finite number is ignored; the request
        limit only seeds the adaptive rate (its unit may not be per minute), which ``remaining``
        readings and 429s then steer; a limit so low that the rows left would take longer than
        ``max_retry_time_s`` is reported.
        """
        limit = _positive(state.limit_requests)
        if self._options.rpm is None:
            if limit is not None:
                self.stats.learned_rpm = float(limit)
                if self._adaptive.pacer is None:
                    self._seed_rpm(limit)
            remaining = state.remaining_requests
            if isinstance(remaining, int) and remaining >= 0:
                self._adaptive.on_remaining(remaining, limit=limit, reset_s=_finite(state.reset_requests_s),
                                            in_flight=self._in_flight)
        tokens = _positive(state.limit_tokens)
        if self._options.tpm is None and tokens is not None:
            self._adopt_tpm(tokens)
        reset = _positive(state.reset_requests_s)
        # A remaining 0 with neither a limit nor a reset names no window to wait for: ignored.
        if state.remaining_requests == 0 and (limit is not None or reset is not None):
            self._on_spent(state, reset)

    def _on_spent(self, state: RateLimitState, reset: float | None) -> None:
        """Nothing fits before the oldest send the budget counts comes back (a sliding window),
        and all of it is back by the reset; a fixed window gives nothing back before its reset; a
        bucket, seen refilling, is paced, as its reset is when it is full again."""
        back = None if self._options.rpm is not None else self._adaptive.budget.next_back_s(self._clock())
        spent = state.header("x-ratelimit-remaining-requests") or "x-ratelimit-remaining-requests: 0"
        if back is not None and (reset is None or back < reset):
            self._pause.pause_for(back, f"the server ({spent}, {back:.2g}s until one comes back)")
        elif reset is not None and (back is not None or not self._adaptive.budget.refilling(self._clock())):
            told = state.header("x-ratelimit-reset-requests") or f"x-ratelimit-reset-requests: {reset:g}s"
            self._pause.pause_for(reset, f"the server ({spent}, {told})")

    def _too_slow(self, seconds_needed: float) -> bool:
        return seconds_needed > self._options.max_retry_time_s

    def _seed_rpm(self, limit: float) -> None:
        needed = self._unanswered * 60.0 / limit
        if self._too_slow(needed):
            self.stats.slow_header_rpm = float(limit)
            self._warn(
                f"The server's x-ratelimit-limit-requests: {limit:g} would pace the {self._unanswered} rows left "
                f"over {seconds_text(needed)}, more than max_retry_time_s={self._options.max_retry_time_s:g}; "
                "dfllm takes it as a hint and paces by the 429s and remaining counts it sees. Pass rpm= to set "
                "the pace."
            )
        self._adaptive.seed(limit)

    def _adopt_tpm(self, limit: float) -> None:
        if self._tpm is not None:
            if self._tpm.per_minute != limit:
                self._tpm.set_rate(limit)
            return
        needed = self._unanswered * DEFAULT_COMPLETION_ESTIMATE * 60.0 / limit
        if self._too_slow(needed):
            if self.stats.slow_header_tpm is None:
                self.stats.slow_header_tpm = float(limit)
                self._warn(
                    f"The server's x-ratelimit-limit-tokens: {limit:g} would pace the {self._unanswered} rows left "
                    f"over {seconds_text(needed)}, more than max_retry_time_s={self._options.max_retry_time_s:g}; "
                    "dfllm does not pace by it. Pass tpm= to set a token pace."
                )
            return
        self._tpm = Pacer(limit, self._clock, self._sleep)


def _check_takes(engine: object, kind: TaskKind[Any, Any]) -> None:
    """An engine is given only the kinds of task it declares it takes (``task_kinds``)."""
    takes = EngineInfo.of(engine).task_kinds
    if kind.kind not in takes:
        raise ConfigurationError(
            f"The engine {type(engine).__name__} takes {', '.join(sorted(takes))} tasks, not {kind.kind!r}: "
            f"give it a task kind it declares in task_kinds, or an engine that declares {kind.kind!r}.")


def _finite(value: object) -> float | None:
    """A header's duration if it is a finite number of seconds >= 0, else None."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if math.isfinite(value) and value >= 0 else None


def _out_of_time(problem: SchemaError, repairs: int, budget: float) -> SchemaError:
    """The row's last problem, once its re-asks have spent its time budget."""
    return SchemaError(
        f"{problem} Not asked again: after {repairs} re-ask(s) the row has spent its max_retry_time_s={budget:g}; "
        "raise it to allow more.", raw=problem.raw, problem=problem.problem, repairable=False)


def _positive(value: object) -> float | None:
    """A header's number if it is finite and above zero, else None: a bad hint is ignored."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if math.isfinite(value) and value > 0 else None
