"""The limiter's arithmetic on an injected clock: no real waiting."""

from __future__ import annotations

import asyncio
import bisect
import heapq
import itertools
import math
import random
from collections.abc import Awaitable

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from dfllm._exceptions import RateLimitError
from dfllm.config.options import Options
from dfllm.engines.base import Completion, Request
from dfllm.engines.http import rate_limit_state, retry_after
from dfllm.runtime.executor import Executor, RequestSpec, Work
from dfllm.runtime.limiter import (
    AdaptiveRate,
    Budget,
    Pacer,
    Pause,
    RefusedWindow,
    SlowStartPacer,
    StormDetector,
    Window,
)
from dfllm.runtime.progress import RunStats
from dfllm.testing import SHAPES, FakeClock, MockEngine, answer_headers, make_cap, refusal_headers
from dfllm.testing._limits import HeaderStyle, Shape


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


def test_pacer_that_waited_at_a_low_rate_books_its_slot_at_the_rate_that_let_it_go() -> None:
    # A spent budget reads as one a minute until its reset a moment later. The head of the line
    # re-read the rate, left at the new one, but booked its slot a minute on (the slot it had
    # computed at one a minute): everyone after it waited that minute (a Dask run stalled ~57 s).
    t = FakeClock()
    spent_until = 0.0
    pacer = Pacer(1200, t.clock, t.sleep, rate=lambda: 1.0 if t.now < spent_until else 1200.0)
    starts: list[float] = []

    async def go() -> None:
        nonlocal spent_until
        await pacer.acquire()
        starts.append(t.now)
        spent_until = 0.2
        for _ in range(3):
            await pacer.acquire()
            starts.append(t.now)

    asyncio.run(go())
    assert starts[1] <= 0.2 + Pacer.NAP_S
    assert starts[3] - starts[1] == pytest.approx(0.1, abs=0.06)  # two more at 1200 a minute


def test_pacer_refuses_a_request_that_can_never_fit() -> None:
    t = FakeClock()
    with pytest.raises(ValueError, match=r"limit is 100 per minute"):
        asyncio.run(Pacer(100, t.clock, t.sleep).acquire(101))


def _paced_sends(pacer: Pacer, t: FakeClock, callers: int) -> list[float]:
    """When each of ``callers`` waiting at once was let out, in the order they were."""
    sent: list[float] = []

    async def one() -> None:
        await pacer.acquire()
        sent.append(t.now)

    async def go() -> None:
        await asyncio.gather(*(one() for _ in range(callers)))

    asyncio.run(go())
    return sent


def test_a_grouping_pacer_wakes_once_a_group_at_the_same_average_rate() -> None:
    # 3,000 a minute is a send every 20 ms: one wake-up (and loop pass) each was most of a paced
    # row's CPU. Grouped by 0.1 s, six go per two wake-ups, each at the group's last slot: never
    # before its own slot, at most 0.1 s after it.
    t = FakeClock()
    sent = _paced_sends(Pacer(3000, t.clock, t.sleep, group_s=0.1), t, 500)
    exact = _paced_sends(Pacer(3000, (e := FakeClock()).clock, e.sleep), e, 500)
    assert len(t.slept) <= 500 * 2 / 5 and len(e.slept) == 499
    assert all(slot - 1e-9 <= when <= slot + 0.1 + 1e-9 for when, slot in zip(sent, exact, strict=True))
    for start in sent:  # any second holds the rate's 50 and at most one group more
        assert sum(start <= when < start + 1.0 for when in sent) <= 50 + 6


@given(st.floats(min_value=1, max_value=100_000), st.floats(min_value=0, max_value=0.5),
       st.lists(st.integers(1, 50), min_size=1, max_size=60))
def test_a_grouping_pacer_never_exceeds_its_rate_by_more_than_a_group(
        per_minute: float, group_s: float, amounts: list[int]) -> None:
    t = FakeClock()
    pacer = Pacer(per_minute, t.clock, t.sleep, group_s=group_s)
    granted: list[tuple[float, int]] = []

    async def one(amount: int) -> None:
        await pacer.acquire(amount)
        granted.append((t.now, amount))

    async def go() -> None:
        await asyncio.gather(*(one(a) for a in amounts if a <= per_minute))

    asyncio.run(go())
    largest = max((a for _, a in granted), default=0)
    for start, _ in granted:
        in_window = sum(a for when, a in granted if start <= when < start + 60)
        assert in_window <= per_minute * (1 + group_s / 60) + largest


