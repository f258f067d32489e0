"""Online statistics on event time, small enough to keep one per sender, template or carrier.

Each class is one concept with ``update(...)`` and ``get(...)``-style
methods, slotted, plain and picklable (it is pickled with its part's state in
the worker's snapshots). Time is always passed in (event time, ms), never read
from a clock.

Why not river's ``stats``: river's ``EWMean``/``EWVar`` decay per update,
not per unit of event time, so a sender idle for a night would be judged as
if no time had passed; and each river object costs several hundred bytes,
against two floats in a slot. The ideas are the same (exponential weighting,
and river's ``anomaly.filter`` idea of keeping anomalies out of training,
here ``ShareBaseline.hold``).

Scores are ``-log10`` of an upper bound on a tail probability (Chernoff
bounds for binomial and Poisson counts): "how surprising is this count under
the baseline". They grow with the evidence, not with the share alone, so 3 of
30 from a small sender scores low and 300 of 3,000 from a big one scores
high, and one threshold serves a sender of 10 SMS a day and one of a million.
"""

from __future__ import annotations

import math
from typing import ClassVar

from smsstream.vocabulary import HOUR_MS

LN10 = math.log(10.0)
_MINUS_LN2 = -math.log(2.0)
#: Score given when a count is impossible under the baseline (p = 0).
MAX_SCORE = 300.0


# --- tail scores -------------------------------------------------------------

def binomial_tail_score(k: float, n: float, p: float) -> float:
    """-log10 of the Chernoff bound on P(K >= k) for K ~ Binomial(n, p); 0 when k <= n p.

    >>> round(binomial_tail_score(3, 30, 0.05), 2), round(binomial_tail_score(300, 3000, 0.05), 2)
    (0.27, 26.91)
    """
    if n <= 0 or k <= n * p:
        return 0.0
    if p <= 0.0:
        return MAX_SCORE
    q = min(k / n, 1.0)
    if q >= 1.0:
        nats = -n * math.log(p)
    else:
        nats = n * (q * math.log(q / p) + (1.0 - q) * math.log((1.0 - q) / (1.0 - p)))
    return min(nats / LN10, MAX_SCORE)


def binomial_exact_tail_score(k: int, n: int, p: float) -> float:
    """-log10 of the exact P(K >= k) for K ~ Binomial(n, p); 0 when k <= n p.

    For small counts the Chernoff bound is loose by a factor of several
    (3 of 4 at p = 1.25 % is 7.7e-6 exactly, bounded by 1.8e-5), which
    matters where a few hits are the whole evidence: a carrier blocking a
    small sender's reminders shows as 3 blocked of 4 receipts.

    >>> round(binomial_exact_tail_score(3, 4, 0.0125), 2), round(binomial_tail_score(3, 4, 0.0125), 2)
    (5.11, 4.74)
    """
    k, n = int(k), int(n)
    if n <= 0 or k <= n * p:
        return 0.0
    if p <= 0.0:
        return MAX_SCORE
    if p >= 1.0:
        return 0.0
    lp, lq = math.log(p), math.log1p(-p)
    lgn = math.lgamma(n + 1)
    first = lgn - math.lgamma(k + 1) - math.lgamma(n - k + 1) + k * lp + (n - k) * lq
    # terms shrink geometrically past the mean; sum them relative to the first
    total, term = 1.0, 1.0
    ratio_p = p / (1.0 - p)
    for j in range(k, n):
        term *= (n - j) / (j + 1) * ratio_p
        total += term
        if term < 1e-12 * total:
            break
    return min(-(first + math.log(total)) / LN10, MAX_SCORE)


def poisson_tail_score(k: float, lam: float) -> float:
    """-log10 of the Chernoff bound on P(K >= k) for K ~ Poisson(lam); 0 when k <= lam.

    >>> round(poisson_tail_score(30, 10), 2)
    5.63
    """
    if k <= lam:
        return 0.0
    if lam <= 0.0:
        return MAX_SCORE
    return min((k * math.log(k / lam) - k + lam) / LN10, MAX_SCORE)


def decay(elapsed_ms: float, half_life_ms: float) -> float:
    """Weight left after ``elapsed_ms`` of event time at the given half-life."""
    if elapsed_ms <= 0:
        return 1.0
    return math.exp(_MINUS_LN2 * elapsed_ms / half_life_ms)


# --- decayed counts and baselines ---------------------------------------------

class DecayedCount:
    """A count that halves every ``half_life_ms`` of event time (a smooth recent rate).

    >>> c = DecayedCount(); _ = c.update(0, 10); round(c.get(3_600_000, 3_600_000), 6)
    5.0
    """

    __slots__ = ("value", "ts")

    def __init__(self) -> None:
        self.value = 0.0
        self.ts = 0

    def update(self, ts: int, weight: float = 1.0, half_life_ms: float = HOUR_MS) -> "DecayedCount":
        if ts > self.ts:
            self.value *= decay(ts - self.ts, half_life_ms)
            self.ts = ts
        self.value += weight
        return self

    def get(self, ts: int, half_life_ms: float = HOUR_MS) -> float:
        return self.value * decay(ts - self.ts, half_life_ms)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, DecayedCount) and (self.value, self.ts) == (other.value, other.ts)


