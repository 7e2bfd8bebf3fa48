"""Absurd waits and interrupts: retry-after and rate-limit headers asking for hours, a pause longer
than a row's budget, Ctrl-C from an app's own event loop. Each run must end, lose nothing, and say why."""

from __future__ import annotations

import asyncio
import signal
import sqlite3
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
from dfllm.runtime.executor import Executor, RequestSpec, Work
from dfllm.runtime.progress import RunStats
from dfllm.testing import FakeClock, FakeProvider, MockEngine, always, ok, sequence, status
from tests.conftest import KEY


def frame(n: int) -> pd.DataFrame:
    return pd.DataFrame({"t": [f"row {i}" for i in range(n)]})



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



def test_a_spent_budget_quotes_the_reset_header_as_the_server_sent_it() -> None:
    clock = FakeClock()
    sent = (("x-ratelimit-remaining-requests", "0"), ("x-ratelimit-reset-requests", "10h0m0s"))
    state = RateLimitState(limit_requests=100, remaining_requests=0, reset_requests_s=36000.0, headers=sent)
    outcomes, _ = run_mock(lambda r: dfllm.Completion("ok", rate_limit=state), 20, clock, concurrency=4)
    failed = [o for o in outcomes if isinstance(o, dfllm.RateLimitError)]
    assert failed and clock.now < 1.0
    assert "x-ratelimit-remaining-requests: 0, x-ratelimit-reset-requests: 10h0m0s" in str(failed[0])
