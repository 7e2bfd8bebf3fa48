"""The fake provider's ``/v1/fine_tuning/jobs``, in OpenAI's shape (files: the shared ``_files`` store).

A job moves queued -> running -> succeeded (or failed) one step per poll, so tests are
deterministic and never wait on a clock. A base model listed in ``fail_models`` fails.
``script`` (a ``Script``, as for chat) may answer any of these requests with a scripted
status or body instead (``status``, ``respond``), after it is recorded and its key checked.

The routes know the server they are mounted on only as a ``Host``, so this module does not
import ``_server`` (which mounts them).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any, Protocol

from aiohttp import web

from dfllm.testing._behaviour import RecordedRequest, Script
from dfllm.testing._files import FileStore, StoredFile, refuse

_STEPS = ("validating_files", "queued", "running", "succeeded")


class Host(Protocol):
    """What the routes use of the fake provider that serves them (``FakeProviderApp``)."""

    models: tuple[str, ...]

    async def _record(self, request: web.Request) -> RecordedRequest: ...

    def authorized(self, request: web.Request) -> bool: ...

    def unauthorized(self) -> web.Response: ...


class FineTuneRoutes:
    def __init__(self, app: Host, files: FileStore) -> None:
        self.app = app
        self.store = files
        files.checks["fine-tune"] = _check_training_file
        self.jobs: dict[str, dict[str, Any]] = {}
        self.fail_models: set[str] = set()
        self.script: Script | None = None

    @property
    def files(self) -> dict[str, dict[str, Any]]:
        """The file objects uploaded and not deleted, by id (the store's, shared with batches)."""
        return {file_id: stored.entry for file_id, stored in self.store.live.items()}

    @property
    def file_contents(self) -> Mapping[str, bytes]:
        return self.store.contents

    def add_to(self, router: web.UrlDispatcher) -> None:
        router.add_post("/v1/fine_tuning/jobs", self._create_job)
        router.add_get("/v1/fine_tuning/jobs/{job_id}", self._get_job)
        router.add_get("/v1/fine_tuning/jobs/{job_id}/events", self._events)

    async def _refusal(self, request: web.Request) -> tuple[RecordedRequest, web.Response | None]:
        """The request as recorded, and the answer that refuses it: a wrong key, or the script's status."""
        return await refuse(self.app, request, (self.script,))

    async def _create_job(self, request: web.Request) -> web.Response:
        recorded, refused = await self._refusal(request)
        if refused is not None:
            return refused
        body = recorded.body or {}
        model = body.get("model")
        if model not in self.app.models:
            return _bad(f"Model '{model}' is not available for fine-tuning.", status=404)
        for key in ("training_file", "validation_file"):
            if body.get(key) is not None and body[key] not in self.files:
                return _bad(f"{key} '{body[key]}' does not exist.")
        job_id = f"ftjob-fake-{len(self.jobs) + 1}"
        self.jobs[job_id] = {
            "id": job_id,
            "object": "fine_tuning.job",
            "created_at": 1700000000,
            "model": model,
            "training_file": body.get("training_file"),
            "validation_file": body.get("validation_file"),
            "hyperparameters": body.get("hyperparameters") or {},
            "suffix": body.get("suffix"),
            "status": _STEPS[0],
            "fine_tuned_model": None,
            "finished_at": None,
            "error": None,
            "organization_id": "org-fake",
            "result_files": [],
            "seed": 0,
            "trained_tokens": None,
        }
        return web.json_response(self.jobs[job_id])

    async def _get_job(self, request: web.Request) -> web.Response:
        _, refused = await self._refusal(request)
        if refused is not None:
            return refused
        job = self.jobs.get(request.match_info["job_id"])
        if job is None:
            return _bad("No such job.", status=404)
        self._advance(job)
        return web.json_response(job)

    async def _events(self, request: web.Request) -> web.Response:
        _, refused = await self._refusal(request)
        if refused is not None:
            return refused
        job = self.jobs.get(request.match_info["job_id"])
        if job is None:
            return _bad("No such job.", status=404)
        event = {"id": "ev-1", "object": "fine_tuning.job.event", "created_at": 1700000000,
                 "level": "info", "message": f"Job is {job['status']}"}
        return web.json_response({"object": "list", "data": [event], "has_more": False})

    def _advance(self, job: dict[str, Any]) -> None:
        if job["status"] in ("succeeded", "failed", "cancelled"):
            return
        step = _STEPS.index(job["status"]) + 1
        if step == len(_STEPS) - 1 and job["model"] in self.fail_models:
            job["status"] = "failed"
            job["error"] = {"code": "invalid_training_file", "message": "Scripted fine-tune failure.", "param": None}
            return
        job["status"] = _STEPS[step]
        if job["status"] == "succeeded":
            suffix = f":{job['suffix']}" if job.get("suffix") else ""
            job["fine_tuned_model"] = f"ft:{job['model']}{suffix}:{job['id']}"
            job["finished_at"] = 1700000100
            job["trained_tokens"] = 1000


def _check_training_file(stored: StoredFile) -> str | None:
    try:
        lines = [json.loads(line) for line in stored.iter_lines() if line.strip()]
    except ValueError:
        return "The file is not valid JSONL."
    if not all(isinstance(x, dict) and "messages" in x for x in lines):
        return "Each line of a fine-tune file needs a 'messages' list."
    return None


def _bad(message: str, *, status: int = 400) -> web.Response:
    body = {"error": {"message": message, "type": "invalid_request_error", "param": None, "code": None}}
    return web.json_response(body, status=status)
