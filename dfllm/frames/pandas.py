"""pandas: the frame adapter, and ``df.llm`` on ``pandas.DataFrame``."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pandas as pd

from dfllm._exceptions import ParameterError
from dfllm.frames import Column, ColumnType, register
from dfllm.frames.accessor import LLMAccessor, taken_by_other


def pandas_dtype(kind: ColumnType) -> Any:
    """The nullable pandas dtype for a logical column type: ``string``, ``Int64``, ``Float64``,
    ``boolean``, ``category`` (choices, Literal and Enum fields), ``datetime64`` (dates and UTC
    datetimes); ``object`` holding Python lists, dicts and JSON values for lists and nested objects."""
    if kind.kind == "category":
        return pd.CategoricalDtype(list(kind.categories))
    return {"string": "string", "int": "Int64", "float": "Float64", "bool": "boolean",
            "date": "datetime64[ns]", "datetime": "datetime64[ns]"}.get(kind.kind, object)


class PandasAdapter:
    name = "pandas"

    def matches(self, df: object) -> bool:
        return isinstance(df, pd.DataFrame)

    def column_names(self, df: Any) -> list[str]:
        return [str(c) for c in df.columns]

    def n_rows(self, df: Any) -> int:
        return int(df.shape[0])

    def column_values(self, df: Any, name: str) -> list[Any]:
        # pandas allows non-string labels; templates name them by their text.
        labels = [c for c in df.columns if str(c) == name]
        if len(labels) != 1:
            raise ParameterError(f"Column {name!r} is not unique in the frame; rename the duplicates.")
        return list(df[labels[0]].tolist())

    def with_columns(self, df: Any, columns: Mapping[str, Column]) -> Any:
        new = {}
        for name, column in columns.items():
            dtype = pandas_dtype(column.type)
            values = column.values
            if column.type.kind in ("date", "datetime"):
                new[name] = pd.Series(pd.to_datetime(list(values)), index=df.index)
                continue
            if column.type.kind == "vector":  # an Arrow fixed_size_list<float32>: one buffer, not a list per row
                new[name] = pd.Series(pd.arrays.ArrowExtensionArray(values), index=df.index)
                continue
            new[name] = pd.Series(list(values), index=df.index, dtype=dtype)
        out = df.copy(deep=False)
        for name, series in new.items():
            out[name] = series
        return out

    def keep_rows(self, df: Any, mask: list[bool]) -> Any:
        """The rows where ``mask`` is true, with their index labels (``df.llm.filter``)."""
        return df.iloc[[i for i, keep in enumerate(mask) if keep]]


register(PandasAdapter())
if not taken_by_other(pd.DataFrame):
    pd.api.extensions.register_dataframe_accessor("llm")(LLMAccessor)
