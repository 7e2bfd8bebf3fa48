"""Schemas: the three forms a caller may give, normalised to one ``OutputSchema``.

A ``schema`` is a pydantic model class, a JSON Schema dict (``{"type": "object", "properties":
...}``), or a plain mapping of field name to Python type (``{"age": int, "tags": list[str],
"sentiment": Literal["positive", "negative"]}``). Each becomes a pydantic model (built with
``pydantic.create_model`` for the last two) that validates answers, a wire schema that engines
enforce, and a logical ``ColumnType`` per top-level field that frame adapters map to dtypes.

The wire schema is OpenAI-strict compatible: ``$ref`` inlined, every object with properties
closed (``additionalProperties: false``) with every property required (optional fields are
nullable instead), no ``title``/``default`` noise. (A free-form ``dict`` field stays open;
OpenAI's strict mode refuses those, other engines take them.) llama.cpp's grammar converter takes the same schema.
"""

from __future__ import annotations

import datetime as dt
import enum
import keyword
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal, Optional, Union

import pydantic

from dfllm._exceptions import ParameterError
from dfllm.frames import ColumnType

_JSON = ColumnType("json")
_SIMPLE: dict[type, ColumnType] = {str: ColumnType("string"), bool: ColumnType("bool"), int: ColumnType("int"),
                                   float: ColumnType("float"), dt.datetime: ColumnType("datetime"),
                                   dt.date: ColumnType("date")}
_DROPPED_KEYS = ("title", "default")
# A schema nested deeper than this (dicts and lists, counted as JSON) is refused before it is
# walked: every step below recurses, and no answer a model writes needs such a shape.
MAX_SCHEMA_DEPTH = 64
_MAX_SCHEMA_NODES = 100_000
_JSON_SCALARS = (str, int, float, bool, type(None))


@dataclass(frozen=True)
class OutputSchema:
    """One normalised schema: ``model`` validates, ``wire`` is sent, ``fields`` name the columns.

    ``fields`` is ``(answer key, attribute on the model, logical column type)`` per top-level field.
    """

    name: str
    model: type[pydantic.BaseModel]
    wire: dict[str, Any]
    fields: tuple[tuple[str, str, ColumnType], ...]


def normalise_schema(value: Any) -> OutputSchema:
    """The ``OutputSchema`` for any accepted form, or a ``ParameterError`` listing every problem."""
    if isinstance(value, Mapping):
        problem = _shape_problem(value)
        if problem:
            raise ParameterError(problem)
    try:
        return _normalise(value)
    except RecursionError as exc:  # a deep annotation or pydantic model: the JSON form is checked above
        raise ParameterError(f"schema is nested too deeply to be built ({exc}); flatten it to at most "
                             f"{MAX_SCHEMA_DEPTH} levels.") from exc


def _shape_problem(schema: Mapping[Any, Any]) -> str | None:
    """Too deep or too large a schema dict, found without recursing (a deep one would overflow)."""
    stack: list[tuple[Any, int]] = [(schema, 1)]
    seen = 0
    while stack:
        node, depth = stack.pop()
        seen += 1
        if depth > MAX_SCHEMA_DEPTH:
            return (f"schema is nested more than {MAX_SCHEMA_DEPTH} levels deep (or refers to itself); "
                    "flatten it: no answer needs that many levels.")
        if seen > _MAX_SCHEMA_NODES:
            return f"schema has more than {_MAX_SCHEMA_NODES:,} parts; give a smaller one."
        children = node.values() if isinstance(node, Mapping) else node if isinstance(node, (list, tuple)) else ()
        stack.extend((child, depth + 1) for child in children if isinstance(child, (Mapping, list, tuple)))
    return None


def _normalise(value: Any) -> OutputSchema:
    if isinstance(value, type) and issubclass(value, pydantic.BaseModel):
        model = value
    elif isinstance(value, Mapping) and _looks_like_json_schema(value):
        model = _model_from_json_schema(value)
    elif isinstance(value, Mapping):
        model = _model_from_mapping(value)
    else:
        raise ParameterError(
            "schema must be a pydantic model class, a JSON Schema dict or a mapping of field name to type, "
            f"e.g. {{'age': int, 'tags': list[str]}}; got {value!r}.")
    try:
        wire = strict_wire_schema(model.model_json_schema())
    except (pydantic.PydanticUserError, TypeError, ValueError) as exc:
        raise ParameterError(f"schema {model.__name__} cannot be expressed as JSON Schema: {exc}") from exc
    if not wire.get("properties"):
        raise ParameterError(f"schema {model.__name__} has no fields; give at least one, e.g. {{'label': str}}.")
    fields = tuple((info.alias or name, name, column_type(info.annotation))
                   for name, info in model.model_fields.items())
    return OutputSchema(model.__name__, model, wire, fields)


