"""The limiter's arithmetic on an injected clock: no real waiting."""

from __future__ import annotations

import asyncio
import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dfllm.runtime.limiter import AdaptiveRate, Pacer, Pause, SlowStartPacer, StormDetector, Window
from dfllm.testing import FakeClock


def test_pacer_has_no_burst_at_start_and_spaces_requests_evenly() -> None:
    t = FakeClock()
    pacer = Pacer(600, t.clock, t.sleep)  # 10 a second
    starts: list[float] = []

    async def go() -> None:
        for _ in range(5):
            await pacer.acquire()
            starts.append(t.now)

    asyncio.run(go())
    assert starts == pytest.approx([0.0, 0.1, 0.2, 0.3, 0.4])


@given(st.floats(min_value=1, max_value=100_000), st.lists(st.integers(1, 50), min_size=1, max_size=60))
def test_pacer_never_exceeds_its_rate_in_any_minute(per_minute: float, amounts: list[int]) -> None:
    t = FakeClock()
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
    t = FakeClock()
    with pytest.raises(ValueError, match=r"limit is 100 per minute"):
        asyncio.run(Pacer(100, t.clock, t.sleep).acquire(101))


def test_pause_holds_everyone_until_the_time_named_with_jitter() -> None:
    t = FakeClock()
    pause = Pause(t.clock, t.sleep, random.Random(1))
    pause.pause_for(2.0)
    asyncio.run(pause.wait())
    assert 2.0 <= t.now <= 2.4


def test_window_slow_start_then_halves_once_per_round_trip_then_grows_additively() -> None:
    t = FakeClock()

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
    t = FakeClock()

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
    t = FakeClock()
    rate = AdaptiveRate(t.clock, t.sleep)
    rate.on_rate_limited(sent_at=0.0)
    assert rate.pacer is None  # a 429 before any success teaches nothing
    for i in range(100):  # 100 successes over 2 s: 50 in the last second
        t.now = i * 0.02
        rate.on_success()
    t.now = 2.0
    rate.on_rate_limited(sent_at=1.95)
    assert rate.per_minute() == pytest.approx(50 * 60, rel=0.03)
    t.now = 2.5  # a storm before any rate was known: the last second is a floor, probed fast
    assert rate.per_minute() == pytest.approx(50 * 60 * 2**0.5, rel=0.03)
    rate.on_rate_limited(sent_at=2.4)  # within the cooldown: the first cut has not shown yet
    assert rate.per_minute() == pytest.approx(50 * 60 * 2**0.5, rel=0.03)
    t.now = 3.5
    probed = 50 * 60 * 2**1.5
    rate.on_rate_limited(sent_at=3.1)  # the probe found the cap: back to CUT of half of it
    assert rate.per_minute() == pytest.approx(0.9 * probed / 2, rel=0.03)
    t.now = 13.5  # then a slow probe: +3% a second
    assert rate.per_minute() == pytest.approx(0.9 * probed / 2 * 1.3, rel=0.03)


def test_a_storm_is_counted_against_the_sends_since_its_first_429() -> None:
    t = FakeClock()
    storm = StormDetector(t)
    for _ in range(60):  # a slow start filling the server's budget
        storm.record(False, storm.sent())
    for _ in range(7):
        storm.record(True, storm.sent())
        storm.record(False, storm.sent())
    assert not storm.storm  # 7 429s: not yet
    storm.record(True, storm.sent())
    assert storm.storm  # 8 of the 15 sends since the first 429, though 8 of 75 in all


def test_random_429s_answered_before_the_successes_of_their_round_are_not_a_storm() -> None:
    t = FakeClock()
    storm = StormDetector(t)
    tickets = [storm.sent() for _ in range(40)]  # one round in flight
    for ticket in tickets[::5]:  # a 429 comes back at once, a success a round trip later
        storm.record(True, ticket)
    assert not storm.storm  # 8 429s, all the answers so far, but a fifth of the sends


@pytest.mark.parametrize("seed", range(20))
def test_random_429s_at_five_percent_are_not_a_storm_at_a_steady_rate(seed: int) -> None:
    rng = random.Random(seed)  # fixed seeds: a rare false storm is possible, a flaky test is not
    t = FakeClock()
    storm = StormDetector(t)
    for _ in range(3000):  # 1000 answers a second
        t.advance(0.001)
        storm.record(rng.random() < 0.05, storm.sent())
        assert not storm.storm


def test_slow_start_spreads_each_round_over_one_round_trip() -> None:
    t = FakeClock()
    window = Window(1, 256, t)
    pacer = SlowStartPacer(window, t, t.sleep)
    starts: list[float] = []

    async def go() -> None:
        await pacer.acquire()  # no round trip measured yet: not paced
        pacer.on_round_trip(0.05)
        window.widen(32)
        for _ in range(5):
            await pacer.acquire()
            starts.append(t.now)
        for _ in range(256):
            window.on_success()
        assert not window.slow_start  # the window is at its maximum: nothing left to spread
        await pacer.acquire()
        starts.append(t.now)

    asyncio.run(go())
    gap = 0.05 / 32
    assert starts == pytest.approx([0.0, gap, 2 * gap, 3 * gap, 4 * gap, 4 * gap])