class VirtualTime:
    """A clock that moves only when every task waits on it: what a caller sees at its wake-up is
    when it was let go (``FakeClock`` moves as each sleep starts, before the others have run)."""

    def __init__(self) -> None:
        self.now = 0.0
        self._timers: list[tuple[float, int, asyncio.Future[None]]] = []
        self._count = itertools.count()

    def clock(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        woken: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._timers, (self.now + max(0.0, seconds), next(self._count), woken))
        await woken

    async def run(self, main: Awaitable[None]) -> None:
        task = asyncio.ensure_future(main)
        while not task.done():
            for _ in range(20):  # everything runnable runs before the clock moves
                await asyncio.sleep(0)
            if task.done():
                break
            if not self._timers:  # nothing runs and nothing will wake: a waiter nobody lets go
                task.cancel()
                raise AssertionError(f"hung at t={self.now}")
            at, _, woken = heapq.heappop(self._timers)
            self.now = max(self.now, at)
            woken.set_result(None)
        await task


def _let_go(per_minute: float, callers: int | list[float], *, group_s: float = 0.0,
            room: tuple[float, float] | None = None) -> list[float]:
    """When each of ``callers`` (a number waiting from the start, or when each comes) was let
    go, on virtual time."""
    v = VirtualTime()
    pacer = Pacer(per_minute, v.clock, v.sleep, group_s=group_s, room=(lambda: room) if room else None)
    sent: list[float] = []
    arrivals = [0.0] * callers if isinstance(callers, int) else callers

    async def one(arrival: float) -> None:
        if arrival:
            await v.sleep(arrival)
        await pacer.acquire()
        sent.append(v.now)

    async def all_of_them() -> None:
        await asyncio.gather(*(one(arrival) for arrival in arrivals))

    asyncio.run(v.run(all_of_them()))
    return sent


def _most_within(sent: list[float], window_s: float) -> int:
    """The most sends a sliding window of ``window_s`` counts at once (it forgets a send exactly
    a window after it)."""
    ordered = sorted(sent)
    return max(j + 1 - bisect.bisect_right(ordered, when - window_s + 1e-9) for j, when in enumerate(ordered))


def test_groups_overfill_a_sliding_window_that_their_room_keeps_them_within() -> None:
    # 50 a second, a sliding window of 50 over 1 s, groups up to 0.25 s: a group let go at its
    # last slot makes its first sends late; a window later the sends at their own slots would
    # be counted beside them.
    assert _most_within(_let_go(3000, 400, group_s=0.25), 1.0) > 50
    sent = _let_go(3000, 400, group_s=0.25, room=(50, 1.0))
    assert _most_within(sent, 1.0) <= 50
    assert max(sent) <= 399 / 50 + 0.25 + 1e-9  # the rate holds: 400 sends in 8 s


@given(st.integers(2, 200), st.floats(0.5, 60), st.floats(0.5, 1.0), st.floats(0.0, 0.5), st.integers(1, 250))
@settings(max_examples=60, deadline=None)
def test_a_grouping_pacer_with_room_never_overfills_its_window_and_keeps_its_rate(
        count: int, window_s: float, share_of_room: float, group_share: float, callers: int) -> None:
    per_minute = share_of_room * count / window_s * 60  # the pace fits the room
    group_s = group_share * window_s
    sent = _let_go(per_minute, callers, group_s=group_s, room=(count, window_s))
    exact = _let_go(per_minute, callers)
    assert _most_within(sent, window_s) <= count
    assert all(a >= b - 1e-9 for a, b in zip(sorted(sent), sorted(exact), strict=True))  # none early
    assert max(sent) <= max(exact) + group_s + 1e-6  # and the last no later than a group


@given(st.integers(2, 60), st.floats(0.5, 10), st.floats(0.5, 1.0), st.floats(0.0, 0.5),
       st.lists(st.floats(0.0, 30.0), min_size=1, max_size=120))