def _looks_like_json_schema(value: Mapping[Any, Any]) -> bool:
    return isinstance(value.get("properties"), Mapping) or value.get("type") == "object"


def _field_name_problems(names: list[Any]) -> list[str]:
    return [f"schema field names must be non-empty strings not starting with '_', got {n!r}."
            for n in names if not isinstance(n, str) or not n or n.startswith("_")]


def _model_from_mapping(mapping: Mapping[Any, Any]) -> type[pydantic.BaseModel]:
    problems = _field_name_problems(list(mapping))
    for name, annotation in mapping.items():
        if not _is_annotation(annotation):
            problems.append(f"schema field {name!r} must be a type such as str, int, list[str] or "
                            f"Literal['a', 'b'], got {annotation!r}.")
    if problems:
        raise ParameterError(problems)
    return _create("Answer", {name: (annotation, True) for name, annotation in mapping.items()})


def _is_annotation(value: Any) -> bool:
    return isinstance(value, type) or typing.get_origin(value) is not None or value is Any


def _create(name: str, fields: Mapping[str, tuple[Any, bool]]) -> type[pydantic.BaseModel]:
    """A model whose attributes are ``f0, f1, ...`` and whose JSON keys are the given names.

    Aliases keep any key usable (``json``, ``model_config``, ``first name`` would otherwise clash
    with BaseModel's attributes or Python's syntax).
    """
    definitions: dict[str, Any] = {}
    for i, (key, (annotation, required)) in enumerate(fields.items()):
        if required:
            definitions[f"f{i}"] = (annotation, pydantic.Field(..., alias=key))
        else:
            definitions[f"f{i}"] = (Optional[annotation], pydantic.Field(None, alias=key))  # noqa: UP045
    try:
        return pydantic.create_model(name, **definitions)
    except (pydantic.PydanticUserError, pydantic.PydanticSchemaGenerationError, TypeError) as exc:
        raise ParameterError(f"schema could not be built: {exc}") from exc


def _model_from_json_schema(schema: Mapping[str, Any]) -> type[pydantic.BaseModel]:
    definitions = {**schema.get("definitions", {}), **schema.get("$defs", {})}
    annotation = _annotation(schema, definitions, "schema", set())
    if not (isinstance(annotation, type) and issubclass(annotation, pydantic.BaseModel)):
        raise ParameterError("A JSON Schema given as schema must describe an object with properties, e.g. "
                             f"{{'type': 'object', 'properties': {{'age': {{'type': 'integer'}}}}}}; got {schema!r}.")
    return annotation


def _annotation(schema: Any, definitions: Mapping[str, Any], where: str, seen: set[str]) -> Any:
    """The Python type a JSON Schema fragment describes; ``ParameterError`` for what we cannot type."""
    if not isinstance(schema, Mapping):
        raise ParameterError(f"{where} must be a JSON Schema object, got {schema!r}.")
    if "$ref" in schema:
        ref = str(schema["$ref"])
        name = ref.rsplit("/", 1)[-1]
        if name not in definitions or ref in seen:
            raise ParameterError(f"{where}: $ref {ref!r} is unknown or recursive; dfllm supports local, "
                                 "non-recursive definitions.")
        return _annotation(definitions[name], definitions, where, seen | {ref})
    if "enum" in schema or "const" in schema:
        return _literal(schema, where)
    for union_key in ("anyOf", "oneOf"):
        if union_key in schema:
            options = [_annotation(s, definitions, f"{where}.{union_key}", seen) for s in schema[union_key]]
            return Union[tuple(options)] if options else Any  # noqa: UP007
    kind = schema.get("type")
    if isinstance(kind, list):
        options = [_annotation({**schema, "type": k}, definitions, where, seen) for k in kind]
        return Union[tuple(options)] if options else Any  # noqa: UP007
    if kind == "null":
        return type(None)
    if kind == "string":
        return {"date": dt.date, "date-time": dt.datetime}.get(schema.get("format", ""), str)
    if kind in ("integer", "number", "boolean"):
        return {"integer": int, "number": float, "boolean": bool}[kind]
    if kind == "array":
        item = _annotation(schema["items"], definitions, f"{where}.items", seen) if "items" in schema else Any
        return list[item]  # type: ignore[valid-type]
    if kind == "object" or "properties" in schema:
        properties = schema.get("properties") or {}
        if not isinstance(properties, Mapping):
            properties = {}
        problems = _field_name_problems(list(properties)) + _required_problems(schema, properties, where)
        required = schema.get("required")
        required = set(required) if isinstance(required, (list, tuple)) and not problems else set()
        fields: dict[str, tuple[Any, bool]] = {}
        for key, sub in properties.items():
            try:
                fields[key] = (_annotation(sub, definitions, f"{where}.{key}", seen), key in required)
            except ParameterError as exc:  # every field's problems at once
                problems += exc.problems
        if problems:
            raise ParameterError(problems)
        if not fields:
            return dict[str, Any]
        title = schema.get("title")
        name = title if isinstance(title, str) and title.isidentifier() and not keyword.iskeyword(title) else "Answer"
        return _create(name, fields)
    if not schema:
        return Any
    raise ParameterError(f"{where}: unsupported JSON Schema {dict(schema)!r}; use string, integer, number, "
                         "boolean, array, object, enum or anyOf.")


