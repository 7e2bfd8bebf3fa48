"""Each seed provider, over loopback: URL path, auth and extra headers, body fields, seed examples."""

from __future__ import annotations

import pandas as pd
import pytest

import dfllm
from dfllm.engines import PROVIDERS
from dfllm.testing import FakeProvider

SENTIMENT = ("Classify the sentiment of the following text as one of `positive`, `neutral` or "
             "`negative`: {{text}}")


@pytest.mark.parametrize(("provider", "url", "env"), [
    ("openai", "https://api.openai.com/v1", "OPENAI_API_KEY"),
    ("mindsdb_inference", "https://llm.mdb.ai", "MINDSDB_API_KEY"),
    ("anyscale_endpoints", "https://api.endpoints.anyscale.com/v1", "ANYSCALE_API_KEY"),
    ("portkey", "https://api.portkey.ai/v1", "PORTKEY_API_KEY"),
])
def test_provider_presets_match_the_table(provider: str, url: str, env: str,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    assert PROVIDERS[provider].base_url == url
    assert PROVIDERS[provider].key_env == env
    with pytest.raises(dfllm.MissingAPIKeyError, match=env):
        dfllm.create_engine("e", provider)
    monkeypatch.setenv(env, "from-env")
    assert dfllm.create_engine("e", provider).base_url == url  # no request made: configuration only


@pytest.mark.parametrize(("provider", "key_param", "header", "value"), [
    ("openai", "openai_api_key", "Authorization", "Bearer k1"),
    ("mindsdb_inference", "mindsdb_inference_api_key", "Authorization", "Bearer k1"),
    ("anyscale_endpoints", "anyscale_endpoints_api_key", "Authorization", "Bearer k1"),
    ("portkey", "portkey_api_key", "x-portkey-api-key", "k1"),
])
def test_seed_key_names_reach_the_right_header(provider: str, key_param: str, header: str, value: str) -> None:
    with FakeProvider() as fake:
        dfllm.create_engine("e", provider, base_url=fake.base_url, **{key_param: "k1"})
        pd.DataFrame({"t": ["x"]}).llm.predict("e", "some-model", "{{t}}", "y", temperature=0.3)
        [request] = fake.chat_requests
    assert request.path == "/v1/chat/completions"
    assert request.headers[header] == value
    assert request.body["model"] == "some-model" and request.body["temperature"] == 0.3


def test_mindsdb_seed_example_sentiment_with_mistral_7b() -> None:
    # CREATE ML_ENGINE mindsdb_serve FROM mindsdb_inference USING mindsdb_inference_api_key = '...'
    with FakeProvider() as fake:
        dfllm.create_engine("mindsdb_serve", "mindsdb_inference", mindsdb_inference_api_key="api-key-value",
                            base_url=fake.base_url)
        model = dfllm.create_model("mindsdb_inference_model", engine="mindsdb_serve", predict="sentiment",
                                   model_name="mistral-7b", prompt_template=SENTIMENT)
        assert model.predict(text="I love machine learning!") == "positive"
        assert fake.chat_requests[0].body["model"] == "mistral-7b"
        assert fake.chat_requests[0].headers["Authorization"] == "Bearer api-key-value"


def test_anyscale_seed_example_and_model_card() -> None:
    with FakeProvider() as fake:
        dfllm.create_engine("anyscale_endpoints_engine", "anyscale_endpoints",
                            anyscale_endpoints_api_key="api-key-value", base_url=fake.base_url)
        model = dfllm.create_model("anyscale_endpoints_model", engine="anyscale_endpoints_engine",
                                   predict="sentiment", model_name="mistralai/Mistral-7B-Instruct-v0.1",
                                   prompt_template=SENTIMENT)
        out = model.predict(pd.DataFrame({"text": ["I love machine learning!"]}))
        assert out[["text", "sentiment"]].values.tolist() == [["I love machine learning!", "positive"]]
        assert fake.chat_requests[0].body["model"] == "mistralai/Mistral-7B-Instruct-v0.1"
    assert model.describe()["model_card"] == "https://huggingface.co/mistralai/Mistral-7B-Instruct-v0.1"


def test_anyscale_seed_misspelling_gets_a_helpful_error() -> None:
    dfllm.create_engine("a", "anyscale_endpoints", api_key="k", base_url="http://127.0.0.1:9/v1")
    with pytest.raises(dfllm.ParameterError) as info:
        dfllm.create_model("m", engine="a", predict="target_column", model_name="x",
                           prompt_teplate="prompt-to-the-model")
    assert "Unknown USING parameter 'prompt_teplate'. Did you mean 'prompt_template'?" in str(info.value)


def test_portkey_seed_example_defaults_and_top_level_fields() -> None:
    with FakeProvider() as fake:
        dfllm.create_engine("portkey_engine", "portkey", portkey_api_key="your-portkey-api-key",
                            base_url=fake.base_url, virtual_key="vk-123", config="cfg-1")
        model = dfllm.create_model("portkey_model", engine="portkey_engine", predict="answer",
                                   column="question", max_tokens=300, model="claude-2.1")
        out = model.predict(pd.DataFrame({"question": ["Where is Stockholm located?"]}))
        assert "capital and largest city of Sweden" in out["answer"].iloc[0]
        defaults = dfllm.create_model("d", engine="portkey_engine", predict="answer", column="question")
        defaults.predict(pd.DataFrame({"question": ["Hi?"]}))
        first, second = fake.chat_requests
    # Parameters are top-level body fields (MindsDB's handler nested them under `using`).
    assert first.body == {"model": "claude-2.1", "max_tokens": 300,
                          "messages": [{"role": "user", "content": "Where is Stockholm located?"}]}
    assert (second.body["model"], second.body["max_tokens"]) == ("claude-2.1", 100)
    assert first.headers["x-portkey-api-key"] == "your-portkey-api-key"
    assert first.headers["x-portkey-virtual-key"] == "vk-123"
    assert first.headers["x-portkey-config"] == "cfg-1"
    assert "Authorization" not in first.headers


def test_portkey_provider_header_with_the_providers_own_key() -> None:
    with FakeProvider() as fake:
        dfllm.create_engine("pk", "portkey", api_key="pk-key", provider="openai", provider_api_key="sk-openai",
                            base_url=fake.base_url)
        pd.DataFrame({"q": ["x"]}).llm.predict("pk", "gpt-4o-mini", "{{q}}", "a")
        headers = fake.chat_requests[0].headers
    assert headers["x-portkey-provider"] == "openai"
    assert headers["Authorization"] == "Bearer sk-openai"
    assert headers["x-portkey-api-key"] == "pk-key"


def test_nan_in_a_portkey_column_is_a_null_answer_not_a_crash() -> None:
    with FakeProvider() as fake:
        dfllm.create_engine("pk", "portkey", api_key="k", base_url=fake.base_url)
        model = dfllm.create_model("m", engine="pk", predict="answer", column="question")
        out = model.predict(pd.DataFrame({"question": ["Where is Stockholm located?", float("nan")]}))
        assert len(fake.chat_requests) == 1
    assert out["answer"].isna().tolist() == [False, True]


def test_model_options_are_overridden_per_call() -> None:
    with FakeProvider() as fake:
        dfllm.create_engine("e", "openai", api_key="k", base_url=fake.base_url, temperature=0.1)
        model = dfllm.create_model("m", engine="e", predict="y", model_name="gpt-4o-mini",
                                   prompt_template="{{t}}", temperature=0.5, max_tokens=20)
        df = pd.DataFrame({"t": ["a"]})
        model.predict(df)
        df.llm.predict(model, temperature=0.9)
        dfllm.predict(df, model, max_tokens=3, cache=False)
        bodies = [r.body for r in fake.chat_requests]
    assert [(b["temperature"], b["max_tokens"]) for b in bodies] == [(0.5, 20), (0.9, 20), (0.5, 3)]


def test_list_models_is_fetched_once_per_engine_and_describe_asks_the_provider() -> None:
    with FakeProvider() as fake:
        dfllm.create_engine("e", "mindsdb_inference", api_key="k", base_url=fake.base_url)
        assert "mistral-7b" in dfllm.list_models("e")
        assert "mistral-7b" in dfllm.list_models("e")
        model = dfllm.create_model("m", engine="e", predict="y", model_name="mistral-7b", prompt_template="{{t}}")
        assert model.describe()["id"] == "mistral-7b"
        paths = [r.path for r in fake.requests]
        assert paths == ["/v1/models", "/v1/models/mistral-7b"]
        assert fake.requests[0].headers["Authorization"] == "Bearer k"
        missing = dfllm.create_model("x", engine="e", predict="y", model_name="nope", prompt_template="{{t}}")
        with pytest.raises(dfllm.BadRequestError, match="does not exist"):
            missing.describe()


def test_openai_compatible_servers_need_no_key_but_a_base_url() -> None:
    with pytest.raises(dfllm.ParameterError, match="needs base_url"):
        dfllm.create_engine("v", "openai_compatible")
    with FakeProvider() as fake:
        dfllm.create_engine("vllm", "openai_compatible", base_url=fake.base_url)
        pd.DataFrame({"t": ["x"]}).llm.predict("vllm", "my-model", "{{t}}", "y")
        assert "Authorization" not in fake.chat_requests[0].headers
