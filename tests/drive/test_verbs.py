"""The verbs: classify, extract and filter are predict with a template and options, on pandas and Polars."""

from __future__ import annotations

import json
from typing import Literal

import pandas as pd
import polars as pl
import pytest

import dfllm
from dfllm.engines.base import Capabilities, Request
from dfllm.testing import MockEngine

TEXTS = ["I love it", "I hate it", "It is a chair"]


def lexicon(request: Request) -> str:
    text = request.messages[-1]["content"].rsplit("Text: ", 1)[-1]
    return "positive" if "love" in text else "negative" if "hate" in text else "neutral"


@pytest.mark.parametrize("make", [pd.DataFrame, pl.DataFrame])
def test_classify_gives_a_categorical_label_column(make: type) -> None:
    engine = MockEngine(lexicon)
    out = make({"text": TEXTS}).llm.classify("text", ["positive", "neutral", "negative"], engine=engine, model="m")
    values = out["text_label"].tolist() if isinstance(out, pd.DataFrame) else out["text_label"].to_list()
    assert values == ["positive", "negative", "neutral"]
    if isinstance(out, pd.DataFrame):
        assert list(out["text_label"].cat.categories) == ["positive", "neutral", "negative"]
    else:
        assert out.schema["text_label"] == pl.Enum(["positive", "neutral", "negative"])
    prompt = engine.prompts[0]
    assert "exactly one of these labels: positive, neutral, negative" in prompt and prompt.endswith("Text: I love it")


@pytest.mark.parametrize("make", [pd.DataFrame, pl.DataFrame])
def test_extract_gives_typed_columns_named_after_the_column(make: type) -> None:
    def handler(request: Request) -> str:
        text = request.messages[-1]["content"].rsplit("Text: ", 1)[-1]
        return json.dumps({"words": len(text.split()), "mood": "good" if "love" in text else "bad"})

    engine = MockEngine(handler, capabilities=Capabilities(json_schema=True))
    out = make({"text": TEXTS}).llm.extract("text", {"words": int, "mood": Literal["good", "bad"]},
                                            engine=engine, model="m")
    words = out["text_words"]
    assert list(words) == [3, 3, 4]
    if isinstance(out, pd.DataFrame):
        assert str(words.dtype) == "Int64" and str(out["text_mood"].dtype) == "category"
    else:
        assert words.dtype == pl.Int64 and out.schema["text_mood"] == pl.Enum(["good", "bad"])
    assert "Extract these fields from the text: words, mood." in engine.prompts[0]
    assert engine.requests[0].json_schema is not None


def test_extract_with_a_list_of_names_reads_strings() -> None:
    engine = MockEngine(lambda request: '{"city": "Oslo", "country": "Norway"}')
    out = pd.DataFrame({"t": ["Oslo is in Norway"]}).llm.extract("t", ["city", "country"], engine=engine, model="m",
                                                               target="place")
    assert out[["place_city", "place_country"]].values.tolist() == [["Oslo", "Norway"]]
    assert str(out["place_city"].dtype) == "string"


@pytest.mark.parametrize("make", [pd.DataFrame, pl.DataFrame])
def test_filter_keeps_the_rows_answered_yes_and_adds_no_column(make: type) -> None:
    engine = MockEngine(lambda request: "Yes." if "love" in request.messages[-1]["content"] else "no")
    df = make({"text": TEXTS, "n": [1, 2, 3]})
    out = df.llm.filter("Is this text positive? {{text}}", engine=engine, model="m")
    assert list(out.columns) == ["text", "n"]
    assert list(out["n"]) == [1]
    assert engine.requests[0].messages[0] == {
        "role": "system", "content": "Answer the question about the text with yes or no only."}
    if isinstance(out, pd.DataFrame):
        assert list(out.index) == [0]


def test_filter_with_errors_null_leaves_failed_rows_out_and_raise_reports_them() -> None:
    engine = MockEngine(lambda request: "maybe" if "chair" in request.messages[-1]["content"] else "yes")
    df = pd.DataFrame({"text": TEXTS})
    assert dfllm.predict is not None
    out = df.llm.filter("{{text}}?", engine=engine, model="m", errors="null")  # type: ignore[arg-type, call-arg]
    assert out["text"].tolist() == ["I love it", "I hate it"]
    with pytest.raises(dfllm.BatchError, match="1 of 3 rows failed"):
        df.llm.filter("{{text}}?", engine=engine, model="m", cache=False)  # type: ignore[arg-type, call-arg]


def test_verbs_on_a_lazyframe_stay_lazy_until_collected() -> None:
    def handler(request: Request) -> str:
        prompt = request.messages[-1]["content"]
        if prompt.startswith("Extract"):
            return json.dumps({"words": len(prompt.rsplit("Text: ", 1)[-1].split())})
        if prompt.startswith("Is"):
            return "yes" if "love" in prompt else "no"
        return lexicon(request)

    engine = MockEngine(handler, capabilities=Capabilities(json_schema=True))
    lf = pl.LazyFrame({"text": TEXTS, "n": [1, 2, 3]})
    labelled = lf.llm.classify("text", ["positive", "neutral", "negative"], engine=engine, model="m")  # type: ignore[attr-defined]
    extracted = lf.llm.extract("text", {"words": int}, engine=engine, model="m")  # type: ignore[attr-defined]
    kept = lf.llm.filter("Is this text positive? {{text}}", engine=engine, model="m")  # type: ignore[attr-defined]
    assert all(isinstance(f, pl.LazyFrame) for f in (labelled, extracted, kept)) and engine.requests == []
    assert kept.collect_schema().names() == ["text", "n"]
    assert labelled.collect()["text_label"].to_list() == ["positive", "negative", "neutral"]
    assert extracted.collect()["text_words"].to_list() == [3, 3, 4]
    assert kept.collect().to_dicts() == [{"text": "I love it", "n": 1}]
    assert len(engine.requests) == 9
    with_usage = lf.llm.filter("Is this text positive? {{text}}", engine=engine, model="m",  # type: ignore[attr-defined]
                               usage_columns=True, errors="null")
    assert with_usage.collect_schema().names() == ["text", "n"]  # none of the answer's own columns


def test_verbs_report_bad_input_before_any_request() -> None:
    engine = MockEngine()
    df = pd.DataFrame({"text": ["x"]})
    with pytest.raises(dfllm.ParameterError, match="at least two labels"):
        df.llm.classify("text", ["only"], engine=engine, model="m")
    with pytest.raises(dfllm.TemplateError, match="'txt'"):
        df.llm.extract("txt", ["a"], engine=engine, model="m")
    with pytest.raises(dfllm.ParameterError, match="schema field"):
        df.llm.extract("text", {"a": "int"}, engine=engine, model="m")
    assert engine.requests == []


@pytest.mark.local
def test_verbs_on_the_local_engine_offline() -> None:
    pytest.importorskip("llama_cpp")
    df = pl.DataFrame({"text": ["I love this phone, it is wonderful.", "Terrible, it broke in a day."]})
    labelled = df.llm.classify("text", ["positive", "negative"], seed=1, cache=False)  # type: ignore[attr-defined]
    assert labelled.schema["text_label"] == pl.Enum(["positive", "negative"])
    assert labelled["text_label"].null_count() == 0
    extracted = df.llm.extract("text", {"stars": int, "product": str}, seed=1, cache=False, max_tokens=64)  # type: ignore[attr-defined]
    assert extracted.schema["text_stars"] == pl.Int64 and extracted["text_stars"].null_count() == 0
