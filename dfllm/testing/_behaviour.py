"""What the fake provider does with one request: answer, fail with a status, garble, or hang up.

A script is any callable ``(RecordedRequest) -> Behaviour | None``; None means "answer normally".
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, Literal

from dfllm.testing._images import ImagePart, content_text, image_parts


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
        """The last user message of a chat request, its text parts joined ("" otherwise)."""
        try:
            users = [m["content"] for m in self.body["messages"] if m.get("role") == "user"]
        except (TypeError, KeyError, AttributeError):
            return ""
        return content_text(users[-1]) if users else ""

    @cached_property
    def images(self) -> tuple[ImagePart, ...]:
        """The image parts of a chat request's messages, decoded once (see ``_images``)."""
        return image_parts(self.body)


_MISSING: Any = object()


@dataclass(frozen=True)
class Behaviour:
    kind: Literal["ok", "status", "malformed", "drop", "body", "echo_headers"] = "ok"
    status: int = 200
    text: str | None = None
    delay_s: float | None = None
    headers: dict[str, str] = field(default_factory=dict)
    body: Any = None  # "body": bytes sent as is, anything else as JSON


def respond(code: int = 200, body: Any = b"", *, headers: dict[str, str] | None = None) -> Behaviour:
    """Send exactly this status, body (bytes as is, anything else as JSON) and headers."""
    return Behaviour("body", status=code, body=body, headers=dict(headers or {}))


def answer(
    content: Any = "ok",
    *,
    finish_reason: Any = "stop",
    refusal: Any = None,
    tool_calls: Any = None,
    usage: Any = _MISSING,
    headers: dict[str, str] | None = None,
) -> Behaviour:
    """A 200 chat completion with these fields as given, however wrong (``content=None``,
    ``content=42``, ``finish_reason="length"``, ``usage={"prompt_tokens": "lots"}``...)."""
    message: dict[str, Any] = {"role": "assistant", "content": content}
    if refusal is not None:
        message["refusal"] = refusal
    if tool_calls is not None:
        message["tool_calls"] = tool_calls
    body: dict[str, Any] = {
        "id": "chatcmpl-scripted",
        "object": "chat.completion",
        "choices": [{"index": 0, "message": message, "finish_reason": finish_reason}],
    }
    body["usage"] = {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2} if usage is _MISSING else usage
    return respond(200, body, headers=headers)


def redirect(code: int, location: str) -> Behaviour:
    """A redirect (301, 302, 307, 308...) to ``location``."""
    return respond(code, b"", headers={"Location": location})


def echo_headers(code: int = 400) -> Behaviour:
    """Fail (or, with a 2xx code, answer junk) with a body quoting every request header value,
    bare and as sent: a proxy that echoes the key back."""
    return Behaviour("echo_headers", status=code)


def ok(text: str | None = None, *, delay_s: float | None = None) -> Behaviour:
    """Answer normally (``text`` overrides the responder), optionally after ``delay_s``."""
    return Behaviour("ok", text=text, delay_s=delay_s)


def status(
    code: int,
    *,
    retry_after: float | None = None,
    retry_after_ms: float | None = None,
    delay_s: float | None = None,
    headers: dict[str, str] | None = None,
) -> Behaviour:
    """Fail with an HTTP status and an OpenAI-shaped error body (``headers`` added as given)."""
    headers = dict(headers or {})
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
