"""Frame adapters: the only code that knows one frame library from another.

An adapter reads columns and writes typed columns for one library. ``adapter_for(df)`` picks
the adapter by the frame's type; a new library is one more adapter module that calls
``register``, with no change to the core. A lazy frame library (Dask, Polars lazy) is a driver
(``dfllm.drive``) that calls ``register_lazy``: frames never import the stages above them.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from dfllm._exceptions import ParameterError


@dataclass(frozen=True)
class ColumnType:
    """The logical type of an output column; each adapter maps it to its library's dtype.

    ``kind`` is one of ``string``, ``int``, ``float``, ``bool``, ``category`` (with
    ``categories``), ``date``, ``datetime``, ``list`` (of ``item``), ``struct`` (of ``fields``),
    ``json`` (any JSON value, kept as Python objects), ``vector`` (embeddings: the column's values are
    one Arrow ``fixed_size_list<float32>`` array).
    """

    kind: str = "string"
    categories: tuple[str, ...] = ()
    item: ColumnType | None = None
    fields: tuple[tuple[str, ColumnType], ...] = ()


STRING = ColumnType("string")
INT = ColumnType("int")


@dataclass(frozen=True)
class Column:
    """A new column to add: its values (one per row, None for null) and its logical type."""

    values: Sequence[Any]
    type: ColumnType = field(default=STRING)


class FrameAdapter(Protocol):
    """What the core needs from a frame library."""

    name: str

    def matches(self, df: object) -> bool: ...

    def column_names(self, df: Any) -> list[str]: ...

    def n_rows(self, df: Any) -> int: ...

    def column_values(self, df: Any, name: str) -> list[Any]: ...

    def with_columns(self, df: Any, columns: Mapping[str, Column]) -> Any:
        """A new frame: every column of ``df``, its index and row order, plus ``columns``."""
        ...


@dataclass(frozen=True)
class LazyKind:
    """A lazy frame library: ``predict`` returns its lazy result (no request is sent), and
    ``keep_yes(answered, target)`` the lazy rows of such a result whose ``target`` is "yes",
    without the columns the answer added (``target`` and ``{target}_...``; ``filter``)."""

    matches: Callable[[object], bool]
    predict: Callable[..., Any]
    keep_yes: Callable[[Any, str], Any]


_ADAPTERS: dict[str, FrameAdapter] = {}
_LAZY: dict[str, LazyKind] = {}
# Frame libraries dfllm knows, by the top-level module their frames' types live in.
# Lazy kinds (Dask, Polars lazy) are drivers: they register themselves when ``import dfllm`` loads them.
_KNOWN = {"pandas": "dfllm.frames.pandas", "polars": "dfllm.frames.polars", "pyarrow": "dfllm.frames.arrow"}


def register(adapter: FrameAdapter) -> None:
    _ADAPTERS[adapter.name] = adapter


def register_lazy(name: str, kind: LazyKind) -> None:
    """A lazy frame library: ``dfllm.predict`` on its frames returns ``kind.predict(df, ...)``."""
    _LAZY[name] = kind


def lazy_kind_for(df: object) -> LazyKind | None:
    """``df``'s lazy frame library, or None for an eager frame."""
    _import_known(df)
    return next((kind for kind in _LAZY.values() if kind.matches(df)), None)


def lazy_predict_for(df: object) -> Callable[..., Any] | None:
    """The lazy ``predict`` for ``df``'s library, or None for an eager frame."""
    kind = lazy_kind_for(df)
    return None if kind is None else kind.predict


def _import_known(df: object) -> None:
    root = type(df).__module__.split(".")[0]
    if root in _KNOWN and root in sys.modules:
        importlib.import_module(_KNOWN[root])


def adapter_for(df: object) -> FrameAdapter:
    """The adapter for ``df``'s library, or a ``ParameterError`` naming what is supported."""
    _import_known(df)
    for adapter in _ADAPTERS.values():
        if adapter.matches(df):
            return adapter
    supported = ", ".join(sorted(_ADAPTERS)) or "pandas, polars"
    raise ParameterError(
        f"df must be a DataFrame of a supported library ({supported}), got "
        f"{type(df).__module__}.{type(df).__name__}."
    )


def column_names(df: Any) -> list[str]:
    return adapter_for(df).column_names(df)


def column_values(df: Any, name: str) -> list[Any]:
    return adapter_for(df).column_values(df, name)
