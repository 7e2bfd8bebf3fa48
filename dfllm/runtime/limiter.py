"""Flow control for the executor: paced rate limits, a pause on Retry-After, and an AIMD window.

All three take an injected ``clock`` and ``sleep`` so tests run them without waiting.
Create them inside the running loop; they hold loop-bound primitives.
"""

from __future__ import annotations

import asyncio
import bisect
import collections
import math
import random
from collections.abc import Awaitable, Callable

Clock = Callable[[], float]
Sleep = Callable[[float], Awaitable[None]]


class Pacer:
    """Spaces out units (requests or tokens) so no minute sees more than ``per_minute``.

    There is no burst at start-up, and callers are served in arrival order. A caller's slot is
    fixed only when it reaches the head of the line, from the rate in force then, so a rate
    change applies to the very next send. Given ``rate`` (a function), the head of the line
    re-reads it at least every ``NAP_S`` while it waits: a rate that grows is followed at once.

    Given ``group_s`` (seconds, or a function giving them), the head of the line sleeps until its
    slot, books the slots of everyone behind it that fall within ``group_s``, and lets the group
    go together at the last of them, then hands the line to the next: one wake-up a group
    instead of one, and its loop passes, for each send. No send goes before its own slot and
    the average rate is unchanged; a caller alone goes at its own slot, as without groups.

    Given ``room`` (a function giving ``(count, seconds)``: a sliding window's depth and length),
    a send of a group also waits until ``seconds`` after the send ``count`` before it, when that
    one went late (in a group, after its own slot). Released at its last slot, a group never
    overdraws a bucket refilled at the rate, but a sliding window counts sends, not slots: a
    send that went late and the one ``count`` after it, on time, would be closer than its
    window. Sends that went at their own slots are spaced by the rate alone.
    """

    NAP_S = 0.5
    LATE_KEPT = 4096

    def __init__(self, per_minute: float, clock: Clock, sleep: Sleep,
                 *, rate: Callable[[], float] | None = None,
                 group_s: float | Callable[[], float] = 0.0,
                 room: Callable[[], tuple[float, float] | None] | None = None) -> None:
        if not per_minute > 0:
            raise ValueError(f"per_minute must be positive, got {per_minute!r}")
        self.per_minute = per_minute
        self._clock = clock
        self._sleep = sleep
        self._rate = rate
        self._group_s = group_s if callable(group_s) else (lambda: group_s)
        self._last_start: float | None = None
        self._last_amount = 0.0
        # Waiting callers in arrival order, each with its amount and a future: True when its
        # group lets it go (its slot booked), False when it becomes the head that sleeps.
        self._line: collections.deque[tuple[float, asyncio.Future[bool]]] = collections.deque()
        self._releasing: asyncio.Future[None] | None = None  # the last group's release, held
        self._room = room
        self._sends = 0  # let go so far: each send's number
        # Given a room: the sends that went late (their numbers, and when), the last LATE_KEPT
        # or the room's count if more (the most it has been).
        self._late: dict[int, float] = {}
        self._late_order: collections.deque[int] = collections.deque()
        self._room_count = 0

    def set_rate(self, per_minute: float) -> None:
        if per_minute > 0:
            self.per_minute = per_minute

    async def acquire(self, amount: float = 1.0) -> None:
        if self._rate is not None and not self._line:  # else the head reads it when it leads
            self.set_rate(self._rate())
        if amount > self.per_minute:
            raise ValueError(
                f"one request needs {amount:g} units but the limit is {self.per_minute:g} per minute"
            )
        now = self._clock()
        if not self._line and self._ready_at() <= now and (self._releasing is None or self._releasing.done()):
            self._book(amount, now, waited=False)
            self._sends += 1
            return
        turn: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        entry = (amount, turn)
        arrived = now if not self._line else -math.inf  # to an idle line: its own slot is no earlier
        self._line.append(entry)
        try:
            if len(self._line) > 1 and await turn:
                return  # let go with the head's group
            await self._lead(amount, arrived)
        except BaseException:
            self._leave(entry)
            raise

    def _due(self) -> float:
        if self._last_start is None:
            return -math.inf
        return self._last_start + self._last_amount * 60.0 / self.per_minute

    def _ready_at(self) -> float:
        """When the next send may go alone: its slot, and room for it."""
        room = self._room_now()
        return max(self._due(), self._room_at(self._sends, room))

    def _book(self, amount: float, now: float, *, waited: bool) -> None:
        """Book the next slot for ``amount`` (a follower's own slot, at ``now`` its due time): at
        the rate that let this send go, not from when a sleep ended (oversleeping by a millisecond
        per send would otherwise cost ~5% of the rate at 50 sends/s). Within one slot of now after
        a wait: a rate that rose meanwhile would otherwise date the slot far back and let a burst
        through. Idle: no credit for the unused past, hence no burst."""
        due = self._due()
        self._last_start = max(due, now - amount * 60.0 / self.per_minute) if waited else max(due, now)
        self._last_amount = amount

    async def _lead(self, amount: float, arrived: float) -> None:
        """As the head of the line: sleep until this slot; then book the slots of those behind
        that fall within ``group_s`` and let the group go together at the last of them."""
        if self._releasing is not None and not self._releasing.done():
            await asyncio.shield(self._releasing)  # a group the room holds goes first
        if self._rate is not None:  # it may have changed while this caller stood in line
            self.set_rate(self._rate())
        waited = False
        while (now := self._clock()) < (ready := self._ready_at()):
            await self._sleep(ready - now if self._rate is None else min(ready - now, self.NAP_S))
            if self._rate is not None:
                self.set_rate(self._rate())
            waited = True
        self._line.popleft()
        if held := waited and self._room_at(self._sends, self._room_now()) > self._due():
            # Held by the room, not idle: the slot stays where the rate put it, and is noted
            # late; those behind keep theirs (rebooked from now, each wait would cost the rate).
            # Never before it came to an idle line: no credit for the unused past.
            self._book(amount, max(self._due(), arrived), waited=False)
        else:
            self._book(amount, now, waited=waited)
        group: list[asyncio.Future[bool]] = []
        slots = [self._last_start if self._last_start is not None else now]  # the head's, then each follower's
        try:
            # A group held by the room spans group_s from the head's slot, not from now: no
            # send of it goes later than the room asks or a group after its slot.
            self._gather(group, slots, now, until=(slots[0] if held else now) + self._group_s())
        finally:
            if not group:
                try:
                    self._went(slots, held=held)
                finally:  # whatever the room did, the next caller leads
                    self._hand_on()
        if group:  # shielded: a head cancelled meanwhile must not let its group go early
            self._releasing = asyncio.ensure_future(self._release(group, slots))
            await asyncio.shield(self._releasing)

    def _gather(self, group: list[asyncio.Future[bool]], slots: list[float], now: float, *, until: float) -> None:
        """Book the slots of those behind the head (ready ``now``) due by ``until`` into
        ``group`` and ``slots``, up to the first without room yet: a group never waits for a
        room (its sends would all go as late as the last), so groups come to match the ones a
        window before them."""
        room = self._room_now()
        most = math.inf if room is None else math.floor(room[0])  # nor more than the room holds
        while self._line and len(slots) < most and (slot := self._due()) <= until:
            if self._room_at(self._sends + len(slots), room) > now:
                break
            follower, turn = self._line.popleft()
            self._book(follower, slot, waited=False)
            group.append(turn)
            slots.append(slot)

    def _hand_on(self) -> None:
        if self._line and not self._line[0][1].done():  # (cancelled: its _leave hands on)
            self._line[0][1].set_result(False)  # the next head: it sleeps until its own slot

    async def _release(self, group: list[asyncio.Future[bool]], slots: list[float]) -> None:
        """Let the group go at its last slot, not its first: by any moment no more have gone than
        the slots due by then, so a bucket paced at its refill is never overdrawn. Then the
        next caller leads."""
        try:
            if (late := slots[-1] - self._clock()) > 0:
                await self._sleep(late)
        finally:
            try:
                self._went(slots, held=True)
            finally:  # whatever the room did, the group goes and the next caller leads
                for turn in group:
                    if not turn.done():  # a follower cancelled meanwhile is gone already
                        turn.set_result(True)
                self._hand_on()

    def _room_now(self) -> tuple[float, float] | None:
        return self._room() if self._room is not None else None

    def _room_at(self, number: int, room: tuple[float, float] | None) -> float:
        """When send ``number`` fits the ``room`` (count, seconds): a window after the send
        ``count`` before it, if that one went late; at once otherwise."""
        if room is None or (went := self._late.get(number - math.floor(room[0]))) is None:
            return -math.inf
        return went + room[1]

    def _went(self, slots: list[float], *, held: bool) -> None:
        """Number the sends let go now, one per slot; given a room, note those that went after
        their slot when ``held`` for a group or the room, even while the room is unknown (a
        send alone is otherwise late by an oversleep, or a rate that rose while it slept, as
        without groups). Forget those more than the room's count back: they hold no send."""
        now, first = self._clock(), self._sends
        self._sends += len(slots)
        if self._room is None or not held:
            return
        for number, slot in enumerate(slots, first):
            if now > slot:
                self._late[number] = now
                self._late_order.append(number)
        if (room := self._room()) is not None:
            self._room_count = max(self._room_count, math.floor(room[0]))
        oldest = self._sends - max(self._room_count, self.LATE_KEPT)
        while self._late_order and self._late_order[0] < oldest:
            del self._late[self._late_order.popleft()]

    def _leave(self, entry: tuple[float, asyncio.Future[bool]]) -> None:
        """A caller cancelled while it waited: out of the line (let go already, its slot stays
        booked, unused); if it was the head, or had just been made it, the next caller leads."""
        if entry not in self._line:
            return
        was_head = self._line[0] is entry
        self._line.remove(entry)
        if was_head:
            self._hand_on()


