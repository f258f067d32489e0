"""An entity's rebind rate, learned from its own past, and how surprising a window's count is against it.

A lender's (or device's) rate is a decayed count of its rebinds, shrunk
towards a prior rate while the entity is young, and learned only from
buckets older than the window being judged, so an attack cannot teach the
baseline while it is judged (``DelayedRate``).
"""

from __future__ import annotations

import math
from typing import NamedTuple

from smsstream.detection.stats import DecayedCount
from smsstream.vocabulary import DAY_MS

#: Rebinds happen in business hours: a day's rate is spent in about half the day, so a window
#: expects twice its share of the daily rate (a large lender's or a branch device's busy
#: afternoon is not an attack).
BUSINESS_HOURS_FACTOR = 2.0
#: A lender (or staff device) whose rebinds were first seen less than this ago is young: its
#: rate is learned from everything it does, and a young lender fires only on overwhelming evidence.
SENDER_COLD_MS = DAY_MS
#: A lender's (and a staff device's) prior rate weighs a quarter of a day, so a large one's own
#: rate takes over within its first day.
SENDER_PRIOR_DAYS = 0.25
#: Tail score (-log10 p) that fires, and that keeps a firing alert alive.
FIRE_SCORE = 5.5
HOLD_SCORE = 2.5
RATE_HALF_LIFE_MS = 7 * DAY_MS
PRIOR_DAYS = 1.0


def rate_per_day(count: DecayedCount, first_ts: int, now: int, prior_per_day: float,
                 counted_until: int | None = None, prior_days: float = PRIOR_DAYS) -> float:
    """An entity's event rate from a decayed count, shrunk towards ``prior_per_day`` while it is young.

    The decayed count of a steady rate r settles at ``r * half_life / ln 2``;
    before that, at the rate times the time observed (also decayed), which
    ends at ``counted_until`` when the count lags behind ``now``.
    """
    observed = (now if counted_until is None else counted_until) - first_ts
    observed_ms = RATE_HALF_LIFE_MS / math.log(2) * (1.0 - 0.5 ** (max(observed, 0) / RATE_HALF_LIFE_MS))
    return (count.get(now, RATE_HALF_LIFE_MS) + prior_per_day * prior_days) / (observed_ms / DAY_MS + prior_days)


class ClosedBucket(NamedTuple):
    """A closed bucket's rebinds, waiting until it is older than the judging window."""

    start: int
    rebinds: float
    #: judged abnormal: learned only if the level lasts
    abnormal: bool


class DelayedRate:
    """An entity's rebind rate, learned only from buckets older than its judging window.

    So an attack cannot teach the baseline while it is still being judged;
    buckets judged abnormal are held back and learned only if the level
    lasts ``accept_ms`` (a new normal), otherwise dropped.
    """

    __slots__ = ("count", "first_ts", "queue", "held", "held_since", "counted_until")

    def __init__(self) -> None:
        self.count = DecayedCount()
        self.first_ts = 0
        self.queue: list[ClosedBucket] = []
        self.held = 0.0
        self.held_since = 0
        #: the count covers time up to here (buckets older than the judging window)
        self.counted_until = 0

    def observe(self, start: int, count: float, abnormal: bool) -> None:
        if not self.first_ts:
            self.first_ts = start
        self.queue.append(ClosedBucket(start, count, abnormal))

    def settle(self, now: int, delay_ms: int, accept_ms: int) -> None:
        self.counted_until = now - delay_ms
        queue = self.queue
        i = 0
        while i < len(queue) and queue[i].start < now - delay_ms:
            start, count, abnormal = queue[i]
            if abnormal:
                if not self.held_since:
                    self.held_since = start
                self.held += count
                if start - self.held_since >= accept_ms:
                    self.count.update(start, self.held, RATE_HALF_LIFE_MS)
                    self.held, self.held_since = 0.0, 0
            else:
                self.count.update(start, count, RATE_HALF_LIFE_MS)
                self.held, self.held_since = 0.0, 0
            i += 1
        if i:
            del queue[:i]

    def young(self, now: int) -> bool:
        """Seen for less than ``SENDER_COLD_MS``: the rate is still mostly its prior."""
        return not self.first_ts or now - self.first_ts < SENDER_COLD_MS

    def per_day(self, now: int, prior_per_day: float, prior_days: float = PRIOR_DAYS) -> float:
        return rate_per_day(self.count, self.first_ts or now, now, prior_per_day, self.counted_until or None,
                            prior_days)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, DelayedRate) and all(getattr(self, s) == getattr(other, s) for s in self.__slots__)
