"""Each seed provider, over loopback: URL path, auth and extra headers, body fields, seed examples."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import random
import string
import threading
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

import pandas as pd
import pytest
from aiohttp import web
from hypothesis import given
from hypothesis import strategies as st

import dfllm
from dfllm.config.secrets import Scrubber, shown_url, url_secrets
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


# -- a server of the test's own, on a background loop ----------------------------------------------

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@contextlib.contextmanager
def serving(handler: Handler) -> Iterator[tuple[str, list[str]]]:
    """``handler`` answers every request on 127.0.0.1; yields the server's root URL and the paths it got."""
    paths: list[str] = []

    async def record(request: web.Request) -> web.StreamResponse:
        paths.append(request.path_qs)
        return await handler(request)

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", record)
    runner = web.AppRunner(app)
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()

    async def start() -> int:
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        return int(runner.addresses[0][1])

    port = asyncio.run_coroutine_threadsafe(start(), loop).result(timeout=10)
    try:
        yield f"http://127.0.0.1:{port}", paths
    finally:
        asyncio.run_coroutine_threadsafe(runner.cleanup(), loop).result(timeout=10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=10)
        loop.close()


def _completion(text: str) -> web.Response:
    return web.json_response({"id": "c", "object": "chat.completion", "model": "m", "choices": [
        {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}]})


# -- Portkey: schemas follow the routed provider, the seed's max_tokens stays with create_model -------

SCHEMA = {"city": str}


@pytest.mark.parametrize(("routing", "json_schema"), [
    ({"provider": "openai"}, True),
    ({"config": {"provider": "openai", "api_key": "sk-upstream-0000000000"}}, True),
    ({"config": {"strategy": {"mode": "fallback"}, "targets": [{"provider": "openai"}, {"provider": "openai"}]}},
     True),
    ({"provider": "openai", "structured_outputs": "prompt"}, False),  # the override wins
    ({"provider": "anthropic"}, False),
    ({"virtual_key": "vk-0123456789"}, False),  # where it routes is not visible from here
    ({"config": {"strategy": {"mode": "fallback"}, "targets": [{"provider": "openai"}, {"provider": "anthropic"}]}},
     False),
    # A config that decides the route overrides the provider header, as the gateway does: when it
    # reaches several providers, or one behind a virtual key, the routed provider is unknown.
    ({"provider": "openai", "config": {"strategy": {"mode": "fallback"},
                                       "targets": [{"provider": "openai"}, {"provider": "anthropic"}]}}, False),
    ({"provider": "openai", "config": {"strategy": {"mode": "loadbalance"},
                                       "targets": [{"virtual_key": "vk-anthropic"}, {"provider": "openai"}]}}, False),
    ({"provider": "openai", "config": {"provider": "anthropic"}}, False),
    ({"provider": "openai", "config": "pc-saved-0123"}, False),  # a saved config's id: routes anywhere
    ({"provider": "openai", "virtual_key": "vk-0123456789"}, False),
    ({"config": {"provider": "openai", "targets": [{"provider": "anthropic"}, {"api_key": "sk-up-000000"}]}}, False),
    # Targets inherit their parent's provider; a config that does not route leaves it to the header.
    ({"config": {"provider": "openai", "targets": [{"api_key": "sk-up-000000"}, {"api_key": "sk-up-111111"}]}}, True),
    ({"provider": "openai", "config": {"cache": {"mode": "simple"}}}, True),
    ({"provider": "anthropic", "config": {"strategy": {"mode": "fallback"}, "targets": [{"provider": "openai"}]},
      "structured_outputs": "json_schema"}, True),
])
def test_portkey_asks_for_a_schema_as_the_routed_provider_takes_it(routing: dict[str, object],
                                                                   json_schema: bool) -> None:
    with FakeProvider() as fake:
        dfllm.create_engine("pk", "portkey", api_key="pk-key", base_url=fake.base_url, **routing)
        pd.DataFrame({"q": ["Where is Stockholm?"]}).llm.predict("pk", "gpt-4o-mini", "{{q}}", "a", schema=SCHEMA,
                                                                 errors="null")
        body = fake.chat_requests[0].body
    sent = body.get("response_format", {}).get("type")
    assert sent == ("json_schema" if json_schema else None)
    assert (body["messages"][0]["role"] == "system") is not json_schema  # the prompt-described schema


