"""The fake provider's files and batches: OpenAI's wire format (read by the official SDK), the
job's life one step per poll, validation, and the scripted failures tests of batch mode need."""

from __future__ import annotations

import asyncio
import io
import itertools
import json
from collections.abc import Callable, Iterator
from typing import Any, Literal

import aiohttp
import openai
import pytest

from dfllm.testing import (
    BatchOptions,
    DownloadRecord,
    FakeClock,
    FakeProvider,
    FakeProviderProcess,
    PollRecord,
    UploadRecord,
    answer,
    cancel_job,
    drop,
    expire_job,
    fail_job,
    fail_lines,
    malformed,
    ok,
    on_route,
    per_prompt,
    respond,
    status,
)

CHAT: Literal["/v1/chat/completions"] = "/v1/chat/completions"


def request_line(custom_id: str, prompt: str, **body: Any) -> dict[str, Any]:
    messages = [{"role": "user", "content": prompt}]
    return {"custom_id": custom_id, "method": "POST", "url": CHAT,
            "body": {"model": "gpt-4o-mini", "messages": messages, **body}}


def jsonl(lines: list[dict[str, Any]]) -> bytes:
    return "".join(json.dumps(line) + "\n" for line in lines).encode()


def sentiment_lines(n: int) -> list[dict[str, Any]]:
    return [request_line(f"key-{i}", f"sentiment: I love item {i}") for i in range(n)]


@pytest.fixture
def fake() -> Iterator[FakeProvider]:
    with FakeProvider(api_key="sk-batch") as provider:
        yield provider


@pytest.fixture
def client(fake: FakeProvider) -> Iterator[openai.OpenAI]:
    sdk = openai.OpenAI(api_key="sk-batch", base_url=fake.base_url, max_retries=0)
    yield sdk
    sdk.close()


def submit(client: openai.OpenAI, lines: list[dict[str, Any]] | bytes, **create: Any) -> str:
    data = lines if isinstance(lines, bytes) else jsonl(lines)
    uploaded = client.files.create(file=("requests.jsonl", data), purpose="batch")
    batch = client.batches.create(input_file_id=uploaded.id, endpoint=CHAT, completion_window="24h", **create)
    assert batch.status == "validating"
    return batch.id


def poll_until_done(client: openai.OpenAI, batch_id: str, limit: int = 20) -> list[Any]:
    seen = []
    for _ in range(limit):
        batch = client.batches.retrieve(batch_id)
        seen.append(batch)
        if batch.status in ("completed", "failed", "expired", "cancelled"):
            return seen
    raise AssertionError(f"{batch_id} still {seen[-1].status} after {limit} polls")


def counts(batch: Any) -> tuple[int, int, int]:
    """(total, completed, failed) of a batch object."""
    assert batch.request_counts is not None
    return batch.request_counts.total, batch.request_counts.completed, batch.request_counts.failed


def file_lines(client: openai.OpenAI, file_id: str | None) -> list[dict[str, Any]]:
    assert file_id is not None
    return [json.loads(line) for line in client.files.content(file_id).text.splitlines()]


