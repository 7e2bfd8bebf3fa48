"""The house: cache identity, the option table, the engine contract and the wrong answers they fixed."""

from __future__ import annotations

import asyncio
import re
import threading
from pathlib import Path
from typing import Any

import pandas as pd
import polars as pl
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import dfllm
from dfllm.config.options import OPTION_NAMES, OPTIONS, PredictOptions, options_table_markdown
from dfllm.testing import FakeProvider, MockEngine

from .conftest import KEY

README = Path(__file__).resolve().parent.parent / "README.md"


# -- cache identity ------------------------------------------------------------------------------

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


# -- input checks ---------------------------------------------------------------------------------

@pytest.mark.parametrize("field", ["model", "messages", "stream", "n"])
def test_extra_body_may_not_replace_fields_dfllm_sets(engine: str, fake: FakeProvider, field: str) -> None:
    with pytest.raises(dfllm.ParameterError, match=f"extra_body may not set '{field}'"):
        pd.DataFrame({"t": ["x"]}).llm.predict(engine, "m", "{{t}}", "y", extra_body={field: "other"})
    assert fake.requests == []


def test_extra_body_fields_are_sent(engine: str, fake: FakeProvider) -> None:
    pd.DataFrame({"t": ["x"]}).llm.predict(engine, "m", "{{t}}", "y", extra_body={"guided_choice": ["a"]})
    assert fake.chat_requests[0].body["guided_choice"] == ["a"]


@pytest.mark.parametrize("url", ["htp//host", "api.openai.com/v1", "http://ex ample.com", " http://x.com",
                                 "ftp://host/v1", "http://", "http://host:99999/v1", "https://u:p@host/v1"])
def test_a_malformed_base_url_is_refused_when_the_engine_is_created(url: str) -> None:
    with pytest.raises(dfllm.ParameterError, match="base_url") as info:
        dfllm.create_engine("e", "openai", api_key=KEY, base_url=url)
    assert ":p@" not in str(info.value)
    assert "e" not in dfllm.list_engines()


@pytest.mark.parametrize(("options", "fragment"), [
    ({"choices": 5}, "choices must be a list of labels"),
    ({"choices": "ab"}, "choices must be a list of labels"),
    ({"choices": ["a", "a"]}, "at least two labels, each once"),
    ({"timeout_s": float("nan")}, "timeout_s must be a finite positive number"),
    ({"timeout_s": float("inf")}, "timeout_s must be a finite positive number"),
    ({"rpm": 0}, "rpm must be a finite number of requests per minute, at least 1"),
    ({"concurrency": True}, "concurrency must be a positive integer"),
    ({"stop": 3}, "stop must be a string or a list of strings"),
    ({"cache": 3}, "cache must be True, False or a file path"),
])
def test_every_bad_option_value_is_a_configuration_error(engine: str, fake: FakeProvider,
                                                         options: dict[str, Any], fragment: str) -> None:
    with pytest.raises(dfllm.ConfigurationError, match=re.escape(fragment)):
        pd.DataFrame({"t": ["x"]}).llm.predict(engine, "m", "{{t}}", "y", **options)
    assert fake.requests == []


def test_bad_option_values_in_create_engine_and_create_model_are_refused() -> None:
    with pytest.raises(dfllm.ParameterError, match="temperature must be"):
        dfllm.create_engine("e", "openai", api_key=KEY, temperature="hot")
    dfllm.create_engine("e", "openai", api_key=KEY)
    with pytest.raises(dfllm.ParameterError, match="max_tokens must be"):
        dfllm.create_model("m", engine="e", predict="y", model_name="m", prompt_template="{{t}}", max_tokens=-1)


_values = st.one_of(st.none(), st.booleans(), st.integers(-5, 10**6), st.floats(allow_nan=True),
                    st.text(max_size=8), st.lists(st.text(max_size=4), max_size=3),
                    st.dictionaries(st.text(max_size=4), st.integers(), max_size=2))
_names = st.one_of(st.sampled_from(sorted(OPTION_NAMES)), st.text(min_size=1, max_size=12))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.dictionaries(_names, _values, max_size=5))
def test_any_option_dict_raises_only_dfllm_errors_and_invalid_ones_send_nothing(options: dict[str, Any]) -> None:
    engine = MockEngine(identity=None)
    try:
        dfllm.predict(pd.DataFrame({"t": ["x"]}), engine, "m", "{{t}}", "y", progress=False,
                      **{k: v for k, v in options.items() if k != "progress"})
    except dfllm.ConfigurationError:
        assert engine.requests == []
    except dfllm.DfllmError:
        pass


# -- models and templates agree -------------------------------------------------------------------

def test_create_model_with_model_and_model_name(engine: str) -> None:
    model = dfllm.create_model("m", engine=engine, predict="y", model_name="gpt", model="gpt", prompt_template="{{t}}")
    assert model.model_name == "gpt"
    with pytest.raises(dfllm.ParameterError, match="'gpt' and model_name='other' disagree"):
        dfllm.create_model("m", engine=engine, predict="y", model_name="other", model="gpt", prompt_template="{{t}}")


