"""Where a schema's answers go: one typed column per top-level field, named ``{target}_{field}``.

A prefix rather than one struct column: every field is a first-class column that filters,
groups and joins like any other, in pandas and Polars alike. Nested objects and lists stay
inside their field's column (pandas ``object``, Polars ``Struct``/``List``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from dfllm.frames import Column
from dfllm.outputs.schema import OutputSchema


def schema_column_names(target: str, schema: OutputSchema) -> list[str]:
    return [f"{target}_{key}" for key, _, _ in schema.fields]


def schema_columns(target: str, schema: OutputSchema, answers: Sequence[tuple[Any, ...] | None]) -> dict[str, Column]:
    """The typed columns for per-row answers (a tuple of field values, or None for a failed row)."""
    columns = {}
    for i, (name, (_, _, kind)) in enumerate(zip(schema_column_names(target, schema), schema.fields, strict=True)):
        columns[name] = Column([None if a is None else a[i] for a in answers], kind)
    return columns
