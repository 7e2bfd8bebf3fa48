"""Bad input: one clear error before any request, listing every problem; secrets never shown."""

from __future__ import annotations

import pandas as pd
import pytest

import dfllm
from dfllm.testing import FakeProvider

from .conftest import KEY

DF = pd.DataFrame({"text": ["a"], "author": ["b"]})


def test_missing_columns_bad_options_and_no_model_all_reported_before_any_request(
        engine: str, fake: FakeProvider) -> None:
    with pytest.raises(dfllm.ConfigurationError) as info:
        DF.llm.predict(engine, None, "{{txt}} {{user}}", "", temperature=9, concurency=3, errors="ignore")
    message = str(info.value)
    for fragment in ("'txt'", "Did you mean 'text'?", "'user'", "Available columns: ['text', 'author']",
                     "temperature must be a number from 0 to 2, got 9", "Unknown option 'concurency'",
                     "Did you mean 'concurrency'?", "errors must be one of 'raise', 'null'", "model must be",
                     "target must be"):
        assert fragment in message, fragment
    assert fake.requests == []


def test_unknown_engine_names_the_fix() -> None:
    with pytest.raises(dfllm.UnknownEngineError) as info:
        DF.llm.predict("mindsdb_serve", "mistral-7b", "{{text}}", "y")
    assert "dfllm.create_engine('mindsdb_serve'" in str(info.value)
    with pytest.raises(dfllm.UnknownEngineError, match="Did you mean 'openai'"):
        dfllm.create_engine("x", "opnai", api_key="k")


def test_missing_key_names_parameter_and_environment_variable() -> None:
    with pytest.raises(dfllm.MissingAPIKeyError) as info:
        DF.llm.predict("openai", "gpt-4o-mini", "{{text}}", "y")
    assert "'openai_api_key' or 'api_key'" in str(info.value) and "OPENAI_API_KEY" in str(info.value)


def test_unknown_using_parameter_gets_did_you_mean() -> None:
    with pytest.raises(dfllm.ParameterError, match="Did you mean 'max_tokens'"):
        dfllm.create_engine("x", "openai", api_key="k", max_token=5)


def test_wrong_frame_type() -> None:
    with pytest.raises(dfllm.ParameterError, match="supported library"):
        dfllm.predict({"text": ["a"]}, "openai", "m", "{{text}}", "y")


def test_secret_never_in_repr_message_or_error(fake: FakeProvider) -> None:
    config = dfllm.create_engine("t", "openai", api_key=KEY, base_url=fake.base_url)
    assert KEY not in repr(config) and KEY not in str(config)
    assert KEY not in repr(config.headers)
    with FakeProvider(api_key="another-key") as strict:
        dfllm.create_engine("bad", "openai", api_key=KEY, base_url=strict.base_url)
        with pytest.raises(dfllm.AuthenticationError) as info:
            DF.llm.predict("bad", "m", "{{text}}", "y")
    assert KEY not in str(info.value) and KEY not in repr(info.value)


def test_secret_refuses_pickling() -> None:
    import pickle

    config = dfllm.create_engine("t", "openai", api_key=KEY, base_url="http://127.0.0.1:9/v1")
    with pytest.raises(TypeError, match="cannot be pickled"):
        pickle.dumps(config)
