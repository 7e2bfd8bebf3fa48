"""The option table is the single source: every bad value is refused before any request; the README
and ``PredictOptions`` follow it."""

from __future__ import annotations

import inspect
import re
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import dfllm
from dfllm.config.options import OPTION_NAMES, OPTIONS, PredictOptions, option_problems, options_table_markdown
from dfllm.testing import FakeProvider, MockEngine
from tests.conftest import KEY

README = Path(__file__).resolve().parents[2] / "README.md"



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



_PREDICT_ARGUMENTS = frozenset(inspect.signature(dfllm.predict).parameters) - OPTION_NAMES | {"progress"}
_names = st.one_of(st.sampled_from(sorted(OPTION_NAMES)), st.text(min_size=1, max_size=12))



@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.dictionaries(_names, _values, max_size=5))
def test_any_option_dict_raises_only_dfllm_errors_and_invalid_ones_send_nothing(options: dict[str, Any]) -> None:
    engine = MockEngine(identity=None)
    try:
        # predict's own arguments (df, engine, model, ...) are not options: a drawn 'engine' would clash.
        dfllm.predict(pd.DataFrame({"t": ["x"]}), engine, "m", "{{t}}", "y", progress=False,
                      **{k: v for k, v in options.items() if k not in _PREDICT_ARGUMENTS})
    except dfllm.ConfigurationError:
        assert engine.requests == []
    except dfllm.DfllmError:
        pass



def test_readme_options_table_is_generated_from_the_option_table() -> None:
    assert options_table_markdown() in README.read_text()



def test_predict_options_typeddict_matches_the_option_table() -> None:
    assert set(PredictOptions.__annotations__) == {o.name for o in OPTIONS}



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



PASTED_KEY = "sk-proj-Zq8Xv3Lm9Tn2Rb7Wc4Hy6Kd1Pf5Gs0Ju"


@pytest.mark.parametrize("pasted", [PASTED_KEY, f"Bearer {PASTED_KEY}", [PASTED_KEY], {"k": PASTED_KEY}, 7j])
def test_a_value_refused_by_any_option_never_quotes_what_may_be_a_key(pasted: Any) -> None:
    refused = 0
    for option in OPTIONS:
        problems = option_problems({option.name: pasted})
        if not problems:
            continue
        [problem] = problems
        refused += 1
        assert PASTED_KEY not in problem and PASTED_KEY[8:20] not in problem, (option.name, problem)
        if pasted != 7j:
            assert "characters, not shown: it may hold a key" in problem, (option.name, problem)
    assert refused >= 20  # most options refuse each of these: the check above ran on each of them


def test_a_key_pasted_as_an_option_value_is_refused_with_its_size_an_ordinary_value_quoted(
        engine: str, fake: FakeProvider) -> None:
    with pytest.raises(dfllm.ConfigurationError) as info:
        pd.DataFrame({"t": ["x"]}).llm.predict(engine, "m", "{{t}}", "y", temperature=PASTED_KEY,
                                               max_tokens=PASTED_KEY, seed="hot")
    message = str(info.value)
    assert PASTED_KEY not in message and PASTED_KEY[8:] not in message
    assert "temperature must be a number from 0 to 2, got a value (40 characters, not shown: it may hold a key)" \
        in message
    assert "max_tokens must be a positive integer, got a value (40 characters, not shown" in message
    assert "seed must be an integer, got 'hot'" in message  # nothing key-like: quoted, as before
    assert fake.requests == []