class ShareBaseline:
    """An entity's usual share of "hits" among trials (non-borrower sends among loan sends, ...).

    A decayed hits/trials ratio on event time, shrunk towards a prior share
    while the entity has little history. Buckets judged abnormal go to
    ``hold`` instead of ``learn``: they do not train the baseline while an
    anomaly lasts (so a slow attack cannot teach the detector that it is
    normal), but if the entity stays abnormal for ``accept_after_ms`` the held
    counts are taken in at once: a genuine new normal ends the alert within
    hours instead of paging for weeks.
    """

    __slots__ = ("hits", "trials", "ts", "held_hits", "held_trials", "held_since")

    def __init__(self) -> None:
        self.hits = 0.0
        self.trials = 0.0
        self.ts = 0
        self.held_hits = 0.0
        self.held_trials = 0.0
        self.held_since = 0

    def get(self, prior: float, prior_weight: float) -> float:
        return (self.hits + prior * prior_weight) / (self.trials + prior_weight)

    def learn(self, ts: int, trials: float, hits: float, half_life_ms: float) -> "ShareBaseline":
        if ts > self.ts:
            if self.ts:
                d = math.exp(_MINUS_LN2 * (ts - self.ts) / half_life_ms)  # decay(), once per closed bucket
                self.hits *= d
                self.trials *= d
            self.ts = ts
        self.hits += hits
        self.trials += trials
        self.held_hits = self.held_trials = 0.0
        self.held_since = 0
        return self

    def hold(self, ts: int, trials: float, hits: float, half_life_ms: float, accept_after_ms: float) -> bool:
        """Keep an abnormal bucket aside; returns True when it was accepted as the new normal."""
        if not self.held_since:
            self.held_since = ts
        self.held_hits += hits
        self.held_trials += trials
        if ts - self.held_since >= accept_after_ms:
            held_t, held_h = self.held_trials, self.held_hits
            self.learn(ts, held_t, held_h, half_life_ms)
            return True
        return False

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ShareBaseline) and all(
            getattr(self, s) == getattr(other, s) for s in self.__slots__
        )


