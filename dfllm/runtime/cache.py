"""The persistent response cache: stdlib sqlite3 in WAL mode, owner-only, written off the hot path.

``put`` hands an answer to a writer thread and returns at once; the thread commits what has
arrived at most ``flush_s`` after it arrived, so a kill -9 loses at most the last fraction of a
second. Until its commit an answer is served from memory, so ``get_many`` sees every answer put.
Keys are hashes of what decides an answer; the API key is never part of them or of the file.

Nothing is lost silently: an answer SQLite cannot store is counted in ``failed`` (with its
cause) while the rest of its batch is stored; a database another process holds locked is waited
for (``busy_s``) and retried. A file that cannot be used is a ``CacheError`` naming the path and
the fix, raised when the cache is opened, before any request.
"""

from __future__ import annotations

import collections
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from itertools import chain
from pathlib import Path

from dfllm._exceptions import CacheError
from dfllm.engines.base import Completion
from dfllm.prompt.keys import Key

# A key is a 128-bit digest: its first 64 bits are the rowid (an integer primary key looks up
# twice as fast as a text one: 0.29 s vs 0.60 s per 100,000 rows, measured), and the other 64
# are checked on read, so two keys that share a rowid can never swap answers.
_SCHEMA = """
CREATE TABLE IF NOT EXISTS responses (
    id INTEGER PRIMARY KEY,
    tail INTEGER NOT NULL,
    text TEXT NOT NULL,
    prompt_tokens INTEGER NOT NULL,
    completion_tokens INTEGER NOT NULL,
    cached_tokens INTEGER NOT NULL DEFAULT 0
)
"""
_COLUMNS = ["id", "tail", "text", "prompt_tokens", "completion_tokens", "cached_tokens"]
# A cache written before cached_tokens was kept: opened, the column is added (its answers read 0).
_OLDER_COLUMNS = _COLUMNS[:-1]
_ADD_CACHED = "ALTER TABLE responses ADD COLUMN cached_tokens INTEGER NOT NULL DEFAULT 0"
# Counts read as integers (0 for NULL) by SQLite itself: a lookup builds each cached answer as is.
_SELECT = ("SELECT id, tail, text, ifnull(CAST(prompt_tokens AS INTEGER), 0), "
           "ifnull(CAST(completion_tokens AS INTEGER), 0), ifnull(CAST(cached_tokens AS INTEGER), 0) FROM responses")
_INSERT = "INSERT OR REPLACE INTO responses VALUES (?, ?, ?, ?, ?, ?)"
# Rows go in statements of this many: sqlite3 lets go of the GIL for each statement it steps, and the
# writer must then wait for the event loop's thread to hand it back (up to the switch interval, 5 ms),
# so one row a statement made a batch of hundreds take seconds and cost the loop a switch every 5 ms.
_ROWS_A_STATEMENT = 64
_INSERT_MANY = "INSERT OR REPLACE INTO responses VALUES " + ", ".join(["(?, ?, ?, ?, ?, ?)"] * _ROWS_A_STATEMENT)
_LOOKUP_CHUNK = 5000
_PAGE_CACHE_KIB = 16384
_CHECKPOINT_PAGES = 10000
_FIX = "Pass cache= another file path, or cache=False to run without one."


