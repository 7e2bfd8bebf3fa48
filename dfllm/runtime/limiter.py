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

    There is no burst at start-up, and callers are served in arrival order. A caller's slot is
    fixed only when it reaches the head of the line, not when it starts waiting, so a rate
    change applies to the very next send rather than after every queued caller's old slot.
    """

    def __init__(self, per_minute: float, clock: Clock, sleep: Sleep) -> None:
        if per_minute <= 0:
            raise ValueError(f"per_minute must be positive, got {per_minute!r}")
        self.per_minute = per_minute
        self._clock = clock
        self._sleep = sleep
        self._next_at = clock()
        self._line = asyncio.Lock()  # FIFO: the head of the line sleeps until its slot

    def set_rate(self, per_minute: float) -> None:
        self.per_minute = per_minute

    async def acquire(self, amount: float = 1.0) -> None:
        if amount > self.per_minute:
            raise ValueError(
                f"one request needs {amount:g} units but the limit is {self.per_minute:g} per minute"
            )
        async with self._line:
            now = self._clock()
            if self._next_at > now:
                await self._sleep(self._next_at - now)
                # Advance from the slot, not from when the sleep ended: oversleeping by a
                # millisecond per send would otherwise cost ~5% of the rate at 50 sends/s.
                start = self._next_at
            else:
                start = now  # idle: no credit for the unused past, hence no burst
            self._next_at = start + amount * 60.0 / self.per_minute


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

    async def acquire(self) -> None:
        """Wait for a free slot."""
        while self.active >= self.limit:
            waiter = asyncio.get_running_loop().create_future()
            self._waiters.append(waiter)
            try:
                await waiter
            except asyncio.CancelledError:
                self._wake()  # hand a wake-up we may have received to the next in line
                raise
        self.active += 1

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


class AdaptiveRate:
    """A request rate the server enforces but never states, learned from its 429s (AIMD on rate).

    Until the first 429 it does not limit. Then it paces at the rate that succeeded over the
    last second (what the server was accepting when it said no), cuts by ``CUT`` on a later 429
    and grows ``GROWTH_PER_S`` of the rate each second in between: a slow probe that finds a
    raised limit again. After a cut, further 429s within ``COOLDOWN_S`` do not cut again: the
    server's budget is still in debt from before the cut, and cutting on every such 429
    collapsed the rate to half the cap in a second (measured). A 429 with no success in the last second
    teaches no rate: the pause and the concurrency window handle that storm alone.
    """

    CUT = 0.9
    GROWTH_PER_S = 0.03
    COOLDOWN_S = 1.0
    _SAMPLE_S = 1.0

    def __init__(self, clock: Clock, sleep: Sleep) -> None:
        self._clock = clock
        self._sleep = sleep
        self._recent: collections.deque[float] = collections.deque()  # success times, last second
        self._base_per_minute = 0.0
        self._since = 0.0
        self._last_cut = -1.0
        self.pacer: Pacer | None = None

    def on_success(self) -> None:
        if self.pacer is None:  # once pacing, the rate is steered by cuts and growth alone
            now = self._clock()
            self._recent.append(now)
            while self._recent[0] < now - self._SAMPLE_S:
                self._recent.popleft()

    def per_minute(self) -> float:
        return self._base_per_minute * (1.0 + self.GROWTH_PER_S * (self._clock() - self._since))

    def on_rate_limited(self, sent_at: float) -> None:
        now = self._clock()
        if self.pacer is None:
            while self._recent and self._recent[0] < now - self._SAMPLE_S:
                self._recent.popleft()
            if not self._recent:
                return
            self._base_per_minute = len(self._recent) / self._SAMPLE_S * 60.0
            self.pacer = Pacer(self._base_per_minute, self._clock, self._sleep)
        elif sent_at >= self._last_cut + self.COOLDOWN_S:
            self._base_per_minute = self.per_minute() * self.CUT
        else:
            return  # the last cut has not had time to show
        self._since = self._last_cut = now

    async def acquire(self) -> None:
        if self.pacer is not None:
            self.pacer.set_rate(self.per_minute())
            await self.pacer.acquire()
