from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dfllm import LabelError
from dfllm.outputs.choices import normalise_label

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