class Cache:
    def __init__(self, path: str | Path, *, flush_s: float = 0.1, busy_s: float = 30.0) -> None:
        self.path = Path(path).expanduser()
        self._busy_s = busy_s
        self._flush_s = flush_s
        self.written = 0
        self.failed = 0
        self.failure_causes: collections.Counter[str] = collections.Counter()
        self._reader = _open(self.path, busy_s)
        # Answers handed over and not yet committed: get_many serves them from here, so an
        # answer is visible the moment it is put, not when the writer next commits.
        self._pending: dict[Key, Completion] = {}
        self._fresh: list[tuple[Key, Completion]] = []  # handed over, not yet taken by the writer
        self._first_at = 0.0  # when the oldest of _fresh arrived
        self._flushes: list[threading.Event] = []
        self._closing = False
        self._wake = threading.Condition()
        self._writer = threading.Thread(target=self._write_loop, name="dfllm-cache-writer", daemon=True)
        self._writer.start()

    def get_many(self, keys: Iterable[Key]) -> dict[Key, Completion]:
        batch = list(keys)
        return {key: found for key, found in zip(batch, self.get_each(batch), strict=True) if found is not None}

    def get_each(self, keys: Iterable[Key]) -> list[Completion | None]:
        """Each key's answer (None where there is none), in the order of ``keys``: a re-run's
        lookup, with no dict of its keys built on either side."""
        batch = keys if isinstance(keys, list) else list(keys)
        pending = self._pending
        # Read the overlay before the file: an answer leaves the overlay only after its commit.
        found: list[Completion | None] = [pending.get(k) for k in batch] if pending else [None] * len(batch)
        overlaid = found.count(None) != len(found)
        try:
            for start in range(0, len(batch), _LOOKUP_CHUNK):
                chunk = batch[start:start + _LOOKUP_CHUNK]
                # rowid -> position; two wanted keys sharing a rowid (or one found in the overlay) take
                # the slower path, which tells them apart.
                where = dict(zip(map(_rowid, chunk), range(start, start + len(chunk)), strict=True))
                if overlaid or len(where) != len(chunk):
                    self._look_up_apart(batch, start, len(chunk), found)
                    continue
                rows = self._reader.execute(f"{_SELECT} WHERE id IN ({','.join('?' * len(where))})", list(where))
                for rowid, tail, text, prompt_tokens, completion_tokens, cached_tokens in rows:
                    at = where[rowid]
                    if batch[at][1] == tail and isinstance(text, str):
                        found[at] = _new(Completion, (text, prompt_tokens, completion_tokens, *_BETWEEN_DEFAULTS,
                                                      cached_tokens))
        except sqlite3.DatabaseError as exc:
            self.close()
            raise _unusable(self.path, exc) from exc
        return found

    def _look_up_apart(self, batch: list[Key], start: int, size: int, found: list[Completion | None]) -> None:
        """Fill ``found`` for ``batch[start:start + size]`` where it is None, each row checked
        against every wanted key."""
        wanted: dict[Key, list[int]] = {}
        for at in range(start, start + size):
            if found[at] is None:
                wanted.setdefault(batch[at], []).append(at)
        if not wanted:
            return
        ids = list({rowid for rowid, _ in wanted})
        rows = self._reader.execute(f"{_SELECT} WHERE id IN ({','.join('?' * len(ids))})", ids)
        for rowid, tail, text, prompt_tokens, completion_tokens, cached_tokens in rows:
            if (places := wanted.get((rowid, tail))) is not None and isinstance(text, str):
                completion = _new(Completion, (text, prompt_tokens, completion_tokens, *_BETWEEN_DEFAULTS,
                                               cached_tokens))
                for at in places:
                    found[at] = completion

    def put(self, key: Key, completion: Completion) -> None:
        with self._wake:
            self._pending[key] = completion
            if not self._fresh:
                self._first_at = time.monotonic()
                self._wake.notify()
            self._fresh.append((key, completion))

    def flush(self) -> None:
        """Return once everything handed over so far is committed (a long-lived cache's run end)."""
        done = threading.Event()
        with self._wake:
            self._flushes.append(done)
            self._wake.notify()
        while not done.wait(0.5) and self._writer.is_alive():
            pass

    def close(self) -> None:
        """Write everything handed over so far, then close. Safe to call twice."""
        with self._wake:
            self._closing = True
            self._wake.notify()
        self._writer.join()
        self._reader.close()

    def _take(self) -> tuple[list[tuple[Key, Completion]], list[threading.Event], bool]:
        """Wait for work, then hand the writer everything fresh: at most ``flush_s`` after the
        oldest of it arrived, at once when asked to flush or close."""
        with self._wake:
            while not (self._fresh or self._flushes or self._closing):
                self._wake.wait()
            while not (self._flushes or self._closing):
                left = self._first_at + self._flush_s - time.monotonic()
                if left <= 0:
                    break
                self._wake.wait(left)
            batch, self._fresh = self._fresh, []
            flushes, self._flushes = self._flushes, []
            return batch, flushes, self._closing

    def _write_loop(self) -> None:
        try:
            db = sqlite3.connect(self.path, timeout=self._busy_s)
        except sqlite3.Error as exc:  # the file vanished or became unreadable since it was opened
            self._drain_as_failed(f"{type(exc).__name__}: {exc}")
            return
        try:
            db.execute("PRAGMA synchronous=NORMAL")  # WAL + NORMAL: durable across process crashes
            # Keys are random, so each answer lands on a random page of the table: pages kept in
            # memory and fewer checkpoints (each rewrites every page changed since the last) keep
            # a commit's cost from growing with the table. 16 MiB: a million answers' run was as
            # fast as with 64 MiB (4,497 against 4,654 rows/s) and peaked 28 MB lower.
            db.execute(f"PRAGMA cache_size=-{_PAGE_CACHE_KIB}")
            db.execute(f"PRAGMA wal_autocheckpoint={_CHECKPOINT_PAGES}")
            closing = False
            while not closing:
                batch, flushes, closing = self._take()
                if batch:
                    try:
                        self._store(db, batch)
                    except Exception as exc:  # the writer must outlive any one batch
                        self.failed += len(batch)
                        self.failure_causes[f"{type(exc).__name__}: {exc}"[:120]] += len(batch)
                    finally:
                        self._settle(batch)
                for done in flushes:
                    done.set()
        finally:
            db.close()

    def _settle(self, batch: list[tuple[Key, Completion]]) -> None:
        """Drop a written (or counted as failed) batch from the overlay, unless put again since."""
        pending = self._pending
        with self._wake:
            for key, completion in batch:
                if pending.get(key) is completion:
                    del pending[key]

    def _store(self, db: sqlite3.Connection, batch: list[tuple[Key, Completion]]) -> None:
        """Store a batch; if one row cannot be stored, store the others one by one and count it."""
        # In key order, each page of the table is visited once per batch, in file order.
        rows = [(*k, c.text, c.prompt_tokens, c.completion_tokens, c.cached_tokens)
                for k, c in sorted(batch, key=_by_key)]
        try:
            self._commit(db, rows)
            self.written += len(rows)
            return
        except (sqlite3.Error, ValueError, TypeError, OverflowError):
            pass
        for row in rows:
            try:
                if not isinstance(row[2], str):
                    raise TypeError(f"the answer is a {type(row[2]).__name__}, not text")
                self._commit(db, [row])
                self.written += 1
            except (sqlite3.Error, ValueError, TypeError, OverflowError) as exc:
                self.failed += 1
                self.failure_causes[f"{type(exc).__name__}: {exc}"[:120]] += 1

    def _commit(self, db: sqlite3.Connection, rows: Sequence[tuple[object, ...]]) -> None:
        """One transaction; a database locked by another process is retried until ``busy_s``."""
        give_up = time.monotonic() + self._busy_s
        while True:
            try:
                _insert(db, rows)
                db.commit()
                return
            except sqlite3.OperationalError as exc:
                db.rollback()
                busy = "locked" in str(exc) or "busy" in str(exc)
                if not busy or time.monotonic() >= give_up:
                    raise
                time.sleep(0.05)
            except BaseException:
                db.rollback()
                raise

    def _drain_as_failed(self, cause: str) -> None:
        closing = False
        while not closing:
            batch, flushes, closing = self._take()
            self.failed += len(batch)
            if batch:
                self.failure_causes[cause[:120]] += len(batch)
            self._settle(batch)
            for done in flushes:
                done.set()


