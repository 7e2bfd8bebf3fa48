"""pyarrow: the frame adapter for ``pyarrow.Table`` and ``pyarrow.RecordBatch``.

Files are read and written as Arrow record batches (see ``dfllm.frames.files``), so a batch
of a file is predicted on directly: the input's columns pass through untouched, with their
types and metadata, and the new columns are appended.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import pyarrow as pa

from dfllm.frames import Column, ColumnType, register


def arrow_type(kind: ColumnType) -> pa.DataType:
    """The Arrow type for a logical column type (free-form JSON as its text)."""
    simple = {"string": pa.string(), "int": pa.int64(), "float": pa.float64(), "bool": pa.bool_(),
              "date": pa.date32(), "datetime": pa.timestamp("us")}
    if kind.kind in simple:
        return simple[kind.kind]
    if kind.kind == "category":
        return pa.dictionary(pa.int32(), pa.string())
    if kind.kind == "list" and kind.item is not None:
        return pa.list_(arrow_type(kind.item))
    if kind.kind == "struct":
        return pa.struct([(name, arrow_type(t)) for name, t in kind.fields])
    return pa.string()


def arrow_array(column: Column) -> pa.Array:
    kind = column.type
    if kind.kind == "vector":  # already Arrow's fixed_size_list<float32>
        return column.values
    if kind.kind == "category":
        # Fixed categories, in their declared order, whatever subset this batch holds.
        dictionary = pa.array(list(kind.categories), pa.string())
        index = {label: i for i, label in enumerate(kind.categories)}
        codes = pa.array([None if v is None else index[v] for v in column.values], pa.int32())
        return pa.DictionaryArray.from_arrays(codes, dictionary)
    if _holds_json(kind):
        return pa.array([_as_arrow_value(v, kind) for v in column.values], arrow_type(kind))
    return pa.array(list(column.values), arrow_type(kind))


def _is_json(kind: ColumnType) -> bool:
    return kind.kind == "json" or (kind.kind == "list" and kind.item is None)


def _holds_json(kind: ColumnType) -> bool:
    """Whether free-form JSON sits anywhere in ``kind``: Arrow holds it as its JSON text."""
    if kind.kind == "list" and kind.item is not None:
        return _holds_json(kind.item)
    if kind.kind == "struct":
        return any(_holds_json(t) for _, t in kind.fields)
    return _is_json(kind)


def _as_arrow_value(value: Any, kind: ColumnType) -> Any:
    if value is None:
        return None
    if kind.kind == "list" and kind.item is not None:
        return [_as_arrow_value(v, kind.item) for v in value]
    if kind.kind == "struct":
        return {name: _as_arrow_value(value.get(name), t) for name, t in kind.fields}
    return json.dumps(value) if _is_json(kind) else value


class ArrowAdapter:
    name = "pyarrow"

    def matches(self, df: object) -> bool:
        return isinstance(df, (pa.Table, pa.RecordBatch))

    def column_names(self, df: Any) -> list[str]:
        return [str(c) for c in df.schema.names]

    def n_rows(self, df: Any) -> int:
        return int(df.num_rows)

    def column_values(self, df: Any, name: str) -> list[Any]:
        return list(df.column(name).to_pylist())

    def with_columns(self, df: Any, columns: Mapping[str, Column]) -> Any:
        schema, arrays = df.schema, list(df.columns)
        for name, column in columns.items():
            array = arrow_array(column)
            schema = schema.append(pa.field(name, array.type))
            arrays.append(array)
        if isinstance(df, pa.RecordBatch):
            return pa.RecordBatch.from_arrays(arrays, schema=schema)
        return pa.Table.from_arrays(arrays, schema=schema)


register(ArrowAdapter())
