"""Polars: the frame adapter, and ``df.llm`` on ``polars.DataFrame``."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import polars as pl

from dfllm.frames import Column, ColumnType, register
from dfllm.frames.accessor import LLMAccessor, taken_by_other


def polars_dtype(kind: ColumnType) -> Any:
    """The Polars dtype for a logical column type: String, Int64, Float64, Boolean, Date, Datetime,
    Enum (choices, Literal and Enum fields), List, Struct; ``Object`` for free-form JSON."""
    simple = {"string": pl.String, "int": pl.Int64, "float": pl.Float64, "bool": pl.Boolean,
              "date": pl.Date, "datetime": pl.Datetime}
    if kind.kind in simple:
        return simple[kind.kind]
    if kind.kind == "category":
        return pl.Enum(list(kind.categories))
    # Polars cannot nest Object: a list or struct holding free-form JSON is an Object column itself.
    if kind.kind == "list" and kind.item is not None:
        item = polars_dtype(kind.item)
        return pl.Object if item == pl.Object else pl.List(item)
    if kind.kind == "struct":
        fields = {name: polars_dtype(t) for name, t in kind.fields}
        return pl.Object if any(t == pl.Object for t in fields.values()) else pl.Struct(fields)
    return pl.Object


class PolarsAdapter:
    name = "polars"

    def matches(self, df: object) -> bool:
        return isinstance(df, pl.DataFrame)

    def column_names(self, df: Any) -> list[str]:
        return [str(c) for c in df.columns]

    def n_rows(self, df: Any) -> int:
        return int(df.height)

    def column_values(self, df: Any, name: str) -> list[Any]:
        return list(df.get_column(name).to_list())

    def with_columns(self, df: Any, columns: Mapping[str, Column]) -> Any:
        series = [pl.Series(name, c.values) if c.type.kind == "vector" else  # Arrow's array: Array(Float32, dim)
                  pl.Series(name, list(c.values), dtype=polars_dtype(c.type), strict=False)
                  for name, c in columns.items()]
        return df.with_columns(series)

    def keep_rows(self, df: Any, mask: list[bool]) -> Any:
        """The rows where ``mask`` is true (``df.llm.filter``)."""
        return df.filter(pl.Series(mask, dtype=pl.Boolean))


register(PolarsAdapter())
if not taken_by_other(pl.DataFrame):
    pl.api.register_dataframe_namespace("llm")(LLMAccessor)