# -- the wire format and a job's life --------------------------------------------------------------
def test_the_sdk_uploads_creates_polls_and_downloads_a_job_that_completes_in_three_polls(
        fake: FakeProvider, client: openai.OpenAI) -> None:
    data = jsonl(sentiment_lines(4))
    uploaded = client.files.create(file=("requests.jsonl", data), purpose="batch")
    assert (uploaded.object, uploaded.purpose, uploaded.bytes, uploaded.filename) == (
        "file", "batch", len(data), "requests.jsonl")
    assert client.files.retrieve(uploaded.id).id == uploaded.id
    batch = client.batches.create(input_file_id=uploaded.id, endpoint=CHAT, completion_window="24h",
                                  metadata={"dfllm": "run-1"})
    assert (batch.status, batch.input_file_id, batch.metadata) == ("validating", uploaded.id, {"dfllm": "run-1"})
    assert batch.expires_at == batch.created_at + 24 * 3600
    seen = [client.batches.retrieve(batch.id) for _ in range(3)]
    assert [b.status for b in seen] == ["in_progress", "finalizing", "completed"]
    assert [counts(b) for b in seen] == [(4, 2, 0), (4, 4, 0), (4, 4, 0)]
    done = seen[-1]
    assert done.in_progress_at and done.finalizing_at and done.completed_at and done.error_file_id is None
    assert client.batches.retrieve(batch.id).status == "completed"  # a finished job stays so
    output = file_lines(client, done.output_file_id)
    assert sorted(line["custom_id"] for line in output) == [f"key-{i}" for i in range(4)]
    for line in output:
        assert line["error"] is None and line["id"].startswith("batch_req_")
        assert line["response"]["status_code"] == 200 and line["response"]["request_id"]
        body = line["response"]["body"]
        assert body["object"] == "chat.completion" and body["choices"][0]["message"]["content"] == "positive"
        assert body["usage"]["prompt_tokens_details"] == {"cached_tokens": 0}
    assert done.output_file_id is not None
    assert client.files.retrieve(done.output_file_id).purpose == "batch_output"
    usage = [line["response"]["body"]["usage"] for line in output]
    assert done.usage is not None and (done.usage.input_tokens, done.usage.output_tokens) == (
        sum(u["prompt_tokens"] for u in usage), sum(u["completion_tokens"] for u in usage))
    # Records, from the server's side; no chat completion was requested.
    assert fake.app.files.uploads == [UploadRecord(uploaded.id, "requests.jsonl", "batch", len(data), 4)]
    assert [c.batch_id for c in fake.app.batches.creates] == [batch.id]
    assert [p.batch_status for p in fake.app.batches.polls] == ["in_progress", "finalizing", "completed", "completed"]
    assert fake.app.files.downloads == [DownloadRecord(done.output_file_id, len(fake.app.files.contents[
        done.output_file_id]))]
    assert [line["custom_id"] for line in fake.app.batches.submitted(batch.id)] == [f"key-{i}" for i in range(4)]
    assert fake.chat_requests == []


@pytest.mark.parametrize(("polls", "statuses"), [
    (1, ["completed"]),
    (2, ["finalizing", "completed"]),
    (5, ["in_progress", "in_progress", "in_progress", "finalizing", "completed"]),
])
def test_polls_to_complete_sets_how_many_retrieves_a_job_takes(polls: int, statuses: list[str]) -> None:
    with FakeProvider(batch=BatchOptions(polls_to_complete=polls)) as fake:
        sdk = openai.OpenAI(api_key="k", base_url=fake.base_url, max_retries=0)
        batch_id = submit(sdk, sentiment_lines(8))
        seen = poll_until_done(sdk, batch_id)
        sdk.close()
    assert [b.status for b in seen] == statuses
    answered = [counts(b)[1] for b in seen]
    assert answered == sorted(answered) and answered[-1] == 8


def test_a_line_gets_the_body_the_same_request_gets_online() -> None:
    schema = {"type": "object", "properties": {"label": {"type": "string", "enum": ["a", "b", "c"]}},
              "required": ["label"], "additionalProperties": False}
    response_format = {"type": "json_schema", "json_schema": {"name": "r", "schema": schema, "strict": True}}
    system = {"role": "system", "content": "You label things. " * 20}
    lines = [request_line("plain", "Where is Stockholm?"),
             request_line("schema", "label this", response_format=response_format),
             request_line("scripted", "say hi")]
    for line in lines:
        line["body"]["messages"].insert(0, system)
    script = per_prompt({"say hi": [ok("hello there")]})
    with FakeProvider(script=script) as online:
        sdk = openai.OpenAI(api_key="k", base_url=online.base_url, max_retries=0)
        expected = {line["custom_id"]: json.loads(sdk.chat.completions.with_raw_response.create(**line["body"]).text)
                    for line in lines}
        sdk.close()
    with FakeProvider(script=per_prompt({"say hi": [ok("hello there")]})) as fake:
        sdk = openai.OpenAI(api_key="k", base_url=fake.base_url, max_retries=0)
        done = poll_until_done(sdk, submit(sdk, lines))[-1]
        got = {line["custom_id"]: line["response"]["body"] for line in file_lines(sdk, done.output_file_id)}
        sdk.close()
    for custom_id, body in got.items():
        want = {k: v for k, v in expected[custom_id].items() if k != "id"}
        assert {k: v for k, v in body.items() if k != "id"} == want, custom_id
    assert json.loads(got["schema"]["choices"][0]["message"]["content"])["label"] in ("a", "b", "c")
    assert got["scripted"]["choices"][0]["message"]["content"] == "hello there"
    assert got["schema"]["usage"]["prompt_tokens_details"]["cached_tokens"] > 0  # the shared system prompt


