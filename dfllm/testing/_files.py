"""The fake provider's ``/v1/files``, in OpenAI's shape: one store that fine-tuning and batches share.

``POST /v1/files`` (multipart: ``purpose``, ``file``) streams the upload into the store;
``GET /v1/files/{id}`` returns the file object; ``GET /v1/files/{id}/content`` streams the bytes
back in chunks (no Content-Length, as OpenAI sends it); ``DELETE /v1/files/{id}`` removes it.
Files above a megabyte live in a temporary file on disk, so a 100,000-line batch keeps the
server's memory flat. A purpose may register a check (fine-tuning does) that refuses an upload.

Records, to assert from: ``uploads`` (``UploadRecord``: file id, filename, purpose, bytes, line
count) and ``downloads`` (``DownloadRecord``: file id, bytes sent), in arrival order.
``contents`` reads any file's bytes by id, even after a DELETE while the server records.
A deleted file's bytes are kept (closed with the server) since a running job may still read them.
"""

from __future__ import annotations

import asyncio
import json
import tempfile
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import IO, Any, Protocol

from aiohttp import BodyPartReader, web

from dfllm.testing._behaviour import RecordedRequest, Script

PURPOSES = ("assistants", "batch", "batch_output", "evals", "fine-tune", "user_data", "vision")
_UPLOADABLE = frozenset(PURPOSES) - {"batch_output"}
_SPOOL_BYTES = 1 << 20  # above this a file goes to disk
_CHUNK = 64 * 1024


class Host(Protocol):
    """What the routes use of the fake provider that serves them (``FakeProviderApp``)."""

    async def _record(self, request: web.Request) -> RecordedRequest: ...

    def authorized(self, request: web.Request) -> bool: ...

    def unauthorized(self) -> web.Response: ...


@dataclass(frozen=True)
class UploadRecord:
    file_id: str
    filename: str
    purpose: str
    bytes: int
    lines: int


@dataclass(frozen=True)
class DownloadRecord:
    file_id: str
    bytes: int


class StoredFile:
    """One file's object and bytes (in memory, or on disk above a megabyte)."""

    def __init__(self, entry: dict[str, Any], data: IO[bytes], lines: int) -> None:
        self.entry = entry
        self.lines = lines
        self._data = data

    @property
    def id(self) -> str:
        return str(self.entry["id"])

    @property
    def size(self) -> int:
        return int(self.entry["bytes"])

    def read(self) -> bytes:
        return b"".join(self.chunks())

    def chunks(self, size: int = _CHUNK) -> Iterator[bytes]:
        """The bytes in order; each read seeks first, so readers may interleave."""
        position = 0
        while True:
            self._data.seek(position)
            chunk = self._data.read(size)
            if not chunk:
                return
            position += len(chunk)
            yield chunk

    def read_line(self, position: int) -> tuple[bytes, int]:
        """The line starting at byte ``position`` (b"" at the end) and where the next one starts."""
        self._data.seek(position)
        line = self._data.readline()
        return line, position + len(line)

    def iter_lines(self) -> Iterator[bytes]:
        position = 0
        while True:
            line, position = self.read_line(position)
            if not line:
                return
            yield line

    def close(self) -> None:
        self._data.close()


def spool() -> IO[bytes]:
    """A file's bytes: in memory while small, on disk past a megabyte (closed by the store)."""
    return tempfile.SpooledTemporaryFile(max_size=_SPOOL_BYTES)


UploadCheck = Callable[[StoredFile], "str | None"]  # a message refuses the upload with a 400


