"""In-process test doubles: a scripted engine (like httpx's ``MockTransport``) and a fake clock.

``MockEngine`` is a real engine: the executor drives it exactly as it drives the HTTP engine,
without a socket. ``FakeClock`` gives the executor and limiter a ``clock`` and a ``sleep`` that
advance time instantly, so timing assertions never wait and never flake.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from dfllm.engines.base import CHAT_ONLY, NO_CAPABILITIES, Capabilities, Completion
from dfllm.engines.tasks import ChatTask

Handler = Callable[[ChatTask], "Completion | str | BaseException | Awaitable[Completion | str]"]


class FakeClock:
    """``clock()`` reads the fake time; ``await sleep(s)`` advances it by ``s`` at once."""

    def __init__(self, start: float = 0.0) -> None:
        self.now = start
        self.slept: list[float] = []

    def clock(self) -> float:
        return self.now

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += max(0.0, seconds)
        await asyncio.sleep(0)  # let other tasks run, as a real sleep would

    def advance(self, seconds: float) -> None:
        self.now += seconds


@dataclass
class MockEngine:
    """An engine whose answers come from ``handler(request)``.

    The handler returns a ``Completion``, a string (the answer text), or an exception
    (raised as the request's failure); it may also be async. Every request is recorded in
    ``requests``, the clock time of each send in ``sent_at`` (when a ``clock`` is given).
    """

    handler: Handler = field(default=lambda request: f"answer to {request.messages[-1].text()}")
    identity: str | None = "mock"
    capabilities: Capabilities = NO_CAPABILITIES
    max_concurrency: int | None = None
    task_kinds: frozenset[str] = CHAT_ONLY
    clock: Callable[[], float] | None = None
    requests: list[ChatTask] = field(default_factory=list)
    sent_at: list[float] = field(default_factory=list)
    in_flight: int = 0
    peak_in_flight: int = 0
    closed: bool = False

    async def complete(self, request: ChatTask) -> Completion:
        self.requests.append(request)
        if self.clock is not None:
            self.sent_at.append(self.clock())
        self.in_flight += 1
        self.peak_in_flight = max(self.peak_in_flight, self.in_flight)
        try:
            result = self.handler(request)
            if isinstance(result, Awaitable):
                result = await result
            if isinstance(result, BaseException):
                raise result
            return Completion(result) if isinstance(result, str) else result
        finally:
            self.in_flight -= 1

    async def aclose(self) -> None:
        self.closed = True

    @property
    def prompts(self) -> list[str]:
        return [r.messages[-1].text() for r in self.requests]
