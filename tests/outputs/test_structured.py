"""Structured outputs: schema forms, typed columns, the wire, validation with bounded repair, cache."""

from __future__ import annotations

import asyncio
import datetime as dt
import enum
import json
import math
from typing import Annotated, Any, Literal

import pandas as pd
import polars as pl
import pydantic
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import dfllm
import dfllm.outputs.kinds
from dfllm.config.options import Options
from dfllm.engines.base import Capabilities, Completion, Request
from dfllm.outputs.kinds import SchemaOutput
from dfllm.outputs.parse import drop_trailing_commas, extract_json, parse_answer
from dfllm.outputs.schema import normalise_schema
from dfllm.runtime.executor import Executor, RequestSpec, Work
from dfllm.runtime.progress import RunStats
from dfllm.testing import Behaviour, FakeClock, FakeProvider, MockEngine, RecordedRequest, answer, ok, per_prompt
from dfllm.testing._behaviour import Script
from tests.conftest import KEY

STRICT = Capabilities(json_schema=True, json_mode=True)
SCHEMA = {"n": int, "label": Literal["a", "b"], "tags": list[str]}


def json_engine(answers: dict[str, Any], capabilities: Capabilities = STRICT) -> MockEngine:
    """Answers each prompt (the last user message of the first turn) with its scripted text."""
    def handler(request: Request) -> str:
        prompt = next(m["content"] for m in request.messages if m["role"] == "user")
        answer = answers[prompt]
        return answer if isinstance(answer, str) else json.dumps(answer)

    return MockEngine(handler, capabilities=capabilities)


def _holds_a_key(schema: Any, keys: set[str]) -> bool:
    if isinstance(schema, dict):
        return bool(keys & set(schema)) or any(_holds_a_key(v, keys) for v in schema.values())
    return isinstance(schema, list) and any(_holds_a_key(v, keys) for v in schema)


def assert_strict(schema: Any) -> None:
    """OpenAI strict mode: every object closed, every property required, no $ref left."""
    if isinstance(schema, dict):
        assert "$ref" not in schema and "$defs" not in schema
        if "properties" in schema:
            assert schema["additionalProperties"] is False
            assert schema["required"] == list(schema["properties"])
        for value in schema.values():
            assert_strict(value)
    elif isinstance(schema, list):
        for value in schema:
            assert_strict(value)


# -- the three schema forms ----------------------------------------------------------------

class Mood(enum.Enum):
    HAPPY = "happy"
    SAD = "sad"


class Address(pydantic.BaseModel):
    city: str
    zip: int | None = None


class Person(pydantic.BaseModel):
    name: str
    age: int
    keywords: list[str] = pydantic.Field(alias="json")  # an alias names the answer key and the column
    mood: Mood
    born: dt.date
    address: Address | None = None


def test_the_three_schema_forms_give_the_same_fields_and_a_strict_wire_schema() -> None:
    mapping = normalise_schema({"name": str, "age": int, "sentiment": Literal["positive", "negative"],
                                "when": dt.date, "tags": list[str], "json": float})
    json_schema = normalise_schema({
        "type": "object",
        "properties": {"name": {"type": "string"}, "age": {"type": "integer"},
                       "sentiment": {"type": "string", "enum": ["positive", "negative"]},
                       "when": {"type": "string", "format": "date"},
                       "tags": {"type": "array", "items": {"type": "string"}}, "json": {"type": "number"}},
        "required": ["name", "age", "sentiment", "when", "tags", "json"],
    })
    assert [(k, t) for k, _, t in mapping.fields] == [(k, t) for k, _, t in json_schema.fields]
    assert [t.kind for _, _, t in mapping.fields] == ["string", "int", "category", "date", "list", "float"]
    assert mapping.wire == json_schema.wire
    person = normalise_schema(Person)
    assert [k for k, _, _ in person.fields] == ["name", "age", "json", "mood", "born", "address"]
    assert [t.kind for _, _, t in person.fields] == ["string", "int", "list", "category", "date", "struct"]
    for schema in (mapping, json_schema, person):
        assert_strict(schema.wire)
    # An optional field is required on the wire but nullable.
    assert {"type": "null"} in person.wire["properties"]["address"]["anyOf"]


def test_bad_schemas_are_one_configuration_error_before_any_request() -> None:
    engine = json_engine({})
    df = pd.DataFrame({"text": ["x"]})
    with pytest.raises(dfllm.ParameterError) as info:
        dfllm.predict(df, engine, "m", "{{text}}", "t", schema={"age": "int", "_private": str, "ok": int})
    message = str(info.value)
    assert "'age' must be a type" in message and "'_private'" in message
    with pytest.raises(dfllm.ParameterError, match="choices and schema cannot be combined"):
        dfllm.predict(df, engine, "m", "{{text}}", "t", schema={"a": int}, choices=["x", "y"])
    with pytest.raises(dfllm.ParameterError, match="unsupported JSON Schema"):
        dfllm.predict(df, engine, "m", "{{text}}", "t",
                      schema={"type": "object", "properties": {"a": {"type": "blob"}}})
    assert engine.requests == []


