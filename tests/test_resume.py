"""Crash-safe resume with a real subprocess: kill -9 and Ctrl-C mid-run, then run again."""

from __future__ import annotations

import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pandas as pd

import dfllm
from dfllm.testing import FakeProvider

from .conftest import KEY

ROWS, CONCURRENCY = 400, 16

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


def wait_for_requests(fake: FakeProvider, n: int) -> None:
    deadline = time.monotonic() + 30
    while len(fake.chat_requests) < n:
        assert time.monotonic() < deadline, "the child never got going"
        time.sleep(0.005)


def answered(cache: Path) -> int:
    return int(sqlite3.connect(cache).execute("SELECT count(*) FROM responses").fetchone()[0])


def rerun(fake: FakeProvider, cache: Path) -> pd.DataFrame:
    dfllm.create_engine("t", "openai", api_key=KEY, base_url=fake.base_url)
    df = pd.DataFrame({"t": [f"row {i}" for i in range(ROWS)]})
    return dfllm.predict(df, "t", "m", "{{t}}", "y", concurrency=CONCURRENCY, cache=str(cache))


def test_kill_9_mid_run_then_rerun_sends_only_the_missing_rows(tmp_path: Path) -> None:
    cache = tmp_path / "c.sqlite3"
    with FakeProvider(latency_s=0.02, responder="echo") as fake:
        child = start_child(fake, cache)
        wait_for_requests(fake, ROWS // 2)
        child.send_signal(signal.SIGKILL)
        child.wait()
        assert child.stdout is not None
        child.stdout.close()
        kept = answered(cache)
        assert 0 < kept < ROWS
        before = len(fake.chat_requests)
        out = rerun(fake, cache)
        resent = len(fake.chat_requests) - before
    assert out["y"].tolist() == [f"row {i}" for i in range(ROWS)]
    # Only rows without a committed answer go out again (plus at most what was in flight).
    assert ROWS - kept <= resent <= ROWS - kept + CONCURRENCY


def test_ctrl_c_stops_promptly_and_keeps_what_arrived(tmp_path: Path) -> None:
    cache = tmp_path / "c.sqlite3"
    with FakeProvider(latency_s=0.05, responder="echo") as fake:
        child = start_child(fake, cache)
        wait_for_requests(fake, ROWS // 3)
        child.send_signal(signal.SIGINT)
        stopped_at = time.monotonic()
        out, _ = child.communicate(timeout=10)
        took = time.monotonic() - stopped_at
        sent_by_child = len(fake.chat_requests)
        kept = answered(cache)
        out_frame = rerun(fake, cache)
        resent = len(fake.chat_requests) - sent_by_child
    assert "interrupted" in out and child.returncode == 130
    assert took < 2.0
    assert kept >= ROWS // 3 - CONCURRENCY  # answers that arrived before Ctrl-C were flushed
    assert sent_by_child < ROWS  # it stopped sending
    assert resent == ROWS - kept
    assert out_frame["y"].notna().all()
