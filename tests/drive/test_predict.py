"""End to end over loopback: the accessor, the frame that comes back, and what the server saw."""

from __future__ import annotations

import asyncio
import re
import threading

import pandas as pd
import polars as pl
import pytest

import dfllm
from dfllm.testing import FakeProvider, MockEngine
from tests.conftest import KEY

SENTIMENT = ("Classify the sentiment of the following text as one of `positive`, `neutral` or "
             "`negative`: {{text}}")


def test_pandas_accessor_returns_new_frame_with_index_and_target(engine: str, fake: FakeProvider) -> None:
    df = pd.DataFrame({"text": ["I love machine learning!", "This is awful.", "It is a chair."]},
                      index=["a", "b", "c"])
    before = df.copy()
    out = df.llm.predict(engine, "gpt-4o-mini", SENTIMENT, "sentiment")
    assert out is not df
    pd.testing.assert_frame_equal(df, before)  # the caller's frame is untouched
    assert list(out.index) == ["a", "b", "c"]
    assert out["sentiment"].tolist() == ["positive", "negative", "neutral"]
    assert out["text"].tolist() == df["text"].tolist()
    bodies = [r.body for r in fake.chat_requests]
    assert {b["model"] for b in bodies} == {"gpt-4o-mini"}
    assert sorted(b["messages"][-1]["content"] for b in bodies) == sorted(
        SENTIMENT.replace("{{text}}", t) for t in df["text"])
    assert {r.headers["Authorization"] for r in fake.chat_requests} == {f"Bearer {KEY}"}
    assert {r.path for r in fake.chat_requests} == {"/v1/chat/completions"}


def test_polars_accessor_keeps_row_order_and_returns_polars(engine: str) -> None:
    df = pl.DataFrame({"text": ["great stuff", "awful stuff", "a table"], "n": [1, 2, 3]})
    out = df.llm.predict(engine, "gpt-4o-mini", "sentiment of: {{text}}", "label")  # type: ignore[attr-defined]
    assert isinstance(out, pl.DataFrame)
    assert out.columns == ["text", "n", "label"]
    assert out["label"].to_list() == ["positive", "negative", "neutral"]
    assert df.columns == ["text", "n"]


def test_plain_function_and_async_forms(engine: str) -> None:
    df = pd.DataFrame({"text": ["good"]})
    assert dfllm.predict(df, engine, "m", "sentiment {{text}}", "y")["y"].tolist() == ["positive"]
    out = asyncio.run(df.llm.apredict(engine, "m", "sentiment {{text}}", "y"))
    assert out["y"].tolist() == ["positive"]
    out = asyncio.run(dfllm.apredict(pl.DataFrame({"text": ["bad"]}), engine, "m", "sentiment {{text}}", "y"))
    assert out["y"].to_list() == ["negative"]


def test_predict_inside_a_running_loop_like_jupyter(engine: str) -> None:
    async def notebook_cell() -> list[str]:
        return list(pd.DataFrame({"text": ["good"]}).llm.predict(engine, "m", "sentiment {{text}}", "y")["y"])

    assert asyncio.run(notebook_cell()) == ["positive"]


