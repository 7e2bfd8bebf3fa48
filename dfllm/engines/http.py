"""The OpenAI-compatible chat-completions engine, on aiohttp.

This module is the one boundary where aiohttp's exceptions and HTTP statuses become dfllm
errors. It moves one request at a time and decides nothing about retrying.

Everything the server sends is untrusted: a redirect is never followed, a body is read only up
to ``MAX_BODY_BYTES``, a 2xx that is not a whole text answer is an error, headers are parsed
into finite values or ignored, and every form of the key is scrubbed from every message and
answer. Text quoted from the server is scrubbed before it is cut to length (a cut must not
leave half a key showing), and stripped of control characters and broken surrogates, so a
message is always printable and storable. aiohttp's own exceptions are never attached
(their ``request_info`` carries the request headers, key included): errors are raised with a
scrubbed description of the cause instead.
"""

from __future__ import annotations

import asyncio
import base64
import json
import math
import re
import sys
from collections.abc import AsyncIterator, Callable, Mapping
from email.utils import parsedate_to_datetime
from time import time
from typing import Any

import aiohttp
from pydantic_core import PydanticSerializationError, from_json, to_json

from dfllm._exceptions import (
    AuthenticationError,
    BadRequestError,
    EngineError,
    IncompleteAnswerError,
    RateLimitError,
    RedirectError,
    RefusalError,
    ResponseFormatError,
    ServerError,
    TransportError,
)
from dfllm.config.secrets import Scrubber, Secret, shown_url, url_secrets
from dfllm.engines.base import NO_CAPABILITIES, Capabilities, Completion, RateLimitState
from dfllm.engines.openai_chat import body_params
from dfllm.engines.tasks import ChatTask, EmbedTask

_SHOWN_BODY = 300  # characters of an unexpected body quoted in a message
_SHOWN_HEADER = 100  # characters of a header value kept for messages
_SHOWN_LOCATION = 200
# No chat completion comes near this; a body that does is a broken or hostile server, and
# reading it whole would let it fill memory (an endless stream, a gzip bomb) until timeout_s.
MAX_BODY_BYTES = 8 * 1024 * 1024
_LARGEST_EMBEDDING = 4096  # numbers in a vector, when the call does not say (text-embedding-3-large: 3,072)


