"""Answers to typed values: tolerant about where the JSON is, strict about what it holds.

Models wrap JSON in code fences, put a sentence before it, or leave a trailing comma before a
closing bracket. ``parse_answer`` finds the first JSON object in the text (fences stripped,
trailing commas dropped, where that is unambiguous: only outside strings and right before ``}``
or ``]``), then validates it with pydantic in strict mode: ``"5"`` is not an int, and a missing
field is an error, never a silent null. The fast path (the answer is exactly one JSON object, as
every schema-enforcing engine sends) goes straight to pydantic's JSON parser.

A value the frame cannot hold (an integer outside int64, a float that is NaN or infinite) is an
error too, never a wrap-around or a silent NaN.

An answer is untrusted input: whatever it holds (nesting thousands deep, megabytes of near-JSON,
lone surrogates), reading it ends in its values or a ``SchemaError``, never another exception.
The work is bounded, since pydantic-core holds the GIL while it validates (a worker thread would
not free the event loop): an answer over ``MAX_SCHEMA_ANSWER_CHARS`` is refused unread, the
tolerant search does a bounded number of linear passes, and a failure with millions of errors is
described from its count and a few examples, never from the list of them all.
"""

from __future__ import annotations

import datetime as dt
import enum
import functools
import itertools
import json
import math
import operator
import re
import reprlib
from collections.abc import Callable
from typing import Any

import pydantic
import pydantic_core

from dfllm._exceptions import SchemaError
from dfllm.engines.base import Completion
from dfllm.frames import ColumnType
from dfllm.outputs.schema import OutputSchema

_FENCE = "```"
_MAX_STARTS = 8  # "{" positions tried in leading prose before giving up
# The longest schema answer that is validated; a longer one is its row's error, unread and not
# re-asked. Validation time grows with the answer (about 0.6 us a character against a union of 200
# models, 1.2 us for an array of an 8-shape anyOf that never fits), all of it on the event loop:
# at this size the worst takes about 0.15-0.3 s. JSON answers from models are rarely over 100k.
MAX_SCHEMA_ANSWER_CHARS = 256 * 1024
# A failure with more errors than this is described from a shrunken copy of the answer: pydantic
# builds its error list (about 3 us an error) all at once or not at all.
_ERRORS_LISTED = 10
_ITEMS_KEPT = 10  # per array, in the shrunken copy
# A string (to its closing quote, or to the end when unclosed), or a comma right before "}" or
# "]". Possessive, so each character is looked at once: a hostile answer cannot make it backtrack.
_STRING_OR_TRAILING_COMMA = re.compile(r'("(?:[^"\\]|\\.)*+"?)|,(?=\s*+[}\]])', re.DOTALL)
_TRAILING_COMMA = re.compile(r",\s*+[}\]]")
_INT64 = (-(2**63), 2**63 - 1)
_RAW_SHOWN = 500
_TOO_DEEP = "its JSON is nested too deeply to read"


class AnswerParser:
    """Turns answer text into one value per top-level field of ``schema``, in order.

    Built once per call: each field's conversion to a column value is chosen up front, and
    fields that need none (strings, floats, booleans, dates) are taken as pydantic gives them.
    """

    def __init__(self, schema: OutputSchema) -> None:
        self.schema = schema
        self._validate_json = schema.model.__pydantic_validator__.validate_json
        attrs = [attr for _, attr, _ in schema.fields]
        getter = operator.itemgetter(*attrs)
        # itemgetter of one name gives the value, of several a tuple.
        self._take: Callable[[dict[str, Any]], tuple[Any, ...]] = (
            (lambda values: (getter(values),)) if len(attrs) == 1 else getter)
        self._conversions = tuple((i, convert) for i, (_, _, kind) in enumerate(schema.fields)
                                  if (convert := converter(kind)) is not None)

    def __call__(self, text: str) -> tuple[Any, ...]:
        """The values of ``text``'s answer; ``SchemaError`` if it does not fit the schema, and for
        any other failure to read it: an answer is never allowed to end the run."""
        if len(text) > MAX_SCHEMA_ANSWER_CHARS:
            # Not re-asked either: the re-ask would send the whole answer back to the model.
            raise _schema_error(text, self.schema, f"answer of {len(text):,} characters is over the "
                                f"{MAX_SCHEMA_ANSWER_CHARS:,} limit for a schema answer", repairable=False)
        try:
            return self._values(text)
        except SchemaError:
            raise
        except RecursionError:
            raise _schema_error(text, self.schema, _TOO_DEEP) from None
        except Exception as exc:  # a limit nobody foresaw is still this answer's problem, not the run's
            raise _schema_error(text, self.schema, f"it could not be read ({type(exc).__name__}: {exc})") from exc

    def _values(self, text: str) -> tuple[Any, ...]:
        try:
            instance = self._validate_json(text, strict=True)
        except pydantic.ValidationError as exc:
            if not _is_syntax_error(exc):
                raise _schema_error(text, self.schema, _describe(exc, text, self._validate_json)) from None
            instance = _validate_extracted(text, self.schema)
        values = self._take(instance.__dict__)
        if not self._conversions:
            return values
        converted = list(values)
        for i, convert in self._conversions:
            try:
                converted[i] = convert(converted[i])
            except ValueError as exc:
                raise _schema_error(text, self.schema, f"{self.schema.fields[i][0]}: {exc}") from None
        return tuple(converted)


