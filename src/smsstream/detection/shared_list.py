"""``non_borrower_spike`` / ``shared_list``: one list of numbers worked by several lenders.

People complain above all that reminders and collection notices reach them
from several platforms they never borrowed from: their number is on a list
that was sold or shared, and more than one lender works it. Each lender's
share of such sends may stay inside its own honest rate; what gives the list
away is that the *same* numbers hear from several lenders they owe nothing.

Two halves, each keyed by the entity it knows:

- ``NumberLenders`` (keyed by the number's pseudonym, from the ``LoanSend``
  facts of non-borrower sends) keeps, per number, the lenders that sent it
  loan-obligation SMS without a borrower record within the window
  (``PartContext.shared_list_window_ms``, a day by default), each with its
  latest send. When a second lender reaches a number, both lenders hear of it
  (``SharedNumber``).
- ``SharedList``, inside the sender's state of ``SenderShare`` (the part that
  owns ``non_borrower_spike/sender/<id>``), counts the sender's non-borrower
  sends per hour over the window and the numbers it shares with other
  lenders, and judges, when a bucket closes, whether they are beyond chance.

Chance. Honest non-borrower sends (typos, recycled numbers, old data) land on
numbers spread over the whole number space, so a stray meets another
lender's stray within the window only with a small probability ``q`` (the
other lenders' strays in the window over the numbers in use: about 1e-4
nationally, 1e-3 in the simulator). Of a sender's ``n`` strays in the window,
the number shared with other lenders is then Binomial(n, q); a list
concentrates them. The score is the exact tail of that binomial against
``Q_RATIO`` times the sender's own learned ``q``, shrunk towards ``Q_PRIOR``
(a generous 0.005) while it has little history, and held out of learning
while abnormal. docs/detection.md shows the false-alarm rate this gives.
Besides the score, a finding needs ``MIN_SHARED`` shared numbers, and
``MIN_PAIR`` of them with one other lender: a list puts the same lenders
together again and again, chance spreads its rare meetings over all of them.
An operator's sensitivity level for the sender moves the scores and
``MIN_SHARED`` (``LEVEL_LIMITS``).

State is bounded: a number is kept only while it has a non-borrower send
within the window, with at most ``MAX_LENDERS`` lenders; a sender keeps one
row per hour of the window and at most ``MAX_SHARED`` shared numbers.
"""

from __future__ import annotations

import sys
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, ClassVar

from smsstream.detection.alerts import Finding
from smsstream.detection.base import BUCKET_MS, Part
from smsstream.detection.controls import HIGH, LOW, NORMAL
from smsstream.detection.facts import LOAN_SENDS, SHARED_NUMBERS, LoanSend, RoutineCount, SharedNumber
from smsstream.detection.stats import ShareBaseline, binomial_exact_tail_score
from smsstream.vocabulary import (
    CRITICAL, DAY_MS, HOUR_MS, NON_BORROWER_SPIKE, SENDER, SHARED_LIST, WARNING,
)

#: Lenders kept per number; a ninth pushes out the one whose latest send is oldest.
MAX_LENDERS = 8
#: Shared numbers kept per sender (evidence and count); past it the count stays at its cap.
MAX_SHARED = 256
#: Chance that a stray meets another lender's within the window, assumed for a sender with no history ...
Q_PRIOR = 0.005
#: ... and how many strays that assumption weighs: enough that the first numbers of a list, shared before
#: the count looks abnormal, do not teach the sender that sharing is its normal.
Q_PRIOR_WEIGHT = 2000.0
Q_HALF_LIFE_MS = 7 * DAY_MS
#: Tolerance on the learned rate: the count is tested against this many times it, as the share is.
Q_RATIO = 1.5
#: A rate of shared numbers held for this long is taken as the sender's new normal.
ACCEPT_AFTER_MS = DAY_MS
MIN_SHARED = 3
MIN_PAIR = 2
FIRE_SCORE = 6.0
HOLD_SCORE = 3.0
#: Per sensitivity level: fire score, hold score, fewest shared numbers (docs/controls.md).
LEVEL_LIMITS = {LOW: (9.0, 4.5, 4), NORMAL: (FIRE_SCORE, HOLD_SCORE, MIN_SHARED), HIGH: (4.0, 2.0, 2)}
#: An open alert is held while numbers kept being shared this recently: a list worked slowly, a few
#: numbers an hour, is one episode, not one per hour.
HOLD_MS = 6 * HOUR_MS
#: Evidence rows shown per list.
SAMPLES = 20


def _stray_number(fact: LoanSend | RoutineCount) -> str | None:
    return getattr(fact, "number_pn", None)


