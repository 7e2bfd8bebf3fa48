"""Named engines (``create_engine``): checked when created, listed and dropped, told how their server
takes a schema; providers added as data."""

from __future__ import annotations

import pandas as pd
import pytest

import dfllm
from dfllm.testing import FakeProvider
from tests.conftest import KEY


@pytest.mark.parametrize("url", ["htp//host", "api.openai.com/v1", "http://ex ample.com", " http://x.com",
                                 "ftp://host/v1", "http://", "http://host:99999/v1", "https://u:p@host/v1"])
def test_a_malformed_base_url_is_refused_when_the_engine_is_created(url: str) -> None:
    with pytest.raises(dfllm.ParameterError, match="base_url") as info:
        dfllm.create_engine("e", "openai", api_key=KEY, base_url=url)
    assert ":p@" not in str(info.value)
    assert "e" not in dfllm.list_engines()



def test_list_and_drop_engines() -> None:
    dfllm.create_engine("one", "openai", api_key=KEY)
    dfllm.create_engine("two", "openai_compatible", base_url="http://127.0.0.1:9/v1")
    assert sorted(dfllm.list_engines()) == ["one", "two"]
    dfllm.drop_engine("one")
    assert list(dfllm.list_engines()) == ["two"]
    with pytest.raises(dfllm.UnknownEngineError, match="No engine named 'one'"):
        dfllm.drop_engine("one")
    assert KEY not in repr(dfllm.list_engines()) and KEY not in repr(dfllm.create_engine("k", "openai", api_key=KEY))



def test_register_provider_adds_a_vendor_as_data(fake: FakeProvider) -> None:
    from dfllm.engines.providers import PROVIDERS

    try:
        dfllm.register_provider(dfllm.Provider(name="acme", base_url=fake.base_url, key_env="ACME_KEY",
                                               key_params=("acme_api_key", "api_key")))
        with pytest.raises(dfllm.ParameterError, match="already exists"):
            dfllm.register_provider(dfllm.Provider(name="acme", base_url=None, key_env=None))
        dfllm.create_engine("e", "acme", acme_api_key="k")
        pd.DataFrame({"t": ["x"]}).llm.predict("e", "m", "{{t}}", "y")
        assert fake.chat_requests[0].headers["Authorization"] == "Bearer k"
    finally:
        PROVIDERS.pop("acme", None)



@pytest.mark.parametrize(("told", "wire"), [("json_schema", "json_schema"), ("json_mode", "json_object"),
                                            ("prompt", None)])
def test_structured_outputs_tells_an_engine_how_its_server_takes_a_schema(
        fake: FakeProvider, told: str, wire: str | None) -> None:
    dfllm.create_engine("e", "openai_compatible", base_url=fake.base_url, structured_outputs=told)
    pd.DataFrame({"t": ["x"]}).llm.predict("e", "m", "{{t}}", "y", schema={"n": int}, errors="null")
    body = fake.chat_requests[0].body
    assert (body.get("response_format") or {}).get("type") == wire
    with pytest.raises(dfllm.ParameterError, match="structured_outputs must be one of"):
        dfllm.create_engine("e", "openai_compatible", base_url=fake.base_url, structured_outputs="grammar")

