"""Schemas: the three forms a caller may give, normalised to one ``OutputSchema``.

A ``schema`` is a pydantic model class, a JSON Schema dict (``{"type": "object", "properties":
...}``), or a plain mapping of field name to Python type (``{"age": int, "tags": list[str],
"sentiment": Literal["positive", "negative"]}``). Each becomes a pydantic model (built with
``pydantic.create_model`` for the last two) that validates answers, a wire schema that engines
enforce, and a logical ``ColumnType`` per top-level field that frame adapters map to dtypes.

A JSON Schema dict keeps its constraints, both in the model that validates answers and on the
wire: ``minimum``, ``maximum``, ``exclusiveMinimum``, ``exclusiveMaximum``, ``multipleOf`` on
numbers; ``minLength``, ``maxLength``, ``pattern``, ``format`` (``date``, ``date-time``) on strings;
``minItems``, ``maxItems``, ``uniqueItems`` on arrays; and ``description`` anywhere. A keyword that
dfllm does not enforce (``allOf``, ``not``, ``format: email``, ...) is refused, never dropped.

The wire schema is OpenAI-strict compatible: ``$ref`` inlined, every object with properties
closed (``additionalProperties: false``) with every property required (optional fields are
nullable instead), no ``title``/``default`` noise. (A free-form ``dict`` field stays open;
OpenAI's strict mode refuses those, other engines take them.) llama.cpp's grammar converter takes the same schema.

Whatever the schema holds, it ends as an ``OutputSchema`` or a ``ParameterError`` listing its
problems, before any request: a lone surrogate or a NaN anywhere in it, a part pydantic cannot
build, a keyword's value of the wrong kind.
"""

from __future__ import annotations

import datetime as dt
import enum
import functools
import json
import keyword
import math
import types
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Annotated, Any, Literal, Optional, Union

import pydantic
import pydantic_core

from dfllm._exceptions import ParameterError
from dfllm.frames import ColumnType
from dfllm.prompt.template import lone_surrogate

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

# JSON Schema keywords: what each kind of node may hold. Annotations are allowed anywhere (only
# ``description`` is kept, on the wire); anything not listed is refused rather than dropped.
_ANNOTATIONS = frozenset({"title", "description", "default", "examples", "$comment", "$schema", "$id"})
_NUMBER_FIELDS = {"minimum": "ge", "maximum": "le", "exclusiveMinimum": "gt", "exclusiveMaximum": "lt",
                  "multipleOf": "multiple_of"}
_STRING_FIELDS = {"minLength": "min_length", "maxLength": "max_length", "pattern": "pattern"}
_ARRAY_FIELDS = {"minItems": "min_length", "maxItems": "max_length"}
_LENGTHS = frozenset({"minLength", "maxLength", "minItems", "maxItems"})
_KEYWORDS_OF_TYPE: dict[str, frozenset[str]] = {
    "integer": frozenset(_NUMBER_FIELDS), "number": frozenset(_NUMBER_FIELDS),
    "string": frozenset({*_STRING_FIELDS, "format"}), "array": frozenset({*_ARRAY_FIELDS, "items", "uniqueItems"}),
    "object": frozenset({"properties", "required", "additionalProperties"}),
    "boolean": frozenset(), "null": frozenset(),
}
_FORMATS: dict[str, type] = {"date": dt.date, "date-time": dt.datetime}
_SUPPORTED = ("type, enum, const, anyOf, oneOf, $ref, properties, required, additionalProperties (false), items; "
              "minimum, maximum, exclusiveMinimum, exclusiveMaximum, multipleOf on numbers; minLength, maxLength, "
              "pattern, format (date, date-time) on strings; minItems, maxItems, uniqueItems on arrays; "
              "description, title, default, examples")


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
        problems = _value_problems(value, "schema")
        if problems:
            raise ParameterError(problems)
    try:
        return _normalise(value)
    except ParameterError:
        raise
    except RecursionError as exc:  # a deep annotation or pydantic model: the JSON form is checked above
        raise ParameterError(f"schema is nested too deeply to be built ({exc}); flatten it to at most "
                             f"{MAX_SCHEMA_DEPTH} levels.") from exc
    except Exception as exc:  # pydantic's or pydantic-core's own refusal of some part: ours to report
        raise ParameterError(f"schema could not be built ({type(exc).__name__}: {_printable(str(exc))}); "
                             "fix or simplify the part it names.") from exc