def parse_answer(text: str, schema: OutputSchema) -> tuple[Any, ...]:
    """One value per top-level field of ``schema``, in order; ``SchemaError`` if ``text`` does not fit."""
    return AnswerParser(schema)(text)


def validator(schema: OutputSchema) -> Callable[[Completion], Completion | SchemaError]:
    """The executor's ``validate`` callback: the answer with its typed values (``Completion.values``)
    when it fits, else the ``SchemaError`` saying why not. Each answer is parsed once, here.
    """
    parse = AnswerParser(schema)

    def validate(completion: Completion) -> Completion | SchemaError:
        # A cut-off answer is never half-parsed, and asking again with the same budget cannot help.
        # (HTTP engines raise for it already; a custom engine may only say so here.)
        if completion.finish_reason == "length":
            return SchemaError(
                f"The answer was cut off at max_tokens before the JSON was complete; raise max_tokens. "
                f"Raw answer: {completion.text[:_RAW_SHOWN]!r}", raw=completion.text,
                problem="cut off at max_tokens", repairable=False)
        try:
            return completion._replace(values=parse(completion.text))
        except SchemaError as exc:
            return exc

    return validate


def _validate_extracted(text: str, schema: OutputSchema) -> pydantic.BaseModel:
    try:
        candidate = extract_json(text)
    except RecursionError:
        raise _schema_error(text, schema, _TOO_DEEP) from None
    if candidate is None:
        raise _schema_error(text, schema, "no JSON object found in the answer")
    validate_json = schema.model.__pydantic_validator__.validate_json
    try:
        return validate_json(candidate, strict=True)  # type: ignore[no-any-return]
    except pydantic.ValidationError as exc:
        raise _schema_error(text, schema, _describe(exc, candidate, validate_json)) from None


def _is_syntax_error(exc: pydantic.ValidationError) -> bool:
    if exc.error_count() != 1:  # counted without building the errors: there may be millions
        return False
    return exc.errors(include_url=False)[0]["type"] in ("json_invalid", "model_type", "model_attributes_type")


def extract_json(text: str) -> str | None:
    """The first JSON object in ``text``, as JSON text, or None when there is none.

    At most ``_MAX_STARTS`` "{" positions per source (the first fenced block, then the whole
    text) are tried, each with a few linear passes. ``RecursionError`` when the object found is
    nested deeper than Python's json reads.
    """
    for source in _sources(text):
        starts = itertools.islice((m.start() for m in _OPEN_BRACE.finditer(source)), _MAX_STARTS)
        for start in starts:
            value = _object_at(source, start)
            if value is not None:
                return json.dumps(value)
    return None


_OPEN_BRACE = re.compile(r"\{")
_DECODER = json.JSONDecoder()


def _sources(text: str) -> tuple[str, ...]:
    """Where to look: the first fenced block (its info string is no "{", so it stays), then all."""
    opening = text.find(_FENCE)
    closing = text.find(_FENCE, opening + len(_FENCE)) if opening >= 0 else -1
    return (text[opening + len(_FENCE):closing], text) if closing >= 0 else (text,)


def _object_at(source: str, start: int) -> dict[str, Any] | None:
    """The JSON object that starts at ``source[start]``, trailing commas forgiven; else None."""
    try:
        value, _ = _DECODER.raw_decode(source, start)
    except json.JSONDecodeError as exc:
        # Dropping trailing commas changes nothing before the first one, so it can only help when
        # the decoder stopped at the bracket right after one: else no pass over the rest is spent.
        if not _stopped_at_trailing_comma(source, start, exc.pos):
            return None
        try:
            value, _ = _DECODER.raw_decode(drop_trailing_commas(source[start:]))
        except ValueError:
            return None
    return value if isinstance(value, dict) else None


def _stopped_at_trailing_comma(source: str, start: int, stop: int) -> bool:
    """Whether the decoder stopped at a trailing comma: at the bracket after it (or, as newer
    Pythons report it, at the comma itself)."""
    comma = source.rfind(",", start, stop + 1)
    found = _TRAILING_COMMA.match(source, comma) if comma >= 0 else None
    return found is not None and found.end() > stop


def drop_trailing_commas(text: str) -> str:
    """``text`` without commas that stand, outside strings, right before ``}`` or ``]``."""
    # split keeps what lies between matches and each match's group: a string as it was, None for
    # a trailing comma. All in C: no Python call per match, as sub with a template would make.
    return "".join(filter(None, _STRING_OR_TRAILING_COMMA.split(text)))


