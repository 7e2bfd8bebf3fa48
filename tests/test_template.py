from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dfllm import Template, TemplateError
from dfllm.prompt.template import cell_text, is_null

names = st.text(alphabet=st.characters(blacklist_characters="{}", blacklist_categories=("Cs",)), min_size=1,
                max_size=12).filter(lambda s: s.strip() == s)
cells = st.one_of(st.text(max_size=40), st.integers(), st.floats(allow_nan=False), st.none())


def test_fields_in_order_without_repeats_and_whitespace_allowed() -> None:
    t = Template("{{ a }} and {{b}} then {{a}}{{  c d  }}")
    assert t.fields == ("a", "b", "c d")
    assert t.render({"a": 1, "b": "x", "c d": None}) == "1 and x then 1"


def test_every_missing_column_reported_at_once_with_available_columns() -> None:
    t = Template("{{txet}} {{user}} {{text}}")
    with pytest.raises(TemplateError) as info:
        t.check_columns(["text", "author"])
    message = str(info.value)
    assert "'txet'" in message and "Did you mean 'text'?" in message
    assert "'user'" in message
    assert "Available columns: ['text', 'author']" in message
    assert len(info.value.problems) == 3


def test_empty_placeholder_and_non_string_template_are_errors() -> None:
    with pytest.raises(TemplateError, match="empty placeholder"):
        Template("hi {{ }}")
    with pytest.raises(TemplateError, match="must be a string"):
        Template(42)  # type: ignore[arg-type]


def test_all_null_rows_yield_none_and_partial_nulls_render_empty() -> None:
    t = Template("{{a}}|{{b}}")
    rendered = list(t.render_columns({"a": [None, "x", float("nan")], "b": [None, None, 2]}, 3))
    assert rendered == [None, "x|", "|2"]


def test_template_without_fields_sends_the_same_prompt_for_every_row() -> None:
    assert list(Template("hello").render_columns({}, 2)) == ["hello", "hello"]


def test_null_detection_covers_pandas_missing_values() -> None:
    import pandas as pd

    assert all(is_null(v) for v in (None, math.nan, pd.NA, pd.NaT))
    assert not any(is_null(v) for v in ("", 0, "nan", [1]))


@given(st.lists(names, min_size=1, max_size=4, unique=True), st.data())
def test_render_inserts_values_literally(fields: list[str], data: st.DataObject) -> None:
    literal = data.draw(st.text(alphabet=st.characters(blacklist_characters="{}"), max_size=10))
    text = literal.join("{{" + f + "}}" for f in fields)
    row = {f: data.draw(cells) for f in fields}
    assert Template(text).render(row) == literal.join(cell_text(row[f]) for f in fields)


@given(st.text(max_size=30))
def test_values_containing_placeholders_are_never_expanded(value: str) -> None:
    t = Template("[{{a}}] [{{b}}]")
    nasty = value + "{{b}}"
    assert t.render({"a": nasty, "b": "B"}) == f"[{nasty}] [B]"


@given(st.lists(st.one_of(st.text(max_size=8), st.none()), min_size=1, max_size=20))
def test_render_columns_agrees_with_render(values: list[str | None]) -> None:
    t = Template("x={{v}};")
    expected = [None if v is None else t.render({"v": v}) for v in values]
    assert list(t.render_columns({"v": values}, len(values))) == expected


def test_numbers_render_as_the_frame_shows_them() -> None:
    import pandas as pd

    df = pd.DataFrame({"i": [1, 2], "f": [1.5, 2.0], "b": [True, False]})
    t = Template("{{i}} {{f}} {{b}}")
    cols = {c: df[c].tolist() for c in "ifb"}
    assert list(t.render_columns(cols, 2)) == ["1 1.5 True", "2 2.0 False"]
