"""Crash-safe resume with a real subprocess: kill -9 and Ctrl-C mid-run, then run again."""

from __future__ import annotations

import contextlib
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from pathlib import Path

import pandas as pd

import dfllm
from dfllm.testing import Behaviour, FakeProvider, RecordedRequest, ok
from tests.conftest import KEY

ROWS, CONCURRENCY = 400, 16
HANG_S = 30.0


class AnswerThenHang:
    """A script: the first ``n`` chat requests are answered, later ones hang for ``HANG_S`` until
    ``release()``. The child is stopped while it waits on them, at a point no machine's load
    moves: it has exactly ``n`` answers, and a run that waited for its requests would take
    ``HANG_S``."""

    def __init__(self, n: int) -> None:
        self.n = n
        self.seen = 0
        self.hanging = True

    def __call__(self, request: RecordedRequest) -> Behaviour | None:
        self.seen += 1
        return ok(delay_s=HANG_S) if self.hanging and self.seen > self.n else None

    def release(self) -> None:
        self.hanging = False

CHILD = textwrap.dedent("""
    import sys, pandas as pd, dfllm
    base_url, cache, rows, concurrency = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    dfllm.create_engine("t", "openai", api_key="k", base_url=base_url)
    df = pd.DataFrame({"t": [f"row {i}" for i in range(rows)]})
    print("started", flush=True)
    try:
        df.llm.predict("t", "m", "{{t}}", "y", concurrency=concurrency, cache=cache, progress=False)
    except KeyboardInterrupt:
        print("interrupted", flush=True)
        raise SystemExit(130)
""")


def start_child(fake: FakeProvider, cache: Path) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-c", CHILD, fake.base_url, str(cache), str(ROWS), str(CONCURRENCY)],
                            stdout=subprocess.PIPE, text=True)


def wait_until(done: Callable[[], bool]) -> None:
    deadline = time.monotonic() + 60
    while not done():
        assert time.monotonic() < deadline, "the child never got there"
        time.sleep(0.005)


def answered(cache: Path) -> int:
    if not cache.exists():
        return 0
    with contextlib.closing(sqlite3.connect(cache)) as db:
        try:
            return int(db.execute("SELECT count(*) FROM responses").fetchone()[0])
        except sqlite3.OperationalError:  # the child is creating the table just now
            return 0


def rerun(fake: FakeProvider, cache: Path) -> pd.DataFrame:
    dfllm.create_engine("t", "openai", api_key=KEY, base_url=fake.base_url)
    df = pd.DataFrame({"t": [f"row {i}" for i in range(ROWS)]})
    return dfllm.predict(df, "t", "m", "{{t}}", "y", concurrency=CONCURRENCY, cache=str(cache))


def test_kill_9_mid_run_then_rerun_sends_only_the_missing_rows(tmp_path: Path) -> None:
    cache = tmp_path / "c.sqlite3"
    script = AnswerThenHang(ROWS // 2)
    with FakeProvider(latency_s=0.02, responder="echo", script=script) as fake:
        child = start_child(fake, cache)
        # Killed once the answers it has are committed, with its next requests in flight.
        wait_until(lambda: answered(cache) == ROWS // 2 and len(fake.chat_requests) > ROWS // 2)
        child.send_signal(signal.SIGKILL)
        child.wait()
        assert child.stdout is not None
        child.stdout.close()
        kept = answered(cache)
        script.release()
        before = len(fake.chat_requests)
        out = rerun(fake, cache)
        resent = len(fake.chat_requests) - before
    assert out["y"].tolist() == [f"row {i}" for i in range(ROWS)]
    # Exactly the rows without a committed answer go out again: those in flight and the rest.
    assert kept == ROWS // 2 and resent == ROWS - kept


def test_ctrl_c_stops_promptly_and_keeps_what_arrived(tmp_path: Path) -> None:
    cache = tmp_path / "c.sqlite3"
    script = AnswerThenHang(ROWS // 3)
    with FakeProvider(latency_s=0.05, responder="echo", script=script) as fake:
        child = start_child(fake, cache)
        # Every answerable request answered: the window (16) is full of hanging ones.
        wait_until(lambda: len(fake.chat_requests) == ROWS // 3 + CONCURRENCY)
        child.send_signal(signal.SIGINT)
        stopped_at = time.monotonic()
        out, _ = child.communicate(timeout=60)
        took = time.monotonic() - stopped_at
        sent_by_child = len(fake.chat_requests)
        kept = answered(cache)
        script.release()
        out_frame = rerun(fake, cache)
        resent = len(fake.chat_requests) - sent_by_child
    assert "interrupted" in out and child.returncode == 130
    assert took < HANG_S / 2  # it did not wait for the requests in flight
    assert kept == ROWS // 3  # every answer that arrived before Ctrl-C was flushed
    assert sent_by_child == ROWS // 3 + CONCURRENCY  # nothing sent after the stop
    assert resent == ROWS - kept
    assert out_frame["y"].notna().all()
