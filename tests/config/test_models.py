"""Models (``create_model``): names that agree, call options, one row as a value, lazy frames kept lazy."""

from __future__ import annotations

import asyncio

import pandas as pd
import polars as pl
import pytest

import dfllm
from dfllm.config import models
from dfllm.testing import FakeProvider, MockEngine


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



def test_a_model_without_drivers_names_the_module_that_gives_them(monkeypatch: pytest.MonkeyPatch) -> None:
    # A RuntimeError, not an assert: `python -O` strips asserts, and the call would hit None.
    monkeypatch.setattr(models, "_drivers", models._Drivers())
    model = dfllm.create_model("m", engine=MockEngine(), predict="y", model_name="gpt", prompt_template="{{t}}")
    with pytest.raises(RuntimeError, match=r"dfllm\.drive\.eager gives them"):
        model.predict(pd.DataFrame({"t": ["x"]}))
    with pytest.raises(RuntimeError, match=r"dfllm\.drive\.eager gives them"):
        asyncio.run(model.apredict(t="x"))
