"""One rate budget for a Dask cluster: a coordinator on the scheduler leases send slots to workers.

Every worker pacing itself at the account's ``rpm`` makes N times the allowed requests. Here the
scheduler keeps one schedule per budget (an account and model): a lease reserves the next few
send times, spaced ``60 / rpm`` seconds apart (or further, when ``tpm`` binds), never more than
one lease window ahead. A worker sends exactly at the times it was given, so the cluster as a
whole never runs ahead of the budget, whatever the number of workers.

- A ``Retry-After`` seen by any worker moves the schedule past the pause: the next lease of
  every worker says so, hence all of them stop within one lease window.
- A worker that dies holding a lease loses at most its slots, one window's worth.
- Limits given by the caller win, and hold for that call only: each lease carries its call's
  ``rpm``/``tpm``, so a later call on the same cluster (a lower rpm, a higher one, or none) is
  paced by its own. Otherwise the first worker that reads the provider's ``x-ratelimit-limit-*``
  headers teaches the whole cluster, and what it learned stays with the budget for later calls
  without limits: a budget is one account and model, whose limit does not change with the call
  (a new reading replaces it).

``Budgets`` is the schedule (pure, clock injected); ``RateCoordinator`` is the scheduler plugin
that serves it as RPC handlers; ``ClusterGate`` is the worker's side, the executor's ``gate``.
``KeyPlugin`` hands each worker the API key, outside the task graph. This module is imported
only once a distributed client is connected: ``import dfllm`` does not load ``distributed``.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import math
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from distributed.diagnostics.plugin import SchedulerPlugin, WorkerPlugin

from dfllm.config.secrets import Secret
from dfllm.engines.base import RateLimitState
from dfllm.runtime.limiter import Clock, Pacer, Sleep
from dfllm.runtime.worker import KEYS

logger = logging.getLogger(__name__)

LEASE_S = 1.0  # how far ahead one lease may reserve: the most a dead worker can waste
MAX_PAUSE_S = 60.0  # a hostile Retry-After must not stop the cluster for longer than this
_HOLDER_TTL_S = 3 * LEASE_S  # a worker that has not leased for this long no longer shares
_STALE_S = 0.25  # a slot this far in the past is dropped rather than sent late in a burst

Call = Callable[..., Awaitable[dict[str, Any]]]


@dataclass
class _Budget:
    # The caller's rpm/tpm are not kept here: they belong to one call and come with each lease.
    learned_rpm: float | None = None
    learned_tpm: float | None = None
    next_at: float = 0.0  # the next free send time
    paused_until: float = 0.0
    holders: dict[str, float] = field(default_factory=dict)  # worker -> last lease time

    def interval_s(self, tokens_each: int, rpm: float | None, tpm: float | None) -> float | None:
        """Seconds one request occupies the schedule; None when no limit is known. The caller's
        limits (``rpm``/``tpm`` of the leasing call) win over learned ones."""
        rpm = rpm or self.learned_rpm
        tpm = tpm or self.learned_tpm
        candidates = [60.0 / rpm] if rpm else []
        if tpm:
            candidates.append(60.0 * min(max(tokens_each, 1), tpm) / tpm)
        return max(candidates) if candidates else None


class Budgets:
    """The cluster's schedules, one per budget id. All times are this process's ``clock``."""

    def __init__(self, clock: Clock = time.monotonic, lease_s: float = LEASE_S) -> None:
        self._clock = clock
        self.lease_s = lease_s
        self._budgets: dict[str, _Budget] = collections.defaultdict(_Budget)

    def lease(self, budget: str, worker: str, want: int, tokens_each: int = 0,
              rpm: float | None = None, tpm: float | None = None) -> dict[str, Any]:
        """Reserve up to ``want`` send times, spaced by this call's ``rpm``/``tpm`` (or the learned
        limits when it gave none). Offsets in the reply are seconds from now."""
        b = self._budgets[budget]
        now = self._clock()
        b.holders[worker] = now
        for name, seen in list(b.holders.items()):
            if seen < now - _HOLDER_TTL_S:
                del b.holders[name]
        pause_s = max(0.0, b.paused_until - now)
        reply: dict[str, Any] = {"pause_s": pause_s, "valid_s": self.lease_s, "count": 0, "first_s": 0.0,
                                 "interval_s": 0.0, "retry_s": 0.0, "unlimited": False}
        interval = b.interval_s(tokens_each, rpm or None, tpm or None)
        if interval is None:
            reply["unlimited"] = True
            return reply
        start = max(now, b.next_at, b.paused_until)
        horizon = max(now, b.paused_until) + self.lease_s
        # An equal share of one window per active worker, so one worker cannot take it all.
        share = max(1, math.floor(self.lease_s / interval / len(b.holders)))
        fits = math.floor((horizon - start) / interval + 1e-9)
        count = max(0, min(int(want), share, fits))
        if count == 0:
            reply["retry_s"] = max(0.01, start - horizon + interval)
            return reply
        b.next_at = start + count * interval
        reply.update(count=count, first_s=start - now, interval_s=interval)
        return reply

    def pause(self, budget: str, seconds: float) -> None:
        b = self._budgets[budget]
        seconds = min(max(float(seconds), 0.0), MAX_PAUSE_S)
        b.paused_until = max(b.paused_until, self._clock() + seconds)

    def learn(self, budget: str, rpm: float | None = None, tpm: float | None = None) -> None:
        b = self._budgets[budget]
        if rpm and rpm > 0:
            b.learned_rpm = float(rpm)
        if tpm and tpm > 0:
            b.learned_tpm = float(tpm)

    def forget_worker(self, worker: str) -> None:
        for b in self._budgets.values():
            b.holders.pop(worker, None)


class RateCoordinator(SchedulerPlugin):
    """``Budgets`` on the scheduler, served as the ``dfllm_lease``/``dfllm_pause``/``dfllm_learn`` RPCs."""

    name = "dfllm-rate-coordinator"
    idempotent = True  # registering again (a second predict) keeps the schedules already running

    def __init__(self, lease_s: float = LEASE_S) -> None:
        self.lease_s = lease_s
        self.budgets = Budgets(lease_s=lease_s)

    async def start(self, scheduler: Any) -> None:
        scheduler.handlers.update({
            "dfllm_lease": self._lease,
            "dfllm_pause": self._pause,
            "dfllm_learn": self._learn,
        })

    def remove_worker(self, scheduler: Any, worker: str, **kwargs: Any) -> None:
        self.budgets.forget_worker(worker)

    # Handlers take keyword arguments only: the scheduler passes the message's fields.
    def _lease(self, budget: str, worker: str, want: int, tokens_each: int = 0,
               rpm: float | None = None, tpm: float | None = None) -> dict[str, Any]:
        return self.budgets.lease(budget, worker, want, tokens_each, rpm, tpm)

    def _pause(self, budget: str, seconds: float) -> None:
        self.budgets.pause(budget, seconds)

    def _learn(self, budget: str, rpm: float | None = None, tpm: float | None = None) -> None:
        self.budgets.learn(budget, rpm, tpm)


class ClusterGate:
    """The executor's ``gate`` on one worker: sends only at times leased from the coordinator.

    A gate serves one budget at one pair of caller's limits (``rpm``, ``tpm``), which it sends with
    every lease: calls with other limits need a gate of their own, or they would be paced by
    these (the driver keeps one per budget and limits).
    ``call(op, **fields)`` performs one scheduler RPC. If the coordinator cannot be reached, the
    gate falls back to pacing at ``rpm / workers`` on its own and logs why.
    """

    def __init__(self, budget: str, worker: str, call: Call, *, rpm: float | None, tpm: float | None,
                 workers: int, clock: Clock = time.monotonic, sleep: Sleep = asyncio.sleep) -> None:
        self.budget = budget
        self._worker = worker
        self._call = call
        self._rpm, self._tpm = rpm, tpm
        self._workers = max(1, workers)
        self._clock, self._sleep = clock, sleep
        self._slots: collections.deque[float] = collections.deque()
        self._unlimited_until = -math.inf
        self.paused_until = 0.0
        self._waiting = 0
        self._fetch: asyncio.Future[None] | None = None
        self._fallback: Pacer | None = None
        self._fallen_back = False
        self._told_rpm: float | None = None
        self._tasks: set[asyncio.Future[Any]] = set()
        self.leases = 0

    async def acquire(self, tokens: int) -> None:
        self._waiting += 1
        try:
            while True:
                now = self._clock()
                if now < self.paused_until:
                    await self._sleep(self.paused_until - now)
                    continue
                if self._fallen_back:
                    if self._fallback is not None:
                        await self._fallback.acquire()
                    return
                if now < self._unlimited_until:
                    return
                while self._slots and self._slots[0] < now - _STALE_S:
                    self._slots.popleft()
                if self._slots:
                    at = self._slots.popleft()
                    if at > now:
                        await self._sleep(at - now)
                    if self._clock() < self.paused_until:
                        continue  # a pause arrived while we waited: this slot falls inside it
                    return
                await self._refill(tokens)
        finally:
            self._waiting -= 1

    async def _refill(self, tokens: int) -> None:
        # One lease request in flight per worker; every waiting sender shares its answer.
        if self._fetch is None or self._fetch.done():
            self._fetch = asyncio.ensure_future(self._lease(tokens))
        await asyncio.shield(self._fetch)

    async def _lease(self, tokens: int) -> None:
        try:
            reply = await self._call("dfllm_lease", budget=self.budget, worker=self._worker,
                                     want=max(1, self._waiting), tokens_each=tokens, rpm=self._rpm, tpm=self._tpm)
        except Exception as exc:
            self._fall_back(exc)
            return
        self.leases += 1
        now = self._clock()
        if reply["pause_s"] > 0:
            self._pause_locally(now + reply["pause_s"])
        if reply["unlimited"]:
            self._unlimited_until = now + reply["valid_s"]
        elif reply["count"]:
            first, step = reply["first_s"], reply["interval_s"]
            self._slots.extend(now + first + i * step for i in range(reply["count"]))
        else:
            await self._sleep(reply["retry_s"])

    def _pause_locally(self, until: float) -> None:
        self.paused_until = max(self.paused_until, until)
        # Slots that fall inside the pause would be sent into it: give them up.
        self._slots = collections.deque(t for t in self._slots if t >= self.paused_until)

    def on_rate_limited(self, retry_after: float | None) -> None:
        if retry_after is None or retry_after <= 0:
            return  # no time named: the executor's backoff handles this worker alone
        seconds = min(retry_after, MAX_PAUSE_S)
        self._pause_locally(self._clock() + seconds)
        self._tell("dfllm_pause", budget=self.budget, seconds=seconds)

    def on_headers(self, state: RateLimitState) -> None:
        limit = state.limit_requests
        if self._rpm is None and limit and limit != self._told_rpm:
            self._told_rpm = float(limit)
            self._tell("dfllm_learn", budget=self.budget, rpm=float(limit), tpm=state.limit_tokens or None)

    def _tell(self, op: str, **fields: Any) -> None:
        if self._fallen_back:
            return
        task = asyncio.ensure_future(self._call(op, **fields))
        self._tasks.add(task)
        task.add_done_callback(self._told)

    def _told(self, task: asyncio.Future[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            logger.warning("dfllm: could not tell the rate coordinator: %r", task.exception())

    def _fall_back(self, exc: BaseException) -> None:
        if not self._fallen_back:
            logger.warning(
                "dfllm: the rate coordinator on the scheduler did not answer (%r); this worker now paces "
                "at an even static share (1/%d) of rpm, and a Retry-After no longer pauses its peers.",
                exc, self._workers)
        self._fallen_back = True
        if self._rpm:
            self._fallback = Pacer(self._rpm / self._workers, self._clock, self._sleep)


class KeyPlugin(WorkerPlugin):
    """Puts one API key in each worker's memory (``worker.KEYS``), as Dask passes credentials to workers."""

    idempotent = True

    def __init__(self, key_id: str, key: Secret) -> None:
        self.key_id = key_id
        self._value = key.reveal()

    def __repr__(self) -> str:
        return f"KeyPlugin(key_id={self.key_id!r})"

    def setup(self, worker: Any) -> None:
        KEYS[self.key_id] = Secret(self._value)
