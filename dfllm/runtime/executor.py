"""The executor: the one place with policy.

It answers a list of unique requests, in order, with a ``Completion`` or the error that ended
that request. It owns the cache (look up first, write each answer the moment it arrives),
concurrency (a fixed pool of workers and an AIMD window), rate limits (paced ``rpm``/``tpm``,
limits learned from ``x-ratelimit-*`` headers, a pause for every worker on ``Retry-After``),
retries (bounded in attempts and total time, with jittered exponential backoff) and progress.

Answers that must fit a schema are checked here too, because a re-ask is policy: given a
``validate`` callback (an answer -> ``None`` when it fits, else the ``SchemaError``), a row whose
answer does not fit is asked again, at most ``max_repairs`` times, with its previous answer and
the validation problem in the conversation; then the ``SchemaError`` is that row's outcome. Only
answers that fit are cached, and a cached answer is checked again on read (a changed schema,
or an entry written by an older dfllm, is asked afresh rather than served in a stale shape).
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple, Protocol

from dfllm._exceptions import AuthenticationError, EngineError, RateLimitError, SchemaError
from dfllm.config.options import Options
from dfllm.engines.base import Completion, Engine, RateLimitState, Request
from dfllm.prompt.keys import Key
from dfllm.runtime.bulk import gc_paused
from dfllm.runtime.limiter import AdaptiveRate, Clock, Pacer, Pause, Sleep, Window
from dfllm.runtime.progress import Progress, RunStats
from dfllm.runtime.stores import Store, open_store

Outcome = Completion | EngineError | SchemaError
Validate = Callable[[Completion], "SchemaError | None"]

# Before the first answer we know nothing of the account's limits: start this many in flight
# (doubling per round trip) rather than firing the whole pool at once into a possible cap.
_INITIAL_WINDOW = 32
_BACKOFF_BASE_S = 0.5
_BACKOFF_CAP_S = 30.0
_DEFAULT_COMPLETION_ESTIMATE = 256


class Work(NamedTuple):
    """One unique prompt and its cache key. Its request is built only if it is sent."""

    key: Key
    prompt: str
    # A re-ask: the previous answers and what was wrong with them, after the prompt.
    history: tuple[dict[str, str], ...] = ()


@dataclass(frozen=True)
class RequestSpec:
    """What every request of one call shares; the prompt is the only per-row part."""

    model: str
    params: dict[str, Any] = field(default_factory=dict)
    system: str | None = None
    choices: tuple[str, ...] = ()
    timeout_s: float = 120.0
    json_schema: dict[str, Any] | None = None

    def build(self, prompt: str, history: Sequence[dict[str, str]] = ()) -> Request:
        user = {"role": "user", "content": prompt}
        messages = [{"role": "system", "content": self.system}, user] if self.system else [user]
        if history:
            messages += history
        return Request(self.model, messages, self.params, self.choices, self.timeout_s, self.json_schema)


def estimate_tokens(request: Request) -> int:
    """Prompt estimate (4 characters a token) plus the completion budget (``max_tokens``)."""
    prompt = sum(len(m["content"]) for m in request.messages) // 4 + 1
    budget = request.params.get("max_tokens") or request.params.get("max_completion_tokens")
    return prompt + int(budget or _DEFAULT_COMPLETION_ESTIMATE)


class Gate(Protocol):
    """A limit shared beyond this executor (the Dask cluster's rate budget), passed right before
    each send; told of every 429 and every rate-limit header, so it can tell the others."""

    async def acquire(self, tokens: int) -> None: ...

    def on_rate_limited(self, retry_after: float | None) -> None: ...

    def on_headers(self, state: RateLimitState) -> None: ...


class Executor:
    def __init__(
        self,
        engine: Engine,
        options: Options,
        stats: RunStats,
        spec: RequestSpec,
        *,
        concurrency_cap: int | None = None,
        cacheable: bool = True,
        validate: Validate | None = None,
        clock: Clock = time.monotonic,
        sleep: Sleep = asyncio.sleep,
        rng: random.Random | None = None,
        gate: Gate | None = None,
    ) -> None:
        self._engine = engine
        self._gate = gate
        self._cacheable = cacheable
        self._validate = validate
        self._spec = spec
        self._options = options
        self.stats = stats
        self._clock = clock
        self._sleep = sleep
        self._rng = rng or random.Random()
        pool = options.concurrency if concurrency_cap is None else min(options.concurrency, concurrency_cap)
        self._pool = pool
        self._window = Window(min(_INITIAL_WINDOW, pool), pool, clock)
        self._pause = Pause(clock, sleep, self._rng)
        self._rpm = Pacer(options.rpm, clock, sleep) if options.rpm else None
        self._tpm = Pacer(options.tpm, clock, sleep) if options.tpm else None
        # Used only while no rpm is known, from the caller or from the provider's headers.
        self._adaptive = AdaptiveRate(clock, sleep)
        self._abort: AuthenticationError | None = None
        self._cache: Store | None = None
        self._entered = False

    async def __aenter__(self) -> Executor:
        """Open the cache once for several ``run`` calls (batches of one pipeline share it)."""
        if self._cacheable and self._cache is None:
            self._cache = open_store(self._options.cache)
        self._entered = True
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        self._entered = False
        cache, self._cache = self._cache, None
        if cache is not None:
            await asyncio.to_thread(cache.close)

    async def run(self, work: Sequence[Work]) -> list[Outcome]:
        """Answer ``work`` in order. Limits, learned rates and the cache carry over between calls
        on one executor; outside ``async with``, the cache is opened and closed around this call.
        """
        if not self._entered:
            async with self:
                return await self._run(work)
        return await self._run(work)

    async def _run(self, work: Sequence[Work]) -> list[Outcome]:
        results: list[Outcome | None] = [None] * len(work)
        cache = self._cache
        progress = Progress(self._options.progress, len(work), self.stats)
        hits = 0
        try:
            if cache is not None:
                with gc_paused():
                    found = cache.get_many(w.key for w in work)
                    if self._validate is not None:
                        found = {k: c for k, c in found.items() if self._validate(c) is None}
                    results = [found.get(w.key) for w in work]
                hits = len(found)
                self.stats.cache_hits += hits
                progress.advance(hits)
            # Workers share one iterator of pending positions: a queue that costs no memory per row.
            pending = (i for i, r in enumerate(results) if r is None)
            n_pending = len(work) - hits
            workers = [
                asyncio.ensure_future(self._worker(pending, work, results, cache, progress))
                for _ in range(min(self._pool, n_pending))
            ]
            try:
                await asyncio.gather(*workers)
            finally:
                for task in workers:
                    task.cancel()
                await asyncio.gather(*workers, return_exceptions=True)
            if self._abort is not None:
                raise self._abort
        finally:
            progress.close()
        answered = [r for r in results if r is not None]
        assert len(answered) == len(results), "a worker stopped before the queue was empty"
        return answered

    async def _worker(
        self,
        pending: Iterator[int],
        work: Sequence[Work],
        results: list[Outcome | None],
        cache: Store | None,
        progress: Progress,
    ) -> None:
        for i in pending:
            if self._abort is not None:
                return
            item = work[i]
            outcome = await self._answer(item)
            results[i] = outcome
            if isinstance(outcome, Completion):
                self.stats.succeeded += 1
                self.stats.prompt_tokens += outcome.prompt_tokens
                self.stats.completion_tokens += outcome.completion_tokens
                if cache is not None:
                    cache.put(item.key, outcome)
            progress.advance()

    async def _answer(self, item: Work) -> Outcome:
        """The row's outcome: the engine's answer, re-asked while it does not fit the schema."""
        outcome = await self._attempt(item)
        repairs = 0
        while self._validate is not None and isinstance(outcome, Completion):
            problem = self._validate(outcome)
            if problem is None:
                break
            if not problem.repairable or repairs >= self._options.max_repairs or self._abort is not None:
                return problem
            repairs += 1
            self.stats.repairs += 1
            item = item._replace(history=(*item.history, {"role": "assistant", "content": outcome.text}, {
                "role": "user",
                "content": f"That answer does not fit the required JSON schema: {problem.problem}. "
                           "Reply with only the corrected JSON object.",
            }))
            outcome = await self._attempt(item)
        return outcome

    async def _attempt(self, item: Work) -> Outcome:
        request = self._spec.build(item.prompt, item.history)
        started = self._clock()
        attempt = 0
        while True:
            # Take the in-flight slot first, then pass every gate right before sending: a limit
            # learned while this worker waited for its slot still applies to it.
            await self._window.acquire()
            try:
                await self._pause.wait()
                if self._rpm is not None:
                    await self._rpm.acquire()
                else:
                    await self._adaptive.acquire()
                if self._tpm is not None:
                    await self._tpm.acquire(min(estimate_tokens(request), self._tpm.per_minute))
                if self._gate is not None:
                    await self._gate.acquire(estimate_tokens(request))
                if self._abort is not None:  # the key was refused while we waited: send nothing more
                    return self._abort
                sent_at = self._clock()
                self.stats.requests += 1
                completion = await self._engine.complete(request)
            except AuthenticationError as exc:
                self._abort = self._abort or exc
                return exc
            except EngineError as exc:
                error: EngineError = exc
            except Exception as exc:  # an engine broke its contract: fail this row, not the run
                error = EngineError(f"{type(self._engine).__name__} raised {type(exc).__name__}: {exc}")
                error.__cause__ = exc
            else:
                self._window.on_success()
                self._adaptive.on_success()
                if completion.rate_limit is not None:
                    self._learn(completion.rate_limit)
                    if self._gate is not None:
                        self._gate.on_headers(completion.rate_limit)
                return completion
            finally:
                self._window.release()

            delay = error.retry_after if error.retry_after is not None else self._backoff(attempt)
            if isinstance(error, RateLimitError):
                self.stats.rate_limited += 1
                if self._gate is not None:
                    self._gate.on_rate_limited(error.retry_after)
                self._window.on_rate_limited(sent_at)
                if self._rpm is None:
                    self._adaptive.on_rate_limited(sent_at)
                # Everyone waits: more requests into a 429 storm only buy more 429s.
                self._pause.pause_for(delay)
                delay = 0.0
            out_of_time = self._clock() - started + delay > self._options.max_retry_time_s
            if not error.retryable or attempt >= self._options.max_retries or out_of_time:
                return error
            attempt += 1
            self.stats.retries += 1
            if delay:
                await self._sleep(delay)

    def _backoff(self, attempt: int) -> float:
        return float(min(_BACKOFF_CAP_S, _BACKOFF_BASE_S * 2**attempt) * (0.5 + self._rng.random()))

    def _learn(self, state: RateLimitState) -> None:
        """Adopt the account's limits from the provider's headers when the caller gave none."""
        if self._options.rpm is None and state.limit_requests:
            if self._rpm is None:
                self._rpm = Pacer(state.limit_requests, self._clock, self._sleep)
            elif self._rpm.per_minute != state.limit_requests:
                self._rpm.set_rate(state.limit_requests)
            self.stats.learned_rpm = float(state.limit_requests)
        if self._options.tpm is None and state.limit_tokens:
            if self._tpm is None:
                self._tpm = Pacer(state.limit_tokens, self._clock, self._sleep)
            elif self._tpm.per_minute != state.limit_tokens:
                self._tpm.set_rate(state.limit_tokens)
        if state.remaining_requests == 0 and state.reset_requests_s:
            self._pause.pause_for(state.reset_requests_s)

