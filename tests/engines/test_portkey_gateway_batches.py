"""OpenAI's Files and Batch API through the real open-source Portkey gateway (pinned in
``tests/gateway/package-lock.json``), forwarding to the fake provider: what the gateway answers,
and why dfllm keeps ``mode='batch'`` off for Portkey.

The gateway's Node server passes uploads, job creation, polling, listing and cancelling through,
but answers HTTP 500 to every ``GET /v1/files/{id}/content``: it fetches the file from the
upstream, then fails adding its own headers to the upstream's response (``TypeError: immutable``
in its log), so a job's answers cannot be read after the job was paid for. These tests pin that:
when a gateway upgrade serves the content, they fail and say what to turn on.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
from pathlib import Path
from typing import Any

import aiohttp
import pandas as pd
import pytest

import dfllm
from dfllm.engines import PROVIDERS
from dfllm.engines.base import Capabilities
from dfllm.testing import FakeProvider
from tests.engines.test_portkey_gateway import GATEWAY_DIR, UPSTREAM_KEY
from tests.engines.test_portkey_gateway import gateway as gateway  # the session's gateway process

PACKAGE = GATEWAY_DIR / "node_modules" / "@portkey-ai" / "gateway" / "package.json"
REFUSED_CONTENT = {"status": "failure", "message": "Something went wrong"}
BATCH_LINE = {"method": "POST", "url": "/v1/chat/completions"}

Answer = tuple[int, Any]  # status, and the body as JSON (or text where it is not JSON)


def _version() -> str:
    return str(json.loads(Path(PACKAGE).read_text())["version"])


def _upgraded(what: str) -> str:
    return (f"Portkey gateway {_version()} now {what}: verify mode='batch' end to end, then give Portkey's "
            "'openai' upstream batch_jobs=True in dfllm/engines/providers.py and replace these tests.")


def _routing(upstream: FakeProvider) -> dict[str, str]:
    """The headers dfllm's Portkey engine sends for provider='openai' with a custom host."""
    return {"x-portkey-provider": "openai", "x-portkey-custom-host": upstream.base_url,
            "Authorization": f"Bearer {UPSTREAM_KEY}"}