class Pause:
    """A gate every dispatch passes: closed until a time the server named (Retry-After, a reset).

    ``reason`` says who asked for the pause, for the error of a row that cannot wait that long.
    """

    def __init__(self, clock: Clock, sleep: Sleep, rng: random.Random) -> None:
        self._clock = clock
        self._sleep = sleep
        self._rng = rng
        self.until = 0.0
        self.reason = ""

    def pause_for(self, seconds: float, reason: str = "the server") -> None:
        # Jitter spreads the resumed requests so they do not land in one burst.
        until = self._clock() + seconds * (1.0 + 0.2 * self._rng.random())
        if until > self.until:
            self.until, self.reason = until, reason

    async def wait(self, deadline: float = math.inf) -> bool:
        """Wait for the gate to open; False at once if it opens only after ``deadline``."""
        while (remaining := self.until - self._clock()) > 0:
            if self.until > deadline:
                return False
            await self._sleep(remaining)
        return True


class Window:
    """How many requests may be in flight: grows on success, halves on a 429 (AIMD).

    Starts at ``initial`` and doubles per round trip (slow start) up to ``maximum`` until the
    first 429; after that grows by one per window of successes. One cut per round trip:
    429s for requests sent before the last cut do not cut again.
    """

    def __init__(self, initial: int, maximum: int, clock: Clock) -> None:
        self.maximum = maximum
        self.limit = float(min(initial, maximum))
        self.active = 0
        self.cuts = 0
        self._clock = clock
        self._slow_start = True
        self._last_cut = -1.0
        self._waiters: collections.deque[asyncio.Future[None]] = collections.deque()

    async def acquire(self) -> None:
        """Wait for a free slot."""
        while self.active >= self.limit:
            waiter = asyncio.get_running_loop().create_future()
            self._waiters.append(waiter)
            try:
                await waiter
            except asyncio.CancelledError:
                self._wake()  # hand a wake-up we may have received to the next in line
                raise
        self.active += 1

    def release(self) -> None:
        self.active -= 1
        self._wake()

    def _wake(self) -> None:
        free = int(self.limit) - self.active
        while free > 0 and self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                free -= 1

    @property
    def slow_start(self) -> bool:
        """Still doubling per round trip: no 429 seen and the limit below ``maximum``."""
        return self._slow_start and self.limit < self.maximum

    def widen(self, limit: int) -> None:
        """Raise the limit to at least ``limit`` (never past ``maximum``)."""
        self.limit = max(self.limit, float(min(limit, self.maximum)))
        self._wake()

    def on_success(self) -> None:
        if self.limit < self.maximum:
            step = 1.0 if self._slow_start else 1.0 / self.limit
            self.limit = min(float(self.maximum), self.limit + step)
            self._wake()

    def on_rate_limited(self, sent_at: float) -> None:
        if sent_at < self._last_cut:
            return
        self._slow_start = False
        self.limit = max(1.0, self.limit / 2)
        self._last_cut = self._clock()
        self.cuts += 1