def test_portkey_sends_the_seeds_max_tokens_only_from_create_model_and_shows_it() -> None:
    df = pd.DataFrame({"question": ["Where is Stockholm located?"]})
    with FakeProvider() as fake:
        dfllm.create_engine("pk", "portkey", api_key="k", base_url=fake.base_url)
        df.llm.predict("pk", "claude-2.1", "{{question}}", "answer")
        model = dfllm.create_model("m", engine="pk", predict="answer", column="question")
        model.predict(df, cache=False)
        dfllm.create_engine("pk50", "portkey", api_key="k", base_url=fake.base_url, max_tokens=50)
        dfllm.create_model("m50", engine="pk50", predict="answer", column="question").predict(df, cache=False)
        sent = [r.body.get("max_tokens") for r in fake.chat_requests]
    assert sent == [None, 100, 50]  # a plain predict, the seed's model default, the engine's own
    assert "'max_tokens': 100" in repr(model)


def test_listing_models_through_a_self_hosted_portkey_gateway_says_whose_list_failed() -> None:
    async def crash(request: web.Request) -> web.StreamResponse:
        return web.json_response({"status": "failure", "message": "Something went wrong"}, status=500)

    with serving(crash) as (root, paths):
        dfllm.create_engine("gw", "portkey", base_url=f"{root}/v1", provider="openai", provider_api_key="sk-x")
        with pytest.raises(dfllm.ServerError) as info:
            dfllm.list_models("gw")
    assert paths == ["/v1/models"]
    message = str(info.value)
    assert message.startswith(f"Listing the models of engine 'gw' at {root}/v1 failed: ")
    assert "HTTP 500: Something went wrong" in message and "its /v1/models fails" in message
    assert "List the models at the upstream provider" in message and info.value.status == 500


# -- a key pasted into base_url ------------------------------------------------------------------------

PASTED = "sk-proj-Zq8Xw2Lr9Tn4Vb7Hc1Md"