def test_a_schema_column_that_would_overwrite_one_is_refused_before_any_request() -> None:
    engine = json_engine({})
    df = pd.DataFrame({"text": ["x"], "t_n": [1]})
    with pytest.raises(dfllm.ConfigurationError, match=r"overwrite existing column\(s\) \['t_n'\]"):
        dfllm.predict(df, engine, "m", "{{text}}", "t", schema={"n": int})
    with pytest.raises(dfllm.ConfigurationError, match=r"name two columns \['t_error'\]"):
        dfllm.predict(df, engine, "m", "{{text}}", "t", schema={"error": str}, errors="null")
    with pytest.raises(dfllm.ConfigurationError, match=r"overwrite existing column\(s\) \['text'\]"):
        dfllm.predict(df, engine, "m", "{{text}}", "text", schema={"n": int}, schema_columns="struct")
    with pytest.raises(dfllm.ConfigurationError, match=r"schema_columns must be one of 'fields', 'struct', got 'one'"):
        dfllm.predict(df, engine, "m", "{{text}}", "t2", schema={"n": int}, schema_columns="one")  # type: ignore[arg-type]
    assert engine.requests == []


# -- typed columns: any schema, any conforming answer ---------------------------------------

# (annotation, value strategy, pandas dtype, polars dtype)
FIELD_KINDS: list[tuple[Any, st.SearchStrategy[Any], str, Any]] = [
    (str, st.text(max_size=12), "string", pl.String),
    (int, st.integers(-(2**63), 2**63 - 1), "Int64", pl.Int64),
    (float, st.floats(allow_nan=False, allow_infinity=False), "Float64", pl.Float64),
    (bool, st.booleans(), "boolean", pl.Boolean),
    (Literal["x", "y", "z"], st.sampled_from(["x", "y", "z"]), "category", pl.Enum(["x", "y", "z"])),
    (dt.date, st.dates(), "datetime64", pl.Date),
    (list[str], st.lists(st.text(max_size=4), max_size=3), "object", pl.List(pl.String)),
    (int | None, st.none() | st.integers(-1000, 1000), "Int64", pl.Int64),
]
NAMES = st.from_regex(r"[a-z][a-z0-9_]{0,6}", fullmatch=True).filter(lambda n: n != "error")


@st.composite
def schemas_and_rows(draw: st.DrawFn) -> tuple[dict[str, int], list[dict[str, Any]], int | None]:
    names = draw(st.lists(NAMES, min_size=1, max_size=4, unique=True))
    kinds = {name: draw(st.integers(0, len(FIELD_KINDS) - 1)) for name in names}
    rows = draw(st.lists(st.fixed_dictionaries({n: FIELD_KINDS[k][1] for n, k in kinds.items()}),
                         min_size=1, max_size=4))
    bad = draw(st.none() | st.integers(0, len(rows) - 1))
    return kinds, rows, bad


def _encode(value: Any) -> Any:
    return value.isoformat() if isinstance(value, dt.date) else value


@settings(max_examples=60, deadline=None)
@given(schemas_and_rows())
def test_any_schema_and_conforming_answers_give_typed_columns_that_round_trip(
        case: tuple[dict[str, int], list[dict[str, Any]], int | None]) -> None:
    kinds, rows, bad = case
    schema = {name: FIELD_KINDS[k][0] for name, k in kinds.items()}
    answers: dict[str, Any] = {f"row {i}": {n: _encode(v) for n, v in row.items()} for i, row in enumerate(rows)}
    if bad is not None:
        # Not an object of the schema: a wrong type in the first field.
        answers[f"row {bad}"] = {**answers[f"row {bad}"], next(iter(schema)): {"nested": "object"}}
    prompts = list(answers)
    for frame in (pd.DataFrame({"text": prompts}), pl.DataFrame({"text": prompts})):
        out = dfllm.predict(frame, json_engine(answers), "m", "{{text}}", "t", schema=schema, cache=False,
                            errors="null", max_repairs=1)
        is_pandas = isinstance(out, pd.DataFrame)
        errors = list(out["t_error"])
        for name, k in kinds.items():
            _, _, pandas_dtype, polars_dtype = FIELD_KINDS[k]
            column = out[f"t_{name}"]
            if is_pandas:
                assert str(column.dtype).startswith(pandas_dtype), (name, column.dtype)
                values = list(column)
            else:
                assert column.dtype == polars_dtype, (name, column.dtype)
                values = column.to_list()
            for i, row in enumerate(rows):
                got = values[i]
                if i == bad:
                    assert got is None or pd.isna(got)
                    continue
                expected = row[name]
                if is_pandas and isinstance(expected, dt.date):
                    expected = pd.Timestamp(expected)
                if expected is None:
                    assert got is None or pd.isna(got)
                else:
                    assert got == expected, (name, got, expected)
        for i, error in enumerate(errors):
            if i == bad:
                assert error.startswith("SchemaError: The answer does not match the schema") and '{"nested"' in error
            else:
                assert error is None or pd.isna(error)
        # One struct column instead: the same typed values, kept together.
        packed = dfllm.predict(frame, json_engine(answers), "m", "{{text}}", "t", schema=schema, cache=False,
                               errors="null", max_repairs=1, schema_columns="struct")
        assert [c for c in packed.columns if c.startswith("t")] == ["text", "t", "t_error"]
        if is_pandas:
            assert packed["t"].dtype == object
            assert list(packed["t"]) == [None if i == bad else row for i, row in enumerate(rows)]
        else:
            assert packed["t"].dtype == pl.Struct({n: FIELD_KINDS[k][3] for n, k in kinds.items()})
            unpacked = packed["t"].struct.unnest()
            for name in kinds:
                assert unpacked[name].to_list() == out[f"t_{name}"].to_list()


