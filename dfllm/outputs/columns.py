"""Where a schema's answers go: by default one typed column per top-level field, ``{target}_{field}``.

Separate columns by default: every field is a first-class column that filters, groups and joins
like any other, in pandas and Polars alike. Nested objects and lists stay inside their field's
column (pandas ``object``, Polars ``Struct``/``List``). With ``schema_columns="struct"`` the
answer is one column ``{target}`` instead, a struct of the fields (Polars ``Struct``, Arrow
``struct``; pandas has no nullable struct dtype, so a dict per row in an ``object`` column), for
callers who keep an answer together or unnest it themselves.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from dfllm.frames import Column, ColumnType
from dfllm.outputs.schema import OutputSchema


def schema_column_names(target: str, schema: OutputSchema, layout: str = "fields") -> list[str]:
    if layout == "struct":
        return [target]
    return [f"{target}_{key}" for key, _, _ in schema.fields]


def schema_columns(target: str, schema: OutputSchema, answers: Sequence[tuple[Any, ...] | None],
                   layout: str = "fields") -> dict[str, Column]:
    """The typed columns for per-row answers (a tuple of field values, or None for a failed row)."""
    if layout == "struct":
        keys = [key for key, _, _ in schema.fields]
        struct = ColumnType("struct", fields=tuple((key, field_type) for key, _, field_type in schema.fields))
        return {target: Column([None if a is None else dict(zip(keys, a, strict=True)) for a in answers], struct)}
    columns = {}
    for i, (name, (_, _, kind)) in enumerate(zip(schema_column_names(target, schema), schema.fields, strict=True)):
        columns[name] = Column([None if a is None else a[i] for a in answers], kind)
    return columns
