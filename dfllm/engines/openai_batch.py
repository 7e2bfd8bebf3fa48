"""OpenAI's Batch API: a call's chat tasks as JSONL files, one job per file, and its result lines.

Half the online price, in return for waiting (up to ``completion_window``). What it takes:

- an input file of lines ``{"custom_id", "method": "POST", "url": ENDPOINT, "body"}``, uploaded
  to ``/files`` with ``purpose=batch``; the body is exactly the online request's;
- a job (``/batches``) over it, polled until a terminal state;
- an output file of ``{"custom_id", "response": {"status_code", "body"}}`` lines in any order, and
  an error file of the lines that failed.

``custom_id`` carries the row's cache key (its 128-bit digest in hex): a result line finds its
row whatever the order, and a job submitted by one process can be collected by another. Every
field of a batch object or a result line is untrusted: parsed into known values or refused.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from dfllm._exceptions import EngineError, ResponseFormatError, ServerError
from dfllm.engines.base import Completion
from dfllm.engines.http import OpenAICompatibleEngine, completion_of, read_json
from dfllm.prompt.keys import Key

ENDPOINT = "/v1/chat/completions"
COMPLETION_WINDOW = "24h"
MAX_REQUESTS_PER_FILE = 50_000  # OpenAI's limits on one input file
MAX_FILE_BYTES = 200 * 1024 * 1024
STATES = ("validating", "in_progress", "finalizing", "completed", "failed", "expired", "cancelling",
          "cancelled")
TERMINAL = frozenset({"completed", "failed", "expired", "cancelled"})
# Line error codes that say nothing about the request itself: sent again, it may well be answered.
TRANSIENT_CODES = frozenset({"batch_expired", "batch_cancelled", "server_error", "rate_limit_exceeded",
                             "timeout"})
_U64 = (1 << 64) - 1
_SHOWN = 300


class BatchJobError(EngineError):
    """A provider batch job could not answer a row: the job failed, expired, was cancelled, or
    is still running when ``batch_timeout_s`` ran out. ``retryable``: sent again, it may be."""

    def __init__(self, message: str, *, retryable: bool = False) -> None:
        super().__init__(message)
        self.retryable = retryable


def custom_id(key: Key) -> str:
    """The cache key as the line's ``custom_id``: 32 hex digits."""
    return f"{key[0] & _U64:016x}{key[1] & _U64:016x}"


def key_of(value: object) -> Key | None:
    """The cache key a ``custom_id`` carries; None for anything dfllm did not write."""
    if not isinstance(value, str) or len(value) != 32:
        return None
    try:
        high, low = int(value[:16], 16), int(value[16:], 16)
    except ValueError:
        return None
    return (high - (1 << 64) if high >> 63 else high, low - (1 << 64) if low >> 63 else low)


def input_files(lines: Iterable[tuple[Key, bytes]], *, max_requests: int = MAX_REQUESTS_PER_FILE,
                max_bytes: int = MAX_FILE_BYTES) -> Iterator[tuple[list[Key], bytes]]:
    """``(key, request body)`` pairs as input files within the provider's limits: each file's keys
    and its JSONL bytes."""
    keys: list[Key] = []
    chunks: list[bytes] = []
    size = 0
    for key, body in lines:
        line = b'{"custom_id":"%s","method":"POST","url":"%s","body":%s}\n' % (
            custom_id(key).encode(), ENDPOINT.encode(), body)
        if keys and (len(keys) >= max_requests or size + len(line) > max_bytes):
            yield keys, b"".join(chunks)
            keys, chunks, size = [], [], 0
        keys.append(key)
        chunks.append(line)
        size += len(line)
    if keys:
        yield keys, b"".join(chunks)


@dataclass(frozen=True)
class BatchJob:
    """A batch object as the provider last described it, every field checked."""

    id: str
    status: str
    output_file_id: str | None = None
    error_file_id: str | None = None
    total: int = 0
    completed: int = 0
    failed: int = 0
    errors: str = ""  # the provider's own account of a failed job, shown

    @property
    def done(self) -> bool:
        return self.status in TERMINAL

    @classmethod
    def of(cls, payload: Any, scrub: Callable[[str], str] = str) -> BatchJob:
        if not isinstance(payload, dict) or not _is_id(payload.get("id"), scrub):
            raise ResponseFormatError(f"The provider's batch object has no id: {_shown(payload, scrub)!r}")
        status = payload.get("status")
        if status not in STATES:
            raise ResponseFormatError(
                f"Batch {_shown(payload['id'], scrub)} has an unknown status {_shown(status, scrub)!r}.")
        counts = payload.get("request_counts")
        counts = counts if isinstance(counts, dict) else {}
        return cls(payload["id"], status, _file_id(payload.get("output_file_id"), scrub),
                   _file_id(payload.get("error_file_id"), scrub), _count(counts.get("total")),
                   _count(counts.get("completed")), _count(counts.get("failed")),
                   _job_errors(payload.get("errors"), scrub))


def result_line(line: bytes, engine: OpenAICompatibleEngine) -> tuple[Key, Completion | EngineError] | None:
    """One line of an output or error file: the row's key and its outcome, or None for a line
    that names no row of dfllm's (it cannot be placed, so its row is counted as missing)."""
    try:
        payload = read_json(line)
    except (ValueError, RecursionError):
        return None
    key = key_of(payload.get("custom_id")) if isinstance(payload, dict) else None
    if key is None:
        return None
    response, error = payload.get("response"), payload.get("error")
    status = response.get("status_code") if isinstance(response, dict) else None
    body = response.get("body") if isinstance(response, dict) else None
    if status == 200 and isinstance(body, dict) and not error:
        try:
            return key, completion_of(body, b"", {}, engine.base_url, engine.scrub)
        except EngineError as exc:
            return key, exc
    if isinstance(status, int) and not isinstance(status, bool) and status != 200:
        return key, engine.status_error(status, _json(body) if body is not None else b"")
    return key, _line_error(error, engine.scrub)