# -- parsing: tolerant about where the JSON is, strict about types --------------------------

def test_parse_tolerates_fences_prose_and_trailing_commas_but_not_wrong_types() -> None:
    schema = normalise_schema({"name": str, "tags": list[str]})
    expected = ("a, b}", ["x,]", "y"])
    body = '{"name": "a, b}", "tags": ["x,]", "y",],}'
    assert parse_answer('{"name": "a, b}", "tags": ["x,]", "y"]}', schema) == expected
    assert parse_answer(f"Here you go:\n```json\n{body}\n```\nAnything else?", schema) == expected
    assert parse_answer(f"Sure {{ok}} the answer is {body} hope it helps", schema) == expected
    assert drop_trailing_commas('{"a": "x,}", "b": [1,],}') == '{"a": "x,}", "b": [1]}'
    assert extract_json("no json here") is None
    with pytest.raises(dfllm.SchemaError, match="no JSON object") as info:
        parse_answer("I cannot help with that.", schema)
    assert info.value.raw == "I cannot help with that."
    with pytest.raises(dfllm.SchemaError, match="tags: Input should be a valid array"):
        parse_answer('{"name": "a", "tags": "x"}', schema)
    numbers = normalise_schema({"n": int})
    with pytest.raises(dfllm.SchemaError, match="valid integer"):
        parse_answer('{"n": "5"}', numbers)  # strict: no string-to-int coercion
    with pytest.raises(dfllm.SchemaError, match="64-bit"):
        parse_answer('{"n": 99999999999999999999}', numbers)
    with pytest.raises(dfllm.SchemaError, match="n: Field required"):
        parse_answer("{}", numbers)


# -- the wire, repair and row errors, against the fake provider -----------------------------

def test_response_format_on_the_wire_and_typed_columns(engine: str, fake: FakeProvider) -> None:
    df = pd.DataFrame({"text": ["one", "two"]})
    out = df.llm.predict(engine, "gpt-4o-mini", "About {{text}}", "t", schema=Person)
    body = fake.chat_requests[0].body
    response_format = body["response_format"]
    assert response_format["type"] == "json_schema"
    assert response_format["json_schema"]["name"] == "Person" and response_format["json_schema"]["strict"] is True
    assert response_format["json_schema"]["schema"] == normalise_schema(Person).wire
    assert_strict(response_format["json_schema"]["schema"])
    assert [m["role"] for m in body["messages"]] == ["user"]  # enforced: the prompt is not padded
    assert list(out.columns) == ["text", "t_name", "t_age", "t_json", "t_mood", "t_born", "t_address"]
    assert out["t_age"].tolist() == [len("About one"), len("About two")]
    assert str(out["t_mood"].dtype) == "category" and list(out["t_mood"].cat.categories) == ["happy", "sad"]
    assert out["t_born"].tolist() == [pd.Timestamp("2024-01-31")] * 2
    assert out["t_address"].tolist()[0] == {"city": "About one", "zip": len("About one")}


def test_json_mode_engines_get_json_object_and_the_schema_in_the_system_prompt(fake: FakeProvider) -> None:
    dfllm.create_engine("any", "anyscale_endpoints", api_key=KEY, base_url=fake.base_url)
    out = pd.DataFrame({"text": ["x"]}).llm.predict("any", "m", "{{text}}", "t", schema=SCHEMA, system="Be brief.")
    body = fake.chat_requests[0].body
    assert body["response_format"] == {"type": "json_object", "schema": normalise_schema(SCHEMA).wire}
    assert body["messages"][0]["role"] == "system"
    assert body["messages"][0]["content"].startswith("Be brief.\n\nAnswer with only a JSON object")
    assert out["t_n"].tolist() == [1]


def test_engines_without_json_support_get_the_schema_in_the_prompt_and_the_same_validation() -> None:
    engine = json_engine({"x": '```json\n{"n": 1, "label": "b", "tags": ["q"],}\n```'}, Capabilities())
    out = dfllm.predict(pd.DataFrame({"text": ["x"]}), engine, "m", "{{text}}", "t", schema=SCHEMA)
    request = engine.requests[0]
    assert "response_format" not in request.params and request.json_schema is None
    assert '"required":["n","label","tags"]' in request.messages[0]["content"]
    assert out[["t_n", "t_label"]].values.tolist() == [[1, "b"]] and out["t_tags"].tolist() == [["q"]]