@example(5, 1.0, 0.8, 0.5, [0.0] * 6 + [1.70, 1.71])  # a head held after an idle spell, from a review
@settings(max_examples=60, deadline=None)
def test_callers_coming_at_any_time_never_overfill_the_room_nor_go_before_exact_spacing_would(
        count: int, window_s: float, share_of_room: float, group_share: float, arrivals: list[float]) -> None:
    # A line that empties and fills again: a head the room holds after an idle spell keeps no
    # slot from the idle past, so by any moment no more have gone than exact spacing lets go.
    per_minute = share_of_room * count / window_s * 60
    sent = sorted(_let_go(per_minute, arrivals, group_s=group_share * window_s, room=(count, window_s)))
    exact = sorted(_let_go(per_minute, arrivals))
    assert _most_within(sent, window_s) <= count
    assert all(a >= b - 1e-9 for a, b in zip(sent, exact, strict=True))


def test_a_room_that_raises_fails_the_sends_it_was_asked_for_and_hangs_no_one() -> None:
    v = VirtualTime()
    reads = itertools.count()

    def room() -> tuple[float, float]:
        if next(reads) % 7 == 6:
            raise RuntimeError("a broken room")
        return 50, 1.0

    pacer = Pacer(3000, v.clock, v.sleep, group_s=0.25, room=room)
    outcomes: list[str] = []

    async def one() -> None:
        try:
            await pacer.acquire()
            outcomes.append("sent")
        except RuntimeError:
            outcomes.append("failed")

    async def all_of_them() -> None:
        await asyncio.gather(*(one() for _ in range(200)))

    asyncio.run(v.run(all_of_them()))  # VirtualTime fails on a waiter nobody wakes
    assert len(outcomes) == 200 and "failed" in outcomes and outcomes.count("sent") > 100


def test_a_caller_cancelled_at_the_head_of_the_line_hands_it_on() -> None:
    t = FakeClock()
    held = True  # the head's sleep hangs until the test lets sleeps pass

    async def sleep(seconds: float) -> None:
        if held:
            await asyncio.get_running_loop().create_future()
        await t.sleep(seconds)

    pacer = Pacer(60, t.clock, sleep, group_s=0.1)  # one a second
    sent: list[str] = []

    async def one(name: str) -> None:
        await pacer.acquire()
        sent.append(name)

    async def go() -> None:
        nonlocal held
        await pacer.acquire()  # the first goes at once; the rest wait in line
        head = asyncio.ensure_future(one("head"))
        await asyncio.sleep(0)
        others = [asyncio.ensure_future(one(name)) for name in ("second", "third")]
        await asyncio.sleep(0)
        head.cancel()  # while it sleeps until its slot
        held = False
        await asyncio.wait_for(asyncio.gather(*others), timeout=5)

    asyncio.run(go())
    assert sent == ["second", "third"] and t.now == pytest.approx(2.0)


def test_a_head_cancelled_while_its_group_waits_for_the_last_slot_lets_none_go_early() -> None:
    t = FakeClock()
    sleeping: list[tuple[float, asyncio.Future[None]]] = []  # sleeps end when the test says

    async def sleep(seconds: float) -> None:
        done = asyncio.get_running_loop().create_future()
        sleeping.append((t.now + seconds, done))
        await done

    async def advance_to(moment: float) -> None:
        t.now = moment
        for until, done in list(sleeping):
            if until <= moment and not done.done():
                done.set_result(None)
        for _ in range(5):
            await asyncio.sleep(0)

    pacer = Pacer(60, t.clock, sleep, group_s=5.0)  # one a second, groups up to 5 s
    sent: list[tuple[str, float]] = []

    async def one(name: str) -> None:
        await pacer.acquire()
        sent.append((name, t.now))

    async def go() -> None:
        await pacer.acquire()  # goes at 0; the next slot is at 1
        head = asyncio.ensure_future(one("head"))
        await asyncio.sleep(0)
        followers = [asyncio.ensure_future(one(f"f{i}")) for i in range(4)]
        await advance_to(1.0)  # the head books 2, 3, 4 and 5 for its group and waits for 5
        head.cancel()
        await advance_to(1.0)
        assert sent == []  # before: all four went at 1.0
        await advance_to(5.0)
        await asyncio.gather(*followers)

    asyncio.run(go())
    assert sent == [(f"f{i}", 5.0) for i in range(4)]


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


