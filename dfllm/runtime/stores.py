"""Cache backends: where answers already paid for are kept, so no process asks for them again.

A ``Store`` looks answers up in bulk, takes each new answer the moment it arrives (returning at
once), and writes everything it was handed before ``flush`` or ``close`` returns. Two backends:

- ``Cache`` (``dfllm.runtime.cache``): one SQLite file; serves every process on one host.
- ``FsspecCache``: one small object per answer on any fsspec path (a shared disk, ``s3://``,
  ``gs://``), named by its key, so processes on many hosts share answers without a server.
  Objects are immutable once written: two workers that answer the same prompt write the same
  name, and either copy is a valid answer.

``open_store(options.cache)`` turns the ``cache`` option into an open store.
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
import time
import uuid
from collections.abc import Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

from dfllm.engines.base import Completion
from dfllm.prompt.keys import Key
from dfllm.runtime.cache import Cache
from dfllm.runtime.location import CacheLocation, Store, sqlite_path

__all__ = ["CacheLocation", "FsspecCache", "FsspecStore", "SharedStore", "Store", "cache_location", "look_up",
           "object_name", "open_store"]

_OPEN_ATTEMPTS = 8
_WRITERS = 4  # object stores answer puts in tens of ms: a few in parallel keep up with the run


def object_name(key: Key) -> str:
    """The key as 32 hex digits (its two signed halves read as unsigned)."""
    return f"{key[0] & 0xFFFFFFFFFFFFFFFF:016x}{key[1] & 0xFFFFFFFFFFFFFFFF:016x}"


class FsspecCache:
    """Answers as ``{url}/{key}.json`` objects on any fsspec file system.

    ``FsspecCache("s3://bucket/dfllm", anon=False)``: keyword arguments are fsspec's storage
    options. This object only names the place; ``open()`` connects. It pickles, so it can be
    the ``cache`` option of a Dask run and be opened on every worker.
    """

    def __init__(self, url: str, **storage_options: Any) -> None:
        if not isinstance(url, str) or not url.strip():
            raise ValueError(f"FsspecCache needs a URL or path, got {url!r}")
        self.url = url.rstrip("/")
        self.storage_options = storage_options

    def __repr__(self) -> str:
        return f"FsspecCache({self.url!r})"  # storage options may hold credentials

    def __eq__(self, other: object) -> bool:
        return isinstance(other, FsspecCache) and (other.url, other.storage_options) == (
            self.url, self.storage_options)

    def __hash__(self) -> int:
        return hash(self.url)

    def open(self) -> FsspecStore:
        return FsspecStore(self.url, self.storage_options)


class FsspecStore:
    """An open ``FsspecCache``: lookups read the objects in one batch; puts go to writer threads."""

    def __init__(self, url: str, storage_options: dict[str, Any]) -> None:
        import fsspec  # type: ignore[import-untyped]  # optional (dfllm[dask]): only this store needs it

        self.fs, root = fsspec.core.url_to_fs(url, **storage_options)
        self.root = root.rstrip("/")
        self._local = "file" in _protocols(self.fs)
        self.fs.makedirs(self.root, exist_ok=True)
        self._writers = ThreadPoolExecutor(_WRITERS, thread_name_prefix="dfllm-fsspec-writer")
        self._pending: set[Future[None]] = set()
        # Answers handed over and not yet written: get_many serves them from here, so an
        # answer is visible the moment it is put, not when its object lands.
        self._unwritten: dict[Key, Completion] = {}
        self._lock = threading.Lock()
        self.written = 0

    def _path(self, key: Key) -> str:
        return f"{self.root}/{object_name(key)}.json"

    def get_many(self, keys: Iterable[Key]) -> dict[Key, Completion]:
        unwritten = self._unwritten
        found: dict[Key, Completion] = {}
        by_path: dict[str, Key] = {}
        # The overlay is read before the objects: an answer leaves it only once its object is written.
        for key in keys:
            if (completion := unwritten.get(key)) is not None:
                found[key] = completion
            else:
                by_path[self._path(key)] = key
        if not by_path:
            return found
        blobs = self.fs.cat(list(by_path), on_error="omit")
        for path, blob in blobs.items():
            decoded = _decode(blob)
            named = by_path.get(path) or by_path.get(self.fs._strip_protocol(path))
            if decoded is not None and named is not None:  # a torn or foreign object is a miss
                found[named] = decoded
        return found

    def put(self, key: Key, completion: Completion) -> None:
        with self._lock:
            self._unwritten[key] = completion
        future = self._writers.submit(self._write_aside, key, completion)
        self._pending.add(future)
        future.add_done_callback(self._pending.discard)

    def _write_aside(self, key: Key, completion: Completion) -> None:
        try:
            self._write(key, completion)
        finally:  # written, or failed (flush raises it): either way no longer pending
            with self._lock:
                if self._unwritten.get(key) is completion:
                    del self._unwritten[key]

    def _write(self, key: Key, completion: Completion) -> None:
        data = json.dumps({"text": completion.text, "prompt_tokens": completion.prompt_tokens,
                           "completion_tokens": completion.completion_tokens,
                           "cached_tokens": completion.cached_tokens}).encode()
        path = self._path(key)
        if self._local:
            # A reader must never see half an object: write aside, then rename over (atomic).
            scratch = f"{path}.{uuid.uuid4().hex}.tmp"
            with open(scratch, "wb") as handle:
                handle.write(data)
            os.replace(scratch, path)
        else:
            self.fs.pipe_file(path, data)  # an object store's PUT is all-or-nothing
        self.written += 1

    def flush(self) -> None:
        """Return once everything handed over so far is written; raise the first write error."""
        for future in list(self._pending):
            future.result()

    def close(self) -> None:
        pending = list(self._pending)
        self._writers.shutdown(wait=True)
        for future in pending:
            future.result()


def _protocols(fs: Any) -> tuple[str, ...]:
    protocol = fs.protocol
    return (protocol,) if isinstance(protocol, str) else tuple(protocol)


def _decode(blob: bytes) -> Completion | None:
    try:
        record = json.loads(blob)
        # cached_tokens may be absent: an object written before it was kept reads 0.
        return Completion(str(record["text"]), int(record["prompt_tokens"]), int(record["completion_tokens"]),
                          cached_tokens=int(record.get("cached_tokens", 0)))
    except (ValueError, KeyError, TypeError):
        return None


def look_up(store: Store, keys: Iterable[Key]) -> list[Completion | None]:
    """Each key's answer (None where the store has none), in the order of ``keys``: the store's
    ``get_each`` when it has one (SQLite's builds no dict of the keys), else its ``get_many``."""
    get_each = getattr(store, "get_each", None)
    if callable(get_each):
        found: list[Completion | None] = get_each(keys)
        return found
    batch = list(keys)
    by_key = store.get_many(batch)
    return [by_key.get(key) for key in batch]


def open_store(cache: object) -> Store | None:
    """The open store the ``cache`` option names: False (none), True (the default SQLite file),
    a file path (SQLite), a URL with ``://`` (``FsspecCache``), or a ``CacheLocation``."""
    if cache is False:
        return None
    if isinstance(cache, str) and "://" in cache:
        return FsspecCache(cache).open()
    if not isinstance(cache, (bool, str, Path)) and isinstance(cache, CacheLocation):
        return cache.open()
    path = sqlite_path(cache)
    if path is None:
        return None
    for attempt in range(_OPEN_ATTEMPTS):
        try:
            return Cache(path)
        except sqlite3.OperationalError as exc:
            # Processes that open a new file at once race to switch it to WAL; the loser is
            # told "locked" without waiting. The winner finishes in milliseconds.
            if "locked" not in str(exc) or attempt == _OPEN_ATTEMPTS - 1:
                raise
            time.sleep(0.05 * (attempt + 1))
    raise AssertionError("unreachable")


class SharedStore:
    """One open store lent to several executors (the ``cache`` option of each): their ``close``
    only flushes; the owner closes the store itself."""

    def __init__(self, store: Store) -> None:
        self.store = store

    def open(self) -> Store:
        return _Borrowed(self.store)


class _Borrowed:
    def __init__(self, store: Store) -> None:
        self._store = store

    def get_many(self, keys: Iterable[Key]) -> dict[Key, Completion]:
        return self._store.get_many(keys)

    def get_each(self, keys: Iterable[Key]) -> list[Completion | None]:
        return look_up(self._store, keys)

    def put(self, key: Key, completion: Completion) -> None:
        self._store.put(key, completion)

    def flush(self) -> None:
        self._store.flush()

    def close(self) -> None:
        self._store.flush()


def cache_location(cache: object) -> object:
    """The ``cache`` option made explicit, for another process: True becomes this process's path."""
    if cache is True:
        return sqlite_path(True)
    if isinstance(cache, Path):
        return cache.expanduser()
    return cache