class FileStore:
    """``/v1/files`` and the files behind it. ``scripts`` gives the scripts that may refuse a request."""

    def __init__(self, host: Host, *, clock: Callable[[], float], record: bool = True,
                 scripts: Callable[[], Iterable[Script | None]] = tuple) -> None:
        self.host = host
        self.clock = clock
        self.record = record
        self.scripts = scripts
        self.live: dict[str, StoredFile] = {}
        self._deleted: dict[str, StoredFile] = {}  # a running job may still read one
        self.checks: dict[str, UploadCheck] = {}
        self.uploads: list[UploadRecord] = []
        self.downloads: list[DownloadRecord] = []
        self._count = 0

    def add_to(self, router: web.UrlDispatcher) -> None:
        router.add_post("/v1/files", self._upload)
        router.add_get("/v1/files/{file_id}", self._retrieve)
        router.add_get("/v1/files/{file_id}/content", self._content)
        router.add_delete("/v1/files/{file_id}", self._delete)

    # -- for the other routes and for tests ------------------------------------------------
    def add(self, filename: str, purpose: str, data: IO[bytes], size: int, lines: int) -> StoredFile:
        """Store bytes already written to ``data`` as a new file (an upload, or a batch's output)."""
        self._count += 1
        entry = {"id": f"file-fake-{self._count}", "object": "file", "bytes": size,
                 "created_at": int(self.clock()), "filename": filename, "purpose": purpose,
                 "status": "processed", "status_details": None, "expires_at": None}
        stored = StoredFile(entry, data, lines)
        self.live[stored.id] = stored
        return stored

    def get(self, file_id: str) -> StoredFile | None:
        """Any file ever stored, deleted ones included while recording (tests read these)."""
        return self.live.get(file_id) or (self._deleted.get(file_id) if self.record else None)

    @property
    def contents(self) -> Mapping[str, bytes]:
        """Each file's bytes by id, read when asked."""
        return _Contents(self)

    def lines(self, file_id: str) -> Iterator[Any]:
        """A JSONL file's lines, parsed (blank lines skipped)."""
        stored = self.get(file_id)
        if stored is None:
            raise KeyError(file_id)
        return (json.loads(line) for line in stored.iter_lines() if line.strip())

    def close(self) -> None:
        for stored in [*self.live.values(), *self._deleted.values()]:
            stored.close()
        self.live.clear()
        self._deleted.clear()

    def stats(self) -> dict[str, int]:
        return {"uploads": len(self.uploads), "upload_bytes": sum(u.bytes for u in self.uploads),
                "downloads": len(self.downloads), "download_bytes": sum(d.bytes for d in self.downloads)}

    # -- handlers ----------------------------------------------------------------------------
    async def _upload(self, request: web.Request) -> web.StreamResponse:
        _, refused = await refuse(self.host, request, self.scripts())
        if refused is not None:
            return refused
        if not request.content_type.startswith("multipart/"):
            return error_response(400, "Expected a multipart/form-data body with 'purpose' and 'file'.")
        purpose, received = await self._read_form(request)
        if received is None:
            return error_response(400, "Missing 'file' part.", param="file")
        filename, data, size, lines = received
        if purpose not in _UPLOADABLE:
            data.close()
            return error_response(400, f"'{purpose}' is not one of {sorted(_UPLOADABLE)} - 'purpose'",
                                  param="purpose")
        stored = self.add(filename, purpose, data, size, lines)
        check = self.checks.get(purpose)
        problem = check(stored) if check else None
        if problem is not None:
            del self.live[stored.id]
            stored.close()
            return error_response(400, problem)
        self.uploads.append(UploadRecord(stored.id, filename, purpose, size, lines))
        return web.json_response(stored.entry)

    async def _read_form(self, request: web.Request) -> tuple[str, tuple[str, IO[bytes], int, int] | None]:
        purpose = ""
        received: tuple[str, IO[bytes], int, int] | None = None
        reader = await request.multipart()
        while (part := await reader.next()) is not None:
            if not isinstance(part, BodyPartReader):
                continue
            if part.name == "purpose":
                purpose = (await part.text()).strip()
            elif part.name == "file" and received is None:
                received = (part.filename or "upload.jsonl", *await _receive(part))
            else:
                await part.release()
        return purpose, received

    async def _named(self, request: web.Request) -> StoredFile | web.Response:
        """The live file a request names, or the answer refusing it (a script, no key, no such file)."""
        _, refused = await refuse(self.host, request, self.scripts())
        if refused is not None:
            return refused
        stored = self.live.get(request.match_info["file_id"])
        return _no_such_file(request.match_info["file_id"]) if stored is None else stored

    async def _retrieve(self, request: web.Request) -> web.Response:
        stored = await self._named(request)
        return stored if isinstance(stored, web.Response) else web.json_response(stored.entry)

    async def _content(self, request: web.Request) -> web.StreamResponse:
        stored = await self._named(request)
        if isinstance(stored, web.Response):
            return stored
        if stored.entry["purpose"] == "fine-tune":
            return error_response(400, "Not allowed to download files of purpose: fine-tune")
        response = web.StreamResponse(headers={"Content-Type": "application/octet-stream"})
        response.enable_chunked_encoding()
        await response.prepare(request)
        sent = 0
        for chunk in stored.chunks():
            await response.write(chunk)
            sent += len(chunk)
        await response.write_eof()
        self.downloads.append(DownloadRecord(stored.id, sent))
        return response

    async def _delete(self, request: web.Request) -> web.Response:
        _, refused = await refuse(self.host, request, self.scripts())
        if refused is not None:
            return refused
        stored = self.live.pop(request.match_info["file_id"], None)
        if stored is None:
            return _no_such_file(request.match_info["file_id"])
        self._deleted[stored.id] = stored
        return web.json_response({"id": stored.id, "object": "file", "deleted": True})