class SlowStartPacer:
    """Spreads each slow-start round of sends over one round trip instead of firing it at once.

    Before any rate is known the window doubles per round trip. Fired as one burst, the round
    that crosses an unknown cap lands whole in it: a window of 429s before the first one is
    read. Spread over the round trip, the first 429s come back (a 429 is answered at once)
    while most of the round is unsent, and a storm is called after a few. The pace is the
    window per round trip, so it costs no throughput: the window, not the pace, is the limit.
    """

    SMOOTHING = 0.125  # weight of each new round-trip sample (as TCP's SRTT)
    MIN_RTT_S = 1e-3  # a round trip shorter than this sends no burst worth spreading

    def __init__(self, window: Window, clock: Clock, sleep: Sleep) -> None:
        self._window = window
        self.rtt_s: float | None = None
        self._pacer = Pacer(60.0, clock, sleep, rate=self.per_minute)

    def per_minute(self) -> float:
        return max(60.0, 60.0 * self._window.limit / max(self.rtt_s or 0.0, self.MIN_RTT_S))

    def on_round_trip(self, seconds: float) -> None:
        if seconds >= 0:
            rtt = self.rtt_s
            self.rtt_s = seconds if rtt is None else rtt + self.SMOOTHING * (seconds - rtt)

    async def acquire(self) -> None:
        if self.rtt_s is not None and self.rtt_s >= self.MIN_RTT_S and self._window.slow_start:
            await self._pacer.acquire()


