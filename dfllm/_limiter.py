"""Flow control for the executor: paced rate limits, a pause on Retry-After, and an AIMD window.

All three take an injected ``clock`` and ``sleep`` so tests run them without waiting.
Create them inside the running loop; they hold loop-bound primitives.
"""

from __future__ import annotations

import asyncio
import collections
import random
from collections.abc import Awaitable, Callable

Clock = Callable[[], float]
Sleep = Callable[[float], Awaitable[None]]


class Pacer:
    """Spaces out units (requests or tokens) so no minute sees more than ``per_minute``.

    Each acquire reserves the next free slot on a timeline, so there is no burst at start-up
    and waiting callers are served in arrival order.
    """

    def __init__(self, per_minute: float, clock: Clock, sleep: Sleep) -> None:
        if per_minute <= 0:
            raise ValueError(f"per_minute must be positive, got {per_minute!r}")
        self.per_minute = per_minute
        self._interval = 60.0 / per_minute
        self._clock = clock
        self._sleep = sleep
        self._next_at = clock()

    def set_rate(self, per_minute: float) -> None:
        self.per_minute = per_minute
        self._interval = 60.0 / per_minute

    async def acquire(self, amount: float = 1.0) -> None:
        if amount > self.per_minute:
            raise ValueError(
                f"one request needs {amount:g} units but the limit is {self.per_minute:g} per minute"
            )
        now = self._clock()
        start = max(self._next_at, now)
        self._next_at = start + amount * self._interval
        if start > now:
            await self._sleep(start - now)


class Pause:
    """A gate every dispatch passes: closed until a time the server named (Retry-After)."""

    def __init__(self, clock: Clock, sleep: Sleep, rng: random.Random) -> None:
        self._clock = clock
        self._sleep = sleep
        self._rng = rng
        self.until = 0.0

    def pause_for(self, seconds: float) -> None:
        # Jitter spreads the resumed requests so they do not land in one burst.
        self.until = max(self.until, self._clock() + seconds * (1.0 + 0.2 * self._rng.random()))

    async def wait(self) -> None:
        while (remaining := self.until - self._clock()) > 0:
            await self._sleep(remaining)


class Window:
    """How many requests may be in flight: grows on success, halves on a 429 (AIMD).

    Starts at ``initial`` and doubles per round trip (slow start) up to ``maximum`` until the
    first 429; after that grows by one per window of successes. One cut per round trip:
    429s for requests sent before the last cut do not cut again.
    """

    def __init__(self, initial: int, maximum: int, clock: Clock) -> None:
        self.maximum = maximum
        self.limit = float(min(initial, maximum))
        self.active = 0
        self.cuts = 0
        self._clock = clock
        self._slow_start = True
        self._last_cut = -1.0
        self._waiters: collections.deque[asyncio.Future[None]] = collections.deque()

    async def acquire(self) -> float:
        """Wait for a free slot; returns the dispatch time (pass it back to ``on_rate_limited``)."""
        while self.active >= self.limit:
            waiter = asyncio.get_running_loop().create_future()
            self._waiters.append(waiter)
            try:
                await waiter
            except asyncio.CancelledError:
                self._wake()  # hand a wake-up we may have received to the next in line
                raise
        self.active += 1
        return self._clock()

    def release(self) -> None:
        self.active -= 1
        self._wake()

    def _wake(self) -> None:
        free = int(self.limit) - self.active
        while free > 0 and self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                free -= 1

    def on_success(self) -> None:
        if self.limit < self.maximum:
            step = 1.0 if self._slow_start else 1.0 / self.limit
            self.limit = min(float(self.maximum), self.limit + step)
            self._wake()

    def on_rate_limited(self, sent_at: float) -> None:
        if sent_at < self._last_cut:
            return
        self._slow_start = False
        self.limit = max(1.0, self.limit / 2)
        self._last_cut = self._clock()
        self.cuts += 1