def test_a_key_in_base_urls_path_is_sent_but_never_shown(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("DFLLM_CACHE_DIR", str(tmp_path / "cache"))

    async def deployment(request: web.Request) -> web.StreamResponse:
        body = await request.json()
        if body["messages"][-1]["content"] == "ok":
            return _completion("fine")
        # A server that quotes the request URL back, key and all, in either encoding.
        return web.json_response({"error": {"message": f"No deployment at {request.url} ({request.raw_path})"}},
                                 status=400)

    with serving(deployment) as (root, paths):
        engine = dfllm.create_engine("e", "openai_compatible", base_url=f"{root}/{PASTED}/v1")
        out = pd.DataFrame({"t": ["ok", "bad"]}).llm.predict("e", "m", "{{t}}", "y", errors="null")
        refused = pd.DataFrame({"t": ["ok"]}).llm.predict(
            dfllm.create_engine("down", "openai_compatible", base_url=f"http://127.0.0.1:9/{PASTED}/v1"),
            "m", "{{t}}", "y", errors="null", max_retries=0)
    assert sorted(paths) == [f"/{PASTED}/v1/chat/completions"] * 2  # sent as given
    assert out["y"].tolist()[0] == "fine"
    shown = [repr(engine), str(engine), repr(engine.connect()), *map(str, out["y_error"]),
             *map(str, refused["y_error"])]
    assert out["y_error"][1].startswith("BadRequestError") and refused["y_error"][0].startswith("TransportError")
    assert "***" in repr(engine) and all(PASTED not in text and PASTED[3:] not in text for text in shown)
    cache = b"".join(p.read_bytes() for p in (tmp_path / "cache").rglob("*") if p.is_file())
    assert cache and PASTED.encode() not in cache and PASTED[3:].encode() not in cache


def test_a_key_in_base_urls_query_is_refused_without_quoting_it() -> None:
    with pytest.raises(dfllm.ConfigurationError) as info:
        dfllm.create_engine("e", "openai_compatible", base_url=f"https://example.com/v1?api-key={PASTED}")
    with pytest.warns(UserWarning, match="clear text") as warned:
        dfllm.create_engine("w", "openai", api_key="k", base_url=f"http://example.com/{PASTED}/v1")
    messages = [str(info.value), *(str(w.message) for w in warned)]
    assert "must not have a query or fragment" in messages[0] and "https://example.com/v1?***" in messages[0]
    assert all(PASTED not in m and PASTED[3:] not in m for m in messages)


@given(st.text(string.ascii_letters + string.digits + "-_", min_size=6, max_size=64),
       st.sampled_from(["sk-", "sk-proj-", "sk-ant-", "sk_live_", "gsk_", "hf_", "ghp_", "github_pat_", "glpat-",
                        "nvapi-", "xai-", "pplx-", "r8_", "fw_", "csk-", "SK-"]))
def test_a_token_after_a_vendors_key_prefix_is_masked_in_any_path_segment(token: str, prefix: str) -> None:
    key = prefix + token
    for url in (f"https://gw.example.com/{key}/v1", f"https://gw.example.com/v1/{key}", f"http://h:1/a/{key}/b",
                f"https://h/v1/Bearer%20{key}", f"https://h/v1/key:{key}"):
        assert key not in shown_url(url) and "***" in shown_url(url)
        assert any(key in secret.reveal() for secret in url_secrets(url))


def test_random_tokens_are_masked_and_the_share_missed_is_measured() -> None:
    rng = random.Random(16)
    base62 = string.ascii_letters + string.digits
    tokens = ["".join(rng.choice(base62) for _ in range(rng.randint(24, 48))) for _ in range(2000)]
    tokens += [base64.urlsafe_b64encode(rng.randbytes(rng.randint(18, 36))).decode().rstrip("=") for _ in range(2000)]
    missed = [t for t in tokens if shown_url(f"https://h/{t}/v1") != "https://h/***/v1"]
    assert len(missed) / len(tokens) < 0.02, len(missed)
    for key in ("qzmvbtkwhxjfplrngdycsaeo", "nvapi-Xy3_kP9-mQ2_wR7-tZ5_bN8-cV4", "Xk9fQ2mZ7pL4wR8tY3vB6nC1",
                "AKIAIOSFODNN7EXAMPLE", "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0.dozjgNryP4J3jVmNHl0w5N_X"):
        assert shown_url(f"https://h/{key}/v1") == "https://h/***/v1", key


NAMES_IN_URLS = [
    "https://x.openai.azure.com/openai/deployments/gpt4o20240806deployment",
    "https://x.openai.azure.com/openai/deployments/prod-gpt4o-eastus2-deployment01",
    "https://x.openai.azure.com/openai/deployments/text-embedding-3-large",
    "https://h/v1/deepseekr1distillqwen32b", "https://h/v1/DeepSeek-R1-Distill-Qwen-32B",
    "https://h/v1/Qwen2.5-72B-Instruct-GPTQ-Int4", "https://h/v1/Llama-4-Maverick-17B-128E-Instruct-FP8",
    "https://h/v1/Nous-Hermes-2-Mixtral-8x7B-DPO", "https://h/v1/llama3.1:70b-instruct-q4_K_M",
    "https://h/v1/customersupportassistantv2", "https://h/v1/accountsdeveloperplayground",
    "https://gateway.ai.cloudflare.com/v1/3b9f2c1d8e7a6b5c4d3e2f1a0b9c8d7e/my-gateway/openai",
    "https://us-central1-aiplatform.googleapis.com/v1/projects/my-gcp-project-4f2a9/locations/us-central1/endpoints/o",
    "https://bedrock-runtime.ap-southeast-2.amazonaws.com/model/anthropic.claude-3-5-sonnet-20241022-v2:0",
    "https://h/v1/e5f7a9c2-1b3d-4e6f-8a9b-0c1d2e3f4a5b",
]


@pytest.mark.parametrize("url", NAMES_IN_URLS)
def test_names_and_identifiers_in_urls_stay_visible_and_in_answers(url: str) -> None:
    assert shown_url(url) == url and url_secrets(url) == []
    words = [part for part in url.split("/")[3:] if part]
    # Nothing of the URL is a secret, so an answer naming the deployment keeps it.
    assert Scrubber(url_secrets(url))(" ".join(words)) == " ".join(words)


@pytest.mark.parametrize("url", ["https://api.openai.com/v1", "http://127.0.0.1:8000/v1",
                                 "https://x.openai.azure.com/openai/deployments/gpt-4o-mini-2024-07-18",
                                 "https://h/v1/meta-llama/Meta-Llama-3-70B-Instruct",
                                 "https://h/v1/123e4567-e89b-12d3-a456-426614174000/chat"])
def test_ordinary_urls_are_shown_whole(url: str) -> None:
    assert shown_url(url) == url and url_secrets(url) == []