def _value_problems(schema: Any, where: str) -> list[str]:
    """What no schema may hold, found in one pass without recursing (a deep one would overflow):
    too much depth or size, a lone surrogate (in a key, a value, a ``Literal``), NaN or Infinity."""
    stack: list[tuple[Any, int, str]] = [(schema, 1, where)]
    seen = 0
    problems: list[str] = []
    while stack:
        node, depth, path = stack.pop()
        seen += 1
        if depth > MAX_SCHEMA_DEPTH:
            return [f"schema is nested more than {MAX_SCHEMA_DEPTH} levels deep (or refers to itself); "
                    "flatten it: no answer needs that many levels."]
        if seen > _MAX_SCHEMA_NODES:
            return [f"schema has more than {_MAX_SCHEMA_NODES:,} parts; give a smaller one."]
        problem = _leaf_problem(node, path)
        if problem:
            problems.append(problem)
        if isinstance(node, Mapping):
            for key, child in node.items():
                key_path = f"{path}.{_printable(str(key))}"
                if isinstance(key, str) and (where_in_key := lone_surrogate(key)):
                    problems.append(f"{key_path}: the name holds a lone surrogate {where_in_key}, which is not "
                                    "valid Unicode and cannot be sent; repair the text where it was decoded.")
                stack.append((child, depth + 1, key_path))
        elif isinstance(node, (list, tuple)):
            stack.extend((child, depth + 1, f"{path}[{i}]") for i, child in enumerate(node))
        elif isinstance(node, type) and issubclass(node, enum.Enum):  # its values become the wire's enum
            stack.extend((member.value, depth + 1, f"{path}.{member.name}") for member in node)
        elif not isinstance(node, str) and typing.get_args(node):  # Literal["a"], list[...]
            stack.extend((child, depth + 1, f"{path}[{i}]") for i, child in enumerate(typing.get_args(node)))
    return problems[::-1]  # the stack walks backwards


def _leaf_problem(value: Any, path: str) -> str | None:
    if isinstance(value, str):
        where = lone_surrogate(value)
        if where:
            return (f"{path} holds a lone surrogate {where}, which is not valid Unicode and cannot be sent; "
                    "repair the text where it was decoded.")
    elif isinstance(value, float) and not math.isfinite(value):
        return f"{path} is {value!r}: NaN and Infinity are not JSON values; give a finite number."
    return None


def _printable(text: str) -> str:
    """``text`` with lone surrogates escaped, so that a message about them can be printed."""
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


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
    title = _printable(model.__name__)
    try:
        wire = strict_wire_schema(model.model_json_schema())
    except (pydantic.PydanticUserError, TypeError, ValueError) as exc:
        raise ParameterError(f"schema {title} cannot be expressed as JSON Schema: {_printable(str(exc))}") from exc
    # What is sent must be JSON and UTF-8: a pydantic model's descriptions, enums, Literals too.
    problems = _value_problems(wire, f"schema {title}'s JSON Schema") + [
        p for p in [_leaf_problem(model.__name__, f"schema {title}'s name")] if p]
    if problems:
        raise ParameterError(problems)
    if not wire.get("properties"):
        raise ParameterError(f"schema {title} has no fields; give at least one, e.g. {{'label': str}}.")
    json.dumps(wire, allow_nan=False).encode("utf-8")  # holds by the walk above; a last guard
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


def _create(name: str, fields: Mapping[str, tuple[Any, bool]], doc: str | None = None) -> type[pydantic.BaseModel]:
    """A model whose attributes are ``f0, f1, ...`` and whose JSON keys are the given names.

    Aliases keep any key usable (``json``, ``model_config``, ``first name`` would otherwise clash
    with BaseModel's attributes or Python's syntax). ``doc`` becomes its JSON Schema description.
    """
    definitions: dict[str, Any] = {}
    for i, (key, (annotation, required)) in enumerate(fields.items()):
        if required:
            definitions[f"f{i}"] = (annotation, pydantic.Field(..., alias=key))
        else:
            definitions[f"f{i}"] = (Optional[annotation], pydantic.Field(None, alias=key))  # noqa: UP045
    try:
        return pydantic.create_model(name, __doc__=doc, **definitions)
    except Exception as exc:  # pydantic-core refuses some parts (a Literal it cannot compare, ...)
        raise ParameterError(f"schema could not be built ({type(exc).__name__}: {_printable(str(exc))}); "
                             "fix or simplify the part it names.") from exc


def _model_from_json_schema(schema: Mapping[str, Any]) -> type[pydantic.BaseModel]:
    definitions: dict[str, Any] = {}
    problems = []
    for key in ("definitions", "$defs"):
        found = schema.get(key, {})
        if isinstance(found, Mapping):
            definitions.update(found)
        else:
            problems.append(f"schema.{key} must map names to schemas, e.g. {{'Item': {{'type': 'string'}}}}, "
                            f"got {found!r}.")
    if problems:
        raise ParameterError(problems)
    annotation = _annotation(schema, definitions, "schema", set(), root=True)
    if not (isinstance(annotation, type) and issubclass(annotation, pydantic.BaseModel)):
        raise ParameterError("A JSON Schema given as schema must describe an object with properties, e.g. "
                             f"{{'type': 'object', 'properties': {{'age': {{'type': 'integer'}}}}}}; got {schema!r}.")
    return annotation