def _read_budget(depth: int, *, refills: bool, reset_s: float | None, readings: int = 20) -> AdaptiveRate:
    """A rate seeded at 3,000 a minute that read a budget ``depth`` deep, a reading every 20 ms,
    spent a send a reading and (``refills``) given back a send between readings."""
    t = FakeClock()
    rate = AdaptiveRate(t.clock, t.sleep)
    rate.seed(3000)
    remaining = depth
    for _ in range(readings):
        t.now += 0.02
        rate.on_success()
        remaining -= 0 if refills else 1
        rate.on_remaining(remaining, limit=3000, reset_s=reset_s)
    return rate


def test_the_learned_pace_groups_sends_only_where_a_budget_was_read_and_comes_back() -> None:
    deep = _read_budget(3000, refills=True, reset_s=0.02)  # a minute deep, refilling as spent
    assert deep.group_s() == pytest.approx(AdaptiveRate.GROUP_S)
    # Under half a second deep, for 0.4 s: it may yet be a sliding window, so groups of half
    # of it, in the room it shows: its 19 left and the send that reading answered, over its
    # window and a margin.
    shallow = _read_budget(19, refills=True, reset_s=0.02)
    assert not shallow.budget.fixed()
    assert shallow.group_s() * 3000 / 60 == pytest.approx(AdaptiveRate.GROUP_SHARE * 19)
    assert shallow.room() == (20, shallow.budget.window_s() + AdaptiveRate.ROOM_MARGIN_S)
    # For 1.2 s: as full as ever after more sends than a window of it counts, it is no sliding
    # window: the same groups, and no room to keep.
    bucket = _read_budget(19, refills=True, reset_s=0.02, readings=60)
    assert bucket.budget.fixed() and bucket.room() is None
    assert bucket.group_s() == pytest.approx(shallow.group_s())
    # A fixed window, shown by its budget jumping back whole (no reset header): nothing comes
    # back before its end, so one by one; and it is no sliding window, so no room to keep.
    fixed = _read_budget(40, refills=False, reset_s=None)  # spent down to 20
    assert fixed.room() is not None
    fixed.on_remaining(40, limit=3000)
    assert fixed.budget.fixed() and fixed.group_s() == 0.0 and fixed.room() is None
    unread = AdaptiveRate(FakeClock().clock, FakeClock().sleep)
    assert unread.group_s() == 0.0 and unread.room() is None  # nothing read


def paced_run(seconds: float, *, start_per_s: float, random_429: float = 0.0, cap_per_s: float | None = None,
              seed: int = 0) -> tuple[AdaptiveRate, int, int]:
    """An AdaptiveRate seeded at ``start_per_s`` by a header (after a second of successes at that
    rate; it probes upwards fast until its first 429), sending at its pace to a server that
    refuses ``random_429`` of requests at random and, with ``cap_per_s``, holds a token bucket of
    one second's burst. Returns the rate, its successes and its 429s."""
    rng = random.Random(seed)
    t = FakeClock()
    rate = AdaptiveRate(t.clock, t.sleep)
    for i in range(int(start_per_s)):
        t.now = i / start_per_s
        rate.on_success()
    t.now = 1.0
    rate.seed(start_per_s * 60)
    bucket, owed, ok, limited, step = cap_per_s or 0.0, 0.0, 0, 0, 0.01
    while t.now < seconds:
        t.advance(step)
        if cap_per_s:
            bucket = min(cap_per_s, bucket + cap_per_s * step)
        owed += rate.per_minute() / 60 * step
        while owed >= 1:
            owed -= 1
            refused = rng.random() < random_429
            if cap_per_s and not refused:
                refused = bucket < 1
                bucket -= 0 if refused else 1
            if refused:
                limited += 1
                rate.on_rate_limited(t.now, lone=True)
            else:
                ok += 1
                rate.on_success()
    return rate, ok, limited


@pytest.mark.parametrize("seed", range(3))
def test_random_429s_at_a_steady_pace_do_not_ratchet_the_rate_down(seed: int) -> None:
    rate, ok, _ = paced_run(120, start_per_s=100, random_429=0.05, seed=seed)
    # Before, each such 429 cut 10% once a second: 100/s fell to about 1/s within two minutes.
    assert rate.per_minute() / 60 > 70 and ok / 120 > 70


