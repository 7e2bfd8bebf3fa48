"""The fake provider's ``/v1/batches``, in OpenAI's shape, over the shared files store.

``POST /v1/batches`` takes ``{input_file_id, endpoint, completion_window, metadata}`` for an
uploaded file of purpose ``batch``; ``GET /v1/batches/{id}`` retrieves a job, ``POST
/v1/batches/{id}/cancel`` cancels one, ``GET /v1/batches?limit=&after=`` lists them, newest first.

A job moves one step per retrieve, never on a clock: the first poll validates the file (an
invalid one fails the job, with ``errors`` naming each bad line), then ``polls_to_complete``
polls take it through ``in_progress`` (request counts growing), ``finalizing`` and
``completed``. A cancelled job is ``cancelling`` until the next poll, then ``cancelled``, its
answered lines kept in the output file; lines not yet answered are in neither file. A job whose
``expires_at`` (24 h after creation, on ``BatchOptions.clock``) has passed expires at its next poll.

Each line is answered as the same request sent online would be (``FakeProviderApp.answer_request``:
the responder, a conforming object for a schema, the prompt cache's ``cached_tokens``, a 400 for
an image the model refuses; for ``/v1/embeddings`` jobs the vectors or the 400), after
``BatchOptions.line_script`` and then the server's chat ``script`` have their say: ``ok(text)``
and ``answer(...)`` give that body, ``status(code)`` a failed line with an error body,
``respond(code, body)`` that body, ``drop()`` a line with no response and an ``error``, and
``malformed()`` a line of the output file that is not JSON. Answered lines are shuffled in
blocks (deterministically): OpenAI does not keep the input's order either. A finished job's
``usage`` sums its answered lines' tokens (cached ones in ``input_tokens_details``).

Scripting a whole job: ``BatchOptions.fates``, a list (the n-th job created gets the n-th fate)
or a callable of the new batch object, returning ``fail_job(...)``, ``expire_job(after_lines)``
(answers that many lines, then expires: the rest in the error file as ``batch_expired``) or
``cancel_job(after_lines)`` (the provider cancels after that many lines), or None.
``BatchOptions.script`` (a ``Script``) answers any files or batches request with a scripted
status or body instead, e.g. a 500 on every third poll: ``on_route("GET", "/v1/batches/", ...)``.

Records: ``creates`` (``BatchCreateRecord``), ``polls`` (``PollRecord``, refused ones too),
``cancels`` (batch ids), ``jobs`` (the batch objects), ``submitted(batch_id)`` (the input
file's lines, parsed), and the store's ``uploads`` and ``downloads``.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import math
import random
import time
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import IO, Any, Literal, Protocol

from aiohttp import web

from dfllm.testing._behaviour import Behaviour, RecordedRequest, Script, status
from dfllm.testing._files import FileStore, Host, StoredFile, error_response, refuse, spool

ENDPOINTS = ("/v1/chat/completions", "/v1/embeddings")
_TERMINAL = frozenset({"completed", "failed", "expired", "cancelled"})
_BLOCK = 1000  # lines answered, shuffled and written together
_MAX_ERRORS = 100  # a failed job names at most this many bad lines


@dataclass(frozen=True)
class BatchFate:
    """How a scripted job ends: it fails validation, expires or is cancelled by the provider."""

    kind: Literal["fail", "expire", "cancel"]
    after_lines: int = 0  # expire, cancel: the lines answered first
    errors: tuple[dict[str, Any], ...] = ()  # fail: the batch's errors.data


def fail_job(code: str = "invalid_request", message: str = "Scripted batch failure.", *,
             line: int | None = None) -> BatchFate:
    """The job fails at its first poll, with this one error."""
    return BatchFate("fail", errors=({"code": code, "message": message, "param": None, "line": line},))


def expire_job(after_lines: int = 0) -> BatchFate:
    """The job answers ``after_lines`` lines, then expires: the rest go to the error file."""
    return BatchFate("expire", after_lines=after_lines)


def cancel_job(after_lines: int = 0) -> BatchFate:
    """The provider cancels the job after ``after_lines`` lines (cancelling, then cancelled)."""
    return BatchFate("cancel", after_lines=after_lines)


LineScript = Callable[[str, Mapping[str, Any]], "Behaviour | None"]  # (custom_id, body) -> behaviour
FateScript = Callable[[Mapping[str, Any]], "BatchFate | None"]  # the new batch object -> its fate


def fail_lines(behaviour: Behaviour | None = None, *, custom_ids: Collection[str] | Callable[[str], bool] = (),
               share: float = 0.0, seed: int = 0, times: int | None = None) -> LineScript:
    """A line script: lines whose custom_id is in ``custom_ids`` (or passes it, a predicate), or a
    seeded ``share`` of custom_ids, get ``behaviour`` (default a 500), each at most ``times`` times
    (None: every time it is submitted), so a resubmitted line can succeed."""
    failing = behaviour or status(500)
    chosen = custom_ids if callable(custom_ids) else frozenset(custom_ids).__contains__
    failures: dict[str, int] = {}

    def script(custom_id: str, _body: Mapping[str, Any]) -> Behaviour | None:
        digest = hashlib.sha256(f"{seed}:{custom_id}".encode()).digest()
        if not (chosen(custom_id) or int.from_bytes(digest[:8], "big") < share * 2**64):
            return None
        if times is not None and failures.get(custom_id, 0) >= times:
            return None
        failures[custom_id] = failures.get(custom_id, 0) + 1
        return failing

    return script


def on_route(method: str, path_prefix: str, behaviours: Iterable[Behaviour | None]) -> Script:
    """A script for ``BatchOptions.script``: requests with this method and a path starting with
    ``path_prefix`` take the next behaviour (an endless iterable, e.g. ``itertools.cycle``, works)."""
    upcoming = iter(behaviours)

    def script(request: RecordedRequest) -> Behaviour | None:
        if request.method != method or not request.path.startswith(path_prefix):
            return None
        return next(upcoming, None)

    return script


@dataclass(frozen=True)
class BatchOptions:
    """The fake's batch API: OpenAI's limits by default; tests set small ones."""

    polls_to_complete: int = 3  # retrieves from creation to "completed"
    max_requests: int = 50_000  # per input file
    max_bytes: int = 200_000_000  # per input file
    fates: Sequence[BatchFate | None] | FateScript | None = None
    line_script: LineScript | None = None
    script: Script | None = None  # any /v1/files or /v1/batches request
    clock: Callable[[], float] = time.time  # timestamps and expiry; a FakeClock works
    seed: int = 0  # the shuffle of answered lines


@dataclass(frozen=True)
class BatchCreateRecord:
    batch_id: str
    input_file_id: str
    endpoint: str
    completion_window: str
    metadata: dict[str, str] | None


@dataclass(frozen=True)
class PollRecord:
    batch_id: str
    http_status: int
    batch_status: str | None  # None when the poll was refused


class ChatHost(Host, Protocol):
    """What batches use of the server: its chat script and the answer an online request gets."""

    script: Script | None

    def answer_request(self, recorded: RecordedRequest, completion_id: str,
                       text: str | None) -> tuple[int, dict[str, Any]]: ...


class _Job:
    def __init__(self, obj: dict[str, Any], source: StoredFile, fate: BatchFate | None, seed: int) -> None:
        self.obj = obj
        self.source = source
        self.fate = fate
        self.polls = 0
        self.position = 0  # byte offset of the next line to answer
        self.answered = 0
        self.files: dict[str, tuple[IO[bytes], list[int]]] = {"output": (spool(), [0, 0]),
                                                                "error": (spool(), [0, 0])}
        self.random = random.Random(f"{seed}:{obj['id']}")
        self.tokens = {"input": 0, "cached": 0, "output": 0}  # of the answered lines, for the batch's usage
        self.lock = asyncio.Lock()

    @property
    def id(self) -> str:
        return str(self.obj["id"])

    def write(self, kind: str, lines: list[bytes]) -> None:
        data, counts = self.files[kind]
        data.seek(0, 2)
        for line in lines:
            data.write(line + b"\n")
            counts[0] += len(line) + 1
        counts[1] += len(lines)


class BatchRoutes:
    def __init__(self, host: ChatHost, files: FileStore, options: BatchOptions) -> None:
        self.host = host
        self.store = files
        self.options = options
        self.script = options.script
        self.line_script = options.line_script
        self.fates = options.fates
        self.jobs: dict[str, dict[str, Any]] = {}
        self.creates: list[BatchCreateRecord] = []
        self.polls: list[PollRecord] = []
        self.cancels: list[str] = []
        self.lines_answered = 0
        self._jobs: dict[str, _Job] = {}

    def add_to(self, router: web.UrlDispatcher) -> None:
        router.add_post("/v1/batches", self._create)
        router.add_get("/v1/batches", self._list)
        router.add_get("/v1/batches/{batch_id}", self._retrieve)
        router.add_post("/v1/batches/{batch_id}/cancel", self._cancel)

    def submitted(self, batch_id: str) -> Iterator[dict[str, Any]]:
        """The job's input file, line by line, parsed: what the client submitted."""
        return self.store.lines(self.jobs[batch_id]["input_file_id"])

    def stats(self) -> dict[str, int]:
        return {"batch_creates": len(self.creates), "batch_polls": len(self.polls),
                "batch_cancels": len(self.cancels), "batch_lines": self.lines_answered}

    def close(self) -> None:
        for job in self._jobs.values():
            for data, _ in job.files.values():
                data.close()

    # -- handlers ----------------------------------------------------------------------------
    async def _create(self, request: web.Request) -> web.Response:
        recorded, refused = await refuse(self.host, request, (self.script,))
        if refused is not None:
            return refused
        body = recorded.body if isinstance(recorded.body, dict) else {}
        problem = self._create_problem(body)
        if problem is not None:
            return problem
        source = self.store.live[body["input_file_id"]]
        obj = self._new_batch(body)
        self.jobs[obj["id"]] = obj
        self._jobs[obj["id"]] = _Job(obj, source, self._fate(obj), self.options.seed)
        self.creates.append(BatchCreateRecord(obj["id"], source.id, obj["endpoint"], obj["completion_window"],
                                              obj["metadata"]))
        return web.json_response(obj)

    def _create_problem(self, body: Mapping[str, Any]) -> web.Response | None:
        for name in ("input_file_id", "endpoint", "completion_window"):
            if not isinstance(body.get(name), str):
                return error_response(400, f"Missing required parameter: '{name}'.", param=name,
                                      code="missing_required_parameter")
        if body["endpoint"] not in ENDPOINTS:
            return error_response(400, f"Invalid value: '{body['endpoint']}'. Supported values are: "
                                  f"{', '.join(ENDPOINTS)}.", param="endpoint", code="invalid_value")
        if body["completion_window"] != "24h":
            return error_response(400, f"Invalid value: '{body['completion_window']}'. Supported values are: '24h'.",
                                  param="completion_window", code="invalid_value")
        if not _valid_metadata(body.get("metadata")):
            return error_response(400, "Invalid 'metadata': at most 16 pairs of strings, keys up to 64 "
                                  "characters, values up to 512.", param="metadata", code="invalid_value")
        source = self.store.live.get(body["input_file_id"])
        if source is None:
            return error_response(404, f"No such File object: {body['input_file_id']}", param="input_file_id")
        if source.entry["purpose"] != "batch":
            return error_response(400, f"The input file must have purpose 'batch', not '{source.entry['purpose']}'.",
                                  param="input_file_id", code="invalid_value")
        return None

    def _new_batch(self, body: Mapping[str, Any]) -> dict[str, Any]:
        now = int(self.options.clock())
        stamps = ("in_progress_at", "finalizing_at", "completed_at", "failed_at", "expired_at",
                  "cancelling_at", "cancelled_at")
        return {
            "id": f"batch_fake_{len(self.jobs) + 1}", "object": "batch", "endpoint": body["endpoint"],
            "model": None, "errors": None, "input_file_id": body["input_file_id"],
            "completion_window": "24h", "status": "validating", "output_file_id": None, "error_file_id": None,
            "created_at": now, "expires_at": now + 24 * 3600, **dict.fromkeys(stamps),
            "request_counts": {"total": 0, "completed": 0, "failed": 0}, "metadata": body.get("metadata"),
            "usage": None,
        }

    def _fate(self, obj: Mapping[str, Any]) -> BatchFate | None:
        if self.fates is None:
            return None
        if callable(self.fates):
            return self.fates(obj)
        index = len(self.jobs) - 1
        return self.fates[index] if index < len(self.fates) else None

    async def _retrieve(self, request: web.Request) -> web.Response:
        batch_id = request.match_info["batch_id"]
        _, refused = await refuse(self.host, request, (self.script,))
        if refused is not None:
            self.polls.append(PollRecord(batch_id, refused.status, None))
            return refused
        job = self._jobs.get(batch_id)
        if job is None:
            self.polls.append(PollRecord(batch_id, 404, None))
            return error_response(404, f"No such Batch object: {batch_id}", param="batch_id")
        async with job.lock:
            await self._advance(job)
        self.polls.append(PollRecord(batch_id, 200, job.obj["status"]))
        return web.json_response(job.obj)

    async def _cancel(self, request: web.Request) -> web.Response:
        _, refused = await refuse(self.host, request, (self.script,))
        if refused is not None:
            return refused
        job = self._jobs.get(request.match_info["batch_id"])
        if job is None:
            return error_response(404, f"No such Batch object: {request.match_info['batch_id']}", param="batch_id")
        async with job.lock:  # not while a poll answers lines: its status would overwrite this one
            if job.obj["status"] in _TERMINAL:
                return error_response(400, f"Cannot cancel a batch with status '{job.obj['status']}'.")
            if job.obj["status"] != "cancelling":
                job.obj["status"] = "cancelling"
                job.obj["cancelling_at"] = int(self.options.clock())
        self.cancels.append(job.id)
        return web.json_response(job.obj)

    async def _list(self, request: web.Request) -> web.Response:
        _, refused = await refuse(self.host, request, (self.script,))
        if refused is not None:
            return refused
        try:
            limit = int(request.query.get("limit", "20"))
        except ValueError:
            limit = 0
        if not 1 <= limit <= 100:
            return error_response(400, "Invalid 'limit': an integer from 1 to 100.", param="limit")
        newest_first = list(reversed(self.jobs))
        after = request.query.get("after")
        start = newest_first.index(after) + 1 if after in newest_first else 0
        page = newest_first[start:start + limit]
        return web.json_response({"object": "list", "data": [self.jobs[i] for i in page],
                                  "first_id": page[0] if page else None, "last_id": page[-1] if page else None,
                                  "has_more": start + limit < len(newest_first)})

    # -- a job's life ------------------------------------------------------------------------
    async def _advance(self, job: _Job) -> None:
        """One poll's step: validate, answer this poll's share of lines, move the status on."""
        obj = job.obj
        if obj["status"] in _TERMINAL:
            return
        job.polls += 1
        now = int(self.options.clock())
        if obj["status"] == "cancelling":
            self._finish(job, "cancelled")
            return
        if obj["status"] == "validating" and not self._start(job, now):
            return
        if now >= obj["expires_at"]:
            self._finish(job, "expired")
            return
        total, steps = obj["request_counts"]["total"], self.options.polls_to_complete
        target = total if steps <= 1 else min(total, math.ceil(total * job.polls / (steps - 1)))
        fate = job.fate
        stopped = fate is not None and fate.kind != "fail" and fate.after_lines < target
        await self._answer(job, min(target, fate.after_lines) if stopped and fate else target)
        if stopped and fate is not None and fate.kind == "expire":
            self._finish(job, "expired")
        elif stopped:
            obj["status"], obj["cancelling_at"] = "cancelling", now
        elif job.polls >= steps:
            obj["finalizing_at"] = obj["finalizing_at"] or now
            self._finish(job, "completed")
        elif job.answered == total:
            obj["status"], obj["finalizing_at"] = "finalizing", now
        else:
            obj["status"] = "in_progress"

    def _start(self, job: _Job, now: int) -> bool:
        """Validate the input file: in progress with its request count, or failed with its errors."""
        fate_errors = list(job.fate.errors) if job.fate is not None and job.fate.kind == "fail" else []
        errors, total, model = self._validate(job.source, job.obj["endpoint"])
        errors = fate_errors or errors
        if errors:
            job.obj.update(status="failed", failed_at=now, errors={"object": "list", "data": errors})
            return False
        job.obj.update(status="in_progress", in_progress_at=now, model=model)
        job.obj["request_counts"]["total"] = total
        return True

    def _validate(self, source: StoredFile, endpoint: str) -> tuple[list[dict[str, Any]], int, str | None]:
        """(errors, requests, model) of an input file, as OpenAI checks it before running a batch."""
        if source.size > self.options.max_bytes:
            return [_job_error("file_too_large", f"The input file is {source.size} bytes, more than the "
                               f"{self.options.max_bytes} allowed per batch.")], 0, None
        errors: list[dict[str, Any]] = []
        seen: set[str] = set()
        models: set[Any] = set()
        total = 0
        for number, raw in enumerate(source.iter_lines(), start=1):
            if not raw.strip():
                continue
            total += 1
            problem = _line_problem(raw, endpoint, seen, models)
            if problem is not None and len(errors) < _MAX_ERRORS:
                errors.append({**problem, "line": number})
        if total > self.options.max_requests:
            errors.insert(0, _job_error("too_many_requests", f"The input file has {total} requests, more than "
                                        f"the {self.options.max_requests} allowed per batch."))
        if total == 0:
            errors.append(_job_error("empty_file", "The input file has no requests."))
        return errors, total, next(iter(models), None) if len(models) == 1 else None

    async def _answer(self, job: _Job, target: int) -> None:
        """Answer lines until ``target`` are done, in shuffled blocks; the counts grow with them."""
        counts = job.obj["request_counts"]
        while job.answered < target:
            block: list[tuple[bool, bytes]] = []
            while job.answered < target and len(block) < _BLOCK:
                raw, job.position = job.source.read_line(job.position)
                if raw.strip():
                    block.append(self._answer_line(job, json.loads(raw)))
                    job.answered += 1
            job.random.shuffle(block)
            job.write("output", [line for ok, line in block if ok])
            job.write("error", [line for ok, line in block if not ok])
            counts["completed"] += sum(ok for ok, _ in block)
            counts["failed"] += sum(not ok for ok, _ in block)
            await asyncio.sleep(0)  # other requests go on while a large job is answered

    def _answer_line(self, job: _Job, line: Mapping[str, Any]) -> tuple[bool, bytes]:
        """(into the output file?, the output line) for one request of the input file."""
        self.lines_answered += 1
        custom_id, body = str(line["custom_id"]), line["body"]
        recorded = RecordedRequest(index=self.lines_answered, method="POST", path=job.obj["endpoint"],
                                   headers={}, body=body, arrived_at=time.monotonic())
        behaviour = self.line_script(custom_id, body) if self.line_script else None
        if behaviour is None and self.host.script is not None:
            behaviour = self.host.script(recorded)
        behaviour = behaviour or Behaviour()
        line_id = f"batch_req_{job.id.rsplit('_', 1)[-1]}_{job.answered + 1}"
        if behaviour.kind == "drop":
            failure = {"code": "server_error", "message": "The request could not be completed."}
            return False, _output_line(line_id, custom_id, None, failure)
        if behaviour.kind == "malformed":
            return True, _output_line(line_id, custom_id, None, None)[:-7]
        code, answer = 200, behaviour.body
        if behaviour.kind == "body":
            code, answer = behaviour.status, _json_or_text(behaviour.body)
        elif behaviour.kind in ("status", "echo_headers"):
            code = behaviour.status
            answer = {"error": {"message": f"Scripted failure {code}.", "type": "scripted", "param": None,
                                "code": "scripted"}}
        else:
            code, answer = self.host.answer_request(recorded, f"chatcmpl-{line_id}", behaviour.text)
            if code == 200:
                _add_usage(job.tokens, answer.get("usage"))
        response = {"status_code": code, "request_id": f"req_{line_id}", "body": answer}
        return 200 <= code < 300, _output_line(line_id, custom_id, response, None)

    def _finish(self, job: _Job, final: str) -> None:
        """End the job: expired lines to the error file, output and error files stored, status set."""
        obj = job.obj
        if final == "expired":
            expired: list[bytes] = []
            for raw in _rest(job):
                custom_id = json.loads(raw)["custom_id"]
                failure = {"code": "batch_expired",
                           "message": "This request could not be executed before the completion window expired."}
                expired.append(_output_line(f"batch_req_expired_{len(expired) + 1}", custom_id, None, failure))
            job.write("error", expired)
            obj["request_counts"]["failed"] += len(expired)
        for kind, key in (("output", "output_file_id"), ("error", "error_file_id")):
            data, (size, lines) = job.files[kind]
            if lines:
                obj[key] = self.store.add(f"{job.id}_{kind}.jsonl", "batch_output", data, size, lines).id
            else:
                data.close()
        job.files = {}
        tokens = job.tokens
        obj["usage"] = {"input_tokens": tokens["input"], "input_tokens_details": {"cached_tokens": tokens["cached"]},
                        "output_tokens": tokens["output"], "output_tokens_details": {"reasoning_tokens": 0},
                        "total_tokens": tokens["input"] + tokens["output"]}
        obj["status"] = final
        obj[f"{final}_at"] = int(self.options.clock())


