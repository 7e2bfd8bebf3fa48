"""Server-side request caps for the fake provider, in the shapes providers and gateways use.

- ``bucket``: a token bucket refilled continuously at ``rpm``, holding ``burst`` (a second's
  worth unless given).
- ``sliding``: at most ``rpm * window_s / 60`` requests in any ``window_s`` seconds.
- ``fixed``: at most that many per window, the windows aligned to the wall clock as LiteLLM's
  proxy aligns its one-minute windows; a window's budget comes back whole at its end.

And the headers each style of server sends about the cap:

- ``openai``: ``x-ratelimit-limit/remaining/reset-requests`` on every answer (reset: the time
  until the budget is full again); a 429 carries ``retry-after`` and ``retry-after-ms`` (the time
  until one request fits).
- ``litellm``: ``x-ratelimit-limit-requests`` (per minute, as LiteLLM's ``rpm`` setting: a
  window shorter than a minute holds a share of it) and ``x-ratelimit-remaining-requests``, no
  reset; a 429 carries ``llm_provider-retry-after`` (the window's length) and no ``Retry-After``.
- ``none``: no ``x-ratelimit-*`` headers; a 429 carries ``retry-after`` only.
"""

from __future__ import annotations

import collections
import math
import time
from collections.abc import Callable
from typing import Literal, Protocol

Clock = Callable[[], float]

Shape = Literal["bucket", "sliding", "fixed"]
HeaderStyle = Literal["openai", "litellm", "none"]
SHAPES: tuple[Shape, ...] = ("bucket", "sliding", "fixed")
HEADER_STYLES: tuple[HeaderStyle, ...] = ("openai", "litellm", "none")


class Cap(Protocol):
    limit: float  # what the budget holds when full
    stated: float  # what OpenAI's x-ratelimit-limit-requests says: a bucket's rate per minute, a window's limit
    per_minute: float  # the rate it sustains, per minute: what LiteLLM's says

    def take(self) -> float:
        """Take one request: 0.0 if granted, else seconds until one fits."""

    def remaining(self) -> int: ...

    def reset_s(self) -> float:
        """Seconds until the budget is full again if nothing more is taken."""


class Bucket:
    """``rpm`` per minute, refilled continuously, bursting to ``burst``."""

    def __init__(self, rpm: float, burst: float | None, clock: Clock = time.monotonic) -> None:
        self._clock = clock
        self.rate = rpm / 60.0
        self.limit = burst if burst is not None else max(1.0, self.rate)
        self.stated = self.per_minute = rpm
        self.tokens = self.limit
        self.stamp = clock()

    def _refill(self) -> None:
        now = self._clock()
        self.tokens = min(self.limit, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now

    def take(self) -> float:
        self._refill()
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return 0.0
        return (1.0 - self.tokens) / self.rate

    def remaining(self) -> int:
        return int(self.tokens)

    def reset_s(self) -> float:
        return (self.limit - self.tokens) / self.rate


class SlidingWindow:
    """At most ``limit`` requests granted in any ``window_s`` seconds."""

    def __init__(self, limit: float, window_s: float, clock: Clock = time.monotonic) -> None:
        self._clock = clock
        self.limit = self.stated = limit
        self.window_s = window_s
        self.per_minute = limit * 60.0 / window_s
        self._granted: collections.deque[float] = collections.deque()

    def _expire(self, now: float) -> None:
        while self._granted and self._granted[0] <= now - self.window_s:
            self._granted.popleft()

    def take(self) -> float:
        now = self._clock()
        self._expire(now)
        if len(self._granted) < self.limit:
            self._granted.append(now)
            return 0.0
        return self._granted[0] + self.window_s - now

    def remaining(self) -> int:
        self._expire(self._clock())
        return max(0, int(self.limit) - len(self._granted))

    def reset_s(self) -> float:
        return self._granted[-1] + self.window_s - self._clock() if self._granted else 0.0


class FixedWindow:
    """At most ``limit`` requests per window of ``window_s``, windows aligned to the wall clock."""

    def __init__(self, limit: float, window_s: float, clock: Clock = time.time) -> None:
        self._clock = clock
        self.limit = self.stated = limit
        self.window_s = window_s
        self.per_minute = limit * 60.0 / window_s
        self._window = -1
        self._used = 0

    def _roll(self) -> float:
        now = self._clock()
        window = math.floor(now / self.window_s)
        if window != self._window:
            self._window, self._used = window, 0
        return (window + 1) * self.window_s - now

    def take(self) -> float:
        left = self._roll()
        if self._used < self.limit:
            self._used += 1
            return 0.0
        return left

    def remaining(self) -> int:
        self._roll()
        return max(0, int(self.limit) - self._used)

    def reset_s(self) -> float:
        return self._roll()


def make_cap(shape: Shape, rpm: float, burst: float | None, window_s: float, clock: Clock | None = None) -> Cap:
    """The cap of ``shape`` at ``rpm`` (a window holds ``rpm * window_s / 60``), on ``clock`` if given."""
    if shape == "bucket":
        return Bucket(rpm, burst, clock or time.monotonic)
    per_window = max(1.0, round(rpm * window_s / 60.0))
    if shape == "sliding":
        return SlidingWindow(per_window, window_s, clock or time.monotonic)
    return FixedWindow(per_window, window_s, clock or time.time)


def answer_headers(style: HeaderStyle, cap: Cap, scale: float) -> dict[str, str]:
    """The headers of an answer (a 200 or a 429) about the budget, as ``style`` sends them."""
    if style == "none":
        return {}
    stated = cap.stated if style == "openai" else cap.per_minute
    headers = {
        "x-ratelimit-limit-requests": f"{stated * scale:.0f}",
        "x-ratelimit-remaining-requests": str(cap.remaining()),
    }
    if style == "openai":
        headers["x-ratelimit-reset-requests"] = f"{max(0.0, cap.reset_s()):.3f}s"
    return headers


def refusal_headers(style: HeaderStyle, wait_s: float, window_s: float) -> dict[str, str]:
    """The wait a 429 names, as ``style`` names it."""
    if style == "litellm":
        return {"llm_provider-retry-after": f"{window_s:g}"}
    return {"retry-after-ms": f"{math.ceil(wait_s * 1000)}", "retry-after": f"{math.ceil(wait_s)}"}
