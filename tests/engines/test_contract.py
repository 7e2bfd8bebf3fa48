"""The engine contract as the README states it: what a custom engine's ``request`` holds and how
the built-in engines take a ``Request`` built the README way (plain dict messages)."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pandas as pd

import dfllm
from dfllm.engines.http import OpenAICompatibleEngine
from dfllm.testing import FakeProvider, MockEngine

SCHEMA = {"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"],
          "additionalProperties": False}


class ReadmeEngine:
    """A custom engine that treats messages as the README's ``{"role", "content"}`` dicts."""

    identity = "readme-engine/v1"

    def __init__(self) -> None:
        self.bodies: list[str] = []
        self.last_messages: list[dict[str, Any]] = []

    async def complete(self, request: dfllm.Request) -> dfllm.Completion:
        self.bodies.append(json.dumps(request.messages))
        self.last_messages = [dict(m) for m in request.messages]
        followed = request.messages + [{"role": "assistant", "content": "ok"}]  # noqa: RUF005 - the README way
        user = next(m for m in followed if m.get("role") == "user")
        return dfllm.Completion(str(user.get("content")).upper() + f" ({len(followed)})")

    async def aclose(self) -> None:
        pass


def test_a_custom_engine_reads_messages_as_dicts_through_predict() -> None:
    engine = ReadmeEngine()
    df = pd.DataFrame({"text": ["good film", "bad film"]})
    out = dfllm.predict(df, engine, "m", "Review: {{text}}", "out", system="Be brief.", cache=False)
    assert list(out["out"]) == ["REVIEW: GOOD FILM (3)", "REVIEW: BAD FILM (3)"]
    assert sorted(json.loads(body)[1]["content"] for body in engine.bodies) == [
        "Review: bad film", "Review: good film"]
    assert json.loads(engine.bodies[0])[0] == {"role": "system", "content": "Be brief."}
    assert engine.last_messages[0] == {"role": "system", "content": "Be brief."}


def test_a_request_built_from_plain_dicts_is_taken_by_the_built_in_engines() -> None:
    request = dfllm.Request("m", [{"role": "user", "content": "hi"}])
    assert request.messages == [{"role": "user", "content": "hi"}]
    mock = MockEngine()
    assert asyncio.run(mock.complete(request)).text == "answer to hi"
    assert mock.prompts == ["hi"]

    async def over_http(fake: FakeProvider) -> dfllm.Completion:
        engine = OpenAICompatibleEngine(fake.base_url, {"Authorization": "Bearer x"})
        try:
            return await engine.complete(request)
        finally:
            await engine.aclose()

    with FakeProvider() as fake:
        assert asyncio.run(over_http(fake)).text == "m says: hi"
        assert fake.chat_requests[0].body["messages"] == [{"role": "user", "content": "hi"}]


def test_a_json_schema_without_an_answer_format_is_enforced_as_before() -> None:
    request = dfllm.Request("m", [{"role": "user", "content": "a number"}], json_schema=SCHEMA)
    assert request.answer_format == "json_schema"
    assert dfllm.Request("m", [{"role": "user", "content": "x"}]).answer_format == "text"

    async def over_http(fake: FakeProvider) -> None:
        engine = OpenAICompatibleEngine(fake.base_url, {"Authorization": "Bearer x"})
        try:
            await engine.complete(request)
        finally:
            await engine.aclose()

    with FakeProvider() as fake:
        asyncio.run(over_http(fake))
        sent = fake.chat_requests[0].body["response_format"]
    assert sent["type"] == "json_schema" and sent["json_schema"]["schema"]["required"] == ["n"]