def first_prompt(request: RecordedRequest) -> str:
    return str(next(m["content"] for m in request.body["messages"] if m["role"] == "user"))


def answer_row(row: str, text: str, times: int) -> Script:
    """``text`` for the first ``times`` requests about ``row`` (re-asks included), then the normal answer."""
    left = [times]

    def script(request: RecordedRequest) -> Behaviour | None:
        if first_prompt(request) == row and left[0] > 0:
            left[0] -= 1
            return ok(text=text)
        return None

    return script


def test_an_invalid_answer_is_re_asked_with_the_answer_and_the_problem(engine: str, fake: FakeProvider) -> None:
    fake.app.script = answer_row("row 1", 'Sorry, here: {"n": "seven"}', 1)
    df = pd.DataFrame({"text": ["row 0", "row 1"]})
    out = df.llm.predict(engine, "m", "{{text}}", "t", schema=SCHEMA)
    assert out["t_n"].notna().all() and out["t_n"][0] == 5
    repair = [r.body for r in fake.chat_requests if len(r.body["messages"]) > 1]
    assert len(repair) == 1 and len(fake.chat_requests) == 3
    messages = repair[0]["messages"]
    assert messages[1] == {"role": "assistant", "content": "Sorry, here: {\"n\": \"seven\"}"}
    assert "n: Input should be a valid integer" in messages[2]["content"]
    assert "label: Field required" in messages[2]["content"]
    run = dfllm.last_run()
    assert run is not None and run.repairs == 1 and run.failed_rows == 0


def test_an_answer_that_never_fits_is_a_row_error_with_the_raw_text(engine: str, fake: FakeProvider) -> None:
    fake.app.script = answer_row("row 1", '{"n": 1.5, "label": "c", "tags": []}', 10)
    df = pd.DataFrame({"text": ["row 0", "row 1", "row 2"]})
    out = df.llm.predict(engine, "m", "{{text}}", "t", schema=SCHEMA, errors="null", max_repairs=2)
    assert sum(first_prompt(r) == "row 1" for r in fake.chat_requests) == 3  # the answer, then two re-asks
    assert out["t_n"].isna().tolist() == [False, True, False]
    error = out["t_error"][1]
    assert error.startswith("SchemaError:") and "label: Input should be 'a' or 'b'" in error
    assert '{"n": 1.5, "label": "c", "tags": []}' in error
    fake.app.script = answer_row("row 1", "nope", 10)
    with pytest.raises(dfllm.BatchError) as info:
        df.llm.predict(engine, "m", "{{text}}", "t", schema={"other": int}, max_repairs=0)
    assert info.value.partial["t_other"].isna().tolist() == [False, True, False]
    failure = info.value.errors[1]
    assert isinstance(failure, dfllm.SchemaError) and failure.raw == "nope"


def test_re_asks_spend_the_rows_max_retry_time_s_on_the_injected_clock() -> None:
    clock = FakeClock()

    def slow_wrong_answer(request: Request) -> str:
        clock.advance(1.0)  # each answer takes a second
        return '{"n": "never an int"}'

    engine = MockEngine(slow_wrong_answer)
    options = Options(max_repairs=10, max_retry_time_s=3.5, cache=False)
    executor = Executor(engine, options, RunStats(), RequestSpec("m"),
                        output=SchemaOutput(normalise_schema({"n": int})), clock=clock, sleep=clock.sleep)
    [outcome] = asyncio.run(executor.run([Work((0, 0), "x")]))
    # Answers at 1, 2, 3 and 4 s: after the fourth the row's 3.5 s are spent, though 7 re-asks are left.
    assert len(engine.requests) == 4
    assert isinstance(outcome, dfllm.SchemaError) and not outcome.repairable
    assert "n: Input should be a valid integer" in str(outcome)
    assert "after 3 re-ask(s) the row has spent its max_retry_time_s=3.5" in str(outcome)


def test_max_repairs_is_bounded_before_any_request() -> None:
    engine = json_engine({})
    for value in (11, 10**6, -1, True):
        with pytest.raises(dfllm.ConfigurationError, match=f"max_repairs must be an integer from 0 to 10, got {value}"):
            dfllm.predict(pd.DataFrame({"text": ["x"]}), engine, "m", "{{text}}", "t", schema={"n": int},
                          max_repairs=value)
    assert engine.requests == []


def test_max_repairs_out_of_range_is_refused_before_the_server_sees_a_request(engine: str,
                                                                              fake: FakeProvider) -> None:
    fake.app.script = lambda request: ok(text="never json")
    values: tuple[Any, ...] = (10**6, 11, -1, 10.5, True)
    for value in values:
        with pytest.raises(dfllm.ParameterError, match=f"max_repairs must be an integer from 0 to 10, got {value}"):
            dfllm.predict(pd.DataFrame({"text": ["x"]}), engine, "m", "{{text}}", "t", schema={"n": int},
                          errors="null", max_repairs=value, max_retry_time_s=5)
    assert fake.requests == []