def _annotation(schema: Any, definitions: Mapping[str, Any], where: str, seen: set[str], *,
                root: bool = False) -> Any:
    """The Python type a JSON Schema fragment describes, its constraints and description attached;
    ``ParameterError`` for what we cannot type or would not enforce."""
    if not isinstance(schema, Mapping):
        raise ParameterError(f"{where} must be a JSON Schema object, got {schema!r}.")
    problems = _keyword_problems(schema, where, root)
    if problems:
        raise ParameterError(problems)
    return _constrained(_base_annotation(schema, definitions, where, seen), schema)


def _base_annotation(schema: Mapping[str, Any], definitions: Mapping[str, Any], where: str, seen: set[str]) -> Any:
    """The type alone; a node with several types is a union of one node per type, each with the
    keywords that apply to it."""
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
            if not isinstance(schema[union_key], (list, tuple)) or not schema[union_key]:
                raise ParameterError(f"{where}: {union_key} must be a non-empty list of schemas, "
                                     f"got {schema[union_key]!r}.")
            options = [_annotation(s, definitions, f"{where}.{union_key}", seen) for s in schema[union_key]]
            return Union[tuple(options)]  # noqa: UP007
    kind = schema.get("type")
    if isinstance(kind, list) and kind and all(isinstance(k, str) and k in _KEYWORDS_OF_TYPE for k in kind):
        options = [_annotation({key: v for key, v in schema.items() if key in _KEYWORDS_OF_TYPE[k]} | {"type": k},
                               definitions, where, seen) for k in kind]
        return Union[tuple(options)]  # noqa: UP007
    if kind == "null":
        return type(None)
    if kind == "string":
        return _FORMATS.get(schema.get("format", ""), str)
    if kind in ("integer", "number", "boolean"):
        return {"integer": int, "number": float, "boolean": bool}[kind]
    if kind == "array":
        item = _annotation(schema["items"], definitions, f"{where}.items", seen) if "items" in schema else Any
        return list[item]  # type: ignore[valid-type]
    if kind == "object" or (kind is None and "properties" in schema):
        return _object(schema, definitions, where, seen)
    if kind is None and not set(schema) - _ANNOTATIONS - {"$defs", "definitions"}:
        return Any
    raise ParameterError(f"{where}: unsupported JSON Schema {dict(schema)!r}; use string, integer, number, "
                         "boolean, array, object, enum or anyOf.")


def _object(schema: Mapping[str, Any], definitions: Mapping[str, Any], where: str, seen: set[str]) -> Any:
    properties = schema.get("properties", {})
    if not isinstance(properties, Mapping):
        raise ParameterError(f"{where}: properties must map names to schemas, e.g. {{'age': {{'type': "
                             f"'integer'}}}}, got {properties!r}.")
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
        extra = schema.get("additionalProperties")
        value = _annotation(extra, definitions, f"{where}.additionalProperties", seen) \
            if isinstance(extra, Mapping) else Any
        return dict[str, value]  # type: ignore[valid-type]
    title = schema.get("title")
    name = title if isinstance(title, str) and title.isidentifier() and not keyword.iskeyword(title) else "Answer"
    description = schema.get("description")
    return _create(name, fields, description if isinstance(description, str) else None)


def _keyword_problems(schema: Mapping[Any, Any], where: str, root: bool) -> list[str]:
    """The keywords of a node that dfllm would not enforce, and keyword values of the wrong kind."""
    allowed = set(_ANNOTATIONS) | ({"$defs", "definitions"} if root else set())
    if "$ref" in schema:
        allowed.add("$ref")
    elif "enum" in schema or "const" in schema:
        allowed |= {"enum", "const", "type"}
    elif "anyOf" in schema or "oneOf" in schema:
        allowed |= {"anyOf", "oneOf"}
    else:
        kind = schema.get("type", "object" if "properties" in schema else None)
        allowed.add("type")
        for each in kind if isinstance(kind, list) else [kind]:
            allowed |= _KEYWORDS_OF_TYPE.get(each, frozenset()) if isinstance(each, str) else frozenset()
    problems = []
    unknown = [key for key in schema if key not in allowed]
    if unknown:
        problems.append(f"{where}: {unknown!r} {'is' if len(unknown) == 1 else 'are'} not supported in a schema "
                        f"with {_shape(schema)}; dfllm enforces {_SUPPORTED}. Drop "
                        f"{'it' if len(unknown) == 1 else 'them'} or say it with those, so that no constraint is "
                        "silently ignored.")
    for key in schema:
        if key in allowed:
            problem = _keyword_value_problem(key, schema[key], schema, where)
            if problem:
                problems.append(problem)
    return problems


