"""Rate limits over loopback (server-side caps and records) and on an injected clock."""

from __future__ import annotations

import asyncio
import bisect
import collections
import itertools
import math
import random
import time
from typing import Unpack

import pandas as pd
import pytest

import dfllm
from dfllm.config.options import Options, PredictOptions
from dfllm.runtime.executor import Executor, RequestSpec, Work
from dfllm.runtime.progress import RunStats
from dfllm.testing import SHAPES, FakeClock, FakeProvider, MockEngine, sequence, status
from dfllm.testing._limits import Shape
from tests.conftest import KEY


def predict(fake: FakeProvider, rows: int, **options: Unpack[PredictOptions]) -> pd.DataFrame:
    dfllm.create_engine("t", "openai", api_key=KEY, base_url=fake.base_url)
    df = pd.DataFrame({"t": [f"row {i}" for i in range(rows)]})
    options.setdefault("concurrency", 64)
    return dfllm.predict(df, "t", "m", "{{t}}", "y", **options)


def test_rpm_set_to_the_cap_sends_no_429_and_no_start_burst() -> None:
    # A burst allowance of 3 absorbs loopback jitter; the pace itself is exactly the cap.
    with FakeProvider(rpm=1200, rpm_burst=3, ratelimit_headers=False) as fake:
        out = predict(fake, 30, rpm=1200)
        arrivals = [r.arrived_at for r in fake.chat_requests]
        assert fake.app.status_counts == {200: 30}
    assert out["y"].notna().all()
    gaps = [b - a for a, b in itertools.pairwise(arrivals)]
    assert min(gaps) > 0.03  # 50 ms apart, give or take scheduling; never a burst


def test_limits_are_learned_from_x_ratelimit_headers() -> None:
    with FakeProvider(rpm=1200, rpm_burst=40) as fake:
        out = predict(fake, 80)
        statuses = dict(fake.app.status_counts)
    run = dfllm.last_run()
    assert out["y"].notna().all()
    assert run is not None and run.learned_rpm == 1200
    assert statuses.get(429, 0) == 0  # the first window fit the burst, then the pace held


def test_a_cold_start_against_an_unknown_cap_without_headers_costs_a_handful_of_429s() -> None:
    # 3000/min with a 1 s burst of 50, no headers: only 429s to learn from. Fired as whole
    # windows, the round that crossed the burst landed whole in it (up to a pool's worth).
    with FakeProvider(rpm=3000, rpm_burst=50, ratelimit_headers=False, latency_s=0.05) as fake:
        out = predict(fake, 150, concurrency=256)
        statuses = [code for _, code in fake.app.responses]
    assert out["y"].notna().all()
    # 8-9 seen on an idle machine; more with both cores busy (answers come back late, so more of
    # a round is sent before the first 429 is read). Fired as whole windows, about 50 landed.
    assert statuses.count(429) <= 25, statuses


def test_a_429_storm_does_not_multiply_requests() -> None:
    with FakeProvider(script=sequence([status(429, retry_after_ms=50)] * 40)) as fake:
        out = predict(fake, 100)
        assert len(fake.chat_requests) == 140
    assert out["y"].notna().all()
    run = dfllm.last_run()
    assert run is not None and run.rate_limited == 40 and run.retries == 40


def test_tpm_paces_by_estimated_tokens_on_an_injected_clock() -> None:
    clock = FakeClock()
    engine = MockEngine(lambda request: dfllm.Completion("ok", 10, 5), clock=clock)
    spec = RequestSpec("m", {"max_tokens": 900})
    work = [Work((i, i), "x" * 396) for i in range(5)]  # 100 prompt + 900 budget = 1000 tokens
    options = Options(tpm=6000, cache=False, concurrency=8)
    executor = Executor(engine, options, RunStats(), spec, clock=clock, sleep=clock.sleep, rng=random.Random(0))
    asyncio.run(executor.run(work))
    # 6000 tokens a minute at 1000 a request: one request every 10 s, the first at once.
    assert engine.sent_at == [0.0, 10.0, 20.0, 30.0, 40.0]


def test_tpm_smaller_than_one_request_is_refused_up_front(engine: str) -> None:
    with pytest.raises(dfllm.ParameterError, match="can never fit under tpm=100"):
        dfllm.predict(pd.DataFrame({"t": ["x"]}), engine, "m", "{{t}}", "y", tpm=100, max_tokens=500)