class OpenAICompatibleEngine:
    """POSTs to ``{base_url}/chat/completions`` with the given headers.

    ``headers`` values may be ``Secret``: they are revealed only when the session is built,
    and every form of them is scrubbed from messages. ``auth_hint`` replaces the advice given
    on a 401/403 (a gateway says which of its keys may have been refused).
    """

    def __init__(
        self,
        base_url: str,
        headers: Mapping[str, str | Secret],
        *,
        identity: str | None = None,
        capabilities: Capabilities = NO_CAPABILITIES,
        auth_hint: str | None = None,
        max_body_bytes: int = MAX_BODY_BYTES,
    ) -> None:
        self.identity = identity
        self.capabilities = capabilities
        self.max_concurrency: int | None = None
        self.task_kinds = frozenset({ChatTask.kind, EmbedTask.kind})
        # What every task of a call shares (params, schema, format, name), and its encoded body tail.
        self._shared: tuple[object, ...] = (None, None, None, None)
        self._params_json = b"}"
        self._root = base_url.rstrip("/")
        # What messages and the repr show: a key pasted into the URL's path is masked there,
        # and scrubbed from anything the server echoes.
        self.base_url = shown_url(self._root)
        self._url = f"{self._root}/chat/completions"
        self._headers = dict(headers)
        self._scrub = Scrubber([*(v for v in headers.values() if isinstance(v, Secret)), *url_secrets(self._root)])
        self._auth_hint = auth_hint or "Check the API key given to create_engine (or its environment variable)."
        self._max_body_bytes = max_body_bytes
        self._session: aiohttp.ClientSession | None = None
        self._timeout = aiohttp.ClientTimeout(total=60.0)

    def __repr__(self) -> str:
        return f"OpenAICompatibleEngine(base_url={self.base_url!r})"

    def _session_now(self) -> aiohttp.ClientSession:
        # Built on first use so it belongs to the loop that runs the requests.
        if self._session is None:
            revealed = {k: v.reveal() if isinstance(v, Secret) else v for k, v in self._headers.items()}
            self._session = aiohttp.ClientSession(
                headers={"Content-Type": "application/json", **revealed},
                # No connection cap: the executor's worker pool bounds requests in flight.
                connector=aiohttp.TCPConnector(limit=0, ttl_dns_cache=300),
            )
        return self._session

    async def complete(self, request: ChatTask) -> Completion:
        raw, headers = await self._send("POST", self._url, request.timeout_s, self._body(request))
        return parse_completion(raw, headers, self.base_url, self._scrub)

    def request_body(self, task: ChatTask) -> bytes:
        """The JSON body ``complete`` would send for ``task`` (a batch job's line carries it)."""
        return self._body(task)

    def _body(self, task: ChatTask) -> bytes:
        """``{"model", "messages", **params}`` as JSON, in OpenAI's dialect (``openai_chat``). Every
        task of a call shares one params dict and schema (with a schema, a large response_format):
        they are encoded once, not once per row."""
        params, schema, answer_format, name = self._shared
        if task.params is not params or task.json_schema is not schema or task.answer_format is not answer_format \
                or task.schema_name is not name:
            self._shared = (task.params, task.json_schema, task.answer_format, task.schema_name)
            sent = body_params(task)
            self._params_json = b"," + _json_body(sent)[1:] if sent else b"}"
        head = _head_json(task.model, task.openai_messages())
        return head if self._params_json == b"}" else head[:-1] + self._params_json

    async def embed(self, task: EmbedTask) -> Completion:
        """POST ``{base_url}/embeddings``: the vectors of ``task.inputs``, in order, as float32 bytes in
        the answer's ``values`` (one per input), and the prompt tokens the provider counted."""
        body: dict[str, Any] = {"model": task.model, "input": list(task.inputs), "encoding_format": "base64"}
        if task.dimensions is not None:
            body["dimensions"] = task.dimensions
        # Vectors are large: room for each as numbers in JSON text (~25 bytes a number), never the chat cap.
        room = len(task.inputs) * (task.dimensions or _LARGEST_EMBEDDING) * 25 + (1 << 20)
        raw, headers = await self._send("POST", f"{self._root}/embeddings", task.timeout_s, body,
                                        max_body_bytes=max(room, self._max_body_bytes))
        return parse_embeddings(raw, headers, len(task.inputs), self.base_url, self._scrub)

    async def get_json(self, path: str, timeout_s: float = 60.0) -> Any:
        """GET ``{base_url}/{path}`` (model listing), with the same error mapping as ``complete``."""
        return await self.request_json("GET", path, timeout_s=timeout_s)

    async def request_json(self, method: str, path: str, *, json_body: Any = None,
                           form: Mapping[str, str | tuple[str, bytes]] | None = None,
                           timeout_s: float = 60.0) -> Any:
        """One request to ``{base_url}/{path}`` (files, fine-tuning jobs), answered with JSON.

        The body is ``json_body`` as JSON, or ``form`` as multipart form data, where a
        ``(filename, bytes)`` value is a file part. The same session, headers (the provider's
        auth header), error mapping, body cap and scrubbing as ``complete``; never retried here.
        """
        body: Any = json_body
        headers: dict[str, str] | None = None
        if form is not None:
            data = aiohttp.FormData()
            for name, value in form.items():
                if isinstance(value, tuple):
                    data.add_field(name, value[1], filename=value[0], content_type="application/jsonl")
                else:
                    data.add_field(name, value)
            body = data()
            # The session's default Content-Type is JSON's; a form names its own, with the boundary.
            headers = {"Content-Type": body.content_type}
        raw, _ = await self._send(method, f"{self._root}/{path.lstrip('/')}", timeout_s, body, headers)
        try:
            return json.loads(raw)
        except (ValueError, RecursionError):
            pass
        raise ResponseFormatError(f"{method} {path} returned non-JSON: {_snippet(raw, self._scrub)!r}")

    async def _send(self, method: str, url: str, timeout_s: float, body: Any = None,
                    extra_headers: Mapping[str, str] | None = None,
                    max_body_bytes: int | None = None) -> tuple[bytes, Mapping[str, str]]:
        """One HTTP exchange; every aiohttp exception and error status becomes a dfllm error here.

        ``body``: bytes or a multipart payload as they are, anything else (not None) as JSON.
        ``max_body_bytes``: the answer's cap when it is not the engine's (many vectors at once).
        """
        cap = max_body_bytes or self._max_body_bytes
        timeout = self._timeout  # a call's tasks share one timeout: made once, not per request
        if timeout.total != timeout_s:
            timeout = self._timeout = aiohttp.ClientTimeout(total=timeout_s)
        sent_as_is = body is None or isinstance(body, (bytes, aiohttp.payload.Payload))
        data = body if sent_as_is else _json_body(body)
        failure: EngineError | None = None
        try:
            async with self._session_now().request(
                method, url, data=data, headers=extra_headers, timeout=timeout, allow_redirects=False
            ) as resp:
                status, headers = resp.status, resp.headers
                raw, whole = await _read_capped(resp, cap)
        except (asyncio.TimeoutError, aiohttp.ClientError, OSError) as exc:
            failure = self._transport_failure(exc, method, url, f"timeout_s={timeout_s}")
        # Raised outside the except blocks, so no aiohttp exception rides along as __context__.
        if failure is not None:
            raise failure from None
        if 200 <= status < 300:
            if not whole:
                raise ResponseFormatError(
                    f"{self.base_url} answered HTTP {status} with a body over {cap / 2**20:g} MiB "
                    "(declared or sent), far more than the request could need; it was not read further. The server "
                    "or a proxy in front of it is misbehaving."
                )
            return raw, headers
        if 300 <= status < 400:
            location = _shown(headers.get("Location", ""), self._scrub, _SHOWN_LOCATION) or "(no Location header)"
            raise RedirectError(
                f"{self.base_url} answered HTTP {status} redirecting to {location!r}. dfllm does not follow "
                "redirects of API requests (they would carry the key headers elsewhere, and a 301/302 drops "
                "the request body). Set base_url to the address that answers directly.",
                status=status,
            )
        raise self._status_error(status, headers, raw)

    async def stream_lines(self, path: str, *, timeout_s: float = 600.0,
                           max_line_bytes: int = MAX_BODY_BYTES) -> AsyncIterator[bytes | None]:
        """GET ``{base_url}/{path}`` (a batch job's output file) line by line, never whole: memory
        stays flat at a million lines. A line over ``max_line_bytes`` is yielded as None (its
        rows are missed, not the file); errors are mapped as ``complete``'s are."""
        timeout = aiohttp.ClientTimeout(total=timeout_s)
        url = f"{self._root}/{path.lstrip('/')}"
        failure: EngineError | None = None
        try:
            async with self._session_now().get(url, timeout=timeout, allow_redirects=False) as resp:
                if not 200 <= resp.status < 300:
                    raw, _ = await _read_capped(resp, self._max_body_bytes)
                    failure = self._status_error(resp.status, resp.headers, raw)
                else:
                    async for line in _lines(resp, max_line_bytes):
                        yield line
        except (asyncio.TimeoutError, aiohttp.ClientError, OSError) as exc:
            failure = self._transport_failure(exc, "GET", url, f"{timeout_s:g}s while reading {path}")
        if failure is not None:
            raise failure from None

    def _transport_failure(self, exc: BaseException, method: str, url: str, within: str) -> TransportError:
        """The error for a request that got no HTTP answer: timed out, or refused, reset, unresolved.
        Described, not attached: an aiohttp exception's request_info holds the request headers."""
        if isinstance(exc, (asyncio.TimeoutError, aiohttp.ServerTimeoutError)):
            return TransportError(f"No answer from {self.base_url} within {within}.")
        return TransportError(_shown(f"{method} {url} failed: {type(exc).__name__}: {exc}", self._scrub, 500))

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    @property
    def scrub(self) -> Callable[[str], str]:
        """Removes every form of the key from a text the server sent."""
        return self._scrub

    def status_error(self, status: int, raw: bytes) -> EngineError:
        """The error an HTTP ``status`` with body ``raw`` stands for (a batch line's status)."""
        return self._status_error(status, {}, raw)

    def _status_error(self, status: int, headers: Mapping[str, str], raw: bytes) -> EngineError:
        detail = _shown(_error_detail(raw), self._scrub, _SHOWN_BODY) or "(empty body)"
        where = f"{self.base_url} answered HTTP {status}: {detail}"
        if status in (401, 403):
            return AuthenticationError(f"{where}. {self._auth_hint}", status=status)
        wait = retry_after(headers, self._scrub)
        seconds, said = wait if wait else (None, None)
        if status == 429:
            return RateLimitError(where, status=status, retry_after=seconds, retry_after_header=said)
        # 1xx (101: an upgrade nobody asked for) and 6xx-9xx are no answer either: the server failed.
        if status in (408, 409) or status >= 500 or status < 200:
            return ServerError(where, status=status, retry_after=seconds, retry_after_header=said)
        return BadRequestError(f"{where}. The request was rejected as invalid; it is not retried.", status=status)