def _rest(job: _Job) -> Iterator[bytes]:
    """The lines of the input not answered yet (only a job that passed validation has any)."""
    if job.obj["in_progress_at"] is None:
        return
    while True:
        raw, job.position = job.source.read_line(job.position)
        if not raw:
            return
        if raw.strip():
            yield raw


def _line_problem(raw: bytes, endpoint: str, seen: set[str], models: set[Any]) -> dict[str, Any] | None:
    """What is wrong with one line of an input file, as a batch error (None: nothing)."""
    try:
        line = json.loads(raw)
    except ValueError:
        return _job_error("invalid_json_line", "This line is not parseable as valid JSON.")
    if not isinstance(line, dict):
        return _job_error("invalid_json_line", "This line is not a JSON object.")
    for name in ("custom_id", "method", "url", "body"):
        if name not in line:
            return {**_job_error("missing_required_parameter", f"Missing required parameter: '{name}'."),
                    "param": name}
    if not isinstance(line["custom_id"], str):
        return _job_error("invalid_custom_id", "The custom_id must be a string.")
    if line["custom_id"] in seen:
        return _job_error("duplicate_custom_id", "The custom_id for this request is a duplicate of another "
                          "request. The custom_id parameter must be unique for each request in a batch.")
    seen.add(line["custom_id"])
    if line["method"] != "POST":
        return _job_error("invalid_method", "The method for this request must be 'POST'.")
    if line["url"] != endpoint:
        return _job_error("invalid_url", f"The URL provided for this request ('{line['url']}') does not match "
                          f"the batch endpoint ('{endpoint}').")
    if not isinstance(line["body"], dict):
        return _job_error("invalid_request", "The body for this request must be a JSON object.")
    models.add(line["body"].get("model"))
    if len(models) > 1:
        return _job_error("mismatched_model", "All requests in a batch must use the same model.")
    return None


