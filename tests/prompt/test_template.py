from __future__ import annotations

import collections
import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from dfllm import Template, TemplateError
from dfllm.prompt.template import UnsendableRow, cell_text, is_null
from dfllm.testing import FakeProvider

names = st.text(alphabet=st.characters(blacklist_characters="{}", blacklist_categories=["Cs"]), min_size=1,
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


def test_a_constant_prompt_is_sent_for_every_row_only_when_asked_for() -> None:
    assert list(Template("hello", constant=True).render_columns({}, 2)) == ["hello", "hello"]
    with pytest.raises(TemplateError, match=r"no \{\{column\}\} placeholder.*constant=True"):
        Template("hello")
    with pytest.raises(TemplateError, match="constant=True, but"):
        Template("hi {{t}}", constant=True)


@pytest.mark.parametrize(("text", "expected"), [
    ("{{text}", ["Unmatched '{{' at position 0"]),
    ("{text}", ["{text} has single braces: write {{text}}"]),
    ("{{a{b}}}", ["Unmatched '{{' at position 0", "Unmatched '}}' at position 5"]),
    ("}}x{{", ["Unmatched '}}' at position 0", "Unmatched '{{' at position 3"]),
    ("", ["prompt_template is empty"]),
    ("   ", ["prompt_template is empty"]),
    ("no placeholder at all", ["no {{column}} placeholder"]),
    ("{{t}} and {{", ["Unmatched '{{' at position 10"]),
])
def test_malformed_templates_list_every_problem_with_the_fix(text: str, expected: list[str]) -> None:
    with pytest.raises(TemplateError) as info:
        Template(text)
    message = str(info.value)
    assert len(info.value.problems) == len(expected)
    for part in expected:
        assert part in message
    assert "{{column}}" in message or "{{text}}" in message


def test_single_braced_column_name_is_refused_when_the_frame_has_that_column() -> None:
    t = Template('Return {"label": x} for {{t}} and {text}')
    t.check_columns(["t"])  # {text} is not a column: literal text, e.g. a code sample
    with pytest.raises(TemplateError, match=r"\{text\} with single braces.*write \{\{text\}\}"):
        t.check_columns(["t", "text"])


@pytest.mark.parametrize("template", ["{{text}", "{text}", "{{a{b}}}", "}}x{{", "", "same for all"])
def test_malformed_template_is_refused_before_any_request(fake: FakeProvider, engine: str, template: str) -> None:
    import pandas as pd

    df = pd.DataFrame({"text": ["a", "b"], "a": [1, 2]})
    with pytest.raises(TemplateError):
        df.llm.predict(engine, "m", template, "y")
    assert fake.chat_requests == []
    out = df.llm.predict(engine, "m", Template("Say hi", constant=True), "y", cache=False)
    assert out["y"].notna().all() and len(fake.chat_requests) == 1


@given(st.text(alphabet=st.sampled_from(list("{} ab")), max_size=14) | st.text(max_size=20))
def test_any_template_parses_into_fields_that_round_trip_or_is_refused(text: str) -> None:
    try:
        t = Template(text)
    except TemplateError as exc:
        problems = exc.problems
    else:
        problems = []
    if problems:
        assert all(isinstance(p, str) and p for p in problems)
        return
    assert t.fields
    pieces = t._pieces
    rebuilt = "".join(p if i % 2 == 0 else "{{" + p + "}}" for i, p in enumerate(pieces))
    again = Template(rebuilt)
    assert again.fields == t.fields and again._pieces == pieces
    # Filling each field with its own placeholder text gives the template back: nothing expanded twice.
    assert t.render({f: "{{" + f + "}}" for f in t.fields}) == rebuilt


def test_null_detection_covers_pandas_missing_values() -> None:
    import pandas as pd

    assert all(is_null(v) for v in (None, math.nan, pd.NA, pd.NaT))
    assert not any(is_null(v) for v in ("", 0, "nan", [1]))


@given(st.lists(names, min_size=1, max_size=4, unique=True), st.data())
def test_render_inserts_values_literally(fields: list[str], data: st.DataObject) -> None:
    # Lone surrogates (category Cs) are refused in a template before any request (a test of its own).
    no_braces_nor_surrogates = st.characters(exclude_characters="{}", exclude_categories=["Cs"])
    literal = data.draw(st.text(alphabet=no_braces_nor_surrogates, max_size=10))
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


# -- cells are read as written: bytes refused, a lone surrogate is the row's own error --------------
@pytest.mark.parametrize("blob", [b"caf\xc3\xa9", bytearray(b"x"), memoryview(b"y")])
def test_bytes_cells_are_refused_naming_every_column_and_the_fix(blob: object) -> None:
    t = Template("{{a}} {{b}} {{c}}")
    with pytest.raises(TemplateError) as info:
        list(t.render_columns({"a": ["x", blob], "b": ["y", "z"], "c": [blob, None]}, 2))
    assert info.value.problems[0].startswith("Column 'a' holds bytes (first at row 1), which would be sent as")
    assert info.value.problems[1].startswith("Column 'c' holds bytes (first at row 0)")
    assert len(info.value.problems) == 2 and ".str.decode('utf-8')" in str(info.value)


def test_a_bytes_column_stops_predict_before_any_request() -> None:
    import pandas as pd

    import dfllm

    df = pd.DataFrame({"t": ["a", b"\x89PNG"]})
    with FakeProvider() as fake:
        dfllm.create_engine("bytes", "openai", api_key="sk-test-bytes-000000", base_url=fake.base_url)
        with pytest.raises(TemplateError, match="Column 't' holds bytes"):
            df.llm.predict("bytes", "m", "{{t}}", "y")
        assert fake.requests == []


def test_a_cell_with_a_lone_surrogate_renders_as_that_rows_problem() -> None:
    t = Template("<{{a}}|{{b}}>")
    rendered = list(t.render_columns({"a": ["ok", "h\ud83d", None], "b": ["é", "x", "\udfff"]}, 3))
    assert rendered[0] == "<ok|é>"
    assert rendered[1] == UnsendableRow("The cell of column 'a' holds a lone surrogate '\\ud83d' at position 1, "
                                        "which is not valid Unicode and cannot be sent. Repair the text where it "
                                        "was decoded (e.g. bytes.decode('utf-8', errors='replace')).")
    assert isinstance(rendered[2], UnsendableRow) and "column 'b'" in rendered[2].problem


def test_a_template_with_a_lone_surrogate_is_refused() -> None:
    with pytest.raises(TemplateError) as info:
        Template("Sum \udc00 {{t}}")
    assert str(info.value).startswith(
        "prompt_template 'Sum \\udc00 {{t}}' holds a lone surrogate '\\udc00' at position 4")


@given(st.lists(st.text(alphabet=st.characters(categories=["Cs", "Ll"]), max_size=6),
                min_size=1, max_size=10))
def test_a_row_is_a_prompt_exactly_when_its_cells_are_valid_unicode(values: list[str]) -> None:
    rendered = list(Template("[{{v}}]").render_columns({"v": values}, len(values)))
    for value, row in zip(values, rendered, strict=True):
        if any("\ud800" <= ch <= "\udfff" for ch in value):
            assert isinstance(row, UnsendableRow)
        else:
            assert row == f"[{value}]"


Pair = collections.namedtuple("Pair", "x y")


@pytest.mark.parametrize("cell", [
    [b"abc"], {"k": b"abc"}, {b"k": 1}, (1, {b"x"}), [[bytearray(b"x")]], [memoryview(b"y")], {"a": [None, b""]},
    Pair(1, b"z"), np.array([b"a"], dtype=object), np.array([b"a", b"b"]),
])
def test_bytes_inside_a_list_or_dict_cell_are_refused_like_bytes(cell: object) -> None:
    t = Template("{{a}} {{b}}")
    with pytest.raises(TemplateError) as info:
        list(t.render_columns({"a": ["x", b"top"], "b": [["fine"], cell]}, 2))
    assert info.value.problems[0].startswith("Column 'a' holds bytes (first at row 1)")  # listed together
    assert info.value.problems[1].startswith(
        "Column 'b' holds bytes inside its lists or dicts (first at row 1), which would be sent as their Python "
        "repr b'...'. Decode them to text first, e.g. df['b'] = df['b'].map(")
    assert len(info.value.problems) == 2


def test_containers_without_bytes_render_as_before_even_when_their_text_looks_like_bytes() -> None:
    itself: list[object] = [1]
    itself.append(itself)  # a list that holds itself: looked into once, not forever
    cells = [["b'x'", "Bob's"], {"k": 'b"'}, (" b'",), itself, {"a": 1.5, "b": None}]
    rendered = list(Template("<{{c}}>").render_columns({"c": cells}, len(cells)))
    assert rendered == [f"<{c}>" for c in cells]


def test_a_list_cell_holding_bytes_stops_predict_before_any_request() -> None:
    import pandas as pd

    import dfllm

    df = pd.DataFrame({"t": [["a"], [b"abc"]]})
    with FakeProvider() as fake:
        dfllm.create_engine("nested-bytes", "openai", api_key="sk-test-bytes-000000", base_url=fake.base_url)
        with pytest.raises(TemplateError, match="Column 't' holds bytes inside its lists or dicts"):
            df.llm.predict("nested-bytes", "m", "{{t}}", "y")
        assert fake.requests == []


@pytest.mark.parametrize(("text", "hinted"), [
    ("Review: {{t}}\n" + "x" * 199, False),  # under the bound
    ("Review: {{t}}\n" + "x" * 200, True),
    ("{{a}} " + "x" * 150 + " {{b}} " + "y" * 60, True),  # fixed text between and after the cells adds up
    ("x" * 5000 + " {{t}}", False),  # instructions first: what the prefix cache wants
    (" " * 500 + "{{t}}" + " \n" * 300, False),  # only whitespace after the cell
])
def test_a_long_fixed_text_after_the_first_cell_gets_a_prefix_cache_hint(text: str, hinted: bool) -> None:
    hint = Template(text).prefix_cache_hint()
    assert (hint is not None) == hinted
    if hint is not None:
        assert "after its first placeholder" in hint and "system=" in hint


def test_a_constant_template_has_no_cells_and_no_hint() -> None:
    assert Template("x" * 1000, constant=True).prefix_cache_hint() is None
