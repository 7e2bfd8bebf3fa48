"""What the fake provider does with one request: answer, fail with a status, garble, or hang up.

A script is any callable ``(RecordedRequest) -> Behaviour | None``; None means "answer normally".
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Literal


@dataclass(frozen=True)
class RecordedRequest:
    """One request as the server saw it."""

    index: int
    method: str
    path: str
    headers: dict[str, str]
    body: Any
    arrived_at: float  # time.monotonic() on the server

    @property
    def prompt(self) -> str:
        """The last user message of a chat request ("" otherwise)."""
        try:
            users = [m["content"] for m in self.body["messages"] if m.get("role") == "user"]
        except (TypeError, KeyError, AttributeError):
            return ""
        return str(users[-1]) if users else ""


@dataclass(frozen=True)
class Behaviour:
    kind: Literal["ok", "status", "malformed", "drop"] = "ok"
    status: int = 200
    text: str | None = None
    delay_s: float | None = None
    headers: dict[str, str] = field(default_factory=dict)


def ok(text: str | None = None, *, delay_s: float | None = None) -> Behaviour:
    """Answer normally (``text`` overrides the responder), optionally after ``delay_s``."""
    return Behaviour("ok", text=text, delay_s=delay_s)


def status(
    code: int,
    *,
    retry_after: float | None = None,
    retry_after_ms: float | None = None,
    delay_s: float | None = None,
) -> Behaviour:
    """Fail with an HTTP status and an OpenAI-shaped error body."""
    headers: dict[str, str] = {}
    if retry_after is not None:
        headers["retry-after"] = f"{retry_after:g}"
    if retry_after_ms is not None:
        headers["retry-after-ms"] = f"{retry_after_ms:g}"
    return Behaviour("status", status=code, headers=headers, delay_s=delay_s)


def malformed() -> Behaviour:
    """200 with a body that is not JSON."""
    return Behaviour("malformed")


def drop() -> Behaviour:
    """Close the connection without an answer."""
    return Behaviour("drop")


Script = Callable[[RecordedRequest], "Behaviour | None"]


def sequence(behaviours: Iterable[Behaviour | None]) -> Script:
    """Use the behaviours for the first chat requests in arrival order, then answer normally."""
    upcoming = iter(list(behaviours))
    return lambda _request: next(upcoming, None)


def per_prompt(rules: dict[str, Iterable[Behaviour | None]]) -> Script:
    """For a prompt containing a key, play that key's behaviours in order, then answer normally."""
    queues = {key: iter(list(bs)) for key, bs in rules.items()}

    def script(request: RecordedRequest) -> Behaviour | None:
        for key, queue in queues.items():
            if key in request.prompt:
                return next(queue, None)
        return None

    return script


def always(behaviour: Behaviour) -> Script:
    return lambda _request: behaviour


def every(n: int, behaviour: Behaviour) -> Script:
    """Every n-th chat request gets ``behaviour``."""
    counter = itertools.count(1)
    return lambda _request: behaviour if next(counter) % n == 0 else None