def _jsonl(prompts: list[str]) -> bytes:
    lines = [{"custom_id": f"key-{i}", **BATCH_LINE,
              "body": {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": prompt}]}}
             for i, prompt in enumerate(prompts)]
    return b"".join(json.dumps(line).encode() + b"\n" for line in lines)


async def _send(session: aiohttp.ClientSession, method: str, url: str, **kwargs: Any) -> Answer:
    async with session.request(method, url, **kwargs) as response:
        text = await response.text()
    try:
        return response.status, json.loads(text)
    except ValueError:
        return response.status, text


async def _batch_calls(base: str, upstream: FakeProvider) -> dict[str, Answer]:
    """Each Batch API call dfllm makes, sent through the gateway as dfllm sends it (JSON by default)."""
    answers: dict[str, Answer] = {}
    headers = {**_routing(upstream), "Content-Type": "application/json"}
    async with aiohttp.ClientSession(headers=headers) as session:
        form = aiohttp.FormData()
        form.add_field("purpose", "batch")
        form.add_field("file", _jsonl(["Where is Stockholm?", "And Oslo?"]), filename="in.jsonl",
                       content_type="application/jsonl")
        multipart = form()  # the gateway reads the upload as multipart only with its boundary named
        answers["upload"] = await _send(session, "POST", f"{base}/files", data=multipart,
                                        headers={"Content-Type": multipart.content_type})
        job = {"input_file_id": answers["upload"][1].get("id"), "endpoint": "/v1/chat/completions",
               "completion_window": "24h", "metadata": {"dfllm_submission": "s-1"}}
        answers["create"] = await _send(session, "POST", f"{base}/batches", json=job)
        job_id = answers["create"][1].get("id")
        for poll in range(3):  # the fake completes a job on its third retrieve
            answers[f"poll {poll + 1}"] = await _send(session, "GET", f"{base}/batches/{job_id}")
        answers["list"] = await _send(session, "GET", f"{base}/batches?limit=100")
        output = answers["poll 3"][1].get("output_file_id")
        answers["content"] = await _send(session, "GET", f"{base}/files/{output}/content")
        running = await _send(session, "POST", f"{base}/batches", json={**job, "metadata": {"dfllm_submission": "s-2"}})
        answers["cancel"] = await _send(session, "POST", f"{base}/batches/{running[1].get('id')}/cancel")
    return answers


def test_the_gateway_passes_uploads_and_jobs_through_but_fails_every_file_download(
        gateway: tuple[str, int]) -> None:
    with FakeProvider(api_key=UPSTREAM_KEY) as upstream:
        answers = asyncio.run(_batch_calls(gateway[0], upstream))
        uploads, creates = upstream.app.files.uploads, upstream.app.batches.creates
        polls, downloads = upstream.app.batches.polls, upstream.app.files.downloads
        paths = [(r.method, r.path) for r in upstream.requests]
    # Upload, create, poll and list: the upstream's answers, unchanged.
    assert answers["upload"] == (200, {**answers["upload"][1], "id": uploads[0].file_id, "purpose": "batch"})
    assert uploads[0].lines == 2 and uploads[0].filename == "in.jsonl"
    assert answers["create"][0] == 200 and answers["create"][1]["id"] == creates[0].batch_id
    assert creates[0].input_file_id == uploads[0].file_id and len(creates) == 2  # the second one, cancelled
    assert [answers[f"poll {n}"][1]["status"] for n in (1, 2, 3)] == [p.batch_status for p in polls]
    assert answers["poll 3"][1]["status"] == "completed"
    assert answers["list"][0] == 200 and [j["id"] for j in answers["list"][1]["data"]] == [creates[0].batch_id]
    # The download: the upstream served the output file, the gateway answered 500 instead of it.
    output = answers["poll 3"][1]["output_file_id"]
    assert ("GET", f"/v1/files/{output}/content") in paths
    assert [d.file_id for d in downloads] == [output] and downloads[0].bytes > 0
    assert answers["content"] == (500, REFUSED_CONTENT), _upgraded("serves a file's content")
    # A cancel with a JSON Content-Type (dfllm's) passes through.
    assert answers["cancel"] == (200, {**answers["cancel"][1], "id": creates[1].batch_id, "status": "cancelling"})


def test_a_job_through_the_gateway_is_paid_for_but_its_answers_cannot_be_read(
        gateway: tuple[str, int], monkeypatch: pytest.MonkeyPatch) -> None:
    # What mode='batch' would do if Portkey declared the Batch API: a Portkey provider that does.
    batch = Capabilities(json_schema=True, json_mode=True, batch_jobs=True)
    claimed = dataclasses.replace(PROVIDERS["portkey"], name="portkey_claiming_batches",
                                  upstream_capabilities={"openai": batch})
    monkeypatch.setitem(PROVIDERS, claimed.name, claimed)
    with FakeProvider(api_key=UPSTREAM_KEY) as upstream:
        dfllm.create_engine("pk", claimed.name, base_url=gateway[0], provider="openai",
                            provider_api_key=UPSTREAM_KEY, custom_host=upstream.base_url)
        frame = pd.DataFrame({"question": ["Where is Stockholm?", "And Oslo?", "Where is Stockholm?"]})
        out = dfllm.predict(frame, "pk", "gpt-4o-mini", "{{question}}", "answer", mode="batch",
                            batch_poll_s=0.01, errors="null", progress=False)
        uploads, creates = upstream.app.files.uploads, upstream.app.batches.creates
        completed = [p for p in upstream.app.batches.polls if p.batch_status == "completed"]
        downloaded = {d.file_id for d in upstream.app.files.downloads}
        chat = upstream.chat_requests
    assert len(uploads) == 1 and uploads[0].lines == 2  # each unique prompt once
    assert len(creates) == 1 and completed and chat == []  # the job ran upstream: paid for
    assert len(downloaded) == 1 and uploads[0].file_id not in downloaded  # its output file, served upstream
    assert out["answer"].isna().all(), _upgraded("returns a batch job's answers")
    assert out["answer_error"].str.contains("could not be read").all()


@pytest.mark.parametrize("routing", ["provider", "config", "virtual_key"])
def test_batch_mode_through_portkey_is_refused_before_any_request(gateway: tuple[str, int], routing: str) -> None:
    with FakeProvider(api_key=UPSTREAM_KEY) as upstream:
        routes: dict[str, dict[str, Any]] = {
            "provider": {"provider": "openai", "provider_api_key": UPSTREAM_KEY, "custom_host": upstream.base_url},
            "config": {"config": {"provider": "openai", "api_key": UPSTREAM_KEY,
                                  "custom_host": upstream.base_url}},
            "virtual_key": {"virtual_key": "vk-0123456789"},
        }
        using = routes[routing]
        dfllm.create_engine("pk", "portkey", base_url=gateway[0], **using)
        with pytest.raises(dfllm.ConfigurationError) as info:
            dfllm.predict(pd.DataFrame({"question": ["Where is Stockholm?"]}), "pk", "gpt-4o-mini",
                          "{{question}}", "answer", mode="batch", progress=False)
        sent = upstream.requests
    assert sent == []
    message = str(info.value)
    assert "mode='batch' needs a provider with OpenAI's Batch API" in message
    assert "engine 'pk' (provider 'portkey')" in message and "mode='online'" in message
    assert UPSTREAM_KEY not in message
