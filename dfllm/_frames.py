"""The only module that knows pandas from Polars: read columns, count rows, add columns."""

from __future__ import annotations

import sys
from collections.abc import Mapping, Sequence
from typing import Any, Literal

from dfllm._exceptions import ParameterError

FrameKind = Literal["pandas", "polars"]


def frame_kind(df: object) -> FrameKind:
    module = type(df).__module__.split(".")[0]
    if module == "pandas" and type(df).__name__ == "DataFrame":
        return "pandas"
    if module == "polars" and type(df).__name__ == "DataFrame":
        return "polars"
    hint = " (a polars LazyFrame: call .collect() first)" if type(df).__name__ == "LazyFrame" else ""
    raise ParameterError(
        f"df must be a pandas or Polars DataFrame, got {type(df).__module__}.{type(df).__name__}{hint}."
    )


def column_names(df: Any) -> list[str]:
    return [str(c) for c in df.columns]


def n_rows(df: Any) -> int:
    return int(df.shape[0])


def column_values(df: Any, name: str) -> list[Any]:
    if frame_kind(df) == "polars":
        return list(df.get_column(name).to_list())
    # pandas allows non-string labels; templates name them by their text.
    label = next(c for c in df.columns if str(c) == name)
    column = df[label]
    if getattr(column, "ndim", 1) != 1:
        raise ParameterError(f"Column {name!r} is not unique in the frame; rename the duplicates.")
    return list(column.tolist())


def with_columns(df: Any, columns: Mapping[str, Sequence[Any]], integer_columns: Sequence[str] = ()) -> Any:
    """A new frame: ``df``'s columns, index and order, plus (or replacing) ``columns``."""
    if frame_kind(df) == "polars":
        pl = sys.modules["polars"]
        series = [
            pl.Series(name, values, dtype=pl.Int64 if name in integer_columns else pl.String)
            for name, values in columns.items()
        ]
        return df.with_columns(series)
    pd = sys.modules["pandas"]
    new = {
        name: pd.Series(values, index=df.index, dtype="Int64" if name in integer_columns else None)
        for name, values in columns.items()
    }
    return df.assign(**new)
