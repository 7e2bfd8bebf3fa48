"""What an engine is: one async method that completes one chat request, and ``aclose``.

Engines move one request and own no policy: they never retry, sleep, rate-limit or cache.
They raise only dfllm's ``EngineError`` family; the executor decides what to do about it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, NamedTuple, Protocol, runtime_checkable


@dataclass(frozen=True, slots=True)
class Request:
    """One chat completion to perform.

    ``params`` are sent as top-level body fields (``max_tokens``, ``temperature``, ``seed``...).
    ``choices``, when given, lets an engine that can constrain decoding do so.
    """

    model: str
    messages: list[dict[str, str]]
    params: dict[str, Any] = field(default_factory=dict)
    choices: tuple[str, ...] = ()
    timeout_s: float = 60.0


@dataclass(frozen=True, slots=True)
class RateLimitState:
    """What the provider's ``x-ratelimit-*`` headers said about the account's budget."""

    limit_requests: int | None = None
    remaining_requests: int | None = None
    reset_requests_s: float | None = None
    limit_tokens: int | None = None
    remaining_tokens: int | None = None
    reset_tokens_s: float | None = None


class Completion(NamedTuple):
    """The answer to one request, with its token usage as the provider counted it.

    A NamedTuple rather than a dataclass: a cached re-run builds one per row, and a tuple is
    several times cheaper to make than a frozen dataclass.
    """

    text: str
    prompt_tokens: int = 0
    completion_tokens: int = 0
    rate_limit: RateLimitState | None = None


@runtime_checkable
class Engine(Protocol):
    """Anything that can complete one request. Create it inside the running event loop."""

    async def complete(self, request: Request) -> Completion:
        """Perform one request; raise an ``EngineError`` subclass on failure."""
        ...

    async def aclose(self) -> None:
        """Release connections and other resources."""
        ...