def converter(kind: ColumnType) -> Callable[[Any], Any] | None:
    """How a validated value of ``kind`` becomes the value frame adapters want (plain Python,
    enums by value, UTC datetimes, lists); None when it already is one."""
    if kind.kind in ("string", "bool", "date"):
        return None
    if kind.kind == "float":
        return _finite
    if kind.kind == "list":  # a tuple, set or frozenset field too: frames want a list
        item = converter(kind.item) if kind.item is not None else None
        if item is None:
            return lambda value: value if value is None or type(value) is list else list(value)
        convert_item = item
        return lambda value: None if value is None else [convert_item(v) for v in value]
    if kind.kind == "struct":
        fields = tuple((key, converter(sub)) for key, sub in kind.fields)

        def struct(value: Any) -> Any:
            if value is None:
                return None
            found = value.model_dump(by_alias=True) if isinstance(value, pydantic.BaseModel) else dict(value)
            return {key: found.get(key) if convert is None else convert(found.get(key)) for key, convert in fields}

        return struct
    return functools.partial(_scalar, kind.kind)


def _scalar(kind: str, value: Any) -> Any:
    if value is None:
        return None
    if isinstance(value, enum.Enum):
        value = value.value
    if kind == "int":
        if not _INT64[0] <= value <= _INT64[1]:
            raise ValueError(f"{value} does not fit a 64-bit integer column")
        return value
    if kind == "datetime" and isinstance(value, dt.datetime) and value.tzinfo is not None:
        return value.astimezone(dt.timezone.utc).replace(tzinfo=None)
    if kind == "json":
        value = pydantic_core.to_jsonable_python(value, by_alias=True)
        try:
            json.dumps(value, allow_nan=False)
        except ValueError:
            raise ValueError("NaN or Infinity is not a JSON value; free-form JSON takes finite numbers only") from None
    return value


def _finite(value: float | None) -> float | None:
    # JSON has no NaN or Infinity, though pydantic reads them: in a typed column they would pass
    # for numbers, so an answer holding one (or a number too large for a float) does not fit.
    if value is not None and not math.isfinite(value):
        raise ValueError(f"{value} is not a finite number; a float column takes finite numbers only")
    return value


def _describe(exc: pydantic.ValidationError, text: str, validate_json: Callable[..., Any]) -> str:
    """What is wrong with ``text``: every error when there are few, else their count and a few."""
    count = exc.error_count()
    if count <= _ERRORS_LISTED:
        return "; ".join(map(_error_text, exc.errors(include_url=False)))
    examples = "; ".join(map(_error_text, _some_errors(text, validate_json)))
    return f"{count:,} values do not fit" + (f", among them: {examples}" if examples else "")


def _error_text(error: Any) -> str:
    where = ".".join(str(p) for p in error["loc"]) or "answer"
    shown = "" if error["type"] == "missing" else f" (got {_short(error.get('input'))})"
    return f"{where}: {error['msg']}{shown}"


def _some_errors(text: str, validate_json: Callable[..., Any]) -> list[Any]:
    """A few of the errors of ``text`` (valid JSON: pydantic read it), found cheaply by validating
    a copy whose arrays keep their first few items. Which errors is a guess; a bounded one."""
    try:
        shrunk = json.dumps(_shrink(json.loads(text)))
        validate_json(shrunk, strict=True)
    except pydantic.ValidationError as exc:
        if exc.error_count() > 100 * _ERRORS_LISTED:  # wide and deep enough to stay large: no examples
            return []
        # A shortened array may fall under minItems: that error is the copy's, not the answer's.
        return [e for e in exc.errors(include_url=False) if e["type"] != "too_short"][:_ERRORS_LISTED]
    except (ValueError, RecursionError):
        return []
    return []


def _shrink(value: Any) -> Any:
    if isinstance(value, list):
        return [_shrink(v) for v in value[:_ITEMS_KEPT]]
    if isinstance(value, dict):
        return {k: _shrink(v) for k, v in value.items()}
    return value


# What an error shows of a value: bounded however large or deep the value is.
_SHORT = reprlib.Repr()
_SHORT.maxlevel, _SHORT.maxlist, _SHORT.maxdict, _SHORT.maxstring, _SHORT.maxother = 3, 8, 4, 60, 60


def _short(value: Any) -> str:
    return _SHORT.repr(value)[:60]  # a string quoted, a number not: "got '1'" and "got 1" differ


def _schema_error(text: str, schema: OutputSchema, why: str, *, repairable: bool = True) -> SchemaError:
    return SchemaError(
        f"The answer does not match the schema {schema.name}: {why}. Raw answer: {text[:_RAW_SHOWN]!r}",
        raw=text, problem=why, repairable=repairable)
