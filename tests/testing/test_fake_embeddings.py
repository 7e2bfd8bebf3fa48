"""The fake provider's ``/v1/embeddings``: OpenAI's wire (read by the official SDK, float and base64),
deterministic vectors a test can compute (``fake_embedding``), near texts near when asked, OpenAI's
limits as 400s, a scripted poisoned input, and the same auth, limits, scripts and batch jobs as chat."""

from __future__ import annotations

import asyncio
import base64
import json
import math
import struct
import urllib.request
from typing import Any, cast

import aiohttp
import openai
import pytest

from dfllm.testing import (
    BatchOptions,
    EmbeddingOptions,
    EmbeddingRecord,
    FakeProvider,
    FakeProviderApp,
    FakeProviderProcess,
    drop,
    fake_embedding,
    malformed,
    normalise_text,
    sequence,
    status,
)

MODEL = "text-embedding-3-small"


def cosine(a: list[float], b: list[float]) -> float:
    return sum(x * y for x, y in zip(a, b, strict=True)) / math.sqrt(sum(x * x for x in a) * sum(y * y for y in b))


async def post_all(base_url: str, bodies: list[Any], headers: dict[str, str] | None = None,
                   ) -> list[tuple[int, Any]]:
    async with aiohttp.ClientSession(headers=headers) as session:
        async def one(body: Any) -> tuple[int, Any]:
            async with session.post(f"{base_url}/embeddings", json=body) as response:
                return response.status, await response.json(content_type=None)
        return list(await asyncio.gather(*(one(body) for body in bodies)))


def post(base_url: str, body: Any, headers: dict[str, str] | None = None) -> tuple[int, Any]:
    return asyncio.run(post_all(base_url, [body], headers))[0]


# -- the wire and the vectors ---------------------------------------------------------------------
@pytest.mark.parametrize("encoding_format", ["float", "base64", None])
def test_the_sdk_reads_the_vectors_a_test_can_compute(encoding_format: str | None) -> None:
    texts = ["a red apple", "un café noir", "x" * 40]
    with FakeProvider(api_key="k") as fake:
        client = openai.OpenAI(api_key="k", base_url=fake.base_url, max_retries=0)
        extra: dict[str, Any] = {"encoding_format": encoding_format} if encoding_format else {}
        answer = client.embeddings.create(model=MODEL, input=texts, **extra)
        client.close()
        (record,) = fake.embedding_requests
    # Asked for base64, the SDK hands back the string as sent (typed as floats): little-endian float32s.
    vectors = [list(struct.unpack("<8f", base64.b64decode(cast(str, d.embedding)))) if encoding_format == "base64"
               else d.embedding for d in answer.data]
    assert vectors == [fake_embedding(t, 8) for t in texts]
    assert [d.index for d in answer.data] == [0, 1, 2] and answer.model == MODEL
    assert answer.usage.prompt_tokens == answer.usage.total_tokens == 3 + 3 + 10  # 4 characters a token
    # The SDK asks for base64 unless told otherwise, and decodes it itself.
    assert record == EmbeddingRecord(0, MODEL, tuple(texts), None, encoding_format or "base64", 200)


def test_a_lone_string_is_one_input_and_every_vector_is_unit_length_float32() -> None:
    with FakeProvider() as fake:
        code, body = post(fake.base_url, {"model": MODEL, "input": "hello"})
        assert fake.embedding_requests[0].inputs == ("hello",)
    (item,) = body["data"]
    assert code == 200 and body["object"] == "list" and item["object"] == "embedding"
    assert len(item["embedding"]) == 8 and abs(sum(v * v for v in item["embedding"]) - 1) < 1e-6
    as_float32 = struct.unpack("<8f", struct.pack("<8f", *item["embedding"]))
    assert list(as_float32) == item["embedding"]


def test_dimensions_shorten_a_vector_as_text_embedding_3_does() -> None:
    with FakeProvider(embeddings=EmbeddingOptions(dimension=64)) as fake:
        full = post(fake.base_url, {"model": MODEL, "input": ["shoes"]})[1]["data"][0]["embedding"]
        short = post(fake.base_url, {"model": MODEL, "input": ["shoes"], "dimensions": 16})[1]["data"][0]["embedding"]
        assert [r.dimensions for r in fake.embedding_requests] == [None, 16]
    assert full == fake_embedding("shoes", 64) and short == fake_embedding("shoes", 16)
    norm = math.sqrt(sum(v * v for v in full[:16]))
    assert short == pytest.approx([v / norm for v in full[:16]], abs=1e-6)  # cut, normalised again