@pytest.mark.parametrize("seed", range(3))
def test_a_real_cap_under_the_pace_is_still_found_with_and_without_random_429s(seed: int) -> None:
    for noise in (0.0, 0.05):
        rate, ok, limited = paced_run(120, start_per_s=100, cap_per_s=60, random_429=noise, seed=seed)
        assert ok / 120 > 0.9 * 60 * (1 - noise) and 0.8 * 60 < rate.per_minute() / 60 < 1.25 * 60
        # More than the 0.4% of cutting at every 429: a cap a few percent under the pace refuses
        # like random 429s until the pace passes what the server took (see AdaptiveRate).
        assert limited / (ok + limited) < noise + 0.04


def test_a_lone_429_in_a_runs_first_second_measures_the_rate_over_the_time_it_has_run() -> None:
    t = FakeClock()
    rate = AdaptiveRate(t.clock, t.sleep)
    rate.seed(3000)  # a header's 50/s
    for i in range(1, 11):  # 10 successes in the first 0.2 s: 50/s
        t.now = i * 0.02
        rate.on_success()
    rate.on_rate_limited(0.2, lone=True)
    # Counted over a whole second they were 10/s, and the pace fell to a fifth for tens of seconds.
    assert rate.per_minute() > 0.4 * 3000


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


@pytest.mark.parametrize("seed", range(20))
def test_random_429s_at_five_percent_are_no_steady_share_and_a_cap_a_fifth_under_the_pace_is(seed: int) -> None:
    rng = random.Random(seed)
    for share, steady_expected in ((0.05, False), (0.2, True)):
        t = FakeClock()
        storm = StormDetector(t)
        seen = False
        for _ in range(1200):  # two minutes at 600/min (fixed seeds: a rare false call is possible)
            t.advance(0.1)
            storm.record(rng.random() < share, storm.sent())
            seen = seen or storm.steady
            assert steady_expected or not storm.storm
        assert seen == steady_expected


def run_against_cap(shape: Shape, style: HeaderStyle, rows: int, *, rpm: float = 1000, window_s: float = 60.0,
                    start: float = 1_000_017.0, latency_s: float = 0.0) -> tuple[float, int, int]:
    """The executor, without rpm=, against a cap of ``shape`` whose headers are in ``style``, on an
    injected clock (one request at a time, taken from the budget half way through ``latency_s``:
    the pace and the latency alone set the timing).
    The server's records: (rate per minute as a share of the cap, 200s, 429s)."""
    clock = FakeClock(start)  # a fixed window's phase comes from the clock: this run starts 17 s into one
    cap = make_cap(shape, rpm, None, window_s, clock)
    records = {200: 0, 429: 0}

    async def handler(request: Request) -> Completion:
        await clock.sleep(latency_s / 2)
        wait = cap.take()
        await clock.sleep(latency_s / 2)
        headers = answer_headers(style, cap, 1.0)
        if wait > 0:
            records[429] += 1
            said = retry_after({**headers, **refusal_headers(style, wait, window_s)})
            raise RateLimitError("429", status=429, retry_after=said[0] if said else None,
                                 retry_after_header=said[1] if said else None)
        records[200] += 1
        return Completion("ok", rate_limit=rate_limit_state(headers))

    engine = MockEngine(handler, clock=clock)
    options = Options(cache=False, concurrency=1, max_retries=50)
    executor = Executor(engine, options, RunStats(), RequestSpec("m"), clock=clock, sleep=clock.sleep,
                        rng=random.Random(0))
    outcomes = asyncio.run(executor.run([Work((i, i), f"p{i}") for i in range(rows)]))
    assert all(isinstance(o, Completion) for o in outcomes)
    elapsed = max(engine.sent_at) - start
    return rows / elapsed * 60 / rpm, records[200], records[429]


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("style", ["openai", "litellm"])
def test_without_rpm_a_run_longer_than_a_window_holds_the_cap_whatever_its_shape(
        shape: Shape, style: HeaderStyle) -> None:
    # Three and a half minutes' worth at 1000/min. Before, a fixed window without a reset header
    # sent most of its budget early, then almost nothing for the rest of the window (0.66-0.95x).
    share, ok, limited = run_against_cap(shape, style, 3500)
    # A fixed window's first, partial one is a bonus (the run starts 17 s into it): up to 1.4x.
    assert 0.95 <= share <= (1.4 if shape == "fixed" else 1.1), (share, ok, limited)
    assert limited <= 0.01 * ok


