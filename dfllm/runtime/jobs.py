"""The provider batch jobs dfllm has submitted, kept in the cache's SQLite database.

A submission is recorded with the keys it covers before its file is uploaded, and its job id as
soon as the job exists, each committed at once: a run killed at any point leaves a record that
the same call, run again, attaches to instead of paying again. A record whose job id never
arrived (killed between creating the job and recording it) is found by the submission id the
job carries in its metadata. A record is removed once its job's lines are settled and cached.
Nothing secret is stored: the engine is named by a hash of its identity.
"""

from __future__ import annotations

import asyncio
import hashlib
import sqlite3
import time
from array import array
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from dfllm.prompt.keys import Key

try:  # POSIX; elsewhere two runs on one cache are not kept apart
    import fcntl
except ImportError:  # pragma: no cover
    fcntl = None  # type: ignore[assignment]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS dfllm_batch_jobs (
    submission TEXT PRIMARY KEY,
    engine TEXT NOT NULL,
    created REAL NOT NULL,
    job_id TEXT,
    keys BLOB NOT NULL
)"""


@dataclass(frozen=True)
class JobRecord:
    submission: str
    engine: str
    created: float
    job_id: str | None
    keys: tuple[Key, ...]


def engine_tag(identity: str) -> str:
    """What names an engine in the records: a hash of its identity (which may hold a key's hash)."""
    return hashlib.sha256(identity.encode()).hexdigest()[:32]


def _packed(keys: Iterable[Key]) -> bytes:
    flat = array("q")
    for high, low in keys:
        flat.append(high)
        flat.append(low)
    return flat.tobytes()


def _unpacked(blob: bytes) -> tuple[Key, ...]:
    flat = array("q")
    flat.frombytes(blob)
    return tuple(zip(flat[0::2], flat[1::2], strict=True))


class JobStore:
    """The records of one cache file. Every write is committed before it returns."""

    def __init__(self, path: Path, *, busy_s: float = 30.0) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._db = sqlite3.connect(path, timeout=busy_s, isolation_level=None, check_same_thread=False)
        self._db.execute(_SCHEMA)
        self._lock: IO[str] | None = None

    def record(self, submission: str, engine: str, keys: Iterable[Key]) -> None:
        self._db.execute("INSERT INTO dfllm_batch_jobs VALUES (?, ?, ?, NULL, ?)",
                         (submission, engine, time.time(), _packed(keys)))

    def created(self, submission: str, job_id: str) -> None:
        self._db.execute("UPDATE dfllm_batch_jobs SET job_id = ? WHERE submission = ?", (job_id, submission))

    def finished(self, submission: str) -> None:
        self._db.execute("DELETE FROM dfllm_batch_jobs WHERE submission = ?", (submission,))

    def open_jobs(self, engine: str | None = None) -> list[JobRecord]:
        """The records not yet finished, oldest first; of one engine when ``engine`` is given."""
        query = "SELECT submission, engine, created, job_id, keys FROM dfllm_batch_jobs"
        rows = (self._db.execute(query + " WHERE engine = ? ORDER BY created", (engine,)) if engine is not None
                else self._db.execute(query + " ORDER BY created"))
        return [JobRecord(s, e, c, j, _unpacked(k)) for s, e, c, j, k in rows]

    async def claim(self) -> None:
        """Hold the cache's batch lock (waiting for it off the event loop): between reading the open
        records and recording a new submission, no other run may do the same, or both would submit
        (and pay for) the same rows. Held until ``release``."""
        if self._lock is None:
            self._lock = await asyncio.to_thread(open, self.path.with_name(self.path.name + ".batch-lock"), "a")
            if fcntl is not None:
                await asyncio.to_thread(fcntl.flock, self._lock.fileno(), fcntl.LOCK_EX)

    def release(self) -> None:
        lock, self._lock = self._lock, None
        if lock is not None:
            lock.close()  # closing the file gives the lock back

    def close(self) -> None:
        self.release()
        self._db.close()