class AdaptiveRate:
    """The request rate, steered by what the server shows rather than by what its headers claim.

    Until told of a limit it does not limit. A 429 storm starts it pacing at the rate that
    succeeded over the last second (what the server was accepting when it said no), probing
    upwards fast until the next 429: a run starting cold has had less than a second; ``seed``
    starts it at a rate a header named, which is only a hint (headers come per minute, per day,
    from another provider behind a gateway). Then:

    - ``x-ratelimit-remaining`` readings steer it when the server sends them, through the
      ``Budget`` they show: the rate never passes what is left over the time to the reset, plus
      what refills (whatever the limiter's shape: a fixed or sliding window, a token bucket),
      and never falls under the budget's depth over its window while some of it is left. While
      the budget stays near the most seen, the rate doubles every second (the header understated
      the cap); when it falls under a quarter, the rate is cut to ``CUT`` of what the budget
      allows, before any 429.
    - 429s cut it to ``CUT`` of the rate, or of what succeeded over the last second if that is
      less: pacing at exactly what succeeded keeps the server's budget empty, where any jitter
      in arrivals is a 429. After a cut, further 429s within ``COOLDOWN_S`` do not cut again:
      the server's budget is still in debt from before the cut, and cutting on every such 429
      collapses the rate to half the cap in a second. A 429 with no success in the last
      second teaches no rate.
    - A lone 429 (not a storm) while the pace is still under what the server took when the
      last cut was made (successes over ``TOOK_S``, which damps a burst), with at
      least ``HOLD`` of the pace succeeding, cuts nothing: under the cap that cut found, a
      cap's 429s stop, so these are a provider's random 429s, and cutting on each of them once
      a second would ratchet the rate down to nothing. Once such 429s are seen, the next cut
      waits for the pace to pass that by ``MARGIN`` too, as what succeeded then left out the
      random 429s. A cap that fell shows as successes falling under ``HOLD`` of the pace, or
      as a storm, and is cut for. The price: a cap a few percent under the pace looks like
      random 429s until the pace passes what it took, so without headers a cap costs a few
      percent of 429s where cutting at every one cost under one.
    - Otherwise it grows ``GROWTH_PER_S`` of the rate each second: a slow probe that finds a
      raised limit again.
    """

    CUT = 0.9
    GROWTH_PER_S = 0.03
    # The learned pace lets sends out in groups up to this long (20 requests at 3,000 a
    # minute), each group at its last slot: a wake-up a group, not a send, which is most of a
    # paced row's CPU. By any moment no more have gone than exact spacing would have sent, so a
    # bucket is never overdrawn; the budget's room keeps a sliding window from counting more
    # than it holds (see Pacer). A group is at most GROUP_SHARE of the budget's depth. Longer
    # groups cost a sliding window's cap, as its readings come in clusters after a group, and
    # shorter ones CPU: against a 20 s window (OpenAI's headers, LiteLLM's), 0.3 s groups met
    # 0.95-0.96x/0.97x its cap at 1.46-1.59x the unpaced CPU per row, 0.4 s 0.95x/0.96-0.97x
    # at 1.29-1.42x, 0.5 s 0.94x/0.95-0.96x (1% 429s) at 1.35-1.39x. A caller's rpm= and slow
    # start keep exact spacing.
    GROUP_S = 0.4
    GROUP_SHARE = 0.5
    ROOM_MARGIN_S = 0.03  # the trip to the server varies: see room()
    COOLDOWN_S = 1.0
    HIGH, LOW = 0.9, 0.25  # shares of the most remaining seen
    HOLD = 0.75  # a share of the pace that succeeding shows the server still takes it
    MARGIN = 0.1  # random 429s up to about this share never ratchet the rate down
    _SAMPLE_S = 1.0
    TOOK_S = 3.0
    _MIN_SPAN_S = 0.25

    def __init__(self, clock: Clock, sleep: Sleep) -> None:
        self._clock = clock
        self._sleep = sleep
        self._recent: collections.deque[float] = collections.deque()  # success times, last second
        self._recent_took: collections.deque[float] = collections.deque()  # the same, last TOOK_S
        self.budget = Budget()
        self.refused_window = RefusedWindow()
        self._answered = 0  # successes in all; at the last reading, _answered_read
        self._answered_read = 0
        self._base_per_minute = 0.0
        self._since = 0.0
        self._last_cut = -math.inf
        self._took = 0.0  # per minute: what the server took when the last cut was made
        self._noisy = False  # lone 429s came under that since: the provider refuses some at random
        self._fast = False
        self._first_success: float | None = None
        self.pacer: Pacer | None = None

    def on_success(self, sent_at: float | None = None) -> None:
        """An answer to a request sent at ``sent_at`` (now when not given)."""
        now = self._clock()
        self.budget.answered(now if sent_at is None else sent_at, now)
        self.refused_window.succeeded(now)
        self._answered += 1
        self._recent.append(now)
        self._recent_took.append(now)
        if self._first_success is None:
            self._first_success = now
        if self._recent[0] < now - self._SAMPLE_S:
            self._trim(now)

    def _trim(self, now: float) -> None:
        while self._recent and self._recent[0] < now - self._SAMPLE_S:
            self._recent.popleft()
        while self._recent_took and self._recent_took[0] < now - self.TOOK_S:
            self._recent_took.popleft()

    def per_minute(self) -> float:
        now = self._clock()
        elapsed = now - self._since
        if self._fast:
            probed = float(self._base_per_minute * 2.0 ** min(elapsed, 60.0))
        else:
            probed = self._base_per_minute * (1.0 + self.GROWTH_PER_S * elapsed)
        # The budget's depth over its window is trusted while some of it is left, however low
        # the probe is; at least one a minute: a pace the budget stopped still re-reads it.
        if self.refused_window.learn(now):  # a fixed window's grants: pace at them from its end
            self._set(self.refused_window.ceiling(now), fast=False)
            self._took, self._noisy = self._base_per_minute, False
            return self.per_minute()
        if (learned := self.refused_window.lapsed(now)) is not None:  # probe slowly from it
            self._set(learned, fast=False)
            return self.per_minute()
        allowed = min(probed, self.budget.per_minute(now), self.refused_window.ceiling(now))
        return max(allowed, self.budget.floor_per_minute(), 1.0)

    def group_s(self) -> float:
        """How long a group of sends may span: ``GROUP_S``, and no more sends after its first
        than a ``GROUP_SHARE`` of the budget's depth (a small budget has no room for more); none
        while the depth is unknown, or nothing comes back (a fixed window before its end, a
        sliding one's first window: the pace is a guess until then)."""
        budget, pacer = self.budget, self.pacer
        if budget.most == 0 or pacer is None or not budget.refilling(self._clock()):
            return 0.0
        return min(self.GROUP_S, self.GROUP_SHARE * budget.most * 60.0 / pacer.per_minute)

    def room(self) -> tuple[float, float] | None:
        """The pace's room (see ``Pacer``) while the budget may be a sliding window (read, and
        not shown to come back faster than its sends age out): what it holds (the most left
        seen, plus the send that reading answered, counted already) and how long it takes to
        come back whole, with a margin for the trip to the server, which varies (a new
        connection's first send arrives later than the sends that follow it)."""
        budget = self.budget
        if budget.most == 0 or budget.fixed():
            return None
        return budget.most + 1.0, budget.window_s() + self.ROOM_MARGIN_S

    def _set(self, per_minute: float, *, fast: bool) -> None:
        self._base_per_minute = max(per_minute, 1.0)
        self._since = self._clock()
        self._fast = fast
        if self.pacer is None:
            self.pacer = Pacer(self._base_per_minute, self._clock, self._sleep, rate=self.per_minute,
                               group_s=self.group_s, room=self.room)

    def seed(self, per_minute: float) -> None:
        """Start pacing at a rate a header named, probing upwards, if nothing better is known yet."""
        if self.pacer is None and math.isfinite(per_minute) and per_minute > 0:
            self._set(per_minute, fast=True)

    def on_remaining(self, remaining: int, *, limit: float | None = None, reset_s: float | None = None,
                     in_flight: int = 0) -> None:
        """A reading of the budget left (``x-ratelimit-remaining-requests``), with the limit and the
        reset when sent, and the requests in flight when it came (the server may not count them yet)."""
        if self.pacer is None or remaining < 0:
            return
        now = self._clock()
        self.budget.read(now, remaining, succeeded=self._answered - self._answered_read, limit=limit,
                         reset_s=reset_s, in_flight=in_flight)
        self._answered_read = self._answered
        most = self.budget.most
        if remaining >= self.HIGH * most:
            if not self._fast:
                self._set(self.per_minute(), fast=True)
        elif remaining < self.LOW * most:
            if now >= self._last_cut + self.COOLDOWN_S:
                self._last_cut = now
                # A margin under what the budget allows over the time to its reset, never under the
                # limit header's own rate while that is trusted (see Budget).
                # What succeeded keeps a pace the budget cannot measure yet (readings a second
                # apart, requests in flight); per_minute still holds it to what the budget allows.
                spend = max(self.budget.spend_per_minute(now), self._succeeded_per_minute(now))
                rate = max(self.CUT * min(self.per_minute(), spend), self.budget.floor_per_minute())
                self._took, self._noisy = min(rate, self._took_per_minute(now)), False
                self._set(rate, fast=False)
        elif self._fast:
            self._set(self.per_minute(), fast=False)

    def _successes_per_minute(self, times: collections.deque[float], window_s: float, now: float) -> float:
        """The rate of the successes in ``times`` (the last ``window_s``), counted over the time
        since the first success when that is shorter: a run's first second is not a whole one."""
        if self._first_success is None:
            return 0.0
        return len(times) / min(window_s, max(now - self._first_success, self._MIN_SPAN_S)) * 60.0

    def _succeeded_per_minute(self, now: float) -> float:
        return self._successes_per_minute(self._recent, self._SAMPLE_S, now)

    def _took_per_minute(self, now: float) -> float:
        """Over ``TOOK_S``: over one second, a server's saved-up burst swells what it seems to take."""
        return self._successes_per_minute(self._recent_took, self.TOOK_S, now)

    def on_rate_limited(self, sent_at: float, *, lone: bool = False) -> bool:
        """A 429 for a request sent at ``sent_at``; ``lone``: not part of a storm. True when it
        was taken as the cap (the rate was set or cut), False for noise or a cut not shown yet."""
        now = self._clock()
        self._trim(now)
        # A storm takes what succeeded over the last second, a floor early in a run; a lone 429
        # (perhaps a provider's hiccup) must not cut a header's pace to that fraction of a second.
        succeeded = self._succeeded_per_minute(now) if lone else len(self._recent) / self._SAMPLE_S * 60.0
        if not lone:
            self.refused_window.on_storm()
        if self.pacer is None:
            if not self._recent:
                return False
            # A storm before any rate was known: what succeeded in the last second is a floor
            # (the run may have been starting for less than a second), so probe upwards fast.
            self._set(succeeded, fast=True)
        elif sent_at >= self._last_cut + self.COOLDOWN_S:
            pace = self.per_minute()
            if lone and not self._fast and succeeded >= self.HOLD * pace:
                if pace < self._took:
                    self._noisy = True  # a cap's 429s stop under what it took
                    return False
                if self._noisy and pace < self._took * (1.0 + self.MARGIN):
                    return False  # what succeeds leaves out the noise: over it by more before a cut
            rate = min(pace, succeeded) if self._recent else pace
            # A spent budget holds the pace near nothing until its reset: that is no news of the
            # cap, and a cut from it would pace at one a minute long after the reset (on Dask,
            # where workers share the budget, a worker idled for a minute). Its depth is a floor.
            rate = max(rate, self.budget.depth_per_minute())
            self._took, self._noisy = min(rate, self._took_per_minute(now)), False
            if self._fast:
                # A fast probe found the cap: what succeeded includes the budget it saved up
                # while under the cap, and the rate doubled in the last second. Half of it held.
                rate = min(rate, max(self._base_per_minute, self.per_minute() / 2))
            self._set(self.CUT * rate, fast=False)
        else:
            return False  # the last cut has not had time to show
        self._last_cut = now
        return True

    def on_refused(self, wait: float | None) -> float | None:
        """Any 429, with the wait it named: the seconds every send should wait when it and the
        one before name a window's end (see ``RefusedWindow.refused``)."""
        return None if wait is None else self.refused_window.refused(self._clock(), wait)

    async def acquire(self) -> None:
        if self.pacer is not None:
            await self.pacer.acquire()
            self.budget.sent()