@pytest.mark.parametrize("style", ["openai", "litellm"])
def test_a_sliding_window_is_spent_on_as_its_first_sends_age_out(style: HeaderStyle) -> None:
    # 40 per 2 s, answers in 20 ms: the first window's budget is spent just before it ends, and
    # what was sent first comes back from then on. Before, the pace fell to nothing until the
    # reset (or a window after the last reading): a whole window with almost no sends, 0.69x.
    share, ok, limited = run_against_cap("sliding", style, 120, rpm=1200, window_s=2.0, latency_s=0.02)
    assert share >= 0.95, (share, ok, limited)
    assert limited <= 0.01 * ok


def test_without_headers_a_fixed_windows_429s_teach_its_length_and_what_it_grants() -> None:
    # 300 per 5 s, no x-ratelimit-* headers: each 429 names the window's end. The pace starts
    # above the cap; two 429s naming one moment pause every send until it (the executor's
    # part, played here), and two windows' ends give the window and its grants. Before, the
    # pace was cut at each window's end and probed past the cap again: 429s at every window.
    start = 1_000_002.0
    t = FakeClock(start)
    cap = make_cap("fixed", 3600, None, 5.0, t)
    rate = AdaptiveRate(t.clock, t.sleep)
    rate.seed(4800)
    refused: list[float] = []
    granted: list[float] = []
    paused_until, owed, step = 0.0, 0.0, 0.005
    while t.now < start + 60:
        t.advance(step)
        owed = 0.0 if t.now < paused_until else owed + rate.per_minute() / 60 * step
        while owed >= 1:
            owed -= 1
            wait = cap.take()
            if wait == 0:
                granted.append(t.now)
                rate.on_success(t.now)
                continue
            refused.append(t.now)
            held = rate.on_refused(wait)
            rate.on_rate_limited(t.now, lone=True)
            if held is not None:
                paused_until, owed = t.now + held, 0.0
    assert rate.refused_window.window_s == pytest.approx(5.0, abs=0.05)
    settled = 1_000_010.0  # the second window's end: two ends seen, the second window counted
    lapsed = settled + RefusedWindow.KEEP_WINDOWS * 5  # then a probe for a raised cap
    assert [x for x in refused if settled <= x < lapsed] == []
    assert len([x for x in granted if x >= settled]) >= 0.95 * 300 * (start + 60 - settled) / 5
    assert len(refused) <= 0.01 * len(granted), len(refused)


@given(st.lists(st.floats(0, 30), min_size=2, max_size=300))
def test_random_429s_each_naming_a_second_on_never_name_a_window_end(answered: list[float]) -> None:
    window = RefusedWindow()
    for now in sorted(answered):
        assert window.refused(now, 1.0) is None
        window.on_storm()
    assert window.ceiling(30.0) == math.inf


@pytest.mark.parametrize("style", ["openai", "litellm"])
def test_what_a_sliding_window_has_left_lasts_until_its_oldest_send_is_back(style: HeaderStyle) -> None:
    # The issue's 2,400 rows against 1,200 a sliding minute: two windows' worth. Before, what
    # was left near the first window's end was spread over the time to the full reset, so the
    # pace fell short of the window and the next one mirrored the gap: 0.95x here, 0.93x in real time.
    share, ok, limited = run_against_cap("sliding", style, 2400, rpm=1200, window_s=60.0, latency_s=0.02)
    assert share >= 0.97, (share, ok, limited)
    assert limited == 0


def test_a_refill_read_in_clusters_is_measured_over_the_whole_gap_it_came_back_in() -> None:
    # A bucket of 20 refilling 20 a second, spent in groups of 8 every 0.42 s; each group's
    # answers bring 8 readings within 4 ms, the first of them all that came back over the gap.
    budget, tokens, now = Budget(), 20.0, 0.0
    for _ in range(14):
        tokens = min(20.0, tokens + 0.42 * 20)
        now += 0.42
        for sent in range(8):  # never more than came back: 12 or more are always left
            tokens -= 1
            budget.read(now + 0.0005 * sent, math.floor(tokens), succeeded=1, limit=1200, reset_s=0.05)
    measured = [budget.refill_per_minute(now + 0.004 + lag) for lag in (0.0, 0.2, 0.4)]
    assert all(m == pytest.approx(1200, rel=0.1) for m in measured), measured