class _Contents(Mapping[str, bytes]):
    def __init__(self, store: FileStore) -> None:
        self._store = store

    def __getitem__(self, file_id: str) -> bytes:
        stored = self._store.get(file_id)
        if stored is None:
            raise KeyError(file_id)
        return stored.read()

    def __iter__(self) -> Iterator[str]:
        return iter(list(self._store.live))

    def __len__(self) -> int:
        return len(self._store.live)


async def _receive(part: BodyPartReader) -> tuple[IO[bytes], int, int]:
    """The part's bytes written to a spool as they arrive: (spool, bytes, lines)."""
    data = spool()
    size = newlines = 0
    last = b"\n"
    while chunk := await part.read_chunk(_CHUNK):
        data.write(chunk)
        size += len(chunk)
        newlines += chunk.count(b"\n")
        last = chunk[-1:]
    return data, size, newlines + (last != b"\n")


async def refuse(host: Host, request: web.Request,
                 scripts: Iterable[Script | None]) -> tuple[RecordedRequest, web.Response | None]:
    """The request as recorded, and the answer that refuses it: a wrong key (401), or the first
    script's behaviour (a status, a body as given, malformed JSON, a dropped connection)."""
    recorded = await host._record(request)
    if not host.authorized(request):
        return recorded, host.unauthorized()
    behaviour = next((b for s in scripts if s is not None and (b := s(recorded)) is not None), None)
    if behaviour is None or behaviour.kind in ("ok", "echo_headers"):
        return recorded, None
    if behaviour.kind == "drop":
        assert request.transport is not None
        request.transport.close()
        raise asyncio.CancelledError  # aiohttp drops the handler; the client sees a reset
    if behaviour.kind == "malformed":
        return recorded, web.Response(status=200, text='{"object": ', content_type="application/json")
    if behaviour.kind == "body":
        raw = behaviour.body if isinstance(behaviour.body, bytes) else json.dumps(behaviour.body).encode()
        refused = web.Response(status=behaviour.status, body=raw, content_type="application/json")
    else:
        refused = error_response(behaviour.status, f"Scripted failure {behaviour.status}.")
    refused.headers.update(behaviour.headers)
    return recorded, refused


def error_response(status: int, message: str, *, param: str | None = None, code: str | None = None) -> web.Response:
    body = {"error": {"message": message, "type": "invalid_request_error", "param": param, "code": code}}
    return web.json_response(body, status=status)


def _no_such_file(file_id: str) -> web.Response:
    return error_response(404, f"No such File object: {file_id}", param="id")