def test_equal_texts_get_equal_vectors_and_different_ones_different() -> None:
    assert fake_embedding("same", 8) == fake_embedding("same", 8)
    assert fake_embedding("same", 8) != fake_embedding("Same", 8)


def test_normalised_similarity_makes_near_duplicates_near_and_the_rest_far() -> None:
    assert normalise_text("Apple iPhone-13, 128 GB!") == normalise_text("apple iphone 13 128gb") == "appleiphone13128gb"
    a = fake_embedding("Apple iPhone-13, 128 GB!", 256, similarity="normalised")
    b = fake_embedding("apple iphone 13 128gb", 256, similarity="normalised")
    c = fake_embedding("Samsung Galaxy S21", 256, similarity="normalised")
    assert a != b and cosine(a, b) > 0.98 and abs(cosine(a, c)) < 0.3
    assert abs(cosine(fake_embedding("Apple iPhone-13", 256), fake_embedding("apple iphone 13", 256))) < 0.3


def test_words_similarity_grows_with_the_words_two_texts_share() -> None:
    def near(x: str, y: str) -> float:
        return cosine(fake_embedding(x, 512, similarity="words"), fake_embedding(y, 512, similarity="words"))

    assert near("red apple", "Apple, red") > 0.98
    assert 0.35 < near("red apple", "green apple") < 0.65
    assert near("red apple", "red apple pie") > near("red apple", "green apple") > near("red apple", "blue car")


def test_the_server_answers_with_its_similarity_option() -> None:
    options = EmbeddingOptions(dimension=32, similarity="words")
    with FakeProvider(embeddings=options) as fake:
        data = post(fake.base_url, {"model": MODEL, "input": ["green tea", "Tea, green."]})[1]["data"]
    assert [d["embedding"] for d in data] == [fake_embedding(t, 32, similarity="words")
                                              for t in ["green tea", "Tea, green."]]


def test_an_unknown_similarity_or_dimension_is_refused_when_the_server_is_made() -> None:
    with pytest.raises(ValueError, match="similarity"):
        EmbeddingOptions(similarity="semantic")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="dimension"):
        EmbeddingOptions(dimension=0)


def test_many_requests_at_once_each_get_their_own_vectors() -> None:
    batches = [[f"item {i}-{j}" for j in range(i + 1)] for i in range(20)]
    with FakeProvider(latency_s=0.01) as fake:
        answers = asyncio.run(post_all(fake.base_url, [{"model": MODEL, "input": b} for b in batches]))
        assert sorted(len(r.inputs) for r in fake.embedding_requests) == list(range(1, 21))
        assert fake.app.stats()["embedding_inputs"] == 210
    for texts, (code, body) in zip(batches, answers, strict=True):
        assert code == 200 and [d["embedding"] for d in body["data"]] == [fake_embedding(t) for t in texts]


# -- what OpenAI refuses ------------------------------------------------------------------------------
@pytest.mark.parametrize(("body", "message"), [
    ({"model": MODEL, "input": [1, 2, 3]}, "token arrays are not supported"),
    ({"model": MODEL, "input": [[1, 2], [3]]}, "token arrays are not supported"),
    ({"model": MODEL, "input": ["a", 3]}, "a string or an array of strings"),
    ({"model": MODEL}, "a string or an array of strings"),
    ({"model": MODEL, "input": []}, "no inputs"),
    ({"model": MODEL, "input": ["a", ""]}, "input[1] is an empty string"),
    ({"model": MODEL, "input": "x", "dimensions": 9}, "from 1 to 8"),
    ({"model": MODEL, "input": "x", "dimensions": 0}, "from 1 to 8"),
    ({"model": MODEL, "input": "x", "dimensions": True}, "'dimensions'"),
    ({"model": MODEL, "input": "x", "encoding_format": "int8"}, "'float' and 'base64'"),
    ({"input": "x"}, "model parameter"),
    (["not", "an", "object"], "could not parse"),
])
def test_a_request_openai_refuses_is_a_400_saying_why(body: Any, message: str) -> None:
    with FakeProvider() as fake:
        code, answer = post(fake.base_url, body)
        assert [r.status for r in fake.embedding_requests] == [400]
    assert code == 400 and message in answer["error"]["message"]
    assert answer["error"]["type"] == "invalid_request_error"