def test_answered_lines_come_back_shuffled_and_the_same_way_each_run() -> None:
    def output_order() -> list[str]:
        with FakeProvider(batch=BatchOptions(polls_to_complete=1)) as fake:
            sdk = openai.OpenAI(api_key="k", base_url=fake.base_url, max_retries=0)
            done = poll_until_done(sdk, submit(sdk, sentiment_lines(50)))[-1]
            order = [line["custom_id"] for line in file_lines(sdk, done.output_file_id)]
            sdk.close()
            return order

    first = output_order()
    assert first == output_order() and sorted(first) == sorted(f"key-{i}" for i in range(50))
    assert first != [f"key-{i}" for i in range(50)]


def test_the_batch_list_is_newest_first_and_pages_with_after(fake: FakeProvider, client: openai.OpenAI) -> None:
    ids = [submit(client, sentiment_lines(1)) for _ in range(5)]
    page = client.batches.list(limit=2)
    assert [b.id for b in page.data] == ids[::-1][:2] and page.has_more
    assert [b.id for b in client.batches.list(limit=2, after=ids[3]).data] == [ids[2], ids[1]]
    assert [b.id for b in client.batches.list(limit=2)] == ids[::-1]  # the SDK pages on, after last_id
    assert [p.batch_id for p in fake.app.batches.polls] == []  # listing is not polling: nothing advanced
    assert {b.status for b in client.batches.list().data} == {"validating"}


def test_a_client_cancel_is_cancelling_then_cancelled_with_the_answered_lines_kept(
        fake: FakeProvider, client: openai.OpenAI) -> None:
    batch_id = submit(client, sentiment_lines(10))
    assert counts(client.batches.retrieve(batch_id)) == (10, 5, 0)
    cancelling = client.batches.cancel(batch_id)
    assert cancelling.status == "cancelling" and cancelling.cancelling_at is not None
    cancelled = client.batches.retrieve(batch_id)
    assert cancelled.status == "cancelled" and cancelled.cancelled_at is not None
    assert len(file_lines(client, cancelled.output_file_id)) == 5 and cancelled.error_file_id is None
    assert fake.app.batches.cancels == [batch_id]
    with pytest.raises(openai.BadRequestError, match="Cannot cancel a batch with status 'cancelled'"):
        client.batches.cancel(batch_id)


def test_a_job_whose_input_file_is_deleted_while_it_runs_still_completes(
        fake: FakeProvider, client: openai.OpenAI) -> None:
    batch_id = submit(client, sentiment_lines(6))
    assert client.batches.retrieve(batch_id).status == "in_progress"
    client.files.delete(fake.app.batches.jobs[batch_id]["input_file_id"])
    done = poll_until_done(client, batch_id)[-1]
    assert done.status == "completed" and len(file_lines(client, done.output_file_id)) == 6


