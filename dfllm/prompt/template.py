"""Prompt templates: ``{{column}}`` placeholders filled from a row's cells.

The template is parsed once. Rendering is a single pass over the parsed pieces, so a cell
value is inserted literally: text such as ``{{x}}`` inside a value is never expanded again.

Cells are read as written, so what cannot be written as text is refused rather than guessed: a
``bytes`` cell, or a list or dict cell holding bytes (their repr ``b'...'`` is not their content),
stops the call before any request, and a cell holding a lone surrogate (not Unicode, so not
sendable) becomes that row's error.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from dfllm._exceptions import TemplateError, did_you_mean
from dfllm.prompt.images import ImageProblem, ImageTable, cells

_PLACEHOLDER = re.compile(r"\{\{\s*([^{}]*?)\s*\}\}")
_SINGLE_BRACED = re.compile(r"(?<!\{)\{\s*([^{}\s\"':,][^{}\"':,]*?)\s*\}(?!\})")
_EXAMPLE = "e.g. 'Summarise {{text}}'"
_SURROGATE = re.compile("[\ud800-\udfff]")
_BINARY = (bytes, bytearray, memoryview)
# Cells that render as a repr of what they hold: bytes inside them would show as b'...'.
_CONTAINERS = (list, tuple, dict, set, frozenset)
# How bytes, bytearray and memoryview start in a container's repr: after "[", "(", "{", "=" or a space.
_BYTES_REPR = re.compile(r"[\[({ =]b['\"]")
_MEMORYVIEW_REPR = "<memory at 0x"
_IMAGE = "image:"  # {{image:column}}: the column's image (or list of images) at that point
# Fixed text after a row's first cell from which the template is worth reordering for the prompt cache.
PREFIX_CACHE_HINT_CHARS = 200


def lone_surrogate(text: str) -> str | None:
    """Where ``text`` holds a lone surrogate (half of a UTF-16 pair: no UTF-8 can carry it), or None."""
    if text.isascii():
        return None
    match = _SURROGATE.search(text)
    return None if match is None else f"{match.group()!a} at position {match.start()}"


def surrogate_problem(what: str, text: str) -> str | None:
    """The message for a text that holds a lone surrogate, naming ``what`` holds it and the fix."""
    where = lone_surrogate(text)
    if where is None:
        return None
    return (f"{what} holds a lone surrogate {where}, which is not valid Unicode and cannot be sent. Repair "
            "the text where it was decoded (e.g. bytes.decode('utf-8', errors='replace')).")


@dataclass(frozen=True)
class UnsendableRow:
    """A row whose cells cannot make a prompt: not sent, ``problem`` is that row's error."""

    problem: str


def _problems(text: str, pieces: list[str], constant: bool) -> list[str]:
    """Every way the template is malformed, each with its fix."""
    if not text.strip():
        return [f"prompt_template is empty. Write the prompt with {{{{column}}}} placeholders, {_EXAMPLE}."]
    problems = [p for p in [surrogate_problem(f"prompt_template {text!r}", text)] if p]
    if any(not name for name in pieces[1::2]):
        problems.append(f"prompt_template {text!r} has an empty placeholder '{{{{}}}}'. "
                        "Put a column name inside the braces, e.g. '{{text}}'.")
    offset = 0
    for i, piece in enumerate(pieces):
        if i % 2:  # a placeholder: its length in the original text is not the name's
            match = _PLACEHOLDER.match(text, offset)
            assert match is not None
            offset = match.end()
            continue
        for brace, fix in (("{{", "close it with '}}' or remove it"), ("}}", "it closes no '{{'; remove it")):
            start = piece.find(brace)
            while start >= 0:
                problems.append(f"Unmatched {brace!r} at position {offset + start} of {text!r}: {fix}. "
                                f"Placeholders are {{{{column}}}}, {_EXAMPLE}.")
                start = piece.find(brace, start + 2)
        offset += len(piece)
    fields = pieces[1::2]
    if constant and fields:
        problems.append(f"constant=True, but prompt_template {text!r} has placeholders {list(dict.fromkeys(fields))}; "
                        "drop constant=True to fill them from each row.")
    if not fields and not constant and not problems:
        single = list(dict.fromkeys(_single_braced(pieces[0::2])))
        hint = f" ({', '.join('{' + n + '}' for n in single)} has single braces: write {{{{{single[0]}}}}})" \
            if single else ""
        problems.append(
            f"prompt_template {text!r} has no {{{{column}}}} placeholder{hint}, so every row would be sent the "
            f"same prompt and get the same answer. Add a placeholder, {_EXAMPLE}, or pass "
            "dfllm.Template(text, constant=True) if one prompt for every row is what you want."
        )
    return problems


