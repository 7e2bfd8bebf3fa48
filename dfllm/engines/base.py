"""The engine contract: who an engine is, what it can do, and how it completes one task.

Engines move one request and own no policy: they never retry, sleep, rate-limit or cache.
They raise only dfllm's ``EngineError`` family; the executor decides what to do about it.

An engine declares:

- ``identity``: everything besides the request that decides an answer (provider, base URL,
  routing headers, model file). It is hashed into every cache key, so two engines with
  different identities never share cached answers. ``None`` means "unknown": such an engine
  is never cached (a custom object whose behaviour dfllm cannot see could otherwise be served
  another object's answers).
- ``capabilities``: what the executor may ask of it (constrained ``choices``, JSON schema...).
- ``max_concurrency``: a hard cap on requests in flight (the local engine: one per instance).
- ``task_kinds``: the kinds of task it takes (``ChatTask.kind``, ``"chat"``).
"""


from __future__ import annotations

from dataclasses import dataclass
from typing import Any, NamedTuple, Protocol

from dfllm.engines.tasks import ChatTask, Request

__all__ = ["CHAT_ONLY", "NO_CAPABILITIES", "USAGE_FIELDS", "Capabilities", "ChatTask", "Completion", "Engine",
           "EngineInfo", "RateLimitState", "Request", "is_engine"]


@dataclass(frozen=True, slots=True)
class RateLimitState:
    """What the provider's ``x-ratelimit-*`` headers said about the account's budget.

    Every field is parsed from untrusted text and is either None (absent, unparsable or
    meaningless: a limit of 0 or -1, NaN, infinity, a negative count or duration) or a finite
    value: limits are >= 1, remaining counts >= 0, resets finite seconds >= 0 (possibly huge:
    a reset of hours is for the executor to cap by its budget).

    ``headers`` holds the ``(name, value)`` pairs exactly as received (values cut to 100
    characters), so a message can name the header that asked for a wait or a pace, e.g.
    ``"x-ratelimit-reset-requests: 6h0m0s"``.
    """

    limit_requests: int | None = None
    remaining_requests: int | None = None
    reset_requests_s: float | None = None
    limit_tokens: int | None = None
    remaining_tokens: int | None = None
    reset_tokens_s: float | None = None
    headers: tuple[tuple[str, str], ...] = ()

    def header(self, name: str) -> str | None:
        """``"name: value"`` as the server sent it, or None when it did not send ``name``."""
        for key, value in self.headers:
            if key == name:
                return f"{key}: {value}"
        return None


class Completion(NamedTuple):
    """The answer to one request, with its token usage as the provider counted it.

    A NamedTuple rather than a dataclass: a cached re-run builds one per row, and a tuple is
    several times cheaper to make than a frozen dataclass.
    """

    text: str
    prompt_tokens: int = 0
    completion_tokens: int = 0
    rate_limit: RateLimitState | None = None
    # Why the model stopped, as the provider said ("stop", "eos"...); None when it did not say.
    # Engines turn "length" and "content_filter" into errors, so a Completion is a whole answer.
    finish_reason: str | None = None
    # The answer's typed values, one per schema field, once the executor has checked it against
    # the call's schema (never stored in the cache: a cached answer is checked again on read).
    values: tuple[Any, ...] | None = None
    # Of prompt_tokens, those the provider served from its prompt cache (charged less); last, so
    # a custom engine's positional Completion(text, prompt, completion, ...) keeps its meaning.
    cached_tokens: int = 0


# The token counts of a Completion, as usage columns name them ({target}_prompt_tokens...).
USAGE_FIELDS = ("prompt_tokens", "cached_tokens", "completion_tokens")


@dataclass(frozen=True)
class Capabilities:
    """What an engine can do beyond free text. The executor asks only for what is declared."""

    choices: bool = False  # constrains decoding to one of the labels
    json_schema: bool = False  # enforces a JSON Schema (OpenAI's strict response_format, a grammar)
    json_mode: bool = False  # guarantees syntactically valid JSON, without a schema
    images: bool = False  # takes image parts in a message (a vision model behind an API that carries them)
    batch_jobs: bool = False  # takes OpenAI's Batch API (/files, /batches): mode='batch' at half the price


NO_CAPABILITIES = Capabilities()


class Engine(Protocol):
    """Anything that can complete one task. Create it inside the running event loop.

    The built-in engines declare every attribute below. A custom engine object needs only
    ``complete`` and ``aclose``: what it leaves out defaults as ``EngineInfo.of`` says.
    """

    identity: str | None
    capabilities: Capabilities
    max_concurrency: int | None
    task_kinds: frozenset[str]

    async def complete(self, request: ChatTask) -> Completion:
        """Perform one task; raise an ``EngineError`` subclass on failure."""
        ...

    async def aclose(self) -> None:
        """Release connections and other resources."""
        ...


CHAT_ONLY = frozenset({ChatTask.kind})


@dataclass(frozen=True)
class EngineInfo:
    """What an engine declared of itself, with the defaults for what it left out."""

    identity: str | None
    capabilities: Capabilities
    max_concurrency: int | None
    task_kinds: frozenset[str] = CHAT_ONLY

    @classmethod
    def of(cls, engine: object) -> EngineInfo:
        """The one place a custom object's declarations are read and defaulted: no identity is
        never cached, no capabilities asks for free text only, no cap is no cap, and no task
        kinds is chat only (what every engine took before task kinds)."""
        identity = getattr(engine, "identity", None)
        capabilities = getattr(engine, "capabilities", None)
        cap = getattr(engine, "max_concurrency", None)
        kinds = getattr(engine, "task_kinds", None)
        return cls(
            identity=identity if isinstance(identity, str) and identity else None,
            capabilities=capabilities if isinstance(capabilities, Capabilities) else NO_CAPABILITIES,
            max_concurrency=cap if isinstance(cap, int) and not isinstance(cap, bool) and cap > 0 else None,
            task_kinds=frozenset(kinds) if isinstance(kinds, (set, frozenset)) and kinds else CHAT_ONLY,
        )


def is_engine(obj: object) -> bool:
    """Duck-typed: an object with ``complete`` and ``aclose`` methods."""
    return callable(getattr(obj, "complete", None)) and callable(getattr(obj, "aclose", None))