def test_re_asks_spend_the_rows_max_retry_time_s_against_a_slow_server(engine: str, fake: FakeProvider) -> None:
    latency_s, budget_s = 0.5, 1.2
    fake.app.script = lambda request: ok(text="never json", delay_s=latency_s)
    out = dfllm.predict(pd.DataFrame({"text": ["x"]}), engine, "m", "{{text}}", "t", schema={"n": int},
                        errors="null", max_repairs=10, max_retry_time_s=budget_s, cache=False)
    # Request k goes out no earlier than (k - 1) * latency_s after the first (each answer takes
    # latency_s on the server), and only while the row's budget lasts: at most 3 here, against the
    # 11 that max_repairs=10 allows. A busy machine only delays sends, so it can only lower the count.
    most = math.ceil(budget_s / latency_s)
    assert 1 <= len(fake.chat_requests) <= most < 1 + 10
    assert [len(r.body["messages"]) for r in fake.chat_requests] == [1 + 2 * k for k in range(len(fake.chat_requests))]
    error = out["t_error"][0]
    assert error.startswith("SchemaError:") and "never json" in error
    assert f"re-ask(s) the row has spent its max_retry_time_s={budget_s:g}" in error


def test_nan_and_infinity_are_not_float_values() -> None:
    answers = {
        "finite": '{"x": 1.5, "xs": [0.5], "j": {"k": [1]}}',
        "nan": '{"x": NaN, "xs": [], "j": null}',
        "inf": '{"x": Infinity, "xs": [], "j": null}',
        "minus inf": '{"x": -Infinity, "xs": [], "j": null}',
        "overflow": '{"x": 1e999, "xs": [], "j": null}',
        "in a list": '{"x": 1.0, "xs": [1.0, NaN], "j": null}',
        "in free-form JSON": '{"x": 1.0, "xs": [], "j": {"k": [Infinity]}}',
    }
    engine = json_engine(answers)
    out = dfllm.predict(pd.DataFrame({"text": list(answers)}), engine, "m", "{{text}}", "t", cache=False,
                        schema={"x": float, "xs": list[float], "j": Any}, errors="null", max_repairs=0)
    assert out["t_x"].tolist()[0] == 1.5 and out["t_xs"][0] == [0.5] and pd.isna(out["t_error"][0])
    errors = out["t_error"].tolist()[1:]
    assert all(e.startswith("SchemaError") for e in errors)
    for error, field, value in zip(errors, ["x", "x", "x", "x", "xs", "j"], ["nan", "inf", "-inf", "inf", "nan", ""],
                                   strict=True):
        assert f"{field}: {value}" in error and "finite numbers only" in error
    assert out["t_x"].isna().tolist() == [False] + [True] * 6  # never a NaN passing for a number


def test_cut_off_or_refused_answers_are_row_errors_never_half_parsed(engine: str, fake: FakeProvider) -> None:
    fake.app.script = per_prompt({"row 1": [answer('{"n": 1, "label": "a", "tags": ["x"', finish_reason="length")],
                                  "row 2": [answer(None, refusal="I can't help with that.")]})
    df = pd.DataFrame({"text": ["row 0", "row 1", "row 2"]})
    out = df.llm.predict(engine, "m", "{{text}}", "t", schema=SCHEMA, errors="null")
    assert out["t_n"].isna().tolist() == [False, True, True]
    assert out["t_error"][1].startswith("IncompleteAnswerError") and out["t_error"][2].startswith("RefusalError")
    assert len(fake.chat_requests) == 3  # neither is re-asked


def test_a_custom_engine_saying_length_is_a_row_error_never_re_asked_or_half_parsed() -> None:
    # A whole JSON object, but the engine says it stopped at the limit: not trusted.
    complete = Completion('{"n": 1, "label": "a", "tags": ["x"]}', finish_reason="length")
    engine = MockEngine(lambda request: complete, capabilities=STRICT)
    out = dfllm.predict(pd.DataFrame({"text": ["x"]}), engine, "m", "{{text}}", "t", schema=SCHEMA,
                        errors="null", cache=False)
    assert len(engine.requests) == 1 and pd.isna(out["t_n"][0])
    assert "cut off at max_tokens" in out["t_error"][0]


# -- the cache holds only valid answers, keyed by the schema, checked again on read ----------

