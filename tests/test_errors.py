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


# -- errors are ours: what used to escape raw is a ConfigurationError before any request -----------
def _deep_schema(depth: int) -> dict[str, object]:
    node: dict[str, object] = {"type": "string"}
    for _ in range(depth):
        node = {"type": "array", "items": node}
    return {"type": "object", "properties": {"x": node}}


@pytest.mark.parametrize(("schema", "fragments"), [
    ({"type": "object", "properties": {"x": {"enum": [[1, 2], [3]]}}},
     ["schema.x: enum/const values must be strings, numbers, booleans or null, got [[1, 2], [3]]"]),
    ({"type": "object", "properties": {"x": {"enum": [{"a": 1}, "b"]}}},
     ["got [{'a': 1}]", "'type': 'array' or 'object'"]),
    ({"type": "object", "properties": {"x": {"const": {"a": 1}}}}, ["got [{'a': 1}]"]),
    (_deep_schema(3000), ["schema is nested more than 64 levels deep"]),
    ({"type": "object", "properties": {"age": {"type": "integer"}}, "required": ["age", "agee"]},
     ["schema: required names ['agee'], which is not among its properties ['age']", "add it to properties"]),
    ({"type": "object", "properties": {"p": {"type": "object", "properties": {"a": {"type": "string"}},
                                             "required": ["b"]}}}, ["schema.p: required names ['b']"]),
])
def test_schemas_that_raised_raw_errors_are_refused_before_any_request(
        schema: dict[str, object], fragments: list[str], engine: str, fake: FakeProvider) -> None:
    with pytest.raises(dfllm.ConfigurationError) as info:
        DF.llm.predict(engine, "m", "{{text}}", "y", schema=schema)
    for fragment in fragments:
        assert fragment in str(info.value), fragment
    assert fake.requests == []


def test_every_schema_problem_and_every_other_problem_are_listed_together(engine: str, fake: FakeProvider) -> None:
    schema = {"type": "object", "required": ["c"], "properties": {
        "a": {"enum": [[1]]}, "b": {"type": "object", "properties": {"x": {"type": "integer"}}, "required": ["y"]}}}
    with pytest.raises(dfllm.ConfigurationError) as info:
        DF.llm.predict(engine, "m", "{{text}}", "y", schema=schema, concurrency=10**9, system="a\udc80b")
    message = str(info.value)
    for fragment in ("schema: required names ['c']", "schema.a: enum/const", "schema.b: required names ['y']",
                     "concurrency must be a positive integer, at most 4,096", "got 1000000000",
                     "system holds a lone surrogate '\\udc80' at position 1"):
        assert fragment in message, fragment
    assert fake.requests == []


def test_a_schema_nested_within_the_bound_is_accepted(engine: str, fake: FakeProvider) -> None:
    out = DF.llm.predict(engine, "m", "{{text}}", "y", schema=_deep_schema(20), errors="null")
    assert len(fake.chat_requests) == 1 and out["y_x"].notna().all()


@pytest.mark.parametrize("concurrency", [10**9, 4097, 0])
def test_concurrency_is_bounded(concurrency: int, engine: str, fake: FakeProvider) -> None:
    with pytest.raises(dfllm.ParameterError, match=f"at most 4,096 .*got {concurrency}"):
        DF.llm.predict(engine, "m", "{{text}}", "y", concurrency=concurrency)
    assert fake.requests == []


@pytest.mark.parametrize("options", [
    {"system": "\ud800 be brief"}, {"choices": ["yes", "n\udfffo"]}, {"stop": ["\udc80"]}, {"user": "u\ud800"},
    {"extra_body": {"tag": ["\udfff"]}}, {"extra_body": {"k\ud800": 1}},
])
def test_a_lone_surrogate_in_an_option_is_refused_before_any_request(
        options: dict[str, object], engine: str, fake: FakeProvider) -> None:
    with pytest.raises(dfllm.ParameterError, match=r"lone surrogate .* cannot be sent"):
        DF.llm.predict(engine, "m", "{{text}}", "y", **options)
    assert fake.requests == []


def test_a_lone_surrogate_in_the_model_is_refused_before_any_request(engine: str, fake: FakeProvider) -> None:
    with pytest.raises(dfllm.ParameterError, match=r"model holds a lone surrogate"):
        DF.llm.predict(engine, "gpt-\udc80", "{{text}}", "y")
    assert fake.requests == []


def test_a_lone_surrogate_in_a_cell_is_that_rows_error_and_the_row_is_not_sent(
        engine: str, fake: FakeProvider) -> None:
    df = pd.DataFrame({"text": pd.Series(["fine", "bad \udc9f cell", "also fine"], dtype=object), "n": [1, 2, 3]})
    out = df.llm.predict(engine, "m", "{{text}} {{n}}", "y", errors="null")
    assert [r.prompt for r in sorted(fake.chat_requests, key=lambda r: r.prompt)] == ["also fine 3", "fine 1"]
    assert out["y"].isna().tolist() == [False, True, False]
    error = out["y_error"][1]
    assert error.startswith("TemplateError: The cell of column 'text' holds a lone surrogate '\\udc9f' at position 4")
    with pytest.raises(dfllm.BatchError) as info:
        df.llm.predict(engine, "m", "{{text}} {{n}}", "y")
    assert list(info.value.errors) == [1] and info.value.partial["y"].notna().tolist() == [True, False, True]