# json.dumps(body, allow_nan=False), with the encoder made once rather than per request.
_STRICT_JSON = json.JSONEncoder(allow_nan=False).encode


def _json_body(body: Any) -> bytes:
    """The request body as strict JSON: NaN and infinities are not JSON (a provider's parser refuses
    them, or worse, reads them), and a value JSON cannot hold fails here rather than inside aiohttp."""
    try:
        return _STRICT_JSON(body).encode()
    except (TypeError, ValueError, RecursionError) as exc:
        problem = str(exc)[:200]
    raise BadRequestError(f"The request body cannot be sent as JSON ({problem}); check extra_body and the "
                          "other options for values that are not strings, finite numbers, lists or dicts.")


def _head_json(model: str, messages: list[dict[str, Any]]) -> bytes:
    """A body's per-row part, model and messages, as JSON: by pydantic-core's encoder (a sixth of
    json's time a row) when every value is a string, as rendered rows' are. Anything else (a
    part list with images, a value a custom caller put there) goes through the strict encoder,
    which refuses what JSON cannot hold (NaN) where pydantic-core would write it; so does a text
    pydantic-core cannot encode (a lone surrogate)."""
    if type(model) is str and all(type(m.get("role")) is str and type(m.get("content")) is str for m in messages):
        try:
            return to_json({"model": model, "messages": messages})
        except PydanticSerializationError:
            pass
    return _json_body({"model": model, "messages": messages})