def _add_usage(tokens: dict[str, int], usage: Any) -> None:
    if not isinstance(usage, Mapping):
        return
    details = usage.get("prompt_tokens_details")
    tokens["input"] += int(usage.get("prompt_tokens", 0))
    tokens["output"] += int(usage.get("completion_tokens", 0))
    tokens["cached"] += int(details.get("cached_tokens", 0)) if isinstance(details, Mapping) else 0


def _job_error(code: str, message: str) -> dict[str, Any]:
    return {"code": code, "message": message, "param": None, "line": None}


def _output_line(line_id: str, custom_id: str, response: dict[str, Any] | None,
                 failure: dict[str, Any] | None) -> bytes:
    line = {"id": line_id, "custom_id": custom_id, "response": response, "error": failure}
    return json.dumps(line, separators=(",", ":")).encode()


def _json_or_text(body: Any) -> Any:
    if not isinstance(body, bytes):
        return body
    try:
        return json.loads(body)
    except ValueError:
        return body.decode(errors="replace")


def _valid_metadata(metadata: Any) -> bool:
    if metadata is None:
        return True
    if not isinstance(metadata, dict) or len(metadata) > 16:
        return False
    return all(isinstance(k, str) and isinstance(v, str) and len(k) <= 64 and len(v) <= 512
               for k, v in metadata.items())