class DailyProfile:
    """An entity's usual count per hour of day, learned day by day (its daily rhythm).

    Each of 24 slots keeps an exponentially weighted mean of that hour's
    total count across days, and a slowly decaying maximum (the entity's own
    rolling max for the same hour), so a reminder campaign every morning at
    nine becomes normal for nine o'clock while three in the morning stays
    quiet. Hours that end with no data count as zero. Call ``update`` with
    every count (in event-time order); hours flagged abnormal with
    ``learn=False`` are kept out of the profile.
    """

    __slots__ = ("means", "maxes", "hour", "count", "clean", "seen")

    #: weight of the newest day in a slot's mean, and the daily decay of its max
    ALPHA = 0.3
    MAX_DECAY = 0.85

    def __init__(self) -> None:
        self.means = [0.0] * 24
        self.maxes = [0.0] * 24
        self.hour = -1  # absolute hour index (ts // HOUR_MS) being accumulated
        self.count = 0.0
        self.clean = True
        self.seen = 0  # bit i set once slot i has learned a full hour

    def update(self, ts: int, count: float, learn: bool = True) -> "DailyProfile":
        hour = ts // HOUR_MS
        if hour != self.hour:
            self._roll(hour)
        self.count += count
        self.clean = self.clean and learn
        return self

    def _roll(self, hour: int) -> None:
        if self.hour >= 0:
            self._learn(self.hour, self.count if self.clean else None)
            gap = min(hour - self.hour - 1, 24)
            for h in range(self.hour + 1, self.hour + 1 + gap):
                self._learn(h, 0.0)
        self.hour = hour
        self.count = 0.0
        self.clean = True

    def _learn(self, hour: int, total: float | None) -> None:
        slot = hour % 24
        if total is None:
            return
        if self.seen >> slot & 1:
            self.means[slot] += self.ALPHA * (total - self.means[slot])
            self.maxes[slot] = max(total, self.maxes[slot] * self.MAX_DECAY)
        else:
            self.means[slot] = total
            self.maxes[slot] = total
            self.seen |= 1 << slot

    def expected(self, ts: int) -> float | None:
        """Usual count for the hour of ``ts`` (the larger of mean and a share of the rolling max).

        None while that hour of day has never been seen (cold start).
        """
        slot = (ts // HOUR_MS) % 24
        if not self.seen >> slot & 1:
            return None
        return max(self.means[slot], 0.5 * self.maxes[slot])

    def __eq__(self, other: object) -> bool:
        return isinstance(other, DailyProfile) and all(getattr(self, s) == getattr(other, s) for s in self.__slots__)


class BucketWindow:
    """Per-bucket counts of the last ``span`` buckets, kept sparse, summed over trailing windows.

    Each entry is ``[bucket_start, c0, c1, ...]``; only buckets with data are
    stored, so a quiet entity costs almost nothing.
    """

    __slots__ = ("rows",)

    def __init__(self) -> None:
        self.rows: list[list] = []

    def add(self, start: int, *counts: int | float) -> list:
        rows = self.rows
        if rows and rows[-1][0] == start:
            row = rows[-1]
            for i, c in enumerate(counts, 1):
                row[i] += c
            return row
        row = [start, *counts]
        if rows and rows[-1][0] > start:
            rows.append(row)
            rows.sort(key=lambda r: r[0])
        else:
            rows.append(row)
        return row

    def prune(self, oldest: int) -> None:
        rows = self.rows
        i = 0
        while i < len(rows) and rows[i][0] < oldest:
            i += 1
        if i:
            del rows[:i]

    def sums(self, end: int, windows_ms: tuple[int, ...]) -> list[list[float]]:
        """For each window length (ascending), the column sums over buckets in ``[end - w, end)``."""
        width = len(self.rows[0]) - 1 if self.rows else 0
        out = []
        acc = [0.0] * width
        idx = len(self.rows) - 1
        for w in windows_ms:
            start = end - w
            while idx >= 0 and self.rows[idx][0] >= start:
                row = self.rows[idx]
                if row[0] < end:
                    for j in range(width):
                        acc[j] += row[j + 1]
                idx -= 1
            out.append(list(acc))
        return out

    def __eq__(self, other: object) -> bool:
        return isinstance(other, BucketWindow) and self.rows == other.rows


class BucketRing:
    """Per-bucket counts of one entity's recent buckets in fixed rings (one per column).

    Dense where ``BucketWindow`` is sparse: ``SIZE`` slots per column, so a
    trailing-window sum is a C-level ``sum`` over a slice, cheap enough to
    run for every entity at every closed bucket. Holds the last ``SIZE``
    buckets up to the newest one written (which may be a few buckets ahead
    of the one being judged, within the allowed lateness).
    """

    __slots__ = ("cols", "head")

    SIZE: ClassVar[int] = 72

    def __init__(self, width: int = 1) -> None:
        self.cols = [[0] * self.SIZE for _ in range(width)]
        self.head = -1  # index (ts // bucket) of the newest bucket whose slots are valid

    def advance(self, idx: int) -> None:
        """Make ``idx`` the newest bucket, clearing the slots of buckets that fell out."""
        head = self.head
        if idx <= head:
            return
        size = self.SIZE
        if head < 0 or idx - head >= size:
            for col in self.cols:
                col[:] = [0] * size
        elif idx - head == 1:
            # the usual step: one bucket on, one slot to clear
            slot = idx % size
            for col in self.cols:
                col[slot] = 0
        else:
            a, b = (head + 1) % size, (idx + 1) % size
            if a < b:
                zeros = _ZEROS[: b - a]
                for col in self.cols:
                    col[a:b] = zeros
            else:
                tail, lead = _ZEROS[: size - a], _ZEROS[:b]
                for col in self.cols:
                    col[a:] = tail
                    col[:b] = lead
        self.head = idx

    def add(self, idx: int, *counts: int) -> None:
        if idx > self.head:
            self.advance(idx)
        elif idx <= self.head - self.SIZE:
            return
        slot = idx % self.SIZE
        for col, c in zip(self.cols, counts):
            col[slot] += c

    def get(self, idx: int) -> list[int]:
        if idx > self.head or idx <= self.head - self.SIZE:
            return [0] * len(self.cols)
        slot = idx % self.SIZE
        return [col[slot] for col in self.cols]

    def sums(self, end_idx: int, widths: tuple[int, ...]) -> list[list[int]]:
        """For each window width (in buckets), the column sums over buckets ``[end_idx - w, end_idx)``."""
        size = self.SIZE
        oldest = self.head - size + 1
        out = []
        for w in widths:
            lo = max(end_idx - w, oldest)
            hi = min(end_idx, self.head + 1)
            if hi <= lo:
                out.append([0] * len(self.cols))
                continue
            a, b = lo % size, hi % size
            if a < b:
                out.append([sum(col[a:b]) for col in self.cols])
            else:
                out.append([sum(col[a:]) + sum(col[:b]) for col in self.cols])
        return out

    def most_hits(self, end_idx: int, width: int) -> int:
        """The largest sum over buckets ``[end_idx - width, end_idx)`` among columns 1.. (the hit columns)."""
        size = self.SIZE
        head = self.head
        lo = max(end_idx - width, head - size + 1)
        hi = min(end_idx, head + 1)
        if hi <= lo:
            return 0
        a, b = lo % size, hi % size
        most = 0
        if a < b:
            for col in self.cols[1:]:
                n = sum(col[a:b])
                if n > most:
                    most = n
        else:
            for col in self.cols[1:]:
                n = sum(col[a:]) + sum(col[:b])
                if n > most:
                    most = n
        return most

    def __eq__(self, other: object) -> bool:
        return isinstance(other, BucketRing) and (self.cols, self.head) == (other.cols, other.head)


_ZEROS = [0] * BucketRing.SIZE