async def _read_capped(resp: aiohttp.ClientResponse, limit: int) -> tuple[bytes, bool]:
    """The body (decompressed, as aiohttp serves it), and whether it is whole: reading stops, and
    the connection is closed, as soon as the body is known to exceed ``limit`` bytes."""
    declared = resp.content_length
    if declared is not None and declared > limit:
        resp.close()
        return b"", False
    if declared is not None and not resp.headers.get("Content-Encoding"):
        # Declared and not compressed: aiohttp reads no more than declared, in one call.
        return await resp.read(), True
    chunks: list[bytes] = []
    size = 0
    while chunk := await resp.content.readany():
        size += len(chunk)
        if size > limit:
            resp.close()
            return b"".join(chunks), False
        chunks.append(chunk)
    return b"".join(chunks), True


async def _lines(resp: aiohttp.ClientResponse, limit: int) -> AsyncIterator[bytes | None]:
    """The body's lines without their newline, a line over ``limit`` bytes as None."""
    pending = bytearray()
    too_long = False
    while chunk := await resp.content.readany():
        start = 0
        while (end := chunk.find(b"\n", start)) >= 0:
            if not too_long and len(pending) + end - start <= limit:
                pending += chunk[start:end]
                yield bytes(pending)
            else:
                yield None
            pending.clear()
            too_long = False
            start = end + 1
        if not too_long:
            pending += chunk[start:]
            if len(pending) > limit:
                pending.clear()
                too_long = True
    if too_long:
        yield None
    elif pending:
        yield bytes(pending)


