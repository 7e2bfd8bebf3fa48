"""Bad input: one clear error before any request, listing every problem; secrets never shown."""

from __future__ import annotations

import enum
import json
import math
from typing import Any, Literal

import pandas as pd
import pydantic
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import dfllm
from dfllm.outputs.schema import normalise_schema
from dfllm.testing import FakeProvider
from tests.conftest import KEY

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


@pytest.mark.parametrize("library", ["pandas", "polars"])
def test_a_lone_surrogate_in_the_target_is_refused_with_every_other_problem_before_any_request(
        library: str, engine: str, fake: FakeProvider) -> None:
    import polars as pl

    df = DF if library == "pandas" else pl.from_pandas(DF)
    with pytest.raises(dfllm.ConfigurationError) as info:
        dfllm.predict(df, engine, "m", "{{text}}", "y\ud800", errors="null", temperature=9)
    message = str(info.value)
    assert "target holds a lone surrogate '\\ud800' at position 1" in message
    assert "temperature must be a number from 0 to 2" in message
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


# -- every malformed part of a schema is a ConfigurationError before any request ----------------------
def _props(node: object) -> dict[str, object]:
    return {"type": "object", "properties": {"a": node}}


class _Described(pydantic.BaseModel):
    a: int = pydantic.Field(description="age \ud800")


class _Chosen(enum.Enum):
    ODD = "odd \udc00"


@pytest.mark.parametrize(("schema", "fragment"), [
    (_props({"enum": ["\ud800", "b"]}), "schema.properties.a.enum[0] holds a lone surrogate '\\ud800'"),
    ({"type": "object", "properties": {"\ud800": {"type": "integer"}}},
     "schema.properties.\\ud800: the name holds a lone surrogate '\\ud800'"),
    ({"\ud800": int}, "schema.\\ud800: the name holds a lone surrogate"),
    ({"a": Literal["\ud800", "x"]}, "schema.a[0] holds a lone surrogate '\\ud800'"),
    ({"a": list[Literal["x", "y\udfff"]]}, "schema.a[0][1] holds a lone surrogate '\\udfff' at position 1"),
    (_Described, "schema _Described's JSON Schema.properties.a.description holds a lone surrogate '\\ud800'"),
    ({"a": _Chosen}, "schema.a.ODD holds a lone surrogate '\\udc00' at position 4"),
    ({"type": "object", "$defs": [1], "properties": {"a": {"type": "integer"}}},
     "schema.$defs must map names to schemas"),
    ({"type": "object", "definitions": "x", "properties": {"a": {"type": "integer"}}},
     "schema.definitions must map names to schemas"),
    (_props({"enum": [math.nan, 1]}), "schema.properties.a.enum[0] is nan: NaN and Infinity are not JSON values"),
    (_props({"const": math.inf}), "schema.properties.a.const is inf"),
    (_props({"type": "number", "default": -math.inf}), "schema.properties.a.default is -inf"),
    (_props({"type": "number", "maximum": math.nan}), "schema.properties.a.maximum is nan"),
    ({"a": Literal[math.nan]}, "schema.a[0] is nan"),
])
def test_a_malformed_schema_part_is_a_configuration_error_before_any_request(
        schema: object, fragment: str, engine: str, fake: FakeProvider) -> None:
    with pytest.raises(dfllm.ConfigurationError) as info:
        DF.llm.predict(engine, "m", "{{text}}", "y", schema=schema)
    assert fragment in str(info.value)
    str(info.value).encode("utf-8")  # the message itself can be printed
    assert fake.requests == []


_TEXT = st.text(st.characters(categories=["L", "N", "P", "Cs"]), max_size=4)
_KEYWORDS = ["type", "properties", "required", "items", "enum", "const", "anyOf", "oneOf", "$ref", "$defs",
             "minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum", "multipleOf", "minLength", "maxLength",
             "pattern", "format", "minItems", "maxItems", "uniqueItems", "additionalProperties", "description",
             "title", "default", "allOf", "not", "nullable"]
_TYPES = ["object", "string", "integer", "number", "boolean", "array", "null", "int"]
_SCALARS = st.one_of(
    st.none(), st.booleans(), st.integers(), st.integers(-3, 3), st.floats(), _TEXT,
    st.sampled_from(["date", "date-time", "email", "#/$defs/A", "^a+$", "(?=a)", "[", "a", *_TYPES]))
_JSON_ISH = st.recursive(_SCALARS, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(
    st.sampled_from(_KEYWORDS) | _TEXT, inner, max_size=3), max_leaves=8)
_LEAF = st.fixed_dictionaries(
    {"type": st.sampled_from(_TYPES) | st.lists(st.sampled_from(_TYPES), max_size=3)},
    optional={k: _SCALARS for k in ("minimum", "maximum", "exclusiveMinimum", "multipleOf", "minLength",
                                    "maxLength", "pattern", "format", "minItems", "uniqueItems", "description")},
) | st.fixed_dictionaries({"enum": st.lists(_SCALARS, max_size=3)}) | st.fixed_dictionaries({"$ref": _SCALARS})
_NODES = st.recursive(_LEAF, lambda inner: st.one_of(
    st.fixed_dictionaries({"type": st.just("object"), "properties": st.dictionaries(_TEXT, inner, max_size=3)},
                          optional={"required": st.lists(_TEXT, max_size=2), "additionalProperties": _JSON_ISH,
                                    "description": _SCALARS}),
    st.fixed_dictionaries({"type": st.just("array"), "items": inner}, optional={"maxItems": _SCALARS}),
    st.fixed_dictionaries({"anyOf": st.lists(inner, max_size=3)}),
    st.dictionaries(st.sampled_from(_KEYWORDS), _JSON_ISH | inner, max_size=4),
), max_leaves=8)
_SCHEMAS = st.one_of(
    st.fixed_dictionaries({"type": st.just("object"), "properties": st.dictionaries(_TEXT, _NODES, max_size=4)},
                          optional={"$defs": _JSON_ISH | st.dictionaries(st.just("A"), _NODES, max_size=1),
                                    "required": _JSON_ISH, "description": _SCALARS, "title": _SCALARS}),
    st.dictionaries(st.sampled_from(_KEYWORDS) | _TEXT, _JSON_ISH | _NODES, max_size=4),
    st.dictionaries(_TEXT, st.sampled_from([int, str, float, list[str], Literal["a", "b"], Literal["\ud800"]])
                    | _SCALARS, max_size=3),
)


@given(_SCHEMAS)
@settings(max_examples=400, deadline=None)
def test_any_schema_normalises_to_sendable_json_or_is_a_configuration_error(schema: dict[Any, Any]) -> None:
    try:
        normalised = normalise_schema(schema)
    except dfllm.ConfigurationError as exc:
        str(exc).encode("utf-8")  # the message itself can be printed
        return
    json.dumps(normalised.wire, allow_nan=False).encode("utf-8")