class RefusedWindow:
    """A fixed window seen through its 429s alone, without ``x-ratelimit-*`` headers.

    A fixed window's 429s all name its boundary as the time to retry, however far apart they
    come: two 429s answered a while apart naming one moment (or a storm's naming one) found the
    end of a window, and nothing fits before it. Two such ends give the window's length, and the
    successes between them what it grants (it was spent). The pace is then ``SHARE`` of that:
    pacing up to the cap from a cut, then past it by a probe, cost 429s at every window's end
    (2.5% of the sends at 300 per 5 s). A provider's random 429s each name their own moment (a
    second on), as far apart as they came, so never one; a fast bucket's name its next token,
    under ``MIN_WAIT_S`` away. What was learned lapses after ``KEEP_WINDOWS`` windows, and the
    probe for a raised cap starts from it.
    """

    AGREE_S = 0.1  # 429s naming moments this close name the same one
    MIN_AGREE = 2
    APART_S = 0.005  # two 429s answered this far apart, naming one moment, name a boundary
    MIN_WAIT_S = 0.05
    MIN_WINDOW_S = 1.0
    RECENT_S = 2.0  # the 429s a storm is read from
    SHARE = 0.99
    KEEP_WINDOWS = 6
    KEEP_S = 120.0  # successes kept to count a window's grants (windows up to this long)

    def __init__(self) -> None:
        self._named: collections.deque[tuple[float, float]] = collections.deque()  # (answered, moment named)
        self._answers: collections.deque[float] = collections.deque()
        self._boundary: float | None = None
        self._pending: tuple[float, float] | None = None  # a window found, until it ends
        self._learned_at = -math.inf
        self.window_s: float | None = None
        self.per_minute_learned: float | None = None

    def succeeded(self, now: float) -> None:
        self._answers.append(now)
        if self._answers[0] < now - self.KEEP_S:
            while self._answers and self._answers[0] < now - self.KEEP_S:
                self._answers.popleft()

    def refused(self, now: float, wait: float) -> float | None:
        """A 429 naming ``wait``; the seconds to the moment it names when the 429 before it,
        answered a while earlier, named the same one: a window's end, for every send to wait for
        (a provider's random 429s each name their own moment, as far on as they came apart)."""
        if wait < self.MIN_WAIT_S:
            return None
        moment = now + wait
        # The latest 429 answered at least APART_S before this one (closer ones blur together).
        earlier = next((named for named in reversed(self._named) if named[0] <= now - self.APART_S), None)
        self._named.append((now, moment))
        while self._named[0][0] < now - self.RECENT_S:
            self._named.popleft()
        if earlier is not None and abs(moment - earlier[1]) <= 0.5 * (now - earlier[0]):
            self.on_storm()
            return wait
        return None

    def _moment(self) -> float | None:
        """The moment at least ``MIN_AGREE`` recent 429s name (their median), if any."""
        moments = sorted(moment for _, moment in self._named)
        first, found = 0, None
        for last, moment in enumerate(moments):
            while moment - moments[first] > self.AGREE_S:
                first += 1
            if last - first + 1 >= self.MIN_AGREE:
                found = moments[(first + last) // 2]
        return found

    def on_storm(self) -> None:
        """A storm, or two 429s naming one moment: when they name a moment, a window ends then."""
        boundary = self._moment()
        if boundary is None or (self._boundary is not None and abs(boundary - self._boundary) < 2 * self.AGREE_S):
            return
        previous, self._boundary = self._boundary, boundary
        if previous is not None and boundary - previous >= self.MIN_WINDOW_S:
            self._pending = (previous, boundary)

    def learn(self, now: float) -> bool:
        """True when a window found by two storms has ended and what it granted is now known:
        the successes answered in it (none are sent between a storm and the window's end)."""
        if self._pending is None or now < self._pending[1]:
            return False
        start, end = self._pending
        self._pending = None
        granted = bisect.bisect_left(self._answers, end) - bisect.bisect_left(self._answers, start)
        if self.window_s is None or end - start < 1.5 * self.window_s:  # else ends a few windows apart
            self.window_s = end - start
        self.per_minute_learned = self.SHARE * granted / (end - start) * 60.0
        self._learned_at = now
        return granted > 0

    def lapsed(self, now: float) -> float | None:
        """The pace learned, once, when it lapses: the probe for a raised cap starts from it."""
        if self.per_minute_learned is None or self.window_s is None:
            return None
        if now <= self._learned_at + self.KEEP_WINDOWS * self.window_s:
            return None
        learned, self.per_minute_learned = self.per_minute_learned, None
        return learned

    def ceiling(self, now: float) -> float:
        """The learned pace, while it holds; else no limit."""
        if self.per_minute_learned is None or now > self._learned_at + self.KEEP_WINDOWS * (self.window_s or 0.0):
            return math.inf
        return self.per_minute_learned


class StormDetector:
    """Tells a storm of 429s (a real cap: every worker must wait) from a lone one (its row waits).

    A storm is at least ``MIN_429`` 429s answered in the last ``WINDOW_S``, which are at least
    ``SHARE`` of the requests sent since the first of them was sent. Counted against sends, not
    answers: a 429 comes back at once and a success a round trip later, so early in a run a
    few random 429s outnumber the answers so far; and not against sends before the first 429,
    or the sends that filled the server's budget outvote a cap's 429s for a whole window.

    ``steady``: at least ``STEADY_MIN_429`` in ``STEADY_WINDOW_S`` at ``STEADY_SHARE``, for a cap
    a little under a pace the caller gave, whose 429s are a steady share of the sends, larger
    than a provider's random ones.
    """

    MIN_429 = 8
    SHARE = 0.5  # of sends: a cap refuses nearly all of them, random 429s at 5% almost never 8 in 16
    WINDOW_S = 1.0
    STEADY_MIN_429 = 12
    STEADY_SHARE = 0.2
    STEADY_WINDOW_S = 10.0

    def __init__(self, clock: Clock) -> None:
        self._clock = clock
        self._limited: collections.deque[tuple[float, int]] = collections.deque()  # (answered, ticket)
        self._steady: collections.deque[tuple[float, int]] = collections.deque()
        self._sent = 0

    def sent(self) -> int:
        """Count a send; its ticket goes to ``record`` with the answer."""
        self._sent += 1
        return self._sent

    def record(self, rate_limited: bool, ticket: int) -> None:
        now = self._clock()
        limited = self._limited
        if rate_limited:
            limited.append((now, ticket))
            self._steady.append((now, ticket))
        while limited and limited[0][0] < now - self.WINDOW_S:
            limited.popleft()
        while self._steady and self._steady[0][0] < now - self.STEADY_WINDOW_S:
            self._steady.popleft()

    @property
    def storm(self) -> bool:
        return self._share_reached(self._limited, self.MIN_429, self.SHARE)

    @property
    def steady(self) -> bool:
        return self._share_reached(self._steady, self.STEADY_MIN_429, self.STEADY_SHARE)

    def _share_reached(self, limited: collections.deque[tuple[float, int]], least: int, share: float) -> bool:
        return len(limited) >= least and len(limited) >= share * (self._sent - limited[0][1] + 1)


class Budget:
    """The budget the server's ``x-ratelimit-*`` headers show, and the rate that spends it.

    Whatever the limiter's shape, ``remaining`` is what may be sent before more comes back, and
    more comes back by the reset: all of it at once (a fixed window), as earlier sends age out
    (a sliding window), or continuously (a token bucket). So the rate the budget allows is what
    is left over the time to the reset, plus what the server has been refilling meanwhile
    (measured between readings, leaving out a window's reset); never a refill per second alone,
    which on a window is nothing until the window moves.

    The time to the reset is the ``reset`` header when sent. Without one (LiteLLM's proxy sends
    limit and remaining only), a fixed window shows its reset as ``remaining`` jumping back
    up: the next is expected a window later (see ``window_s``); before any jump, a whole window
    is assumed, which never spends faster than the budget allows.

    A full budget comes back within a window: so the budget's depth over the window is a floor
    for the rate while a little of it is left. A sliding window refills only once its first
    window has passed, and spending what is left over the time to its full reset would use under
    two thirds of the first window; its depth over the window is the rate it sustains.

    Unless the budget shows itself a fixed window, what it counted comes back one window after
    each send (a sliding window's sends age out; a bucket refills at least as fast): so the rate
    also counts what comes back over the next ``REFILL_S``, known before any reading shows it.
    That is what lets a sliding window be spent on from its first window's end, where the refill
    measured between readings is still nothing and a wait for the reset costs a whole window.
    A fixed window shows itself as a jump back up (without a reset header), as a reset header
    naming the same moment over readings a while apart (a window's boundary; a sliding window's
    or a bucket's reset moves on with each send), or as more left than a window's sends allow
    (a partial first window's boundary gives back too little to be seen as a jump); a bucket
    shows itself that way too, and is paced by what refilled between readings.
    """

    FULL = 0.9  # at least this share of the most remaining seen left: the budget binds nothing yet
    JUMP = 0.5  # a rise of this share of the most remaining seen, at once: a fixed window's reset
    NEAR_EMPTY = 0.05  # at or below this share of the most seen, the depth over the window is no floor
    REFILL_S = 2.0  # the span the refill is measured over, and the coming back foreseen
    JUDGE_S = 0.5  # reset headers this far apart tell a fixed window's boundary from a moving reset
    SLACK = 0.1  # of the most seen: more left than a window's sends allow by this is no sliding window
    MIN_HORIZON_S = 0.5
    MIN_WINDOW_S = 1.0
    WINDOW_S = 60.0  # the unit of x-ratelimit-limit-requests

    def __init__(self) -> None:
        self.most = 0
        self.limit: float | None = None
        self._remaining = 0
        self._read_at: float | None = None
        self._unaccounted = 0  # in flight when read, and sent since: not yet counted by the server
        self._reset_at: float | None = None  # from a reset header
        self._longest_reset_s = 0.0  # the longest reset header read: a whole window, once seen
        self._boundary: float | None = None  # a fixed window's last reset, seen as a jump
        self._jumps_apart_s: float | None = None  # a fixed window's length, seen as two jumps
        # (since, refilled): what came back between a reading and the one before it, dated from
        # that one, so the span it is measured over holds it whole (readings in clusters, as
        # after a group of sends, bring most of it in one reading a whole gap long).
        self._refills: collections.deque[tuple[float, int]] = collections.deque()
        self._refilled = 0  # their sum, kept as they come and go: the pace reads it every send
        # (sent, answered) of each success, in answer order, kept about a window: when it comes back.
        self._answers: collections.deque[tuple[float, float]] = collections.deque()
        self._fixed = False  # shown to come back whole at a boundary, not as each send ages out
        self._reset_anchor: tuple[float, float] | None = None  # (read at, reset at): see _judge_reset
        self._judged_at = -math.inf  # when the last reading was held against the window's sends

    def read(self, now: float, remaining: int, *, succeeded: int, limit: float | None = None,
             reset_s: float | None = None, in_flight: int = 0) -> None:
        """A reading; ``succeeded``: answers since the last one (what the server counted meanwhile)."""
        if not self._fixed and now - self._judged_at >= self.JUDGE_S and self.most > 0:
            self._judged_at = now
            self._fixed = remaining > self.most - self._counted(now) + self.SLACK * self.most + 1
        if self._read_at is not None:
            refilled = remaining - self._remaining + succeeded
            if refilled > self.JUMP * self.most:
                # Only a budget without a reset header needs its resets found (with one, a
                # sliding window's refill after a pause would be taken for a reset).
                if reset_s is None:
                    self._jumped(now)
            else:
                self._refills.append((self._read_at, refilled))
                self._refilled += refilled
        while self._refills and self._refills[0][0] < now - self.REFILL_S:
            self._refilled -= self._refills.popleft()[1]
        self.most = max(self.most, remaining)
        self.limit = limit
        self._remaining, self._read_at, self._unaccounted = remaining, now, max(0, in_flight)
        self._reset_at = None if reset_s is None else now + reset_s
        if reset_s is not None:
            self._longest_reset_s = max(self._longest_reset_s, reset_s)
            self._judge_reset(now, now + reset_s)

    def _judge_reset(self, now: float, reset_at: float) -> None:
        """A fixed window's reset header names its boundary at every reading; a sliding window's
        or a bucket's moves on as sends are counted. Judged over readings ``JUDGE_S`` apart (a
        header's rounding and the answer's trip blur closer ones), within one window."""
        anchor = self._reset_anchor
        if anchor is None or anchor[1] <= now:  # none yet, or its boundary passed: start again
            self._reset_anchor = (now, reset_at)
        elif now - anchor[0] >= self.JUDGE_S:
            self._fixed = reset_at - anchor[1] < 0.5 * (now - anchor[0])
            self._reset_anchor = (now, reset_at)

    def _counted(self, now: float) -> int:
        """Successes a sliding window (or any window of ``window_s``) still counts: sent in it."""
        since = now - self.window_s()
        counted = 0
        for sent, answered in reversed(self._answers):
            if answered <= since:
                break
            counted += sent > since
        return counted

    def answered(self, sent_at: float, now: float) -> None:
        """A success: the server counted it, and (unless a fixed window) gives it back a window
        after it was granted, which was between ``sent_at`` and ``now``."""
        self._answers.append((sent_at, now))
        horizon = now - self.window_s()  # answered before: sent before, so aged out already
        while self._answers[0][1] < horizon:
            self._answers.popleft()

    def fixed(self) -> bool:
        """Shown to come back whole at a window's boundary, not as each send ages out."""
        return self._fixed or self._boundary is not None

    def next_back_s(self, now: float) -> float | None:
        """Seconds until the oldest send still counted comes back, on a budget that gives each
        back a window after it (None for a fixed window, or with no send counted)."""
        if self.fixed():
            return None
        since = now - self.window_s()
        oldest = next((answered for sent, answered in self._answers if sent > since), None)
        return None if oldest is None else max(0.0, oldest - since)

    def coming_back_per_minute(self, now: float) -> float:
        """What comes back over the next ``REFILL_S`` as counted sends age out, per minute: those
        sent after a window ago (still counted now) and answered by a window before ``now +
        REFILL_S`` (granted by then). Nothing for a fixed window: it comes back at its boundary."""
        if self.fixed():
            return 0.0
        aged_from = now - self.window_s()
        aged_by = aged_from + self.REFILL_S
        back = 0
        for sent, answered in self._answers:
            if answered > aged_by:
                break
            back += sent > aged_from
        return back / self.REFILL_S * 60.0

    def _jumped(self, now: float) -> None:
        if self._boundary is not None and self.MIN_WINDOW_S <= now - self._boundary < self.window_s() * 0.9:
            self._jumps_apart_s = now - self._boundary
        self._boundary = now

    def window_s(self) -> float:
        """Seconds a spent budget takes to come back whole: two resets apart (a fixed window
        without a reset header); else the longest reset header read (a window's length, a
        bucket's depth over its rate); else, when the budget holds less than the limit header
        (a per-minute limit, as LiteLLM's), the minute's share it holds; else a minute."""
        if self._jumps_apart_s is not None:
            return self._jumps_apart_s
        if self._longest_reset_s > 0:
            return max(self._longest_reset_s, self.MIN_HORIZON_S)
        if self.limit is not None and 0 < self.most < 0.5 * self.limit:
            # The first reading answers a request sent alone: it was counted, so the depth is one more.
            return max(self.WINDOW_S * (self.most + 1) / self.limit, self.MIN_WINDOW_S)
        return self.WINDOW_S

    def sent(self) -> None:
        self._unaccounted += 1

    def spendable(self) -> int:
        return self._remaining - self._unaccounted

    def refill_per_minute(self, now: float) -> float:
        """What refilled between the last readings, or what comes back next if more."""
        if self._read_at is None:
            return 0.0
        coming = self.coming_back_per_minute(now)
        if not self._refills:
            return coming
        # Over the time the readings span, not up to now: between clusters of readings the
        # refill is not seen, not stopped.
        span = max(min(self.REFILL_S, self._read_at - self._refills[0][0]), self.MIN_HORIZON_S)
        return max(0.0, self._refilled / span * 60.0, coming)

    def refilling(self, now: float) -> bool:
        return self.refill_per_minute(now) > 0

    def _horizon_s(self, now: float) -> float | None:
        """Seconds to the next reset; None when it has passed (the budget is full again)."""
        assert self._read_at is not None
        window = self.window_s()
        if self._reset_at is not None:
            reset_at = self._reset_at
        elif self._boundary is not None:  # a fixed window's: the next boundary after the reading
            reset_at = self._read_at + window - (self._read_at - self._boundary) % window
        else:
            reset_at = self._read_at + window
        return reset_at - now if reset_at > now else None

    def per_minute(self, now: float) -> float:
        """The rate the budget allows now: inf while it is near full, or its reset has passed."""
        spend = self.spend_per_minute(now)
        return max(spend, self.floor_per_minute())

    def spend_per_minute(self, now: float) -> float:
        """What is left over the time to the reset, plus the refill; inf while the budget binds nothing."""
        if self._read_at is None:
            return math.inf
        horizon = self._horizon_s(now)
        left = self.spendable()
        if horizon is None or left >= self.FULL * self.most:
            return math.inf
        # On a budget that gives each send back a window later, what is left need last only until
        # the oldest is back: over the time to the full reset, a sliding window's first sends
        # slowed its pace near the end of its first window (2,400 rows at 1,200 a minute: 0.93x).
        if (back := self.next_back_s(now)) is not None:
            horizon = min(horizon, back)
        return max(0, left) / max(horizon, self.MIN_HORIZON_S) * 60.0 + self.refill_per_minute(now)

    def depth_per_minute(self) -> float:
        """The most the budget was seen to hold, over its window, per minute (0 before a reading)."""
        return 0.0 if self._read_at is None else self.most * 60.0 / self.window_s()

    def floor_per_minute(self) -> float:
        """The budget's depth over its window, per minute, while it is not nearly spent; else 0."""
        if self._read_at is None or self.spendable() <= self.NEAR_EMPTY * self.most:
            return 0.0
        return self.most * 60.0 / self.window_s()