def _literal(schema: Mapping[str, Any], where: str) -> Any:
    """``enum`` / ``const`` as a ``Literal``: only JSON scalars can be compared with an answer as labels."""
    if "enum" in schema and not isinstance(schema["enum"], (list, tuple)):
        raise ParameterError(f"{where}: enum must be a list of values, e.g. ['a', 'b'], got {schema['enum']!r}.")
    values = tuple(schema["enum"]) if "enum" in schema else (schema["const"],)
    if not values:
        raise ParameterError(f"{where}: enum is empty.")
    others = [v for v in values if not isinstance(v, _JSON_SCALARS)]
    if others:
        raise ParameterError(
            f"{where}: enum/const values must be strings, numbers, booleans or null, got {others!r}; describe a "
            "list or an object with 'type': 'array' or 'object' instead.")
    return Literal[values]


def _required_problems(schema: Mapping[str, Any], properties: Mapping[Any, Any], where: str) -> list[str]:
    required = schema.get("required", [])
    if not isinstance(required, (list, tuple)) or not all(isinstance(r, str) for r in required):
        return [f"{where}: required must be a list of property names, got {required!r}."]
    unknown = [r for r in required if r not in properties]
    if not unknown:
        return []
    return [f"{where}: required names {unknown!r}, which {'is' if len(unknown) == 1 else 'are'} not among its "
            f"properties {list(properties)}; fix the name{'s' if len(unknown) > 1 else ''} or add "
            f"{'it' if len(unknown) == 1 else 'them'} to properties."]


def strict_wire_schema(schema: Mapping[str, Any]) -> dict[str, Any]:
    """``schema`` with ``$ref`` inlined and every object closed, all its properties required."""
    definitions = {**schema.get("definitions", {}), **schema.get("$defs", {})}

    def walk(node: Any, seen: frozenset[str]) -> Any:
        if isinstance(node, list):
            return [walk(n, seen) for n in node]
        if not isinstance(node, Mapping):
            return node
        if "$ref" in node:
            ref = str(node["$ref"])
            name = ref.rsplit("/", 1)[-1]
            if ref in seen or name not in definitions:
                raise ValueError(f"$ref {ref!r} is recursive or unknown")
            return walk(definitions[name], seen | {ref})
        out = {k: walk(v, seen) for k, v in node.items()
               if k not in _DROPPED_KEYS and k not in ("$defs", "definitions")}
        if isinstance(out.get("properties"), Mapping):  # free-form objects (a dict field) stay open
            out["type"] = "object"
            out["required"] = list(out["properties"])
            out["additionalProperties"] = False
        return out

    result: dict[str, Any] = walk(schema, frozenset())
    return result


def column_type(annotation: Any) -> ColumnType:
    """The logical column type of a field's annotation (``json``: kept as Python objects)."""
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin is typing.Annotated:
        return column_type(args[0])
    if origin in (Union, types.UnionType):
        rest = [a for a in args if a is not type(None)]
        return column_type(rest[0]) if len(rest) == 1 else _JSON
    if origin is Literal:
        return _value_type(args)
    if origin in (list, tuple, set, frozenset) or (origin is not None and _is_sequence(origin)):
        items = [a for a in args if a is not Ellipsis]
        item = column_type(items[0]) if len(set(items)) == 1 else _JSON
        return ColumnType("list", item=item)
    if isinstance(annotation, type):
        if issubclass(annotation, enum.Enum):
            return _value_type(tuple(m.value for m in annotation))
        if issubclass(annotation, pydantic.BaseModel):
            return ColumnType("struct", fields=tuple(
                (info.alias or name, column_type(info.annotation)) for name, info in annotation.model_fields.items()))
        for base, kind in _SIMPLE.items():  # datetime before date: one is a subclass of the other
            if issubclass(annotation, base):
                return kind
    return _JSON


def _is_sequence(origin: Any) -> bool:
    import collections.abc

    return isinstance(origin, type) and issubclass(origin, collections.abc.Sequence) and not issubclass(origin, str)


def _value_type(values: tuple[Any, ...]) -> ColumnType:
    if values and all(isinstance(v, str) for v in values):
        return ColumnType("category", categories=tuple(dict.fromkeys(values)))
    if values and all(isinstance(v, int) and not isinstance(v, bool) for v in values):
        return ColumnType("int")
    return _JSON