def timed_predict(fake: FakeProvider, rows: int, **options: Unpack[PredictOptions]) -> tuple[pd.DataFrame, float]:
    started = time.monotonic()
    options.setdefault("errors", "null")
    out = predict(fake, rows, **options)
    return out, time.monotonic() - started


@pytest.mark.parametrize("scale", [0.1, 10.0])
def test_the_rate_converges_to_the_real_cap_whatever_unit_the_limit_header_is_in(scale: float) -> None:
    # 1200/min, a 1 s burst of 20: 160 rows take 7 s at the cap; at a tenth of it, 70 s.
    with FakeProvider(rpm=1200, rpm_burst=20, advertised_rpm_scale=scale, responder="echo") as fake:
        out, took = timed_predict(fake, 160)
        statuses = dict(fake.app.status_counts)
    assert out["y"].notna().all()
    assert 160 / took * 60 >= 0.6 * 1200  # generous for a loaded machine; the target 0.9 is benchmarked
    assert statuses.get(429, 0) <= 0.03 * 160


def test_a_cold_start_against_a_cap_with_headers_sends_at_most_a_handful_of_429s() -> None:
    with FakeProvider(rpm=1200, rpm_burst=20, responder="echo") as fake:
        out, _ = timed_predict(fake, 60)
        statuses = dict(fake.app.status_counts)
    assert out["y"].notna().all()
    assert statuses.get(429, 0) <= 3


def test_random_429s_delay_only_their_own_rows() -> None:
    with FakeProvider(random_429=0.05, random_seed=3, latency_s=0.02, responder="echo") as fake:
        out, took = timed_predict(fake, 400)
        statuses = dict(fake.app.status_counts)
    assert out["y"].notna().all() and statuses.get(429, 0) >= 5
    # Fault-free this takes about 0.2 s; each 429'd row waits its own 1 s. A run where every
    # 429 paused every worker and cut the rate took minutes.
    assert took < 10


def most_sent_beyond_the_cap(shape: Shape, sends: list[float], *, rpm: float, window_s: float) -> float:
    """The most requests sent beyond what the cap grants, over any window of ``shape`` (0 or less
    when every send fit): an aligned window for ``fixed``, any ``window_s`` span for ``sliding``,
    any span for a ``bucket`` (its one-second burst plus the rate over the span)."""
    sends = sorted(sends)
    per_window = rpm * window_s / 60
    if shape == "fixed":
        per_aligned = collections.Counter(math.floor(t / window_s) for t in sends)
        return max(per_aligned.values()) - per_window
    if shape == "sliding":
        return max(bisect.bisect_left(sends, t + window_s) - i for i, t in enumerate(sends)) - per_window
    burst, rate = rpm / 60, rpm / 60
    return max(j - i + 1 - burst - rate * (sends[j] - sends[i]) for j in range(len(sends)) for i in range(j + 1))


@pytest.mark.parametrize("style", ["openai", "litellm"])
@pytest.mark.parametrize("shape", SHAPES)
def test_without_rpm_a_short_window_cap_holds_in_real_time_whatever_its_shape(shape: Shape, style: str) -> None:
    # 1,200/min: a 2 s window holds 40, the bucket bursts a second's 20; 120 rows are 3 windows.
    # OpenAI's headers carry a reset and say the window's 40; LiteLLM's say 1,200 (per minute)
    # and no reset. Before, pacing assumed a minute-long window: 0.5-0.6x of a 2 s one's cap.
    rpm, window_s, rows = 1200.0, 2.0, 120
    wall = time.time() - time.monotonic()  # a fixed window is aligned to the wall clock
    with FakeProvider(rpm=rpm, rpm_shape=shape, rpm_window_s=window_s, ratelimit_headers=style,
                      responder="echo", latency_s=0.02) as fake:
        out = predict(fake, rows, errors="null")
        sends = [r.arrived_at + wall for r in fake.chat_requests]
        statuses = collections.Counter(code for _, code in fake.app.responses)
    assert out["y"].notna().all()
    assert statuses[200] == rows and statuses[429] <= 4, statuses  # 0-1 seen; at most a send or two in flight
    # Every send beyond what a window grants is a 429: never more than those.
    assert most_sent_beyond_the_cap(shape, sends, rpm=rpm, window_s=window_s) <= statuses[429] + 1
    achieved = (len(sends) - 1) / (max(sends) - min(sends)) * 60 / rpm
    assert achieved >= 0.6, achieved  # 0.69-1.3 seen on an idle machine; 0.3-0.5 paced as if a minute long