def _shape(schema: Mapping[Any, Any]) -> str:
    for key in ("$ref", "enum", "const", "anyOf", "oneOf"):
        if key in schema:
            return key
    return f"type {schema['type']!r}" if "type" in schema else "no type"


def _keyword_value_problem(key: str, value: Any, schema: Mapping[Any, Any], where: str) -> str | None:
    """What is wrong with one keyword's value, or None."""
    if key == "description" and not isinstance(value, str):
        return f"{where}: description must be text, got {value!r}."
    if key in _NUMBER_FIELDS:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return f"{where}: {key} must be a number, got {value!r}."
        if schema.get("type") == "integer" and isinstance(value, float) and not value.is_integer():
            return f"{where}: {key} of an integer must be a whole number, got {value!r}."
        if key == "multipleOf" and not value > 0:
            return f"{where}: multipleOf must be greater than 0, got {value!r}."
    if key in _LENGTHS and (isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < 2**63):
        return f"{where}: {key} must be a whole number >= 0, got {value!r}."
    if key == "pattern":
        return f"{where}: {_pattern_problem(value)}" if _pattern_problem(value) else None
    if key == "format" and value not in _FORMATS:
        return (f"{where}: format {value!r} is not checked by dfllm, which checks {list(_FORMATS)}; drop it, or "
                "describe the text with pattern.")
    if key == "uniqueItems" and not isinstance(value, bool):
        return f"{where}: uniqueItems must be true or false, got {value!r}."
    if key == "additionalProperties" and value is not False and (schema.get("properties") or not (
            value is True or isinstance(value, Mapping))):
        return (f"{where}: additionalProperties {value!r} is not supported with properties: dfllm closes every "
                "object that has properties (additionalProperties: false, as OpenAI's strict mode requires); "
                "drop it, or leave out properties for a free-form object.")
    return None


@functools.lru_cache(maxsize=256)
def _pattern_problem(pattern: Any) -> str | None:
    if not isinstance(pattern, str):
        return f"pattern must be a regular expression as text, got {pattern!r}."
    try:
        pydantic.TypeAdapter(Annotated[str, pydantic.Field(pattern=pattern)])
    except Exception as exc:  # the regex engine's refusal: its message says where
        return (f"pattern {pattern!r} cannot be checked ({_printable(str(exc)).strip().splitlines()[-1]}); "
                "lookarounds and backreferences are not supported.")
    return None


def _constrained(annotation: Any, schema: Mapping[str, Any]) -> Any:
    """``annotation`` with the node's constraints and description, which pydantic both enforces
    and writes into the model's JSON Schema (so they reach the wire)."""
    kind = schema.get("type")
    names = {"integer": _NUMBER_FIELDS, "number": _NUMBER_FIELDS, "string": _STRING_FIELDS,
             "array": _ARRAY_FIELDS}.get(kind, {}) if isinstance(kind, str) else {}
    constraints: dict[str, Any] = {names[key]: value for key, value in schema.items() if key in names}
    if kind == "integer":  # 5.0 bounds an integer as 5 does; pydantic wants the int
        constraints = {k: int(v) if isinstance(v, float) else v for k, v in constraints.items()}
    description = schema.get("description")
    builds_model = isinstance(annotation, type) and issubclass(annotation, pydantic.BaseModel) and "$ref" not in schema
    if isinstance(description, str) and not builds_model:  # a model built here has it as its docstring
        constraints["description"] = description
    metadata: list[Any] = []
    if kind == "array" and schema.get("uniqueItems") is True:
        constraints["json_schema_extra"] = {"uniqueItems": True}
        metadata.append(pydantic.AfterValidator(_unique))
    if not constraints and not metadata:
        return annotation
    return Annotated[(annotation, pydantic.Field(**constraints), *metadata)]


def _unique(items: list[Any]) -> list[Any]:
    seen = set()
    for item in items:
        key = pydantic_core.to_json(item)  # lists, dicts and models compare as their JSON
        if key in seen:
            raise ValueError(f"items must be unique (uniqueItems), but {_printable(key.decode())[:60]} repeats")
        seen.add(key)
    return items


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
            target = walk(definitions[name], seen | {ref})
            # Siblings of a $ref (a field's description) stay, over the definition's own.
            siblings = {k: walk(v, seen) for k, v in node.items() if k != "$ref" and k not in _DROPPED_KEYS}
            return {**target, **siblings} if isinstance(target, dict) else target
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
    return isinstance(origin, type) and issubclass(origin, Sequence) and not issubclass(origin, str)


def _value_type(values: tuple[Any, ...]) -> ColumnType:
    if values and all(isinstance(v, str) for v in values):
        return ColumnType("category", categories=tuple(dict.fromkeys(values)))
    if values and all(isinstance(v, int) and not isinstance(v, bool) for v in values):
        return ColumnType("int")
    return _JSON
