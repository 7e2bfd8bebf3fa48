"""A cache that cannot keep answers: values SQLite cannot store, a database locked by another process,
a path that cannot work. Each run must end, lose nothing, and say why."""

from __future__ import annotations

import asyncio
import os
import sqlite3
import stat
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pandas as pd
import pytest

import dfllm
from dfllm.config.options import Options
from dfllm.runtime.cache import Cache
from dfllm.runtime.executor import Executor, RequestSpec, Work
from dfllm.runtime.progress import RunStats
from dfllm.testing import FakeProvider, MockEngine


def frame(n: int) -> pd.DataFrame:
    return pd.DataFrame({"t": [f"row {i}" for i in range(n)]})


# -- the cache never loses answers silently ----------------------------------------------------

def fd_count() -> int:
    import gc

    gc.collect()  # sockets of earlier tests' sessions close when collected
    return len(os.listdir("/proc/self/fd"))


def test_an_answer_sqlite_cannot_store_is_counted_and_the_rest_are_kept(tmp_path: Path) -> None:
    path = tmp_path / "c.sqlite3"
    texts = {"p0": "fine", "p1": "\ud83d", "p2": 42, "p3": "also fine"}
    engine = MockEngine(lambda r: dfllm.Completion(texts[r.messages[-1]["content"]]))  # type: ignore[arg-type]
    stats = RunStats()
    executor = Executor(engine, Options(cache=str(path)), stats, RequestSpec("m"))
    with pytest.warns(RuntimeWarning, match=r"2 answer\(s\) could not be saved to the cache"):
        outcomes = asyncio.run(executor.run([Work((i, i), f"p{i}") for i in range(4)]))
    assert len(outcomes) == 4 and stats.cache_write_failures == 2
    rows = sqlite3.connect(path).execute("SELECT text FROM responses ORDER BY id").fetchall()
    assert rows == [("fine",), ("also fine",)]
    # The writer outlived the bad rows: a later batch on a new executor is stored too.
    again = Executor(MockEngine(), Options(cache=str(path)), RunStats(), RequestSpec("m"))
    asyncio.run(again.run([Work((9, 9), "later")]))
    assert sqlite3.connect(path).execute("SELECT count(*) FROM responses").fetchone() == (3,)


LOCKER = textwrap.dedent("""
    import sqlite3, sys, time
    db = sqlite3.connect(sys.argv[1], isolation_level=None)
    db.execute("BEGIN EXCLUSIVE")
    print("locked", flush=True)
    time.sleep(float(sys.argv[2]))
    db.execute("COMMIT")
""")


def lock_for(path: Path, seconds: float) -> subprocess.Popen[str]:
    locker = subprocess.Popen([sys.executable, "-c", LOCKER, str(path), str(seconds)], stdout=subprocess.PIPE,
                              text=True)
    assert locker.stdout is not None and locker.stdout.readline().strip() == "locked"
    return locker


def test_a_database_locked_by_another_process_is_waited_for(tmp_path: Path) -> None:
    path = tmp_path / "c.sqlite3"
    cache = Cache(path, busy_s=30)
    locker = lock_for(path, 0.5)
    cache.put((1, 1), dfllm.Completion("kept"))
    cache.close()
    locker.wait()
    assert locker.stdout is not None
    locker.stdout.close()
    assert cache.failed == 0 and cache.written == 1
    assert sqlite3.connect(path).execute("SELECT text FROM responses").fetchall() == [("kept",)]


def test_a_lock_held_too_long_is_counted_not_fatal(tmp_path: Path) -> None:
    path = tmp_path / "c.sqlite3"
    cache = Cache(path, busy_s=0.2)
    locker = lock_for(path, 3)
    cache.put((1, 1), dfllm.Completion("lost"))
    time.sleep(0.6)  # the writer gave up on that batch while the lock was held
    locker.wait()
    assert locker.stdout is not None
    locker.stdout.close()
    cache.put((2, 2), dfllm.Completion("kept"))  # the writer is alive and stores the next one
    cache.close()
    assert cache.failed == 1 and "locked" in next(iter(cache.failure_causes))
    assert sqlite3.connect(path).execute("SELECT text FROM responses").fetchall() == [("kept",)]


def write_foreign(path: Path) -> None:
    db = sqlite3.connect(path)
    db.execute("CREATE TABLE accounts (id INTEGER, name TEXT)")
    db.commit()
    db.close()


def write_wrong_schema(path: Path) -> None:
    db = sqlite3.connect(path)
    db.execute("CREATE TABLE responses (id INTEGER, other TEXT)")
    db.commit()
    db.close()


def write_truncated(path: Path) -> None:
    cache = Cache(path)
    for i in range(500):
        cache.put((i, i), dfllm.Completion("x" * 200))
    cache.close()
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 3])


@pytest.mark.parametrize(("make", "message"), [
    (lambda p: p.write_bytes(b"this is not a database at all" * 100), "damaged or not a dfllm cache"),
    (write_truncated, "damaged or not a dfllm cache"),
    (write_foreign, "not a dfllm cache (tables: ['accounts'])"),
    (write_wrong_schema, "is not a dfllm cache's"),
    (lambda p: p.mkdir(), "is a directory"),
    (lambda p: p.parent.rmdir() or p.parent.write_text("x"), "is a file, not a folder"),
])
def test_an_unusable_cache_path_is_a_clear_error_before_any_request(
        tmp_path: Path, fake: FakeProvider, engine: str, make: object, message: str) -> None:
    path = tmp_path / "a" / "b" / "c.sqlite3"
    path.parent.mkdir(parents=True)
    make(path)  # type: ignore[operator]
    before = fd_count()
    with pytest.raises(dfllm.CacheError, match="cache") as info:
        frame(3).llm.predict(engine, "m", "{{t}}", "y", cache=str(path))
    assert message in str(info.value)
    assert "cache=False" in str(info.value) or "Move it aside" in str(info.value)
    assert fake.chat_requests == []
    assert fd_count() <= before


def test_a_read_only_location_is_a_clear_error(fake: FakeProvider, engine: str) -> None:
    with pytest.raises(dfllm.CacheError, match="Cannot create the cache folder /proc/dfllm"):
        frame(2).llm.predict(engine, "m", "{{t}}", "y", cache="/proc/dfllm/c.sqlite3")
    assert fake.chat_requests == []


def test_cache_path_with_a_tilde_is_expanded_and_folders_are_owner_only(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fake: FakeProvider, engine: str) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    frame(2).llm.predict(engine, "m", "{{t}}", "y", cache="~/deep/er/c.sqlite3")
    assert (tmp_path / "deep" / "er" / "c.sqlite3").exists()
    assert not Path("~").exists()
    for folder in (tmp_path / "deep", tmp_path / "deep" / "er"):
        assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    before = fd_count()
    frame(2).llm.predict(engine, "m", "{{t}}", "y", cache="~/deep/er/c.sqlite3")
    assert fd_count() <= before