def _line_error(error: Any, scrub: Callable[[str], str]) -> EngineError:
    code = error.get("code") if isinstance(error, dict) else None
    message = error.get("message") if isinstance(error, dict) else None
    shown = f"{_shown(code, scrub)}: {_shown(message, scrub)}" if code or message else "no reason given"
    if code in TRANSIENT_CODES:
        return BatchJobError(f"The batch job did not answer this row ({shown}).", retryable=True)
    return ServerError(f"The batch job failed this row ({shown}).") if code is None else \
        BatchJobError(f"The batch job refused this row ({shown}).")


class BatchClient:
    """The Batch API's calls, on the HTTP engine's boundary (its auth header, error mapping,
    scrubbing). Each call is one request, never retried here: the dispatch owns the policy."""

    def __init__(self, engine: OpenAICompatibleEngine, *, timeout_s: float = 120.0) -> None:
        self.engine = engine
        self._timeout_s = timeout_s

    async def upload(self, name: str, content: bytes) -> str:
        reply = await self.engine.request_json("POST", "files", form={"purpose": "batch", "file": (name, content)},
                                               timeout_s=max(self._timeout_s, 600.0))
        file_id = reply.get("id") if isinstance(reply, dict) else None
        if not _is_id(file_id, self.engine.scrub):
            raise ResponseFormatError(f"The file upload's answer has no id: {_shown(reply, self.engine.scrub)!r}")
        assert isinstance(file_id, str)
        return file_id

    async def create(self, file_id: str, metadata: dict[str, str]) -> BatchJob:
        body = {"input_file_id": file_id, "endpoint": ENDPOINT, "completion_window": COMPLETION_WINDOW,
                "metadata": metadata}
        return BatchJob.of(await self.engine.request_json("POST", "batches", json_body=body,
                                                          timeout_s=self._timeout_s), self.engine.scrub)

    async def retrieve(self, job_id: str) -> BatchJob:
        return BatchJob.of(await self.engine.request_json("GET", f"batches/{job_id}", timeout_s=self._timeout_s),
                           self.engine.scrub)

    async def cancel(self, job_id: str) -> BatchJob:
        return BatchJob.of(await self.engine.request_json("POST", f"batches/{job_id}/cancel",
                                                          timeout_s=self._timeout_s), self.engine.scrub)

    async def find(self, submission: str, *, pages: int = 10) -> BatchJob | None:
        """The job whose metadata names ``submission`` (one created before a crash could record
        it), among the newest ``pages`` pages of jobs."""
        after = ""
        for _ in range(pages):
            reply = await self.engine.request_json("GET", f"batches?limit=100{after}", timeout_s=self._timeout_s)
            data = reply.get("data") if isinstance(reply, dict) else None
            if not isinstance(data, list) or not data:
                return None
            for item in data:
                meta = item.get("metadata") if isinstance(item, dict) else None
                if isinstance(meta, dict) and meta.get("dfllm_submission") == submission:
                    return BatchJob.of(item, self.engine.scrub)
            last = data[-1].get("id") if isinstance(data[-1], dict) else None
            if not (isinstance(reply, dict) and reply.get("has_more") and _is_id(last)):
                return None
            after = f"&after={last}"
        return None

    async def results(self, file_id: str) -> AsyncIterator[tuple[Key, Completion | EngineError] | None]:
        """A result file's lines as (key, outcome), streamed; None for a line that names no row."""
        async for line in self.engine.stream_lines(f"files/{file_id}/content", timeout_s=max(self._timeout_s, 600.0)):
            if line is None:
                yield None
            elif line.strip():
                yield result_line(line, self.engine)


def _json(value: Any) -> bytes:
    return json.dumps(value, ensure_ascii=False).encode("utf-8", "surrogatepass")


def _is_id(value: object, scrub: Callable[[str], str] = str) -> bool:
    """An id the provider may name an object by: short, printable, safe in a path, and holding no
    form of the key (a server echoing it would put it in the jobs table and in messages)."""
    return isinstance(value, str) and 0 < len(value) <= 200 and value.isprintable() and "/" not in value \
        and "?" not in value and "&" not in value and scrub(value) == value


def _file_id(value: object, scrub: Callable[[str], str] = str) -> str | None:
    return value if _is_id(value, scrub) else None  # type: ignore[return-value]


def _count(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 2**53:
        return 0
    return value


def _job_errors(errors: Any, scrub: Callable[[str], str]) -> str:
    data = errors.get("data") if isinstance(errors, dict) else None
    if not isinstance(data, list):
        return ""
    shown = [f"{_shown(e.get('code'), scrub)}: {_shown(e.get('message'), scrub)}"
             + (f" (line {e['line']})" if isinstance(e.get("line"), int) else "")
             for e in data[:5] if isinstance(e, dict)]
    more = f"; and {len(data) - 5} more" if len(data) > 5 else ""
    return "; ".join(shown) + more


def _shown(value: object, scrub: Callable[[str], str]) -> str:
    text = value if isinstance(value, str) else json.dumps(value, default=str)[:_SHOWN * 2]
    text = "".join(c if c.isprintable() else "?" for c in text[:_SHOWN * 2])
    return scrub(text)[:_SHOWN]