def test_the_limits_default_to_openais() -> None:
    assert (EmbeddingOptions().max_inputs, EmbeddingOptions().max_input_tokens,
            EmbeddingOptions().max_request_tokens) == (2048, 8192, 300_000)
    with FakeProvider() as fake:
        assert post(fake.base_url, {"model": MODEL, "input": ["w"] * 2048})[0] == 200
        code, body = post(fake.base_url, {"model": MODEL, "input": ["w"] * 2049})
        assert (code, body["error"]["code"]) == (400, "too_many_inputs")
        assert post(fake.base_url, {"model": MODEL, "input": ["y" * 4 * 8192]})[0] == 200
        code, body = post(fake.base_url, {"model": MODEL, "input": ["ok", "y" * (4 * 8192 + 1)]})
    assert (code, body["error"]["code"]) == (400, "context_length_exceeded")
    assert "8192 tokens" in body["error"]["message"] and "input[1]" in body["error"]["message"]


def test_a_request_over_the_total_tokens_is_refused_and_one_at_it_is_not() -> None:
    with FakeProvider(embeddings=EmbeddingOptions(max_request_tokens=10)) as fake:
        assert post(fake.base_url, {"model": MODEL, "input": ["abcd"] * 10})[0] == 200
        code, body = post(fake.base_url, {"model": MODEL, "input": ["abcd"] * 11})
    assert (code, body["error"]["message"]) == (400, "Requested 11 tokens, max 10 tokens per request")