# -- files ----------------------------------------------------------------------------------------
def test_content_is_streamed_in_chunks_and_a_deleted_file_is_gone() -> None:
    big = jsonl(sentiment_lines(20_000))  # over the megabyte a file keeps in memory
    assert len(big) > 1 << 20

    async def exchange(base_url: str) -> None:
        headers = {"Authorization": "Bearer k"}
        async with aiohttp.ClientSession(headers=headers) as session:
            form = aiohttp.FormData()
            form.add_field("purpose", "batch")
            form.add_field("file", io.BytesIO(big), filename="big.jsonl")
            async with session.post(f"{base_url}/files", data=form) as resp:
                entry = await resp.json()
            async with session.get(f"{base_url}/files/{entry['id']}/content") as resp:
                assert resp.headers.get("Transfer-Encoding") == "chunked" and "Content-Length" not in resp.headers
                assert await resp.read() == big
            async with session.delete(f"{base_url}/files/{entry['id']}") as resp:
                assert await resp.json() == {"id": entry["id"], "object": "file", "deleted": True}
            for path in (f"/files/{entry['id']}", f"/files/{entry['id']}/content"):
                async with session.get(f"{base_url}{path}") as resp:
                    assert resp.status == 404 and "No such File object" in (await resp.json())["error"]["message"]

    with FakeProvider() as fake:
        asyncio.run(exchange(fake.base_url))
        assert fake.app.files.uploads[0].lines == 20_000
        assert fake.app.files.contents["file-fake-1"] == big  # kept for the records after the delete


def test_uploads_are_refused_without_a_file_or_with_an_unknown_purpose(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError, match="'training' is not one of"):
        client.files.create(file=("x.jsonl", b"{}\n"), purpose="training")  # type: ignore[arg-type]
    fine_tune = client.files.create(file=("t.jsonl", b'{"messages": []}\n'), purpose="fine-tune")
    with pytest.raises(openai.BadRequestError, match="Not allowed to download files of purpose: fine-tune"):
        client.files.content(fine_tune.id)


def test_every_route_wants_the_key_and_never_echoes_it(fake: FakeProvider) -> None:
    wrong = openai.OpenAI(api_key="sk-wrong-0123456789abcdef", base_url=fake.base_url, max_retries=0)
    calls: list[Callable[[], object]] = [
        lambda: wrong.files.create(file=("x.jsonl", b"{}\n"), purpose="batch"),
        lambda: wrong.files.retrieve("file-fake-1"),
        lambda: wrong.files.content("file-fake-1"),
        lambda: wrong.files.delete("file-fake-1"),
        lambda: wrong.batches.create(input_file_id="file-fake-1", endpoint=CHAT, completion_window="24h"),
        lambda: wrong.batches.retrieve("batch_fake_1"),
        lambda: wrong.batches.cancel("batch_fake_1"),
        lambda: wrong.batches.list(),
    ]
    for call in calls:
        with pytest.raises(openai.AuthenticationError) as info:
            call()
        assert "0123456789abcdef" not in info.value.response.text
    wrong.close()
    assert fake.app.files.uploads == [] and fake.app.batches.creates == []


def test_fine_tuning_and_batches_share_one_file_store(fake: FakeProvider, client: openai.OpenAI) -> None:
    training = client.files.create(file=("train.jsonl", b'{"messages": []}\n'), purpose="fine-tune")
    batch_id = submit(client, sentiment_lines(1))
    assert (training.id, fake.app.batches.jobs[batch_id]["input_file_id"]) == ("file-fake-1", "file-fake-2")
    assert list(fake.app.finetune.files) == ["file-fake-1", "file-fake-2"]
    with pytest.raises(openai.BadRequestError, match="must have purpose 'batch', not 'fine-tune'"):
        client.batches.create(input_file_id=training.id, endpoint=CHAT, completion_window="24h")