def test_cache_key_includes_the_schema_and_cached_answers_are_revalidated() -> None:
    calls: list[int] = []

    def handler(request: Request) -> str:
        calls.append(1)
        return '{"n": 3, "m": null}' if len(calls) <= 2 else '{"n": 30, "m": null}'

    df = pd.DataFrame({"text": ["x"]})

    def run(schema: Any) -> tuple[Any, dfllm.RunStats]:
        stats = dfllm.RunStats()
        out = dfllm.predict(df, MockEngine(handler, capabilities=STRICT), "m", "{{text}}", "t", schema=schema,
                            stats=stats, errors="null")
        return out, stats

    class Small(pydantic.BaseModel):
        n: int

    class Large(pydantic.BaseModel):  # the same wire schema; a check JSON Schema cannot express
        n: Annotated[int, pydantic.Field(gt=10)]

    assert normalise_schema(Small).wire != normalise_schema(Large).wire  # gt shows as exclusiveMinimum

    class LargeByValidator(pydantic.BaseModel):
        n: int

        @pydantic.field_validator("n")
        @classmethod
        def large(cls, value: int) -> int:
            if value <= 10:
                raise ValueError("n must be more than 10")
            return value

    assert normalise_schema(Small).wire == normalise_schema(LargeByValidator).wire
    _, first = run(Small)
    _, again = run(Small)
    assert (first.requests, again.requests, again.cache_hits) == (1, 0, 1)
    _, other = run({"n": int, "m": int | None})  # another schema: another key
    assert other.requests == 1 and other.cache_hits == 0
    out, stale = run(LargeByValidator)  # same key, but the cached n=3 no longer validates: asked again
    assert stale.cache_hits == 0 and stale.requests == 1 and out["t_n"].tolist() == [30]


def test_each_answer_is_parsed_once_fresh_or_cached(tmp_path: Any) -> None:
    """The executor's check keeps the typed values; write-back uses them instead of parsing again."""
    validated: list[int] = []

    class Counted(pydantic.BaseModel):
        n: int

        @pydantic.field_validator("n")
        @classmethod
        def count(cls, value: int) -> int:
            validated.append(value)
            return value

    df = pd.DataFrame({"text": [f"row {i}" for i in range(20)] + ["row 0"]})
    engine = MockEngine(lambda request: json.dumps({"n": int(request.messages[-1]["content"].split()[-1])}),
                        capabilities=STRICT)
    cache = str(tmp_path / "cache.sqlite3")
    for expected_requests in (20, 0):  # fresh, then every answer from the cache (checked again on read)
        validated.clear()
        stats = dfllm.RunStats()
        out = dfllm.predict(df, engine, "m", "{{text}}", "t", schema=Counted, cache=cache, stats=stats)
        assert stats.requests == expected_requests
        assert sorted(validated) == list(range(20))  # once per unique answer, not once per check and once per write
        assert out["t_n"].tolist() == [*range(20), 0]


def test_sets_and_tuples_become_lists_and_free_form_json_inside_a_struct_is_json_text_in_arrow() -> None:
    import pyarrow as pa

    class Inner(pydantic.BaseModel):
        tags: set[str]
        meta: dict[str, Any]

    class Outer(pydantic.BaseModel):
        pair: tuple[str, ...]
        inner: Inner

    engine = json_engine({"x": {"pair": ["a", "b"], "inner": {"tags": ["t"], "meta": {"k": [1, 2]}}}})
    for layout in ("fields", "struct"):
        out = dfllm.predict(pl.DataFrame({"text": ["x"]}), engine, "m", "{{text}}", "t", schema=Outer,
                            schema_columns=layout, cache=False)
        row = out.row(0, named=True)
        packed = row["t"] if layout == "struct" else {"pair": row["t_pair"], "inner": row["t_inner"]}
        assert packed == {"pair": ["a", "b"], "inner": {"tags": ["t"], "meta": {"k": [1, 2]}}}
        pandas_out = dfllm.predict(pd.DataFrame({"text": ["x"]}), engine, "m", "{{text}}", "t", schema=Outer,
                                   schema_columns=layout, cache=False)
        first = pandas_out.iloc[0]
        assert (first["t"]["pair"] if layout == "struct" else first["t_pair"]) == ["a", "b"]
        table = dfllm.predict(pa.table({"text": ["x"]}), engine, "m", "{{text}}", "t", schema=Outer,
                              schema_columns=layout, cache=False)
        inner = table.column("t").to_pylist()[0]["inner"] if layout == "struct" else table.column("t_inner")[0].as_py()
        assert inner == {"tags": ["t"], "meta": '{"k": [1, 2]}'}


def test_schema_columns_struct_without_a_schema_is_a_configuration_error() -> None:
    engine = json_engine({})
    with pytest.raises(dfllm.ConfigurationError, match="schema_columns='struct' packs a schema's fields"):
        dfllm.predict(pd.DataFrame({"text": ["x"]}), engine, "m", "{{text}}", "t", schema_columns="struct")
    assert engine.requests == []


def test_write_back_parses_an_answer_no_check_has_seen() -> None:
    from dfllm.config.options import build_options

    options, problems = build_options([{"schema": {"n": int}}])
    assert not problems
    output = dfllm.outputs.kinds.output_for(options)
    assert output.value(Completion('{"n": 4}')) == ((4,), None)
    values, error = output.value(Completion('{"n": "four"}'))
    assert values is None and isinstance(error, dfllm.SchemaError)


def test_invalid_answers_are_never_cached() -> None:
    engine = json_engine({"x": '{"n": "bad"}'})
    for _ in range(2):
        dfllm.predict(pd.DataFrame({"text": ["x"]}), engine, "m", "{{text}}", "t", schema={"n": int},
                      errors="null", max_repairs=0)
    assert len(engine.requests) == 2


# -- choices: a categorical column ----------------------------------------------------------