class NumberLenders(Part):
    """Per number (pseudonym): the lenders that sent it non-borrower loan SMS in the window, with their latest send.

    State is one ``(sender_id, latest ts)`` pair (the common case), or a
    tuple of them. A lender reaching a number that another lender reached
    within the window makes one ``SharedNumber`` for each of the two.
    """

    name = "non_borrower_number"
    inputs: ClassVar = {LOAN_SENDS: _stray_number}
    emits = (SHARED_NUMBERS,)

    def __init__(self, ctx):
        super().__init__(ctx)
        self.counters = {"numbers_shared_by_lenders": 0}

    def process(self, topic: str, key: str, value: Any) -> list[tuple[str, Any]] | None:
        ts: int = value.ts
        sender: str = value.sender_id
        if ts > self.clock.max_ts:
            self.clock.max_ts = ts
        state = self.entities.get(key)
        entries: tuple = () if state is None else (state,) if state[0].__class__ is str else state
        horizon = ts - self.ctx.shared_list_window_ms
        kept = []
        mine = None
        for entry in entries:
            if entry[1] < horizon:
                continue
            if entry[0] == sender:
                mine = entry
            else:
                kept.append(entry)
        out: list[tuple[str, Any]] | None = None
        if mine is None:
            if kept:
                out = []
                for other, _ in kept:
                    out.append((SHARED_NUMBERS, SharedNumber(ts, sender, other, key, value.message_id)))
                    out.append((SHARED_NUMBERS, SharedNumber(ts, other, sender, key)))
                self.counters["numbers_shared_by_lenders"] += len(kept)
            mine = (sys.intern(sender), ts)
        elif ts > mine[1]:
            mine = (mine[0], ts)
        kept.append(mine)
        if len(kept) > MAX_LENDERS:
            kept.remove(min(kept, key=_latest))
        self.entities[key] = kept[0] if len(kept) == 1 else tuple(kept)
        return out

    def idle_since(self, state: Any) -> int:
        # forgotten once its latest send has left the window
        latest = state[1] if state[0].__class__ is str else max(e[1] for e in state)
        return latest + self.ctx.shared_list_window_ms - self.ctx.idle_ms


def _latest(entry: tuple) -> int:
    return entry[1]


@dataclass(slots=True)
class Meeting:
    """A number the sender shares with other lenders, all of them sending it non-borrower loan SMS."""

    first_ts: int
    last_ts: int
    #: other lender -> when it first shared the number with this sender
    others: dict = field(default_factory=dict)
    #: (ts, message id) of the sender's own send that made the number shared, when it was the later one
    message: tuple | None = None


