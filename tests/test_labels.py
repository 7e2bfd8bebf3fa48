from __future__ import annotations

import pandas as pd
import pytest
from hypothesis import given
from hypothesis import strategies as st

import dfllm
from dfllm import ConfigurationError, LabelError
from dfllm.outputs.choices import label_problems, normalise_label
from dfllm.testing import FakeProvider

from .conftest import KEY

CHOICES = ["positive", "neutral", "negative"]


@pytest.mark.parametrize(("answer", "label"), [
    ("positive", "positive"), ("  Positive.\n", "positive"), ("NEGATIVE!", "negative"), ("`neutral`", "neutral"),
    ("The sentiment of the text is positive. It is", "positive"), ("**Negative**", "negative"),
    ('"neutral"', "neutral"),
])
def test_answers_normalise_to_labels(answer: str, label: str) -> None:
    assert normalise_label(answer, CHOICES) == label


@pytest.mark.parametrize("answer", ["", "happy", "positive or negative", "I cannot say " * 10 + "positive"])
def test_unmatched_or_ambiguous_answers_are_errors_with_the_raw_text(answer: str) -> None:
    with pytest.raises(LabelError) as info:
        normalise_label(answer, CHOICES)
    assert repr(answer[:200]) in str(info.value)


def test_a_label_inside_another_label_is_not_ambiguous() -> None:
    assert normalise_label("not positive", ["positive", "not positive"]) == "not positive"


labels = st.lists(st.text(alphabet="abcdefghijklmnopqrstuvwxyz", min_size=3, max_size=10), min_size=2,
                  max_size=6, unique=True)


@given(labels, st.data())
def test_any_label_decorated_with_case_space_and_punctuation_maps_back(choices: list[str], data: st.DataObject) -> None:
    label = data.draw(st.sampled_from(choices))
    before = data.draw(st.sampled_from(["", " ", "\n", '"', "`", "**"]))
    after = data.draw(st.sampled_from(["", ".", "!", " \n", '"', "**"]))
    case = data.draw(st.sampled_from([str.lower, str.upper, str.title]))
    assert normalise_label(before + case(label) + after, choices) == label


# -- a label is never guessed: negated, or more than one, is a row error --------------------------
@pytest.mark.parametrize("answer", [
    "not positive", "Definitely NOT negative.", "It isn't positive", "It isn\u2019t negative.", "never positive",
    "I don't think it is positive", "No, negative", "Positive or negative?", "It is positive, not negative.",
])
def test_a_negated_label_or_more_than_one_label_is_an_error_with_the_raw_text(answer: str) -> None:
    with pytest.raises(LabelError) as info:
        normalise_label(answer, ["positive", "negative"])
    assert repr(answer) in str(info.value)


@pytest.mark.parametrize(("answer", "choices", "label"), [
    ("Positive.", ["positive", "negative"], "positive"),
    ("The sentiment is positive", ["positive", "negative"], "positive"),
    ("Sentiment: **NEGATIVE**", ["positive", "negative"], "negative"),
    ("not relevant", ["relevant", "not relevant"], "not relevant"),
    ("relevant", ["relevant", "not relevant"], "relevant"),
    ("The document is not relevant.", ["relevant", "not relevant"], "not relevant"),
    ("Not relevant. Not relevant at all", ["relevant", "not relevant"], "not relevant"),
    ("No.", ["yes", "no"], "no"),
    ("The answer is no", ["yes", "no"], "no"),
])
def test_an_unambiguous_answer_maps_to_its_label(answer: str, choices: list[str], label: str) -> None:
    assert normalise_label(answer, choices) == label


@pytest.mark.parametrize(("answer", "choices"), [
    ("not not relevant", ["relevant", "not relevant"]), ("not yes", ["yes", "no"]),
    ("No, not yes", ["yes", "no"]), ("relevant, not relevant", ["relevant", "not relevant"]),
])
def test_labels_holding_negation_words_are_still_never_guessed(answer: str, choices: list[str]) -> None:
    with pytest.raises(LabelError):
        normalise_label(answer, choices)