# -- validation -----------------------------------------------------------------------------------
def test_create_refuses_a_missing_file_an_unknown_endpoint_or_window_and_bad_metadata(
        client: openai.OpenAI) -> None:
    uploaded = client.files.create(file=("r.jsonl", jsonl(sentiment_lines(1))), purpose="batch")
    with pytest.raises(openai.NotFoundError, match="No such File object: file-nope"):
        client.batches.create(input_file_id="file-nope", endpoint=CHAT, completion_window="24h")
    with pytest.raises(openai.BadRequestError, match="Supported values are: /v1/chat/completions"):
        client.batches.create(input_file_id=uploaded.id, endpoint="/v1/completions", completion_window="24h")
    with pytest.raises(openai.BadRequestError, match="Supported values are: '24h'"):
        client.batches.create(input_file_id=uploaded.id, endpoint=CHAT, completion_window="1h")  # type: ignore[arg-type]
    with pytest.raises(openai.BadRequestError, match="metadata"):
        client.batches.create(input_file_id=uploaded.id, endpoint=CHAT, completion_window="24h",
                              metadata={f"k{i}": "v" for i in range(17)})


def test_an_invalid_file_fails_the_job_at_its_first_poll_naming_each_bad_line(client: openai.OpenAI) -> None:
    good = request_line("a", "x")
    wrong_url = {**request_line("b", "x"), "url": "/v1/embeddings"}
    wrong_method = {**request_line("c", "x"), "method": "GET"}
    no_body = {k: v for k, v in request_line("d", "x").items() if k != "body"}
    other_model = request_line("e", "x", model="gpt-4o")
    other_model["body"]["model"] = "gpt-4o"
    data = b"\n".join([json.dumps(good).encode(), b"{not json", json.dumps(request_line("a", "y")).encode(),
                       json.dumps(wrong_url).encode(), json.dumps(wrong_method).encode(),
                       json.dumps(no_body).encode(), json.dumps(other_model).encode()]) + b"\n"
    batch_id = submit(client, data)
    failed = client.batches.retrieve(batch_id)
    assert failed.status == "failed" and failed.failed_at is not None and failed.output_file_id is None
    assert failed.errors is not None and failed.errors.object == "list"
    assert [(e.line, e.code) for e in failed.errors.data or []] == [
        (2, "invalid_json_line"), (3, "duplicate_custom_id"), (4, "invalid_url"), (5, "invalid_method"),
        (6, "missing_required_parameter"), (7, "mismatched_model")]
    assert client.batches.retrieve(batch_id).status == "failed"


@pytest.mark.parametrize(("options", "code"), [
    (BatchOptions(max_requests=3), "too_many_requests"),
    (BatchOptions(max_bytes=200), "file_too_large"),
])
def test_the_limits_per_file_are_options(options: BatchOptions, code: str) -> None:
    with FakeProvider(batch=options) as fake:
        sdk = openai.OpenAI(api_key="k", base_url=fake.base_url, max_retries=0)
        failed = client_poll_once(sdk, submit(sdk, sentiment_lines(4)))
        exact = client_poll_once(sdk, submit(sdk, sentiment_lines(3) if code == "too_many_requests"
                                             else jsonl(sentiment_lines(1))))
        sdk.close()
    assert failed.status == "failed" and [e.code for e in failed.errors.data] == [code]
    assert exact.status != "failed"


def client_poll_once(client: openai.OpenAI, batch_id: str) -> Any:
    return client.batches.retrieve(batch_id)


def test_defaults_are_openais_limits() -> None:
    assert (BatchOptions().max_requests, BatchOptions().max_bytes) == (50_000, 200_000_000)


# -- scripted failures ----------------------------------------------------------------------------
def test_failing_lines_by_custom_id_go_to_the_error_file_and_count_as_failed() -> None:
    lines = fail_lines(status(500), custom_ids={"key-1", "key-3"})
    with FakeProvider(batch=BatchOptions(line_script=lines)) as fake:
        sdk = openai.OpenAI(api_key="k", base_url=fake.base_url, max_retries=0)
        done = poll_until_done(sdk, submit(sdk, sentiment_lines(6)))[-1]
        output, errors = file_lines(sdk, done.output_file_id), file_lines(sdk, done.error_file_id)
        sdk.close()
    assert done.status == "completed" and counts(done) == (6, 4, 2)
    assert sorted(line["custom_id"] for line in errors) == ["key-1", "key-3"]
    assert len(output) == 4 and all(line["response"]["status_code"] == 200 for line in output)
    for line in errors:
        assert line["error"] is None and line["response"]["status_code"] == 500
        assert line["response"]["body"]["error"]["message"] == "Scripted failure 500."