def test_a_poisoned_input_fails_its_batch_naming_it_so_a_client_can_split_to_find_it() -> None:
    texts = [f"row {i}" for i in range(8)]
    texts[5] = "row 5 \u0000BAD"

    async def bisect(session: aiohttp.ClientSession, base_url: str, rows: list[int]) -> dict[int, Any]:
        async with session.post(f"{base_url}/embeddings", json={"model": MODEL, "input": [texts[i] for i in rows]}) \
                as response:
            body = await response.json()
        if response.status == 200:
            return {rows[d["index"]]: d["embedding"] for d in body["data"]}
        if len(rows) == 1:
            return {rows[0]: body["error"]["message"]}
        halves = await asyncio.gather(*(bisect(session, base_url, part) for part in (rows[:len(rows) // 2],
                                                                                      rows[len(rows) // 2:])))
        return {**halves[0], **halves[1]}

    async def run(base_url: str) -> dict[int, Any]:
        async with aiohttp.ClientSession() as session:
            return await bisect(session, base_url, list(range(8)))

    with FakeProvider() as fake:
        found = asyncio.run(run(fake.base_url))
        statuses = sorted((len(r.inputs), r.status or 0) for r in fake.embedding_requests)
    assert found[5] == "Invalid 'input[0]': this input could not be embedded."
    assert {i: v for i, v in found.items() if i != 5} == {i: fake_embedding(texts[i]) for i in range(8) if i != 5}
    assert statuses == [(1, 200), (1, 400), (2, 200), (2, 400), (4, 200), (4, 400), (8, 400)]


def test_the_poison_marker_names_its_index_and_can_be_changed_or_turned_off() -> None:
    with FakeProvider() as fake:
        code, body = post(fake.base_url, {"model": MODEL, "input": ["a", "b", "c\u0000BAD"]})
    assert (code, body["error"]["message"]) == (400, "Invalid 'input[2]': this input could not be embedded.")
    with FakeProvider(embeddings=EmbeddingOptions(bad_input_marker="")) as fake:
        assert post(fake.base_url, {"model": MODEL, "input": ["c\u0000BAD"]})[0] == 200


# -- the same machinery as chat ----------------------------------------------------------------------
def test_auth_rate_limits_and_random_429s_apply_to_embeddings() -> None:
    body = {"model": MODEL, "input": ["x"]}
    with FakeProvider(api_key="right") as fake:
        assert post(fake.base_url, body, {"Authorization": "Bearer wrong"})[0] == 401
        assert post(fake.base_url, body, {"Authorization": "Bearer right"})[0] == 200
    with FakeProvider(rpm=1, rpm_burst=2) as fake:
        assert [code for code, _ in asyncio.run(post_all(fake.base_url, [body] * 3))].count(429) == 1
        assert sorted(r.status or 0 for r in fake.embedding_requests) == [200, 200, 429]
    with FakeProvider(random_429=1.0, random_seed=1) as fake:
        assert post(fake.base_url, body)[0] == 429


def test_a_script_fails_or_drops_embedding_requests() -> None:
    body = {"model": MODEL, "input": ["x"]}
    with FakeProvider(script=sequence([status(503, retry_after=2), drop()])) as fake:
        code, answer = post(fake.base_url, body)
        assert (code, answer["error"]["code"]) == (503, "scripted")
        with pytest.raises(aiohttp.ClientError):
            post(fake.base_url, body)
        assert post(fake.base_url, body)[0] == 200
        assert [r.status for r in fake.embedding_requests] == [503, None, 200]  # None: no answer
        assert fake.app.chat_requests == []


def test_a_malformed_embedding_answer_is_not_json() -> None:
    async def raw(base_url: str) -> bytes:
        async with aiohttp.ClientSession() as session, \
                session.post(f"{base_url}/embeddings", json={"model": MODEL, "input": "x"}) as response:
            return await response.read()

    with FakeProvider(script=sequence([malformed()])) as fake:
        text = asyncio.run(raw(fake.base_url))
    with pytest.raises(json.JSONDecodeError, match="Expecting value"):
        json.loads(text)
    assert text.startswith(b'{"data"')


def test_records_are_kept_only_when_recording_and_cleared_by_reset() -> None:
    app = FakeProviderApp(record=False)
    assert app.embedding_requests == []
    with FakeProvider() as fake:
        post(fake.base_url, {"model": MODEL, "input": ["a", "b"]})
        assert len(fake.embedding_requests) == 1 and fake.app.stats()["embedding_inputs"] == 2
        fake.app.reset()
        assert fake.embedding_requests == [] and fake.app.stats()["embedding_inputs"] == 0


# -- batch jobs and the process ------------------------------------------------------------------------
def test_a_batch_job_on_the_embeddings_endpoint_answers_each_line_as_online() -> None:
    inputs = {"a": ["first", "second"], "b": ["bad \u0000BAD"], "c": ["third"]}
    lines = [{"custom_id": key, "method": "POST", "url": "/v1/embeddings",
              "body": {"model": MODEL, "input": texts, "dimensions": 4}} for key, texts in inputs.items()]
    data = "".join(json.dumps(line) + "\n" for line in lines).encode()
    with FakeProvider(batch=BatchOptions(polls_to_complete=1)) as fake:
        client = openai.OpenAI(api_key="k", base_url=fake.base_url, max_retries=0)
        uploaded = client.files.create(file=("in.jsonl", data), purpose="batch")
        batch = client.batches.create(input_file_id=uploaded.id, endpoint="/v1/embeddings", completion_window="24h")
        for _ in range(3):
            batch = client.batches.retrieve(batch.id)
        assert batch.status == "completed" and batch.output_file_id and batch.error_file_id
        output = [json.loads(raw) for raw in client.files.content(batch.output_file_id).text.splitlines()]
        errors = [json.loads(raw) for raw in client.files.content(batch.error_file_id).text.splitlines()]
        client.close()
        assert fake.embedding_requests == []  # batch lines are the job's, not online requests
    vectors = {line["custom_id"]: [d["embedding"] for d in line["response"]["body"]["data"]] for line in output}
    assert vectors == {"a": [fake_embedding("first", 4), fake_embedding("second", 4)],
                       "c": [fake_embedding("third", 4)]}
    assert [(e["custom_id"], e["response"]["status_code"]) for e in errors] == [("b", 400)]
    assert batch.usage is not None and batch.usage.input_tokens == 2 + 2 + 2


def test_the_process_takes_the_embedding_options() -> None:
    with FakeProviderProcess(embedding_dimension=4, embedding_similarity="normalised") as fake:
        body = json.dumps({"model": MODEL, "input": ["Tea!", "tea"]}).encode()
        request = urllib.request.Request(f"{fake.base_url}/embeddings", data=body,
                                         headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=10) as response:
            data = json.loads(response.read())["data"]
        assert fake.stats()["embedding_inputs"] == 2
    assert [d["embedding"] for d in data] == [fake_embedding(t, 4, similarity="normalised") for t in ("Tea!", "tea")]