def test_system_prompt_and_sampling_parameters_are_sent(engine: str, fake: FakeProvider) -> None:
    pd.DataFrame({"q": ["hi"]}).llm.predict(engine, "gpt-4o-mini", "{{q}}", "a", system="Be brief.",
                                            max_tokens=5, temperature=0.2, top_p=0.9, seed=7, stop=["\n"])
    body = fake.chat_requests[0].body
    assert body["messages"] == [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi"}]
    assert (body["max_tokens"], body["temperature"], body["top_p"], body["seed"], body["stop"]) == (
        5, 0.2, 0.9, 7, ["\n"])


def test_all_null_rows_are_not_sent_and_get_null(engine: str, fake: FakeProvider) -> None:
    df = pd.DataFrame({"a": ["x", None, float("nan")], "b": ["y", None, "z"]})
    out = df.llm.predict(engine, "m", "{{a}}/{{b}}", "r")
    prompts = sorted(r.prompt for r in fake.chat_requests)
    assert prompts == ["/z", "x/y"]  # the all-null row was skipped, the partly-null one rendered empty
    assert out["r"].isna().tolist() == [False, True, False]


def test_numbers_render_as_shown_in_the_frame(engine: str, fake: FakeProvider) -> None:
    dfllm.predict(pl.DataFrame({"n": [3, 4], "f": [0.5, 2.0]}), engine, "m", "{{n}}:{{f}}", "r")
    assert sorted(r.prompt for r in fake.chat_requests) == ["3:0.5", "4:2.0"]


def test_provider_name_used_directly_takes_the_key_from_the_environment(
        fake: FakeProvider, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-from-env")
    config = dfllm.create_engine("env", "openai", base_url=fake.base_url)
    pd.DataFrame({"t": ["x"]}).llm.predict(config, "m", "{{t}}", "r")
    assert fake.chat_requests[0].headers["Authorization"] == "Bearer sk-from-env"


def test_custom_engine_object(fake: FakeProvider) -> None:
    class Upper:
        identity = "upper"

        async def complete(self, request: dfllm.Request) -> dfllm.Completion:
            return dfllm.Completion(request.messages[-1]["content"].upper())

        async def aclose(self) -> None:
            raise AssertionError("dfllm must not close an engine the caller owns")

    out = pd.DataFrame({"t": ["ab", "cd"]}).llm.predict(Upper(), "m", "{{t}}", "r")
    assert out["r"].tolist() == ["AB", "CD"]


def test_usage_columns_and_last_run(engine: str) -> None:
    out = pd.DataFrame({"t": ["abcdefgh", "abcdefgh", None]}).llm.predict(
        engine, "m", "{{t}}", "r", usage_columns=True)
    assert out["r_prompt_tokens"].tolist()[:2] == [2, 2]
    assert out["r_completion_tokens"].isna().tolist() == [False, False, True]
    run = dfllm.last_run()
    assert run is not None
    assert (run.rows, run.unique_prompts, run.requests, run.skipped_null_rows, run.deduplicated) == (3, 1, 1, 1, 1)
    assert run.prompt_tokens == 2 and run.completion_tokens > 0


@pytest.mark.parametrize(("columns", "target", "options", "clash"), [
    (["t", "y"], "y", {}, "['y']"),
    (["t", "y_error"], "y", {"errors": "null"}, "['y_error']"),
    (["t", "y_prompt_tokens"], "y", {"usage_columns": True}, "['y_prompt_tokens']"),
    (["t", "y"], "t", {}, "['t']"),
])
def test_a_result_column_that_exists_is_refused_before_any_request(
        engine: str, fake: FakeProvider, columns: list[str], target: str, options: dict[str, object],
        clash: str) -> None:
    df = pd.DataFrame({c: ["good"] for c in columns})
    with pytest.raises(dfllm.ParameterError, match=re.escape(f"overwrite existing column(s) {clash}")):
        df.llm.predict(engine, "m", "sentiment {{t}}", target, **options)
    assert fake.chat_requests == []


def test_duplicated_column_names_are_refused_before_any_request(engine: str, fake: FakeProvider) -> None:
    df = pd.DataFrame([["good", "x", "y"]], columns=["t", "a", "a"])
    with pytest.raises(dfllm.ParameterError, match=r"duplicated column names \['a'\]"):
        df.llm.predict(engine, "m", "sentiment {{t}}", "y")
    assert fake.chat_requests == []


def test_other_polars_llm_namespace_is_not_replaced_silently() -> None:
    import importlib
    import warnings

    import dfllm.frames.polars as dfllm_polars

    # The registered descriptor itself: reading pl.DataFrame.llm gives the class, and putting that
    # back would leave every later frame's .llm an unbound class.
    original = pl.DataFrame.__dict__["llm"]
    try:
        class Other:
            def __init__(self, df: object) -> None:
                pass

        pl.DataFrame.llm = Other  # type: ignore[attr-defined]
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            importlib.reload(dfllm_polars)
        assert pl.DataFrame.llm is Other  # type: ignore[attr-defined]
        assert any("already registered" in str(w.message) for w in caught)
    finally:
        pl.DataFrame.llm = original  # type: ignore[attr-defined]


@pytest.mark.parametrize("rpm", [0.5, 1e-300, 0])
def test_an_rpm_below_one_a_minute_is_refused_before_any_request(rpm: float, engine: str, fake: FakeProvider) -> None:
    # It was accepted, then every row failed with a ValueError from the pacer, misattributed to the engine.
    with pytest.raises(dfllm.ParameterError, match=f"rpm must be .* at least 1, got {rpm!r}"):
        pd.DataFrame({"text": ["a"]}).llm.predict(engine, "m", "{{text}}", "y", rpm=rpm)
    assert fake.requests == []


def test_predict_takes_a_template_object(engine: str) -> None:
    template = dfllm.Template("sentiment {{t}}")
    assert dfllm.predict(pd.DataFrame({"t": ["good"]}), engine, "m", template, "y")["y"].tolist() == ["positive"]



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



def test_stats_must_be_run_stats_and_apredict_refuses_lazy_frames() -> None:
    with pytest.raises(dfllm.ParameterError, match=r"stats must be a dfllm\.RunStats"):
        dfllm.predict(pd.DataFrame({"t": ["x"]}), MockEngine(), "m", "{{t}}", "y", stats=5)  # type: ignore[arg-type]
    with pytest.raises(dfllm.ParameterError, match=r"call dfllm\.predict on it"):
        asyncio.run(dfllm.apredict(pl.LazyFrame({"t": ["x"]}), MockEngine(), "m", "{{t}}", "y"))



@pytest.mark.parametrize("target", ["self", "df", "index", "columns"])
def test_a_target_named_like_a_frame_attribute_gets_its_own_column(engine: str, target: str) -> None:
    for df in (pd.DataFrame({"t": ["good"]}), pl.DataFrame({"t": ["good"]})):
        out = dfllm.predict(df, engine, "m", "sentiment {{t}}", target)
        assert list(out[target]) == ["positive"] and list(out.columns) == ["t", target]