def test_a_share_of_lines_fails_the_same_way_each_run_and_times_lets_a_resubmission_succeed() -> None:
    script = fail_lines(status(429), share=0.3, seed=7, times=1)
    with FakeProvider(batch=BatchOptions(line_script=script, polls_to_complete=1)) as fake:
        sdk = openai.OpenAI(api_key="k", base_url=fake.base_url, max_retries=0)
        first = sdk.batches.retrieve(submit(sdk, sentiment_lines(200)))
        failed = [line["custom_id"] for line in file_lines(sdk, first.error_file_id)]
        again = sdk.batches.retrieve(submit(sdk, [request_line(c, "retry") for c in failed]))
        sdk.close()
    assert 40 <= len(failed) <= 80  # about 30% of 200
    assert counts(again) == (len(failed), len(failed), 0) and again.error_file_id is None
    share = fail_lines(share=0.3, seed=7)
    assert [c for c in (f"key-{i}" for i in range(200)) if share(c, {})] == sorted(failed, key=lambda c: int(c[4:]))


def test_line_behaviours_give_truncations_refusals_error_bodies_dropped_and_garbled_lines() -> None:
    behaviours = {"key-0": answer("cut", finish_reason="length"), "key-1": answer(None, refusal="no"),
                  "key-2": respond(400, {"error": {"message": "context_length_exceeded"}}), "key-3": drop(),
                  "key-4": malformed()}
    with FakeProvider(batch=BatchOptions(line_script=lambda cid, _body: behaviours.get(cid))) as fake:
        sdk = openai.OpenAI(api_key="k", base_url=fake.base_url, max_retries=0)
        done = poll_until_done(sdk, submit(sdk, sentiment_lines(5)))[-1]
        assert done.output_file_id is not None
        raw_output = sdk.files.content(done.output_file_id).text.splitlines()
        errors = {line["custom_id"]: line for line in file_lines(sdk, done.error_file_id)}
        sdk.close()
    output = {}
    for raw in raw_output:
        try:
            line = json.loads(raw)
        except ValueError:
            assert raw.startswith('{"id":"batch_req_') and '"custom_id":"key-4"' in raw
            continue
        output[line["custom_id"]] = line["response"]["body"]["choices"][0]
    assert output["key-0"]["finish_reason"] == "length" and output["key-1"]["message"]["refusal"] == "no"
    assert errors["key-2"]["response"]["status_code"] == 400 and errors["key-2"]["error"] is None
    assert errors["key-3"]["response"] is None and errors["key-3"]["error"]["code"] == "server_error"
    assert counts(done) == (5, 3, 2)


def test_an_expiring_job_keeps_the_answered_lines_and_lists_the_rest_as_batch_expired() -> None:
    with FakeProvider(batch=BatchOptions(fates=[None, expire_job(after_lines=3)], polls_to_complete=2)) as fake:
        sdk = openai.OpenAI(api_key="k", base_url=fake.base_url, max_retries=0)
        normal = poll_until_done(sdk, submit(sdk, sentiment_lines(2)))[-1]
        seen = poll_until_done(sdk, submit(sdk, sentiment_lines(8)))
        expired = seen[-1]
        output, errors = file_lines(sdk, expired.output_file_id), file_lines(sdk, expired.error_file_id)
        sdk.close()
    assert normal.status == "completed"
    assert [b.status for b in seen] == ["expired"] and expired.expired_at is not None
    assert len(output) == 3 and len(errors) == 5
    assert {line["error"]["code"] for line in errors} == {"batch_expired"}
    assert {line["response"] for line in errors} == {None}
    assert sorted(line["custom_id"] for line in output + errors) == sorted(f"key-{i}" for i in range(8))
    assert counts(expired) == (8, 3, 5)


