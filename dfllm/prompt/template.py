"""Prompt templates: ``{{column}}`` placeholders filled from a row's cells.

The template is parsed once. Rendering is a single pass over the parsed pieces, so a cell
value is inserted literally: text such as ``{{x}}`` inside a value is never expanded again.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from dfllm._exceptions import TemplateError, did_you_mean

_PLACEHOLDER = re.compile(r"\{\{\s*([^{}]*?)\s*\}\}")


def is_null(value: object) -> bool:
    """None, NaN, and pandas' NA/NaT: all the ways a frame spells a missing cell."""
    if value is None:
        return True
    if isinstance(value, float):
        return math.isnan(value)
    if type(value).__name__ in ("NAType", "NaTType"):  # pandas' missing markers, without importing pandas
        return True
    try:  # numpy's NaN and NaT compare unequal to themselves
        return bool(value != value)
    except (TypeError, ValueError):
        return False


def cell_text(value: object) -> str:
    """How a cell reads in a prompt: nulls as empty text, everything else as ``str`` shows it."""
    return "" if is_null(value) else str(value)


class Template:
    """A parsed prompt template.

    >>> t = Template("Classify {{ text }} for {{user}}")
    >>> t.fields
    ('text', 'user')
    >>> t.render({"text": "hi", "user": "{{text}}"})
    'Classify hi for {{text}}'
    """

    def __init__(self, text: str) -> None:
        if not isinstance(text, str):
            raise TemplateError(
                f"prompt_template must be a string, got {type(text).__name__}: {text!r}."
            )
        self.text = text
        # Alternating literal text and field names: literals at even positions.
        self._pieces: list[str] = _PLACEHOLDER.split(text)
        empty = [i for i in range(1, len(self._pieces), 2) if not self._pieces[i]]
        if empty:
            raise TemplateError(
                f"prompt_template {text!r} has an empty placeholder '{{{{}}}}'. "
                "Put a column name inside the braces, e.g. '{{text}}'."
            )
        self.fields: tuple[str, ...] = tuple(dict.fromkeys(self._pieces[1::2]))

    def __repr__(self) -> str:
        return f"Template({self.text!r})"

    def check_columns(self, columns: Sequence[str]) -> None:
        """Raise one ``TemplateError`` naming every field the frame lacks."""
        available = [str(c) for c in columns]
        missing = [f for f in self.fields if f not in available]
        if not missing:
            return
        problems = [
            f"The template uses column {name!r}, which the frame does not have."
            f"{did_you_mean(name, available)}"
            for name in missing
        ]
        problems.append(
            f"Available columns: {available}. Fix the placeholder names in the template "
            "or add the columns to the frame."
        )
        raise TemplateError(problems)

    def render(self, row: Mapping[str, Any]) -> str:
        """Fill the placeholders from ``row``. Null cells render as empty text."""
        pieces = self._pieces
        out = [pieces[0]]
        for i in range(1, len(pieces), 2):
            out.append(cell_text(row[pieces[i]]))
            out.append(pieces[i + 1])
        return "".join(out)

    def render_columns(self, columns: Mapping[str, Sequence[Any]], n_rows: int) -> Iterator[str | None]:
        """Render row after row from column lists. Yields None for a row whose fields are all null.

        A template without fields renders the same prompt for every row.
        """
        if not self.fields:
            yield from [self.text] * n_rows
            return
        nulls = {f: [is_null(v) for v in columns[f]] for f in self.fields}
        texts = {f: ["" if null else str(v) for v, null in zip(columns[f], nulls[f], strict=True)]
                 for f in self.fields}
        skip = [all(row) for row in zip(*nulls.values(), strict=True)]
        # One C-level %-format per row; the literals' own '%' signs are escaped first.
        layout = "%s".join(literal.replace("%", "%%") for literal in self._pieces[0::2])
        slots = [texts[name] for name in self._pieces[1::2]]
        for values, all_null in zip(zip(*slots, strict=True), skip, strict=True):
            yield None if all_null else layout % values