def test_choices_come_back_categorical_with_exactly_those_categories() -> None:
    labels = ["positive", "neutral", "negative"]
    engine = MockEngine(lambda request: "Positive." if "good" in request.messages[-1]["content"] else "negative")
    texts = ["good", "bad", None]
    out = dfllm.predict(pd.DataFrame({"text": texts}), engine, "m", "{{text}}", "s", choices=labels)
    assert isinstance(out["s"].dtype, pd.CategoricalDtype) and list(out["s"].cat.categories) == labels
    assert out["s"].tolist()[:2] == ["positive", "negative"] and pd.isna(out["s"][2])
    out_pl = dfllm.predict(pl.DataFrame({"text": texts}), engine, "m", "{{text}}", "s", choices=labels)
    assert out_pl["s"].dtype == pl.Enum(labels) and out_pl["s"].to_list() == ["positive", "negative", None]


def test_async_form_and_polars_nested_types() -> None:
    answers = {"x": {"name": "n", "age": 1, "json": ["a"], "mood": "sad", "born": "2000-02-29",
                     "address": {"city": "Oslo", "zip": None}}}
    out = asyncio.run(dfllm.apredict(pl.DataFrame({"text": ["x"]}), json_engine(answers), "m", "{{text}}", "p",
                                     schema=Person))
    assert out.schema["p_address"] == pl.Struct({"city": pl.String, "zip": pl.Int64})
    assert out.schema["p_mood"] == pl.Enum(["happy", "sad"]) and out.schema["p_born"] == pl.Date
    assert out.row(0, named=True)["p_address"] == {"city": "Oslo", "zip": None}
    assert out["p_born"].to_list() == [dt.date(2000, 2, 29)]


# -- llama.cpp: the grammar makes even the 135M model answer in shape -----------------------

LOCAL_SCHEMA = {"count": int, "sentiment": Literal["positive", "neutral", "negative"],
                "tags": Annotated[list[Annotated[str, pydantic.Field(max_length=16)]], pydantic.Field(max_length=3)]}
REVIEWS = ["I love machine learning!", "This is awful.", "The sky is blue.", "Great value, would buy again."]


@pytest.mark.local
def test_local_engine_grammar_yields_valid_typed_columns_for_every_row() -> None:
    pytest.importorskip("llama_cpp")
    df = pl.DataFrame({"text": REVIEWS})
    out = df.llm.predict("local", "smollm2-135m", "Describe this review: {{text}}", "r", schema=LOCAL_SCHEMA,  # type: ignore[attr-defined]
                         cache=False, seed=1, temperature=0, max_repairs=0)
    assert out.schema["r_count"] == pl.Int64 and out.schema["r_tags"] == pl.List(pl.String)
    assert out.schema["r_sentiment"] == pl.Enum(["positive", "neutral", "negative"])
    assert out["r_count"].null_count() == 0 and out["r_sentiment"].null_count() == 0
    assert all(len(tags) <= 3 for tags in out["r_tags"].to_list())
    run = dfllm.last_run()
    assert run is not None and run.failed_rows == 0 and run.repairs == 0


# -- a JSON Schema's constraints and descriptions: enforced, sent, never dropped ---------------------

CONSTRAINED = {
    "type": "object", "description": "A person on file.",
    "$defs": {"Place": {"type": "object", "properties": {"city": {"type": "string", "minLength": 2}},
                        "required": ["city"]}},
    "properties": {
        "age": {"type": "integer", "minimum": 0, "maximum": 130, "description": "Age in years."},
        "score": {"type": "number", "exclusiveMinimum": 0, "exclusiveMaximum": 1, "multipleOf": 0.25},
        "code": {"type": "string", "pattern": "^[A-Z]{3}$", "maxLength": 3},
        "tags": {"type": "array", "items": {"type": "string", "description": "One tag."},
                 "minItems": 1, "maxItems": 2, "uniqueItems": True},
        "home": {"$ref": "#/$defs/Place", "description": "Where they live."},
        "nick": {"type": ["string", "null"], "maxLength": 4},
    },
    "required": ["age", "score", "code", "tags", "home", "nick"],
}
BREAKS_EVERY_CONSTRAINT = {"age": -5, "score": 0.3, "code": "abcd", "tags": ["x", "x", "y"],
                           "home": {"city": "A"}, "nick": "toolong"}
FITS = {"age": 40, "score": 0.75, "code": "ABC", "tags": ["x"], "home": {"city": "Oslo"}, "nick": None}