def test_a_job_expires_when_its_window_passes_on_the_injected_clock() -> None:
    clock = FakeClock(start=1_000)
    with FakeProvider(batch=BatchOptions(clock=clock, polls_to_complete=4)) as fake:
        sdk = openai.OpenAI(api_key="k", base_url=fake.base_url, max_retries=0)
        batch_id = submit(sdk, sentiment_lines(6))
        assert sdk.batches.retrieve(batch_id).status == "in_progress"
        clock.advance(24 * 3600)
        expired = sdk.batches.retrieve(batch_id)
        sdk.close()
    assert expired.status == "expired" and (expired.created_at, expired.expired_at) == (1_000, 1_000 + 86_400)
    assert counts(expired) == (6, 2, 4)


def test_a_job_the_provider_cancels_and_a_job_that_fails_outright() -> None:
    fates = [cancel_job(after_lines=2), fail_job("token_limit_exceeded", "Enqueued token limit reached.")]
    with FakeProvider(batch=BatchOptions(fates=fates)) as fake:
        sdk = openai.OpenAI(api_key="k", base_url=fake.base_url, max_retries=0)
        cancelled = poll_until_done(sdk, submit(sdk, sentiment_lines(6)))
        failed = poll_until_done(sdk, submit(sdk, sentiment_lines(6)))
        kept = file_lines(sdk, cancelled[-1].output_file_id)
        sdk.close()
        assert fake.app.batches.cancels == []  # the client cancelled nothing
    assert [b.status for b in cancelled] == ["cancelling", "cancelled"] and len(kept) == 2
    assert [b.status for b in failed] == ["failed"]
    assert [(e.code, e.message) for e in failed[-1].errors.data] == [
        ("token_limit_exceeded", "Enqueued token limit reached.")]


def test_transient_errors_on_polls_are_scripted_per_route_and_recorded() -> None:
    flaky = on_route("GET", "/v1/batches/", itertools.cycle([None, status(500), status(429, retry_after=2)]))
    with FakeProvider(batch=BatchOptions(script=flaky)) as fake:
        sdk = openai.OpenAI(api_key="k", base_url=fake.base_url, max_retries=0)
        batch_id = submit(sdk, sentiment_lines(2))
        outcomes: list[str] = []
        for _ in range(7):
            try:
                outcomes.append(sdk.batches.retrieve(batch_id).status)
            except openai.APIStatusError as error:
                outcomes.append(str(error.status_code))
        sdk.close()
        polls = fake.app.batches.polls
    assert outcomes == ["in_progress", "500", "429", "finalizing", "500", "429", "completed"]
    assert polls[2] == PollRecord(batch_id, 429, None) and len(polls) == 7


def test_the_chat_script_answers_batch_lines_too_and_chat_requests_stay_empty() -> None:
    with FakeProvider(script=per_prompt({"item 2": [status(503)]})) as fake:
        sdk = openai.OpenAI(api_key="k", base_url=fake.base_url, max_retries=0)
        done = poll_until_done(sdk, submit(sdk, sentiment_lines(4)))[-1]
        errors = file_lines(sdk, done.error_file_id)
        sdk.close()
        assert fake.chat_requests == []
    assert [(e["custom_id"], e["response"]["status_code"]) for e in errors] == [("key-2", 503)]


def test_the_fake_in_its_own_process_takes_the_batch_options_and_counts_in_its_stats() -> None:
    with FakeProviderProcess(batch_polls_to_complete=1, batch_fail_share=0.5, random_seed=3) as fake:
        sdk = openai.OpenAI(api_key="k", base_url=fake.base_url, max_retries=0)
        done = sdk.batches.retrieve(submit(sdk, sentiment_lines(40)))
        file_lines(sdk, done.error_file_id)
        sdk.close()
        stats = fake.stats()
    assert done.status == "completed" and 10 <= counts(done)[2] <= 30
    assert {k: stats[k] for k in ("uploads", "batch_creates", "batch_polls", "downloads", "batch_lines")} == {
        "uploads": 1, "batch_creates": 1, "batch_polls": 1, "downloads": 1, "batch_lines": 40}
