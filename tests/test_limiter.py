"""The limiter's arithmetic on an injected clock: no real waiting."""

from __future__ import annotations

import asyncio
import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dfllm.runtime.limiter import Pacer, Pause, Window


class FakeTime:
    def __init__(self) -> None:
        self.now = 0.0

    def clock(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.now += seconds


def test_pacer_has_no_burst_at_start_and_spaces_requests_evenly() -> None:
    t = FakeTime()
    pacer = Pacer(600, t.clock, t.sleep)  # 10 a second
    starts = []

    async def go() -> None:
        for _ in range(5):
            await pacer.acquire()
            starts.append(t.now)

    asyncio.run(go())
    assert starts == pytest.approx([0.0, 0.1, 0.2, 0.3, 0.4])


@given(st.floats(min_value=1, max_value=100_000), st.lists(st.integers(1, 50), min_size=1, max_size=60))
def test_pacer_never_exceeds_its_rate_in_any_minute(per_minute: float, amounts: list[int]) -> None:
    t = FakeTime()
    pacer = Pacer(per_minute, t.clock, t.sleep)
    granted: list[tuple[float, int]] = []

    async def go() -> None:
        for amount in amounts:
            if amount <= per_minute:
                await pacer.acquire(amount)
                granted.append((t.now, amount))

    asyncio.run(go())
    for start, _ in granted:
        in_window = sum(a for when, a in granted if start <= when < start + 60)
        assert in_window <= per_minute + max(a for _, a in granted)  # at most one grant's overshoot


def test_pacer_refuses_a_request_that_can_never_fit() -> None:
    t = FakeTime()
    with pytest.raises(ValueError, match=r"limit is 100 per minute"):
        asyncio.run(Pacer(100, t.clock, t.sleep).acquire(101))


def test_pause_holds_everyone_until_the_time_named_with_jitter() -> None:
    t = FakeTime()
    pause = Pause(t.clock, t.sleep, random.Random(1))
    pause.pause_for(2.0)
    asyncio.run(pause.wait())
    assert 2.0 <= t.now <= 2.4


def test_window_slow_start_then_halves_once_per_round_trip_then_grows_additively() -> None:
    t = FakeTime()

    async def go() -> None:
        window = Window(4, 64, t.clock)
        for _ in range(4):
            window.on_success()
        assert window.limit == 8  # slow start: +1 per success
        sent = t.now
        t.now = 1.0
        window.on_rate_limited(sent)
        assert window.limit == 4
        window.on_rate_limited(sent)  # same round trip: no second cut
        assert window.limit == 4 and window.cuts == 1
        for _ in range(4):
            window.on_success()
        assert window.limit == pytest.approx(5.0, abs=0.1)  # additive: about +1 per window

    asyncio.run(go())


def test_window_blocks_beyond_its_limit_and_wakes_on_release() -> None:
    t = FakeTime()

    async def go() -> list[str]:
        window = Window(2, 2, t.clock)
        order: list[str] = []

        async def user(name: str, hold: float) -> None:
            await window.acquire()
            order.append(f"+{name}")
            await asyncio.sleep(hold)
            order.append(f"-{name}")
            window.release()

        await asyncio.gather(user("a", 0.02), user("b", 0.04), user("c", 0.0))
        return order

    order = asyncio.run(go())
    assert order.index("+c") > order.index("-a")


def test_adaptive_rate_learns_from_the_last_second_cuts_after_a_cooldown_and_grows() -> None:
    from dfllm.runtime.limiter import AdaptiveRate

    t = FakeTime()
    rate = AdaptiveRate(t.clock, t.sleep)
    rate.on_rate_limited(sent_at=0.0)
    assert rate.pacer is None  # a 429 before any success teaches nothing
    for i in range(100):  # 100 successes over 2 s: 50 in the last second
        t.now = i * 0.02
        rate.on_success()
    t.now = 2.0
    rate.on_rate_limited(sent_at=1.95)
    assert rate.per_minute() == pytest.approx(50 * 60, rel=0.03)
    t.now = 2.5
    rate.on_rate_limited(sent_at=2.4)  # within the cooldown: the first cut has not shown yet
    assert rate.per_minute() == pytest.approx(50 * 60 * 1.015, rel=0.03)
    t.now = 3.5
    rate.on_rate_limited(sent_at=3.1)
    assert rate.per_minute() == pytest.approx(50 * 60 * 1.045 * 0.9, rel=0.03)
    t.now = 13.5
    assert rate.per_minute() == pytest.approx(50 * 60 * 1.045 * 0.9 * 1.3, rel=0.03)