def test_model_apredict_takes_options_and_the_single_row_form(engine: str, fake: FakeProvider) -> None:
    model = dfllm.create_model("m", engine=engine, predict="y", model_name="gpt", prompt_template="sentiment {{t}}")
    assert asyncio.run(model.apredict(t="great")) == "positive"
    out = asyncio.run(model.apredict(pd.DataFrame({"t": ["awful"]}), temperature=0.1))
    assert out["y"].tolist() == ["negative"]
    assert fake.chat_requests[-1].body["temperature"] == 0.1


def test_predict_takes_a_template_object(engine: str) -> None:
    template = dfllm.Template("sentiment {{t}}")
    assert dfllm.predict(pd.DataFrame({"t": ["good"]}), engine, "m", template, "y")["y"].tolist() == ["positive"]


# -- engines, providers, run results ------------------------------------------------------------

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


def test_run_results_are_values_of_their_own_call_even_when_concurrent() -> None:
    results: dict[int, dfllm.RunStats] = {}

    def call(n: int) -> None:
        stats = dfllm.RunStats()
        dfllm.predict(pd.DataFrame({"t": [f"{n}-{i}" for i in range(n)]}), MockEngine(), "m", "{{t}}", "y",
                      stats=stats)
        results[n] = stats

    threads = [threading.Thread(target=call, args=(n,)) for n in (3, 5, 8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert {n: (s.rows, s.requests) for n, s in results.items()} == {3: (3, 3), 5: (5, 5), 8: (8, 8)}


def test_predict_returns_the_callers_frame_type() -> None:
    out = dfllm.predict(pl.DataFrame({"t": ["x"]}), MockEngine(), "m", "{{t}}", "y")
    assert isinstance(out, pl.DataFrame) and out["y"].dtype == pl.String


def test_choices_over_http_are_normalised_and_come_back_categorical(engine: str, fake: FakeProvider) -> None:
    df = pd.DataFrame({"text": ["I love it", "awful", "a chair"]})
    out = df.llm.predict(engine, "m", "sentiment of {{text}}", "s", choices=["positive", "negative", "neutral"])
    assert out["s"].tolist() == ["positive", "negative", "neutral"]
    assert list(out["s"].cat.categories) == ["positive", "negative", "neutral"]
    assert all("guided_choice" not in r.body and "grammar" not in r.body for r in fake.chat_requests)


def test_a_local_model_that_fails_to_load_fails_the_call_promptly(tmp_path: Path) -> None:
    pytest.importorskip("llama_cpp")
    bogus = tmp_path / "broken.gguf"
    bogus.write_bytes(b"GGUF not really a model")
    df = pd.DataFrame({"t": [f"row {i}" for i in range(6)]})
    with pytest.raises(dfllm.BatchError) as info:
        dfllm.predict(df, "local", str(bogus), "{{t}}", "y", cache=False)
    assert len(info.value.errors) == 6
    assert all("could not load" in str(e) for e in info.value.errors.values())


# -- the option table is the single source ----------------------------------------------------------

def test_readme_options_table_is_generated_from_the_option_table() -> None:
    assert options_table_markdown() in README.read_text()


def test_predict_options_typeddict_matches_the_option_table() -> None:
    assert set(PredictOptions.__annotations__) == {o.name for o in OPTIONS}


def test_errors_cross_the_jupyter_thread_door_unchanged(engine: str, fake: FakeProvider) -> None:
    async def notebook_cell() -> None:
        pd.DataFrame({"t": ["x"]}).llm.predict(engine, "m", "{{nope}}", "y")

    with pytest.raises(dfllm.TemplateError, match="'nope'"):
        asyncio.run(notebook_cell())
    assert fake.requests == []

    async def failing_cell() -> None:
        dfllm.predict(pd.DataFrame({"t": ["x"]}), MockEngine(handler=lambda r: dfllm.BadRequestError("no")),
                      "m", "{{t}}", "y")

    with pytest.raises(dfllm.BatchError, match="1 of 1 rows failed"):
        asyncio.run(failing_cell())


@pytest.mark.local
def test_the_demo_runs_offline_on_the_bundled_model() -> None:
    import subprocess
    import sys

    pytest.importorskip("llama_cpp")
    done = subprocess.run([sys.executable, "-m", "dfllm.demo"], capture_output=True, text=True, timeout=300,
                          check=False)
    assert done.returncode == 0, done.stderr
    assert "8 rows in" in done.stdout and "on the local engine" in done.stdout
    labels = {line.split()[-1] for line in done.stdout.splitlines()[1:9]}
    assert labels <= {"positive", "neutral", "negative"}


@pytest.mark.parametrize("extra", [{"x": float("nan")}, {"x": {1, 2}}, {"x": float("inf")}])
def test_extra_body_that_is_not_strict_json_is_refused_before_any_request(
        engine: str, fake: FakeProvider, extra: dict[str, Any]) -> None:
    with pytest.raises(dfllm.ParameterError, match="extra_body must be plain JSON"):
        pd.DataFrame({"t": ["x"]}).llm.predict(engine, "m", "{{t}}", "y", extra_body=extra)
    assert fake.requests == []


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


def test_cache_namespace_separates_engines_whose_key_routes(fake: FakeProvider) -> None:
    df = pd.DataFrame({"q": ["x"]})
    dfllm.create_engine("a", "openai_compatible", base_url=fake.base_url, api_key="team-a", cache_namespace="a")
    dfllm.create_engine("b", "openai_compatible", base_url=fake.base_url, api_key="team-b", cache_namespace="b")
    dfllm.predict(df, "a", "m", "{{q}}", "y")
    dfllm.predict(df, "b", "m", "{{q}}", "y")
    dfllm.predict(df, "a", "m", "{{q}}", "y")
    assert len(fake.chat_requests) == 2


def test_predict_on_a_lazy_frame_is_lazy(engine: str, fake: FakeProvider) -> None:
    lazy = dfllm.predict(pl.LazyFrame({"t": ["good", "bad"]}), engine, "m", "sentiment {{t}}", "y")
    assert isinstance(lazy, pl.LazyFrame) and fake.requests == []
    assert lazy.collect()["y"].to_list() == ["positive", "negative"]


# -- review fixes ------------------------------------------------------------------------------------

def test_a_completion_budget_under_either_name_is_checked_against_tpm(engine: str, fake: FakeProvider) -> None:
    for name in ("max_tokens", "max_completion_tokens"):
        with pytest.raises(dfllm.ParameterError, match="can never fit under tpm=100"):
            pd.DataFrame({"t": ["x"]}).llm.predict(engine, "m", "{{t}}", "y", tpm=100, **{name: 5000})
    assert fake.requests == []


@pytest.mark.parametrize(("cache", "fragment"), [
    ("nope://bucket/x", "not a protocol fsspec knows"),
    ("", "cache must be True, False or a file path"),
])
def test_a_cache_location_that_cannot_work_is_refused_before_any_request(
        engine: str, fake: FakeProvider, cache: str, fragment: str) -> None:
    with pytest.raises(dfllm.ParameterError, match=re.escape(fragment)):
        pd.DataFrame({"t": ["x"]}).llm.predict(engine, "m", "{{t}}", "y", cache=cache)
    assert fake.requests == []


def test_extra_body_may_not_bypass_a_checked_option(engine: str, fake: FakeProvider) -> None:
    with pytest.raises(dfllm.ParameterError, match=r"pass temperature=\.\.\. as an option"):
        pd.DataFrame({"t": ["x"]}).llm.predict(engine, "m", "{{t}}", "y", extra_body={"temperature": 99})
    assert fake.requests == []


def test_stats_must_be_run_stats_and_apredict_refuses_lazy_frames() -> None:
    with pytest.raises(dfllm.ParameterError, match=r"stats must be a dfllm\.RunStats"):
        dfllm.predict(pd.DataFrame({"t": ["x"]}), MockEngine(), "m", "{{t}}", "y", stats=5)  # type: ignore[arg-type]
    with pytest.raises(dfllm.ParameterError, match=r"call dfllm\.predict on it"):
        asyncio.run(dfllm.apredict(pl.LazyFrame({"t": ["x"]}), MockEngine(), "m", "{{t}}", "y"))


def test_a_model_with_a_schema_answers_one_row_as_a_dict_of_its_fields(engine: str) -> None:
    model = dfllm.create_model("m", engine=engine, predict="r", model_name="gpt", prompt_template="Read {{t}}",
                               schema={"n": int, "word": str})
    answer = model.predict(t="hello")
    assert isinstance(answer, dict) and set(answer) == {"n", "word"}
    assert isinstance(answer["n"], int) and isinstance(answer["word"], str)


def test_a_model_predicts_a_lazy_frame_lazily(engine: str, fake: FakeProvider) -> None:
    model = dfllm.create_model("m", engine=engine, predict="y", model_name="gpt", prompt_template="sentiment {{t}}")
    lazy = model.predict(pl.LazyFrame({"t": ["good"]}))
    assert isinstance(lazy, pl.LazyFrame) and fake.requests == []
    assert lazy.collect()["y"].to_list() == ["positive"]


def test_an_estimate_of_a_few_rows_takes_at_least_one_round_trip(engine: str) -> None:
    estimate = dfllm.estimate(pd.DataFrame({"t": ["a", "b"]}), engine, "m", "{{t}}", "y", latency_s=1.5)
    assert estimate.wall_s >= 1.5
    with pytest.raises(dfllm.ConfigurationError) as info:
        dfllm.estimate(pd.DataFrame({"t": ["a"]}), engine, "m", "{{t}}", "y", latency_s=0, prompt_price=-1)
    assert "latency_s must be" in str(info.value) and "prompt_price must be" in str(info.value)


@pytest.mark.parametrize("target", ["self", "df", "index", "columns"])
def test_a_target_named_like_a_frame_attribute_gets_its_own_column(engine: str, target: str) -> None:
    for df in (pd.DataFrame({"t": ["good"]}), pl.DataFrame({"t": ["good"]})):
        out = dfllm.predict(df, engine, "m", "sentiment {{t}}", target)
        assert list(out[target]) == ["positive"] and list(out.columns) == ["t", target]