# Words the decorations below use: a label equal to one of them would be a second mention.
_DECORATION_WORDS = {"not", "nor", "never", "neither", "cannot", "without", "isnt", "arent", "wasnt", "werent",
                     "dont", "doesnt", "didnt", "definitely", "the", "answer", "label", "think", "sentiment"}
plain_labels = st.lists(st.text(alphabet="abcdefghijklmnopqrstuvwxyz", min_size=3, max_size=10)
                        .filter(lambda w: w not in _DECORATION_WORDS), min_size=2, max_size=6, unique=True)
NEGATIONS = ["not ", "NOT ", "Not ", "isn't ", "It is not ", "Definitely not ", "never ", "I don't think it's ",
             "no, ", "It wasn\u2019t "]
PLAIN_LEADS = ["", "The answer is ", "Label: ", "I think it's ", "Definitely ", "**"]


@given(plain_labels, st.data())
def test_a_negated_label_is_never_that_label(choices: list[str], data: st.DataObject) -> None:
    label = data.draw(st.sampled_from(choices))
    negation = data.draw(st.sampled_from(NEGATIONS))
    case = data.draw(st.sampled_from([str.lower, str.upper, str.title]))
    answer = negation + case(label) + data.draw(st.sampled_from(["", ".", "!", " \n", "**"]))
    with pytest.raises(LabelError) as info:
        normalise_label(answer, choices)
    assert repr(answer) in str(info.value)


@given(plain_labels, st.data())
def test_one_label_after_plain_words_maps_to_it(choices: list[str], data: st.DataObject) -> None:
    label = data.draw(st.sampled_from(choices))
    case = data.draw(st.sampled_from([str.lower, str.upper, str.title]))
    answer = data.draw(st.sampled_from(PLAIN_LEADS)) + case(label) + data.draw(st.sampled_from(["", ".", "**"]))
    assert normalise_label(answer, choices) == label


def test_negated_and_doubled_labels_are_row_errors_through_a_run() -> None:
    df = pd.DataFrame({"t": ["positive", "not positive", "Definitely NOT negative.", "Negative.",
                             "positive, negative"]})
    with FakeProvider(responder="echo") as fake:
        dfllm.create_engine("echo", "openai", api_key=KEY, base_url=fake.base_url)
        out = df.llm.predict("echo", "m", "{{t}}", "y", choices=["positive", "negative"], errors="null",
                             cache=False)
    assert out["y"].tolist()[0] == "positive" and out["y"].tolist()[3] == "negative"
    assert out["y"].isna().tolist() == [False, True, True, False, True]
    errors = out["y_error"].tolist()
    for row, raw in ((1, "not positive"), (2, "Definitely NOT negative."), (4, "positive, negative")):
        assert errors[row].startswith("LabelError: ") and repr(raw) in errors[row]
    assert sorted(r.prompt for r in fake.chat_requests) == sorted(df["t"])  # each row asked once, echoed back


# -- labels an answer could not tell apart are refused before any request ------------------------
@pytest.mark.parametrize("choices", [["Yes", "yes"], ["yes.", "yes"], ["positive", " Positive!", "negative"]])
def test_labels_equal_up_to_case_or_punctuation_are_refused_before_any_request(
        choices: list[str], engine: str, fake: FakeProvider) -> None:
    df = pd.DataFrame({"t": ["a", "b"]})
    with pytest.raises(ConfigurationError) as info:
        df.llm.predict(engine, "m", "{{t}}", "y", choices=choices, concurrency=10**9)
    message = str(info.value)
    colliding = [c for c in choices if c.strip(" .!").lower() in ("yes", "positive")]
    assert repr(colliding) in message and "reword them" in message
    assert "concurrency must be" in message  # every problem of the call at once
    assert fake.requests == []


def test_a_label_with_no_letters_or_digits_is_refused() -> None:
    assert label_problems(["...", "yes"]) == [
        "choice '...' has no letters or digits, so no answer could be matched to it; reword it."]
    assert label_problems(["yes", "no", "not sure"]) == []