# Characters a message must not carry: controls (a UTF-16 body decoded as UTF-8 interleaves NULs
# between the key's letters), invisible format characters, and lone surrogates (from JSON's
# "\ud800" escapes), which no UTF-8 writer (Arrow, SQLite, a terminal) accepts.
_UNSHOWABLE = re.compile(
    r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\u200b-\u200f\u202a-\u202e\u2060-\u206f\ufeff\ud800-\udfff]"
)


def _shown(text: str, scrub: Callable[[str], str], limit: int) -> str:
    """Server text as fit to quote: printable, scrubbed of every secret form, then cut to ``limit``."""
    if not (text.isascii() and text.isprintable()):  # else nothing is unshowable (most headers)
        text = _UNSHOWABLE.sub("", text)
    return scrub(text)[:limit]


_SURROGATE = re.compile(r"[\ud800-\udfff]")


def _well_formed(text: str) -> str:
    """``text`` with each lone surrogate (half an emoji that JSON allows) replaced by U+FFFD, as a
    UTF-8 decoder does with a broken sequence: an answer must be storable in SQLite and Arrow."""
    return text if text.isascii() else _SURROGATE.sub("\ufffd", text)


def _body_text(raw: bytes, payload: Any = None) -> str:
    """The body as text; a parsed JSON body re-encoded, so its ``\\uXXXX`` escapes are undone
    (and a key written in them is scrubbed)."""
    if payload is not None:
        try:
            return json.dumps(payload, ensure_ascii=False)
        except (ValueError, RecursionError):
            pass
    return raw.decode("utf-8", "replace")


def _snippet(raw: bytes, scrub: Callable[[str], str], payload: Any = None) -> str:
    return _shown(_body_text(raw, payload), scrub, _SHOWN_BODY) or "(empty body)"


def _error_detail(raw: bytes) -> str:
    """The error's message, or the body; whole (the caller scrubs, then cuts it)."""
    try:
        payload = json.loads(raw)
    except (ValueError, RecursionError):
        return _body_text(raw)
    if isinstance(payload, dict):
        error = payload.get("error", payload)
        if isinstance(error, dict) and error.get("message"):
            return str(error["message"])
        if isinstance(error, str):
            return error
    return _body_text(raw, payload)


def parse_completion(
    raw: bytes, headers: Mapping[str, str], base_url: str, scrub: Callable[[str], str] = str
) -> Completion:
    """The text answer in a 2xx body, or the error saying why the body is not one."""
    try:
        payload = read_json(raw)
    except (ValueError, RecursionError):
        payload = None
    return completion_of(payload, raw, headers, base_url, scrub)


def read_json(raw: bytes) -> Any:
    """``json.loads(raw)``, read first by pydantic-core's parser (under half of json.loads's time an
    answer). What that parser refuses (a lone surrogate, nesting past 200, a number past its range,
    any encoding but UTF-8) goes through json.loads, so which bodies are JSON, and their values,
    are json.loads's. There, a body that starts as a UTF-8 object skips the encoding detection."""
    try:
        return from_json(raw, cache_strings="keys")
    except ValueError:
        pass
    if raw[:1] == b"{" and raw[1:2] != b"\0":
        return json.loads(raw.decode("utf-8", "surrogatepass"))
    return json.loads(raw)


