"""Answers to typed values: tolerant about where the JSON is, strict about what it holds.

Models wrap JSON in code fences, put a sentence before it, or leave a trailing comma before a
closing bracket. ``parse_answer`` finds the first JSON object in the text (fences stripped,
trailing commas dropped, where that is unambiguous: only outside strings and right before ``}``
or ``]``), then validates it with pydantic in strict mode: ``"5"`` is not an int, and a missing
field is an error, never a silent null. The fast path (the answer is exactly one JSON object, as
every schema-enforcing engine sends) goes straight to pydantic's JSON parser.

A value the frame cannot hold (an integer outside int64) is an error too, never a wrap-around.
"""

from __future__ import annotations

import datetime as dt
import enum
import functools
import json
import operator
import re
from collections.abc import Callable
from typing import Any

import pydantic
import pydantic_core

from dfllm._exceptions import SchemaError
from dfllm.engines.base import Completion
from dfllm.frames import ColumnType
from dfllm.outputs.schema import OutputSchema

_FENCE = re.compile(r"```[a-zA-Z0-9_-]*\s*\n?(.*?)```", re.DOTALL)
_MAX_STARTS = 8  # "{" positions tried in leading prose before giving up
_INT64 = (-(2**63), 2**63 - 1)
_RAW_SHOWN = 500


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
        """The values of ``text``'s answer; ``SchemaError`` if it does not fit the schema."""
        try:
            instance = self._validate_json(text, strict=True)
        except pydantic.ValidationError as exc:
            if not _is_syntax_error(exc):
                raise _schema_error(text, self.schema, _describe(exc)) from None
            instance = _validate_extracted(text, self.schema)
        values = self._take(instance.__dict__)
        if not self._conversions:
            return values
        converted = list(values)
        try:
            for i, convert in self._conversions:
                converted[i] = convert(converted[i])
        except ValueError as exc:
            raise _schema_error(text, self.schema, str(exc)) from None
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
    candidate = extract_json(text)
    if candidate is None:
        raise _schema_error(text, schema, "no JSON object found in the answer")
    try:
        return schema.model.model_validate_json(candidate, strict=True)
    except pydantic.ValidationError as exc:
        raise _schema_error(text, schema, _describe(exc)) from None


def _is_syntax_error(exc: pydantic.ValidationError) -> bool:
    errors = exc.errors(include_url=False)
    return len(errors) == 1 and errors[0]["type"] in ("json_invalid", "model_type", "model_attributes_type")


def extract_json(text: str) -> str | None:
    """The first JSON object in ``text``, as JSON text, or None when there is none."""
    fenced = _FENCE.search(text)
    for source in ((fenced.group(1),) if fenced else ()) + (text,):
        starts = [m.start() for m in re.finditer(r"\{", source)][:_MAX_STARTS]
        for start in starts:
            for candidate in (source, drop_trailing_commas(source[start:])):
                offset = start if candidate is source else 0
                try:
                    value, _ = _DECODER.raw_decode(candidate, offset)
                except ValueError:
                    continue
                if isinstance(value, dict):
                    return json.dumps(value)
    return None


_DECODER = json.JSONDecoder()


def drop_trailing_commas(text: str) -> str:
    """``text`` without commas that stand, outside strings, right before ``}`` or ``]``."""
    out: list[str] = []
    in_string = escaped = False
    for i, char in enumerate(text):
        if in_string:
            escaped = char == "\\" and not escaped
            if char == '"' and not escaped:
                in_string = False
        elif char == '"':
            in_string = True
        elif char == ",":
            j = i + 1
            while j < len(text) and text[j].isspace():
                j += 1
            if j < len(text) and text[j] in "}]":
                continue
        out.append(char)
    return "".join(out)


def converter(kind: ColumnType) -> Callable[[Any], Any] | None:
    """How a validated value of ``kind`` becomes the value frame adapters want (plain Python,
    enums by value, UTC datetimes, lists); None when it already is one."""
    if kind.kind in ("string", "float", "bool", "date"):
        return None
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
        return pydantic_core.to_jsonable_python(value, by_alias=True)
    return value


def _describe(exc: pydantic.ValidationError) -> str:
    parts = []
    for error in exc.errors(include_url=False)[:10]:
        where = ".".join(str(p) for p in error["loc"]) or "answer"
        shown = "" if error["type"] == "missing" else f" (got {str(error.get('input'))[:60]!r})"
        parts.append(f"{where}: {error['msg']}{shown}")
    return "; ".join(parts)


def _schema_error(text: str, schema: OutputSchema, why: str) -> SchemaError:
    return SchemaError(
        f"The answer does not match the schema {schema.name}: {why}. Raw answer: {text[:_RAW_SHOWN]!r}",
        raw=text, problem=why)