@dataclass(slots=True)
class SharedList:
    """One sender's side of ``shared_list``: its strays per hour and the numbers it shares, over the window.

    A bucket is judged on what happened before its end only (strays by the
    bucket they count in, shared numbers and lenders by event time), so what
    the worker has already read of later buckets does not change a finding.
    """

    #: [hour start, non-borrower sends counted in that hour's buckets], oldest first
    hours: list = field(default_factory=list)
    #: number pseudonym -> Meeting
    shared: dict = field(default_factory=dict)
    #: bucket start -> numbers first shared in it
    fresh: dict = field(default_factory=dict)
    #: the sender's own rate of strays meeting another lender's
    rate: ShareBaseline = field(default_factory=ShareBaseline)

    def count_stray(self, bucket: int) -> None:
        hour = bucket - bucket % HOUR_MS
        hours = self.hours
        for row in reversed(hours):
            if row[0] == hour:
                row[1] += 1
                return
        hours.append([hour, 1])
        if len(hours) > 1 and hours[-2][0] > hour:
            hours.sort(key=_row_start)

    def take(self, fact: SharedNumber, bucket: int) -> None:
        """Note that ``fact.other_id`` shares the number; a number new to the list counts in ``bucket``."""
        ts = fact.ts
        shared = self.shared
        meeting = shared.get(fact.number_pn)
        if meeting is None:
            if len(shared) >= MAX_SHARED:
                del shared[min(shared, key=lambda pn: (shared[pn].last_ts, pn))]
            meeting = shared[fact.number_pn] = Meeting(ts, ts)
            self.fresh[bucket] = self.fresh.get(bucket, 0) + 1
        else:
            meeting.first_ts = min(meeting.first_ts, ts)
            meeting.last_ts = max(meeting.last_ts, ts)
        others = meeting.others
        if fact.other_id in others:
            others[fact.other_id] = min(others[fact.other_id], ts)
        elif len(others) < MAX_LENDERS:
            others[fact.other_id] = ts
        if fact.message_id is not None and (meeting.message is None or (ts, fact.message_id) < meeting.message):
            meeting.message = (ts, fact.message_id)

    def forget_before(self, since: int) -> None:
        hours = self.hours
        if hours and hours[0][0] + HOUR_MS <= since:
            self.hours = [row for row in hours if row[0] + HOUR_MS > since]
        if self.shared:
            for pn in [pn for pn, m in self.shared.items() if m.last_ts < since]:
                del self.shared[pn]

    @property
    def empty(self) -> bool:
        return not self.hours and not self.shared and not self.fresh

    def learn_quiet(self, end: int, strays: int, window_ms: int) -> None:
        """A bucket of a sender that shares no number: its strays teach the rate (the common case, kept cheap)."""
        self.forget_before(end - window_ms)
        if strays:
            self.rate.learn(end, strays, 0, Q_HALF_LIFE_MS)

    def judge(self, sender: str, start: int, end: int, strays: int, this_hour: int, window_ms: int,
              firing: bool, level: str = NORMAL, controls: tuple[str, ...] = ()) -> Finding | None:
        """Judge bucket ``[start, end)``; learn the sender's rate of shared numbers.

        ``strays``: the sender's non-borrower sends in the bucket, and
        ``this_hour`` in the buckets of its hour up to it. Fires only in a
        bucket that brought newly shared numbers; while the alert is open
        (``firing``), a bucket without them holds it for ``HOLD_MS`` after
        the last one, as long as the window stays abnormal. ``level`` is the
        sensitivity in force, set by the control entries ``controls``.
        """
        fire_score, hold_score, min_shared = LEVEL_LIMITS[level]
        self.forget_before(end - window_ms)
        fresh = self.fresh.pop(start, 0) if self.fresh else 0
        hour = start - start % HOUR_MS
        counted = [(pn, m) for pn, m in self.shared.items() if m.first_ts < end]
        c = len(counted)
        n = max(sum(row[1] for row in self.hours if row[0] < hour) + this_hour, c)
        q = self.rate.get(Q_PRIOR, Q_PRIOR_WEIGHT)
        score = binomial_exact_tail_score(c, n, q * Q_RATIO) if c >= min_shared else 0.0
        abnormal = score >= hold_score
        if strays or fresh:
            if abnormal:
                self.rate.hold(end, strays, fresh, Q_HALF_LIFE_MS, ACCEPT_AFTER_MS)
            else:
                self.rate.learn(end, strays, fresh, Q_HALF_LIFE_MS)
        if not abnormal:
            return None
        lenders = Counter(other for _, m in counted for other, ts in m.others.items() if ts < end)
        paired = sum(1 for v in lenders.values() if v >= MIN_PAIR)
        latest = max(m.first_ts for _, m in counted)
        if fresh and paired and score >= fire_score:
            on = True
        elif firing and end - latest <= HOLD_MS:
            on = False
        else:
            return None
        finding = self._finding(sender, end, window_ms, n, q, score, counted, lenders, paired, on)
        finding.controls = controls
        return finding

    def _finding(self, sender: str, end: int, window_ms: int, n: int, q: float, score: float, counted: list,
                 lenders: Counter, paired: int, on: bool) -> Finding:
        c = len(counted)
        expected = n * q
        others = sorted(lenders.items(), key=_most_first)
        named = ", ".join(f"{k} {v}" for k, v in others[:3]) + (", ..." if len(others) > 3 else "")
        by_time = sorted(counted, key=lambda item: (item[1].first_ts, item[0]))
        first = by_time[0][1].first_ts
        return Finding(
            kind=NON_BORROWER_SPIKE,
            reason=SHARED_LIST,
            severity=CRITICAL if paired >= 2 and score >= 2 * FIRE_SCORE else WARNING,
            entity_type=SENDER,
            entity_id=sender,
            window_start=first - first % BUCKET_MS,
            window_end=end,
            observed=c,
            expected=round(expected, 6),
            score=score,
            summary=(
                f"{NON_BORROWER_SPIKE} {SHARED_LIST}: sender {sender}: {c} of the numbers it sent {n} loan-obligation "
                f"SMS without a borrower record in the last {window_ms // HOUR_MS} h got such SMS from other lenders "
                f"too ({named}); chance would give {expected:.2f}. Likely one number list, sold or leaked, "
                f"worked by several lenders."
            ),
            evidence={
                "non_borrower_sends": n,
                "shared_numbers": c,
                "other_senders": dict(others[:SAMPLES]),
                "numbers": [pn for pn, _ in by_time[-SAMPLES:]],
                "message_ids": [m.message[1] for _, m in by_time if m.message and m.message[0] < end][-SAMPLES:],
            },
            sender_id=sender,
            last_seen=by_time[-1][1].first_ts,
            firing=on,
        )


def _row_start(row: list) -> int:
    return row[0]


def _most_first(item: tuple) -> tuple:
    return (-item[1], item[0])