def completion_of(payload: Any, raw: bytes, headers: Mapping[str, str], base_url: str,
                  scrub: Callable[[str], str] = str) -> Completion:
    """``parse_completion`` of a body already parsed (``payload``; None when it was not JSON): a batch
    job's result line holds its body parsed, which is not encoded and read again."""
    choices = payload.get("choices") if isinstance(payload, dict) else None
    first = choices[0] if isinstance(choices, list) and choices else None
    message = first.get("message") if isinstance(first, dict) else None
    if not isinstance(message, dict):
        what = "the body is not JSON" if payload is None else "the body has no choices[0].message"
        raise ResponseFormatError(f"{base_url} answered 2xx but {what}, so it is not a chat completion: "
                                  f"{_snippet(raw, scrub, payload)!r}")
    assert isinstance(first, dict)
    finish = _finish_reason(first.get("finish_reason"))
    content = message.get("content")
    refusal = message.get("refusal")
    if not isinstance(content, str) or finish in _WITHHELD or (isinstance(refusal, str) and refusal):
        raise _no_answer(message, content, refusal, finish, f"{base_url} answered 2xx but", scrub)
    usage = payload.get("usage")
    usage = usage if isinstance(usage, dict) else {}
    # Made as a tuple: this runs once per answer (the fields in Completion's order).
    return _new_completion(Completion, (
        # A provider (or proxy) echoing the key into the answer must not put it in the result or cache.
        scrub(_well_formed(content)),
        _token_count(usage.get("prompt_tokens")),
        _token_count(usage.get("completion_tokens")),
        rate_limit_state(headers, scrub),
        finish,
        None,
        _cached_count(usage),
    ))


_new_completion = tuple.__new__
_WITHHELD = frozenset({"content_filter", "length"})  # finish reasons that hold no whole answer
# The reasons providers send, interned once: a million answers then hold one "stop", not a million copies.
_KNOWN_FINISH = {reason: sys.intern(reason) for reason in
                 ("stop", "length", "content_filter", "tool_calls", "function_call", "eos", "end_turn")}


def _finish_reason(finish: Any) -> str | None:
    """The finish reason as fit to keep (printable, at most 40 characters, interned); None if not text."""
    if not isinstance(finish, str):
        return None
    return _KNOWN_FINISH.get(finish) or sys.intern(_shown(finish, str, 40))


def _no_answer(message: dict[str, Any], content: Any, refusal: Any, finish: str | None, where: str,
               scrub: Callable[[str], str]) -> EngineError:
    """Why a 2xx message holds no whole text answer: a refusal, a withheld or cut answer, no text."""
    if isinstance(refusal, str) and refusal:
        return RefusalError(f"{where} the model refused: {_shown(refusal, scrub, _SHOWN_BODY)!r}")
    if finish == "content_filter":
        return RefusalError(f"{where} its content filter withheld the answer (finish_reason 'content_filter').")
    if finish == "length":
        text = scrub(_well_formed(content)) if isinstance(content, str) else None
        shown = f": {_shown(text, str, 80)!r}" if text is not None else ""
        return IncompleteAnswerError(
            f"{where} the answer was cut off at the token limit (finish_reason 'length'){shown}; "
            "raise max_tokens to get whole answers.",
            text=text,
        )
    if content is None:
        why = "the model answered with tool calls, not text" if message.get("tool_calls") else "there is no text"
        return IncompleteAnswerError(f"{where} {why} (message.content is null, finish_reason {finish!r}).")
    return ResponseFormatError(
        f"{where} message.content is a {type(content).__name__}, not text: "
        f"{_shown(str(content), scrub, _SHOWN_BODY)!r}"
    )


