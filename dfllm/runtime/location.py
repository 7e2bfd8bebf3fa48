"""Where answers are kept: the forms the ``cache`` option takes, their check, and the default file.

The ``cache`` option is False (no cache), True (the default SQLite file), a file path (SQLite), a
URL with ``://`` (one object per answer through fsspec) or a ``CacheLocation`` (an object that opens
a ``Store``, such as ``dfllm.FsspecCache``). The option table checks it with ``cache_problem``;
``runtime/stores.open_store`` opens it. Both import this module; it imports neither.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from dfllm.engines.base import Completion
from dfllm.prompt.keys import Key


class Store(Protocol):
    def get_many(self, keys: Iterable[Key]) -> dict[Key, Completion]: ...

    def put(self, key: Key, completion: Completion) -> None: ...

    def flush(self) -> None: ...

    def close(self) -> None: ...


@runtime_checkable
class CacheLocation(Protocol):
    """A picklable description of a store: what the ``cache`` option may hold besides a path."""

    def open(self) -> Store: ...


def sqlite_path(cache: object) -> Path | None:
    """The SQLite file the ``cache`` option names (None: no cache, or another kind of store)."""
    if not isinstance(cache, (bool, str, Path)) or (isinstance(cache, str) and "://" in cache):
        return None
    if isinstance(cache, bool):
        if not cache:
            return None
        root = os.environ.get("DFLLM_CACHE_DIR")
        if not root:
            import platformdirs  # only the default location needs it

            root = platformdirs.user_cache_dir("dfllm")
        return Path(root).expanduser() / "responses.sqlite3"
    return Path(cache).expanduser()


def cache_problem(name: str, value: Any) -> str | None:
    """Why ``value`` cannot be the ``cache`` option (None when it can)."""
    if isinstance(value, (bool, Path)):
        return None
    if isinstance(value, str) and value.strip():
        return _url_problem(name, value)
    if callable(getattr(value, "open", None)):  # a cache location such as dfllm.FsspecCache
        return _url_problem(name, str(getattr(value, "url", "")))
    return (f"{name} must be True, False or a file path (or a URL such as 's3://bucket/dir', or a "
            f"dfllm.FsspecCache), got {value!r}.")


def _url_problem(name: str, location: str) -> str | None:
    """A cache URL whose protocol fsspec does not know, or whose package is not installed."""
    if "://" not in location:
        return None if location.strip() else f"{name} needs a file path or URL, got {location!r}."
    protocol = location.split("://", 1)[0]
    try:
        import fsspec  # type: ignore[import-untyped]  # optional (dfllm[dask]): only URLs need it

        fsspec.get_filesystem_class(protocol)
    except ImportError as exc:
        return f"{name}={location!r} needs a package that is not installed: {exc}"
    except ValueError:
        return (f"{name}={location!r}: {protocol!r} is not a protocol fsspec knows. Use a local path, or a "
                "URL such as 's3://bucket/dir', 'gs://bucket/dir' or 'file:///shared/dir'.")
    return None