def _single_braced(literals: Sequence[str]) -> Iterator[str]:
    for literal in literals:
        for match in _SINGLE_BRACED.finditer(literal):
            yield match.group(1)


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

    A malformed template (an unmatched ``{{`` or ``}}``, an empty one, one without any
    placeholder) is a ``TemplateError`` listing every problem. A prompt that is the same for
    every row is allowed only when asked for: ``Template("Tell a joke", constant=True)``.
    """

    def __init__(self, text: str, *, constant: bool = False) -> None:
        if not isinstance(text, str):
            raise TemplateError(
                f"prompt_template must be a string, got {type(text).__name__}: {text!r}."
            )
        self.text = text
        self.constant = constant
        # Alternating literal text and field names: literals at even positions. ``{{image:c}}``
        # puts column c's image (or images) there: the name is c, the slot an image slot.
        pieces = _PLACEHOLDER.split(text)
        self._images: tuple[bool, ...] = tuple(name.startswith(_IMAGE) for name in pieces[1::2])
        pieces[1::2] = [name[len(_IMAGE):].strip() if image else name
                        for name, image in zip(pieces[1::2], self._images, strict=True)]
        self._pieces: list[str] = pieces
        self.fields: tuple[str, ...] = tuple(dict.fromkeys(self._pieces[1::2]))
        self.image_fields: tuple[str, ...] = tuple(dict.fromkeys(
            name for name, image in zip(self._pieces[1::2], self._images, strict=True) if image))
        problems = _problems(text, self._pieces, constant)
        if problems:
            raise TemplateError(problems)

    def __repr__(self) -> str:
        return f"Template({self.text!r})"

    def check_columns(self, columns: Sequence[str]) -> None:
        """Raise one ``TemplateError`` naming every field the frame lacks, and every column
        written with single braces (``{text}``), which would be sent literally."""
        available = [str(c) for c in columns]
        missing = [f for f in self.fields if f not in available]
        single = [] if self.constant else [
            name for name in dict.fromkeys(_single_braced(self._pieces[0::2])) if name in available
        ]
        problems = [
            f"The template has {{{name}}} with single braces, which is sent as it is; write "
            f"{{{{{name}}}}} to put the column {name!r} there."
            for name in single
        ]
        if not missing:
            if problems:
                raise TemplateError(problems)
            return
        problems += [
            f"The template uses column {name!r}, which the frame does not have."
            f"{did_you_mean(name, available)}"
            for name in missing
        ]
        problems.append(
            f"Available columns: {available}. Fix the placeholder names in the template "
            "or add the columns to the frame."
        )
        raise TemplateError(problems)

    def prefix_cache_hint(self) -> str | None:
        """A hint when a long fixed instruction follows the row's cells, or None.

        Providers serve a prompt's repeated beginning from their prompt cache, at a discount
        (OpenAI: prompts of 1,024 tokens or more, in 128-token steps); the cache ends at the
        first character that differs, the row's first cell. dfllm sends ``system`` (and a
        schema's instruction) before the template, so only the template's own order is the caller's.
        """
        after = "".join(self._pieces[2::2]).strip()
        if not self.fields or len(after) < PREFIX_CACHE_HINT_CHARS:
            return None
        first = self._pieces[1]
        return (f"The template has {len(after):,} characters of fixed text after its first placeholder "
                f"{{{{{first}}}}}: providers cache only a prompt's repeated beginning, so that text is paid at the "
                "full price on every row. Put the instructions first and the {{column}} placeholders at the end, "
                "or pass the instructions as system=..., which is sent before the template.")

    def render(self, row: Mapping[str, Any]) -> str:
        """Fill the placeholders from ``row``. Null cells render as empty text."""
        pieces = self._pieces
        out = [pieces[0]]
        for i in range(1, len(pieces), 2):
            out.append(cell_text(row[pieces[i]]))
            out.append(pieces[i + 1])
        return "".join(out)

    def render_columns(self, columns: Mapping[str, Sequence[Any]], n_rows: int,
                       images: ImageTable | None = None) -> Iterator[str | UnsendableRow | None]:
        """Render row after row from column lists. Yields None for a row whose fields are all null,
        an ``UnsendableRow`` for a row with a cell no request can carry (a lone surrogate, an image
        that cannot be sent).

        A constant template (no fields) renders the same prompt for every row. A text column holding
        ``bytes`` is a ``TemplateError`` (every such column named) before the first row. Image
        columns become markers of ``images`` (see ``ImageTable``), each image identified now.
        """
        if not self.fields:
            yield from [self.text] * n_rows
            return
        text_fields = [f for f in self.fields if f not in self.image_fields]
        nulls = {f: [is_null(v) for v in columns[f]] for f in self.fields}
        texts = {f: ["" if null else str(v) for v, null in zip(columns[f], nulls[f], strict=True)]
                 for f in text_fields}
        _raise_binary_problems(text_fields, columns, texts)
        marked = {f: _image_markers(f, columns[f], nulls[f], images) for f in self.image_fields}
        skip = [all(row) for row in zip(*nulls.values(), strict=True)]
        # One C-level %-format per row; the literals' own '%' signs are escaped first.
        layout = "%s".join(literal.replace("%", "%%") for literal in self._pieces[0::2])
        slots = [marked[name][0] if image else texts[name]
                 for name, image in zip(self._pieces[1::2], self._images, strict=True)]
        bad_images = {row: problem for f in self.image_fields for row, problem in marked[f][1].items()}
        # Rows are looked at one by one only when some cell holds a lone surrogate (searched at C speed).
        suspect = any(_SURROGATE.search(text) for text in ("".join(texts[f]) for f in text_fields)
                      if not text.isascii())
        for row, (values, all_null) in enumerate(zip(zip(*slots, strict=True), skip, strict=True)):
            if all_null:
                yield None
            elif row in bad_images:
                yield UnsendableRow(bad_images[row])
            else:
                prompt = layout % values
                yield self._unsendable(values) if suspect and _SURROGATE.search(prompt) else prompt

    def _unsendable(self, values: Sequence[str]) -> UnsendableRow:
        problems = [surrogate_problem(f"The cell of column {name!r}", value)
                    for name, value in zip(self._pieces[1::2], values, strict=True)]
        return UnsendableRow(" ".join(dict.fromkeys(p for p in problems if p)))


def _raise_binary_problems(fields: Sequence[str], columns: Mapping[str, Sequence[Any]],
                           texts: Mapping[str, Sequence[str]]) -> None:
    """A ``TemplateError`` naming every text column that holds bytes (sent as their repr)."""
    # One C-level pass per column: the set of cell types, not a check per cell.
    kinds = {f: set(map(type, columns[f])) for f in fields}
    problems = [_binary_problem(f, columns[f]) for f in fields if any(issubclass(kind, _BINARY) for kind in kinds[f])]
    # Bytes inside a list or dict show in its text as b'..': cells are looked into one by one
    # only in a column of containers whose text has that mark (searched at C speed).
    problems += [problem for f in fields if any(map(_is_container, kinds[f]))
                 and _may_hold_bytes("\0".join(texts[f]))
                 and (problem := _nested_binary_problem(f, columns[f]))]
    if problems:
        raise TemplateError(problems)


def _image_markers(name: str, values: Sequence[Any], nulls: Sequence[bool],
                   images: ImageTable | None) -> tuple[list[str], dict[int, str]]:
    """An image column's markers, row by row, and the rows whose image cannot be sent, with why."""
    assert images is not None, "a template with image placeholders renders with an ImageTable"
    markers: list[str] = []
    problems: dict[int, str] = {}
    for row, (value, null) in enumerate(zip(values, nulls, strict=True)):
        try:
            markers.append("" if null else "".join(images.marker(v) for v in cells(value) if not is_null(v)))
        except ImageProblem as exc:
            markers.append("")
            problems[row] = f"The image in column {name!r} cannot be sent: {exc}."
    return markers, problems