def parse_embeddings(raw: bytes, headers: Mapping[str, str], count: int, base_url: str,
                     scrub: Callable[[str], str] = str) -> Completion:
    """``count`` vectors from an ``/embeddings`` body, each as float32 bytes (from base64 or a list
    of numbers), in input order; or the error saying why the body is not that. Every vector has the
    same length; a NaN, an infinity or a non-number is this answer's error, never a value."""
    where = f"{base_url} answered 2xx but"
    try:
        payload = read_json(raw)
    except (ValueError, RecursionError):
        payload = None
    data = payload.get("data") if isinstance(payload, dict) else None
    if not isinstance(data, list) or len(data) != count:
        got = "no data list" if not isinstance(data, list) else f"{len(data)} vectors"
        raise ResponseFormatError(f"{where} {got} for {count} inputs: {_snippet(raw, scrub, payload)!r}")
    vectors: list[bytes | None] = [None] * count
    for position, item in enumerate(data):
        index = item.get("index", position) if isinstance(item, dict) else None
        vector = _vector(item.get("embedding") if isinstance(item, dict) else None)
        if not isinstance(index, int) or isinstance(index, bool) or not 0 <= index < count \
                or vectors[index] is not None or vector is None:
            raise ResponseFormatError(f"{where} its vector {position} is not a whole, finite vector for an input "
                                      f"it names once: {_snippet(raw, scrub, payload)!r}")
        vectors[index] = vector
    if len({len(v) for v in vectors if v is not None}) != 1:
        raise ResponseFormatError(f"{where} its vectors differ in length.")
    usage = payload.get("usage") if isinstance(payload, dict) else None
    tokens = _token_count(usage.get("prompt_tokens")) if isinstance(usage, dict) else 0
    return Completion("", prompt_tokens=tokens, rate_limit=rate_limit_state(headers, scrub),
                      values=tuple(vectors))


def _vector(value: Any) -> bytes | None:
    """A vector as float32 bytes, from base64 text or a list of numbers; None if it is not one (read
    at C speed: a million vectors of 1,536 numbers)."""
    import numpy as np  # pandas' own dependency; only embeddings need it here

    try:
        if isinstance(value, str):
            data = base64.b64decode(value, validate=True)
            floats = np.frombuffer(data, dtype="<f4") if data and len(data) % 4 == 0 else None
        elif isinstance(value, list) and value and _numbers_only(value):
            with np.errstate(over="ignore", invalid="ignore"):  # past float32's range is inf, refused below
                floats = np.asarray(value, dtype=np.float64).astype("<f4")
        else:
            floats = None
    except (ValueError, TypeError, OverflowError):
        return None
    if floats is None or floats.ndim != 1 or not np.isfinite(floats).all():
        return None
    return floats.tobytes()


_NUMBER_TYPES = frozenset({float, int})


def _numbers_only(values: list[Any]) -> bool:
    """Whether every item is a JSON number: numpy would read ``"2"`` and ``true`` as numbers too. A
    provider sends floats, counted at C speed; a list mixing in ints takes the slower set."""
    kinds = list(map(type, values))
    return kinds.count(float) == len(kinds) or set(kinds) <= _NUMBER_TYPES


_MAX_COUNT = 2**53  # beyond this a count is not a count (and not exactly representable)


def _token_count(value: Any) -> int:
    """A usage count, or 0 when the provider sent something that is not one: a bad usage
    field must never cost a valid answer."""
    if type(value) is int:  # what providers send; compared as an int, never made a float
        return value if 0 <= value <= _MAX_COUNT else 0
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return 0
    if not math.isfinite(value) or not 0 <= value <= _MAX_COUNT:
        return 0
    return int(value)


def _cached_count(usage: Mapping[str, Any]) -> int:
    """``usage.prompt_tokens_details.cached_tokens``: part of the prompt, so never more than it."""
    details = usage.get("prompt_tokens_details")
    cached = _token_count(details.get("cached_tokens")) if isinstance(details, dict) else 0
    return min(cached, _token_count(usage.get("prompt_tokens")))


