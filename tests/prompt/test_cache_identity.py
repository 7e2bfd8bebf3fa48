"""Cache identity: everything that decides an answer is in its key; nothing that does not, and no secret."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd
import pytest

import dfllm
from dfllm.testing import FakeProvider, MockEngine
from tests.conftest import KEY


def test_two_portkey_engines_with_different_config_do_not_share_cached_answers(fake: FakeProvider) -> None:
    df = pd.DataFrame({"q": ["Where is Stockholm?"]})
    for name, config in (("a", {"provider": "openai"}), ("b", {"provider": "anthropic"})):
        dfllm.create_engine(name, "portkey", portkey_api_key=KEY, base_url=fake.base_url, config=config)
    dfllm.predict(df, "a", "m", "{{q}}", "y")
    dfllm.predict(df, "b", "m", "{{q}}", "y")
    assert len(fake.chat_requests) == 2
    dfllm.predict(df, "a", "m", "{{q}}", "y")  # the same engine again: served from the cache
    assert len(fake.chat_requests) == 2



@pytest.mark.parametrize("param", ["virtual_key", "provider"])
def test_every_routing_parameter_separates_cached_answers(fake: FakeProvider, param: str) -> None:
    df = pd.DataFrame({"q": ["x"]})
    dfllm.create_engine("a", "portkey", portkey_api_key=KEY, base_url=fake.base_url, **{param: "one"})
    dfllm.create_engine("b", "portkey", portkey_api_key=KEY, base_url=fake.base_url, **{param: "two"})
    dfllm.predict(df, "a", "m", "{{q}}", "y")
    dfllm.predict(df, "b", "m", "{{q}}", "y")
    assert len(fake.chat_requests) == 2



def test_routing_secrets_are_never_in_the_cache_file(fake: FakeProvider, tmp_path: Path) -> None:
    cache = tmp_path / "c.sqlite3"
    dfllm.create_engine("a", "portkey", portkey_api_key=KEY, base_url=fake.base_url,
                        virtual_key="vk-secret-routing-123")
    dfllm.predict(pd.DataFrame({"q": ["x"]}), "a", "m", "{{q}}", "y", cache=str(cache))
    for path in tmp_path.iterdir():
        data = path.read_bytes()
        assert b"vk-secret-routing-123" not in data and KEY.encode() not in data



def test_the_api_key_is_not_part_of_the_identity(fake: FakeProvider) -> None:
    df = pd.DataFrame({"q": ["x"]})
    dfllm.create_engine("a", "openai", api_key="key-one", base_url=fake.base_url)
    dfllm.predict(df, "a", "m", "{{q}}", "y")
    dfllm.create_engine("a", "openai", api_key="key-two", base_url=fake.base_url)  # a rotated key
    dfllm.predict(df, "a", "m", "{{q}}", "y")
    assert len(fake.chat_requests) == 1



def test_two_instances_of_one_custom_engine_class_never_share_answers() -> None:
    class Shouter:  # declares no identity: dfllm cannot know two instances answer alike
        def __init__(self, suffix: str) -> None:
            self.suffix = suffix

        async def complete(self, request: dfllm.Request) -> dfllm.Completion:
            return dfllm.Completion(request.messages[-1]["content"] + self.suffix)

        async def aclose(self) -> None:
            pass

    df = pd.DataFrame({"t": ["a", "b"]})
    assert dfllm.predict(df, Shouter("!"), "m", "{{t}}", "y")["y"].tolist() == ["a!", "b!"]
    assert dfllm.predict(df, Shouter("?"), "m", "{{t}}", "y")["y"].tolist() == ["a?", "b?"]



def test_a_custom_engine_that_declares_its_identity_is_cached() -> None:
    first, second = MockEngine(identity="mine/v1"), MockEngine(identity="mine/v1")
    df = pd.DataFrame({"t": ["a", "b"]})
    dfllm.predict(df, first, "m", "{{t}}", "y")
    out = dfllm.predict(df, second, "m", "{{t}}", "y")
    assert out["y"].tolist() == ["answer to a", "answer to b"] and second.requests == []
    dfllm.predict(df, MockEngine(identity="mine/v2"), "m", "{{t}}", "y", cache=True)
    assert dfllm.last_run() is not None and dfllm.last_run().requests == 2  # type: ignore[union-attr]



@pytest.mark.parametrize(("change", "value"), [
    ("model", "m2"), ("system", "be brief"), ("temperature", 0.5), ("max_tokens", 7), ("seed", 3),
    ("choices", ["a", "b"]),
])
def test_everything_that_decides_an_answer_is_in_the_key(change: str, value: Any) -> None:
    engine = MockEngine(handler=lambda r: "a")
    df = pd.DataFrame({"t": ["x"]})
    dfllm.predict(df, engine, "m", "{{t}}", "y")
    if change == "model":
        dfllm.predict(df, engine, value, "{{t}}", "y")
    else:
        dfllm.predict(df, engine, "m", "{{t}}", "y", **{change: value})
    assert len(engine.requests) == 2



def test_cache_namespace_separates_engines_whose_key_routes(fake: FakeProvider) -> None:
    df = pd.DataFrame({"q": ["x"]})
    dfllm.create_engine("a", "openai_compatible", base_url=fake.base_url, api_key="team-a", cache_namespace="a")
    dfllm.create_engine("b", "openai_compatible", base_url=fake.base_url, api_key="team-b", cache_namespace="b")
    dfllm.predict(df, "a", "m", "{{q}}", "y")
    dfllm.predict(df, "b", "m", "{{q}}", "y")
    dfllm.predict(df, "a", "m", "{{q}}", "y")
    assert len(fake.chat_requests) == 2