def _binary_problem(name: str, values: Sequence[Any]) -> str:
    row = next(i for i, v in enumerate(values) if isinstance(v, _BINARY))
    return (f"Column {name!r} holds bytes (first at row {row}), which would be sent as their Python repr b'...'. "
            f"Decode it to text first, e.g. df[{name!r}] = df[{name!r}].str.decode('utf-8'); bytes are not "
            "read as images or files.")


def _may_hold_bytes(text: str) -> bool:
    return _BYTES_REPR.search(text) is not None or _MEMORYVIEW_REPR in text


def _is_container(kind: type) -> bool:
    return issubclass(kind, _CONTAINERS) or (kind.__name__ == "ndarray" and kind.__module__.startswith("numpy"))


def _nested_binary_problem(name: str, values: Sequence[Any]) -> str | None:
    row = next((i for i, v in enumerate(values) if _is_container(type(v)) and _holds_bytes(v)), None)
    if row is None:
        return None
    return (f"Column {name!r} holds bytes inside its lists or dicts (first at row {row}), which would be sent as "
            f"their Python repr b'...'. Decode them to text first, e.g. df[{name!r}] = df[{name!r}].map(lambda cell: "
            "[b.decode('utf-8') for b in cell]), or write each cell as the text you want sent.")


def _holds_bytes(cell: Any) -> bool:
    """Whether ``cell`` has bytes anywhere inside it; iterative, and each container looked at once
    (a list may hold itself)."""
    stack: list[Any] = [cell]
    seen: dict[int, Any] = {}  # holding each container keeps its id from being reused by another
    while stack:
        value = stack.pop()
        if isinstance(value, _BINARY):
            return True
        if id(value) in seen or not _is_container(type(value)):
            continue
        seen[id(value)] = value
        if isinstance(value, dict):
            stack.extend(value.keys())
            stack.extend(value.values())
        else:
            stack.extend(value.tolist() if hasattr(value, "tolist") else value)
    return False