def _number(text: str | None) -> float | None:
    """A finite, non-negative number written in ``text``; None for anything else."""
    if text is None or len(text) > 64:
        return None
    try:
        value = float(text)
    except (ValueError, OverflowError):
        return None
    return value if math.isfinite(value) and value >= 0 else None


def retry_after(headers: Mapping[str, str], scrub: Callable[[str], str] = str) -> tuple[float, str] | None:
    """Seconds the server asked us to wait, and the header that said it (``"retry-after: 5"``).

    ``retry-after-ms`` first, then ``retry-after`` in seconds or as an HTTP date (a past date
    is 0). The seconds are finite and >= 0 but may be huge; garbage, negative, NaN and infinite
    values count as not said.
    """
    for name, scale in (("retry-after-ms", 0.001), ("retry-after", 1.0)):
        value = headers.get(name)
        if value is None:
            continue
        seconds = _number(value)
        if seconds is None and scale == 1.0:
            seconds = _http_date_in_s(value)
        if seconds is not None:
            return seconds * scale, f"{name}: {_shown(value, scrub, _SHOWN_HEADER)}"
    return None


def retry_after_s(headers: Mapping[str, str]) -> float | None:
    """The seconds of ``retry_after``, or None."""
    found = retry_after(headers)
    return found[0] if found else None


def _http_date_in_s(value: str) -> float | None:
    if len(value) > 64:
        return None
    try:
        seconds = parsedate_to_datetime(value).timestamp() - time()
    except (TypeError, ValueError, IndexError, OverflowError, OSError):
        return None
    return max(0.0, seconds) if math.isfinite(seconds) else None


_DURATION = re.compile(r"(?:\d+(?:\.\d+)?(?:ms|s|m|h))+")
_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h)")
_UNIT_S = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}


def parse_duration_s(text: str | None) -> float | None:
    """OpenAI's reset format: ``"1s"``, ``"6m0s"``, ``"20ms"``; a bare number is seconds.

    Finite and >= 0, or None for anything else.
    """
    if not text or len(text) > 64:
        return None
    text = text.strip()
    if not text.endswith(("s", "m", "h")):  # no number float() reads ends so: a bare number
        return _number(text)
    if not _DURATION.fullmatch(text):
        return None
    total = sum(float(n) * _UNIT_S[u] for n, u in _DURATION_PART.findall(text))
    return total if math.isfinite(total) else None


def _count(text: str | None, minimum: int) -> int | None:
    value = _number(text)
    if value is None or value < minimum or value > _MAX_COUNT:
        return None
    return int(value)


_RATE_LIMIT_HEADERS = (
    "x-ratelimit-limit-requests",
    "x-ratelimit-remaining-requests",
    "x-ratelimit-reset-requests",
    "x-ratelimit-limit-tokens",
    "x-ratelimit-remaining-tokens",
    "x-ratelimit-reset-tokens",
)


def rate_limit_state(headers: Mapping[str, str], scrub: Callable[[str], str] = str) -> RateLimitState | None:
    """The ``x-ratelimit-*`` headers as a ``RateLimitState``; None when none was sent.

    A limit below 1 (``0``, ``-1``), a negative count, or a value that is not a finite number
    is treated as absent: a header can slow a run only with a meaningful value.
    """
    values = [headers.get(name) for name in _RATE_LIMIT_HEADERS]
    if values.count(None) == len(values):  # most answers, from most servers
        return None
    limit_requests, remaining_requests, reset_requests, limit_tokens, remaining_tokens, reset_tokens = values
    return RateLimitState(
        limit_requests=_count(limit_requests, 1),
        remaining_requests=_count(remaining_requests, 0),
        reset_requests_s=parse_duration_s(reset_requests),
        limit_tokens=_count(limit_tokens, 1),
        remaining_tokens=_count(remaining_tokens, 0),
        reset_tokens_s=parse_duration_s(reset_tokens),
        headers=tuple((name, _shown(value, scrub, _SHOWN_HEADER))
                      for name, value in zip(_RATE_LIMIT_HEADERS, values, strict=True) if value is not None),
    )
