"""A hostile provider against the runtime: absurd waits, lying headers, a cache that cannot keep
answers, Ctrl-C from an app's own event loop. Each run must end, lose nothing, and say why."""

from __future__ import annotations

import asyncio
import os
import signal
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
from dfllm.engines.base import RateLimitState
from dfllm.runtime.cache import Cache
from dfllm.runtime.executor import Executor, RequestSpec, Work
from dfllm.runtime.progress import RunStats
from dfllm.testing import FakeClock, FakeProvider, MockEngine, always, ok, sequence, status
from tests.conftest import KEY


def frame(n: int) -> pd.DataFrame:
    return pd.DataFrame({"t": [f"row {i}" for i in range(n)]})


# -- never stuck --------------------------------------------------------------------------------

@pytest.mark.parametrize(("behaviour", "shown"), [
    (status(429, headers={"retry-after": "1000000000"}), "retry-after: 1000000000 on a 429"),
    (status(429, headers={"retry-after-ms": "1e12"}), "retry-after-ms: 1e12 on a 429"),
    (status(503, headers={"retry-after": "31536000"}), "retry-after: 31536000 on a 503"),
])
def test_an_absurd_retry_after_fails_the_rows_at_once_naming_the_wait(
        behaviour: dfllm.testing.Behaviour, shown: str) -> None:
    with FakeProvider(script=always(behaviour)) as fake:
        dfllm.create_engine("t", "openai", api_key=KEY, base_url=fake.base_url)
        started = time.monotonic()
        out = frame(20).llm.predict("t", "m", "{{t}}", "y", errors="null", cache=False)
        took = time.monotonic() - started
        sent = len(fake.chat_requests)
    assert took < 10
    assert sent == 20  # one request a row: none retried into the wait
    errors = out["y_error"].tolist()
    assert all(shown in e and "more than max_retry_time_s=600" in e for e in errors)


def run_mock(handler: object, rows: int, clock: FakeClock, **options: object) -> tuple[list[object], RunStats]:
    engine = MockEngine(handler, clock=clock)  # type: ignore[arg-type]
    stats = RunStats()
    executor = Executor(engine, Options(cache=False, **options), stats, RequestSpec("m"),  # type: ignore[arg-type]
                        clock=clock, sleep=clock.sleep)
    outcomes = asyncio.run(executor.run([Work((i, i), f"p{i}") for i in range(rows)]))
    return list(outcomes), stats


def test_remaining_zero_with_a_reset_of_hours_fails_the_waiting_rows_at_once() -> None:
    clock = FakeClock()
    state = RateLimitState(limit_requests=100, remaining_requests=0, reset_requests_s=36000.0)
    outcomes, _ = run_mock(lambda r: dfllm.Completion("ok", rate_limit=state), 50, clock, concurrency=4)
    answered = [o for o in outcomes if isinstance(o, dfllm.Completion)]
    failed = [o for o in outcomes if isinstance(o, dfllm.RateLimitError)]
    assert answered and failed and len(answered) + len(failed) == 50
    assert clock.now < 1.0  # no one slept towards the reset
    assert "x-ratelimit-remaining-requests: 0, x-ratelimit-reset-requests: 36000s" in str(failed[0])
    assert "more than max_retry_time_s=600" in str(failed[0])


@pytest.mark.parametrize("limit", [0, -5])
def test_a_zero_or_negative_limit_header_is_ignored(limit: int) -> None:
    clock = FakeClock()
    state = RateLimitState(limit_requests=limit, remaining_requests=limit, reset_requests_s=-1.0,
                           limit_tokens=limit)
    outcomes, stats = run_mock(lambda r: dfllm.Completion("ok", rate_limit=state), 30, clock)
    assert all(isinstance(o, dfllm.Completion) for o in outcomes)
    assert stats.learned_rpm is None and clock.now == 0.0


def test_a_limit_of_one_a_minute_is_reported_and_not_obeyed_for_hours() -> None:
    clock = FakeClock()
    state = RateLimitState(limit_requests=1, remaining_requests=1, reset_requests_s=60.0)
    with pytest.warns(RuntimeWarning, match=r"x-ratelimit-limit-requests: 1 would pace the \d+ rows left"):
        outcomes, stats = run_mock(lambda r: dfllm.Completion("ok", rate_limit=state), 300, clock)
    assert all(isinstance(o, dfllm.Completion) for o in outcomes)
    assert stats.slow_header_rpm == 1 and stats.warnings
    assert clock.now < 60  # obeyed, 300 rows at one a minute would take five hours


def test_a_global_pause_counts_against_the_rows_budget() -> None:
    clock = FakeClock()
    storm = [dfllm.RateLimitError("slow down", retry_after=400.0)] * 12

    def handler(request: dfllm.Request) -> object:
        return storm.pop() if storm else "ok"

    outcomes, _ = run_mock(handler, 40, clock, concurrency=16, max_retry_time_s=300.0)
    assert all(isinstance(o, dfllm.RateLimitError) for o in outcomes[:12])
    assert clock.now < 300  # nobody waited out a 400 s pause under a 300 s budget


# -- Ctrl-C from inside an app's asyncio.run ------------------------------------------------------

HANG_S = 30.0

CHILD = textwrap.dedent("""
    import asyncio, sys, pandas as pd, dfllm
    base_url, cache = sys.argv[1], sys.argv[2]
    dfllm.create_engine("t", "openai", api_key="k", base_url=base_url)
    stats = dfllm.RunStats()

    async def main():
        df = pd.DataFrame({"t": [f"row {i}" for i in range(400)]})
        print("started", flush=True)
        return df.llm.predict("t", "m", "{{t}}", "y", concurrency=16, cache=cache, progress=False, stats=stats)

    try:
        asyncio.run(main())
    except KeyboardInterrupt:
        print("interrupted", stats.succeeded, flush=True)
        raise SystemExit(130)
    print("finished", flush=True)
""")


def test_ctrl_c_in_a_script_calling_predict_inside_asyncio_run_stops_and_keeps_answers(tmp_path: Path) -> None:
    cache = tmp_path / "c.sqlite3"
    # The first 100 requests are answered; later ones hang for HANG_S, so a run that waited for
    # what it has in flight would take that long: stopping promptly is told apart on a loaded
    # machine too.
    script = sequence([None] * 100 + [ok(delay_s=HANG_S)] * 300)
    with FakeProvider(latency_s=0.05, responder="echo", script=script) as fake:
        child = subprocess.Popen([sys.executable, "-c", CHILD, fake.base_url, str(cache)],
                                 stdout=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 60
        while len(fake.chat_requests) <= 100:
            assert time.monotonic() < deadline, "the child never got going"
            time.sleep(0.005)
        sent = len(fake.chat_requests)
        child.send_signal(signal.SIGINT)
        stopped_at = time.monotonic()
        out, _ = child.communicate(timeout=60)
        took = time.monotonic() - stopped_at
    assert out.startswith("started\ninterrupted") and child.returncode == 130, out
    assert took < HANG_S / 2
    answered = int(out.split()[2])  # what the child's run had received when it stopped
    kept = sqlite3.connect(cache).execute("SELECT count(*) FROM responses").fetchone()[0]
    # Every answer that arrived is in the cache (the run's thread outlived the interrupted
    # wait), and a request was sent only once 16 fewer had been answered.
    assert kept == answered >= sent - 16, (out, sent)


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