# A cached answer is built with tuple's own constructor: a cached re-run makes one per row, and a
# NamedTuple's generated ``__new__`` costs a Python call each. The fields between completion_tokens
# and cached_tokens (rate limit, finish reason, values) are never cached: a cached answer has their defaults.
_new = tuple.__new__
_BETWEEN_DEFAULTS = tuple(Completion._field_defaults[name]
                          for name in Completion._fields[3:Completion._fields.index("cached_tokens")])


def _insert(db: sqlite3.Connection, rows: Sequence[tuple[object, ...]]) -> None:
    """Insert ``rows`` in order (a later row with an earlier row's id replaces it), most of them
    ``_ROWS_A_STATEMENT`` a statement."""
    whole = len(rows) - len(rows) % _ROWS_A_STATEMENT
    if whole:
        db.executemany(_INSERT_MANY, (list(chain.from_iterable(rows[at:at + _ROWS_A_STATEMENT]))
                                      for at in range(0, whole, _ROWS_A_STATEMENT)))
    if whole < len(rows):
        db.executemany(_INSERT, rows[whole:])


def _rowid(key: Key) -> int:
    return key[0]


def _by_key(item: tuple[Key, Completion]) -> Key:
    return item[0]


def _open(path: Path, busy_s: float) -> sqlite3.Connection:
    """Open (creating owner-only) a dfllm cache file, or raise ``CacheError`` with the fix."""
    _check_location(path)
    created = False
    try:
        if not path.exists():
            # Create it owner-only before sqlite opens it; sqlite gives -wal/-shm the same mode.
            os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))
            created = True
        db = sqlite3.connect(path, timeout=busy_s, check_same_thread=False)
    except FileExistsError:
        return _open(path, busy_s)  # another process created it just now
    except (OSError, sqlite3.Error) as exc:
        raise CacheError(f"Cannot create the cache file {path}: {exc}. Make the folder writable. {_FIX}") from exc
    try:
        tables = {name for (name,) in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        if tables and "responses" not in tables:
            raise CacheError(
                f"{path} is an SQLite database but not a dfllm cache (tables: {sorted(tables)}); dfllm will not "
                f"write into it. {_FIX}"
            )
        if "responses" in tables:
            columns = [row[1] for row in db.execute("PRAGMA table_info(responses)")]
            if columns == _OLDER_COLUMNS:
                _with_lock_retries(lambda: _add_cached_column(db))
            elif columns != _COLUMNS:
                raise CacheError(
                    f"{path} has a 'responses' table that is not a dfllm cache's (columns {columns}). {_FIX}"
                )
        _with_lock_retries(lambda: db.execute("PRAGMA journal_mode=WAL"))
        db.execute(_SCHEMA)
        db.commit()
    except CacheError:
        db.close()
        raise
    except sqlite3.DatabaseError as exc:
        db.close()
        if created:
            path.unlink(missing_ok=True)
        raise _unusable(path, exc) from exc
    return db


def _add_cached_column(db: sqlite3.Connection) -> None:
    """Add cached_tokens to an older cache, unless another process opening it did so just now."""
    try:
        db.execute(_ADD_CACHED)
        db.commit()
    except sqlite3.OperationalError as exc:
        if "duplicate column" not in str(exc):
            raise


def _with_lock_retries(step: Callable[[], object], attempts: int = 8) -> None:
    # Processes that open a new file at once race to switch it to WAL; the loser is told
    # "locked" without sqlite's busy wait. The winner finishes in milliseconds.
    for attempt in range(attempts):
        try:
            step()
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or attempt == attempts - 1:
                raise
            time.sleep(0.05 * (attempt + 1))


def _check_location(path: Path) -> None:
    if path.is_dir():
        raise CacheError(f"The cache path {path} is a directory; give a file path such as {path / 'cache.sqlite3'}. "
                         f"{_FIX}")
    for parent in reversed(path.parents):
        if parent.exists() and not parent.is_dir():
            raise CacheError(f"Cannot put the cache at {path}: {parent} is a file, not a folder. {_FIX}")
    missing = [p for p in reversed(path.parents) if not p.exists()]
    for folder in missing:
        try:
            folder.mkdir(mode=0o700)  # every folder dfllm creates is owner-only, not just the last
        except FileExistsError:
            pass
        except OSError as exc:
            raise CacheError(f"Cannot create the cache folder {folder}: {exc}. {_FIX}") from exc


def _unusable(path: Path, exc: sqlite3.Error) -> CacheError:
    if isinstance(exc, sqlite3.OperationalError) and ("readonly" in str(exc) or "unable to open" in str(exc)):
        return CacheError(f"The cache {path} cannot be written ({exc}). Make it writable. {_FIX}")
    return CacheError(
        f"The cache file {path} is damaged or not a dfllm cache ({exc}). Move it aside (e.g. rename it to "
        f"{path.name}.broken) and run again to start a fresh cache, or {_FIX[0].lower()}{_FIX[1:]}"
    )