def test_json_schema_constraints_and_descriptions_are_sent_and_an_answer_breaking_them_is_repaired(
        engine: str, fake: FakeProvider) -> None:
    answers = iter([BREAKS_EVERY_CONSTRAINT, FITS])
    fake.app.script = lambda request: answer(json.dumps(next(answers)))
    out = pd.DataFrame({"text": ["row"]}).llm.predict(engine, "m", "{{text}}", "t", schema=CONSTRAINED)
    wire = fake.chat_requests[0].body["response_format"]["json_schema"]["schema"]
    properties = wire["properties"]
    assert wire["description"] == "A person on file."
    assert properties["age"] == {"type": "integer", "minimum": 0, "maximum": 130, "description": "Age in years."}
    assert properties["score"] == {"type": "number", "exclusiveMinimum": 0, "exclusiveMaximum": 1, "multipleOf": 0.25}
    # What OpenAI's strict mode refuses (minLength, maxLength, uniqueItems) is told in the description.
    assert properties["code"] == {"type": "string", "pattern": "^[A-Z]{3}$", "description": "maxLength: 3"}
    assert properties["tags"] == {"type": "array", "items": {"type": "string", "description": "One tag."},
                                  "minItems": 1, "maxItems": 2, "description": "uniqueItems: true"}
    assert properties["home"]["description"] == "Where they live."
    assert properties["home"]["properties"]["city"] == {"type": "string", "description": "minLength: 2"}
    assert {"type": "string", "description": "maxLength: 4"} in properties["nick"]["anyOf"]
    assert_strict(wire)
    assert not _holds_a_key(wire, {"minLength", "maxLength", "uniqueItems"})
    # The whole schema, those keywords included, is what the cache key and a local grammar see.
    assert normalise_schema(CONSTRAINED).wire["properties"]["code"]["maxLength"] == 3
    # The answer that broke them was re-asked once, with every broken constraint named.
    assert len(fake.chat_requests) == 2
    problem = fake.chat_requests[1].body["messages"][2]["content"]
    for fragment in ("age: Input should be greater than or equal to 0", "score: Input should be a multiple of 0.25",
                     "code: String should have at most 3 characters", "tags: List should have at most 2 items",
                     "home.city: String should have at least 2 characters", "nick: String should have at most 4"):
        assert fragment in problem, fragment
    assert out[["t_age", "t_code"]].values.tolist() == [[40, "ABC"]] and out["t_tags"].tolist() == [["x"]]


@pytest.mark.parametrize(("answer_values", "fragment"), [
    ({**FITS, "code": "abc"}, "code: String should match pattern '^[A-Z]{3}$'"),
    ({**FITS, "score": 1}, "score: Input should be less than 1"),
    ({**FITS, "tags": []}, "tags: List should have at least 1 item"),
    ({**FITS, "tags": ["x", "x"]}, "tags: Value error, items must be unique (uniqueItems), but \"x\" repeats"),
])
def test_an_answer_breaking_one_constraint_is_a_schema_error_with_max_repairs_0(
        answer_values: dict[str, Any], fragment: str, engine: str, fake: FakeProvider) -> None:
    fake.app.script = lambda request: answer(json.dumps(answer_values))
    out = pd.DataFrame({"text": ["row"]}).llm.predict(engine, "m", "{{text}}", "t", schema=CONSTRAINED,
                                                        errors="null", max_repairs=0)
    assert len(fake.chat_requests) == 1
    assert out["t_error"][0].startswith("SchemaError") and fragment in out["t_error"][0]


@pytest.mark.parametrize(("node", "fragment"), [
    ({"type": "string", "format": "email"}, "format 'email' is not checked by dfllm"),
    ({"type": "integer", "minimum": "0"}, "minimum must be a number, got '0'"),
    ({"type": "integer", "minimum": 0.5}, "minimum of an integer must be a whole number, got 0.5"),
    ({"type": "number", "multipleOf": 0}, "multipleOf must be greater than 0"),
    ({"type": "string", "maxLength": -1}, "maxLength must be a whole number >= 0, got -1"),
    ({"type": "string", "pattern": "(?=a)a"}, "pattern '(?=a)a' cannot be checked"),
    ({"type": "string", "minimum": 1}, "['minimum'] is not supported in a schema with type 'string'"),
    ({"allOf": [{"type": "string"}]}, "['allOf'] is not supported in a schema with no type"),
    ({"type": "object", "properties": {"b": {"type": "integer"}}, "additionalProperties": True},
     "additionalProperties True is not supported with properties"),
    ({"type": "array", "items": {"type": "string"}, "prefixItems": [], "contains": {}},
     "['prefixItems', 'contains'] are not supported"),
])
def test_a_keyword_dfllm_would_not_enforce_is_refused_before_any_request(
        node: dict[str, Any], fragment: str, engine: str, fake: FakeProvider) -> None:
    schema = {"type": "object", "properties": {"a": node, "b": {"type": "string", "not": {}}}}
    with pytest.raises(dfllm.ParameterError) as info:
        pd.DataFrame({"text": ["x"]}).llm.predict(engine, "m", "{{text}}", "t", schema=schema)
    assert fragment in str(info.value)
    assert "schema.b: ['not'] is not supported" in str(info.value)  # every problem at once
    assert fake.requests == []


def test_fields_named_like_keywords_strict_mode_refuses_keep_their_names_on_the_wire() -> None:
    from dfllm.engines.openai_chat import strict_mode_schema

    wire = normalise_schema({"minLength": int, "uniqueItems": list[str]}).wire
    strict = strict_mode_schema(wire)
    names = ["minLength", "uniqueItems"]
    assert list(strict["properties"]) == names and strict["required"] == names
    assert_strict(strict)
