"""``rebind_anomaly``: account <-> number rebinds that look like account takeover or stale books.

Four parts, each keyed by the entity its alerts name:

- ``AccountRebinds`` (``<sender_id>|<account_id>``, from ``sms.bindings``):
  ``account_flapping`` -- an account moving back to a number it left, or
  changing number three times within ``FLAP_HORIZON_MS``. It also tells the
  number part, as ``NumberBinding`` facts, which account arrived at and which
  left each number.
- ``NumberRebinds`` (recipient number, from those facts and loan-obligation
  sends): ``number_fan_in`` -- accounts rebound *to* one number from
  ``FAN_IN_MIN`` or more different numbers within ``FAN_IN_HORIZON_MS``,
  across lenders too (one customer moving all their loans to a new number
  comes from one number; a family sharing a phone is two); and
  ``stale_binding_send`` -- a lender still sending loan-obligation SMS about
  an account to the number that account moved away from, more than
  ``STALE_GRACE_MS`` after the move (the number may now belong to someone
  else: a debt disclosed to a stranger).
- ``SenderRebinds`` (``sender_id``): ``mass_rebind`` -- rebinds in the
  trailing 10 min / 1 h / 6 h against the sender's own rate (a big lender's
  handful a day is its normal), with the devices, IPs and channels they came
  from.
- ``DeviceRebinds`` (``device_id``): ``device_fan_out`` -- one device
  rebinding accounts away from many different numbers; staff devices
  (branch, call centre) earn their own higher rate.

First bindings (``old_number`` null) open accounts: they never count as
rebinds, fan-in or fan-out, since one person borrowing from several lenders
binds one number many times.

State is bounded: per account the last ``MAX_MOVES`` moves within
``FLAP_HORIZON_MS``; per number at most ``MAX_ARRIVALS`` arrivals within
``FAN_IN_HORIZON_MS`` and ``MAX_DEPARTURES`` departures within
``STALE_HORIZON_MS`` (a number with neither is forgotten, so state grows with
numbers *rebound* in the last month, not with all numbers); per device the
rebinds of the last ``DEVICE_WINDOW_MS`` (at most ``MAX_DEVICE_ROWS``); per
sender 6 h of per-bucket counts and ``MAX_SENDER_ROWS`` recent rebinds for
evidence. Numbers in state are pseudonyms except the number a state is keyed
by, which is the routing key (as ``sms.sends`` is keyed by number).
"""

from __future__ import annotations

import math
import re
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, ClassVar, Iterable

from smsstream.detection.base import BUCKET_MS, Finding, Part
from smsstream.detection.stats import BucketWindow, DecayedCount, poisson_tail_score
from smsstream.records import BINDINGS, LOAN_OBLIGATION, SENDS
from smsstream.vocabulary import DAY_MS, HOUR_MS, MINUTE_MS

KIND = "rebind_anomaly"

#: Fact stream: an account arrived at / left a number (account-keyed -> number-keyed).
NUMBER_BINDINGS = "fact.number-bindings"

FLAP_HORIZON_MS = 2 * DAY_MS
MAX_MOVES = 8
FAN_IN_HORIZON_MS = 3 * DAY_MS
FAN_IN_MIN = 3
MAX_ARRIVALS = 32
STALE_HORIZON_MS = 30 * DAY_MS
#: Sends in the first minutes after a move may have been queued before it: they never count.
STALE_GRACE_MS = 5 * MINUTE_MS
#: Within the first hour a single send is a stray; two make a pattern. After it, one is enough.
STALE_SINGLE_AFTER_MS = HOUR_MS
MAX_DEPARTURES = 16
DEVICE_WINDOW_MS = 6 * HOUR_MS
MAX_DEVICE_ROWS = 64
DEVICE_FAN_OUT_MIN = 3
MAX_SENDER_ROWS = 200
SENDER_WINDOWS_MS = (10 * MINUTE_MS, 30 * MINUTE_MS, HOUR_MS, 6 * HOUR_MS)
MASS_REBIND_MIN = 5
#: Rebinds happen in business hours: a day's rate is spent in about half the day, so a window
#: expects twice its share of the daily rate (a large lender's or a branch device's busy
#: afternoon is not an attack).
BUSINESS_HOURS_FACTOR = 2.0
#: A lender (or staff device) whose rebinds were first seen less than this ago is young: its
#: rate is learned from everything it does, and a young lender fires only on overwhelming evidence.
SENDER_COLD_MS = DAY_MS
SENDER_COLD_FIRE_SCORE = 12.0
#: A lender's (and a staff device's) prior rate weighs a quarter of a day, so a large one's own
#: rate takes over within its first day.
SENDER_PRIOR_DAYS = 0.25
#: Tail score (-log10 p) that fires, and that keeps a firing alert alive.
FIRE_SCORE = 5.5
HOLD_SCORE = 2.5
#: A device's fan-out fires lower: three accounts moved off three numbers from one phone is already odd.
DEVICE_FIRE_SCORE = 2.5
RATE_HALF_LIFE_MS = 7 * DAY_MS
#: Assumed rebinds per day for an entity with no history (and how many days that guess weighs).
SENDER_PRIOR_PER_DAY = 2.0
DEVICE_PRIOR_PER_DAY = 0.5
STAFF_DEVICE_PRIOR_PER_DAY = 20.0
PRIOR_DAYS = 1.0
STAFF_CHANNELS = frozenset({"branch", "call_center"})
SAMPLES = 20


@dataclass(slots=True)
class NumberBinding:
    """An account arrived at (``arrived=True``) or left ``number``; the other side only as a pseudonym."""

    ts: int
    number: str  # routing key only; never written to a finding
    arrived: bool
    sender_id: str
    account_id: str
    #: pseudonym of the number on the other side of the move (None for a first binding)
    other_pn: str | None
    event_id: str
    channel: str | None = None
    device_id: str | None = None


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
        self.queue: list[list] = []  # [bucket start, rebinds, judged abnormal]
        self.held = 0.0
        self.held_since = 0
        #: the count covers time up to here (buckets older than the judging window)
        self.counted_until = 0

    def observe(self, start: int, count: float, abnormal: bool) -> None:
        if not self.first_ts:
            self.first_ts = start
        self.queue.append([start, count, abnormal])

    def settle(self, now: int, delay_ms: int, accept_ms: int) -> None:
        self.counted_until = now - delay_ms
        queue = self.queue
        i = 0
        while i < len(queue) and queue[i][0] < now - delay_ms:
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


def _account_key(b) -> str:
    return f"{b.sender_id}|{b.account_id}"


def _rebind_sender(b) -> str | None:
    return b.sender_id if b.old_number is not None else None


def _rebind_device(b) -> str | None:
    return b.device_id if b.old_number is not None and b.device_id else None


def _fact_number(f: NumberBinding) -> str:
    return f.number


def _loan_send_number(s) -> str | None:
    return s.number if s.category in LOAN_OBLIGATION else None


def _keep_in_time_order(rows: list) -> None:
    """Rows of (ts, ...) stay in event-time order whatever order events arrive in within the allowed
    lateness, so evidence and ``last_seen`` are the same in replay and in the worker."""
    if len(rows) > 1 and rows[-2][0] > rows[-1][0]:
        rows.sort(key=_row_ts)


def _row_ts(row: tuple) -> int:
    return row[0]


#: An account id that is itself a phone number: some lenders key accounts by the customer's mobile.
_NUMBER_AS_ID = re.compile(r"\+?[0-9]{7,15}\Z")


def shown_account(ctx, account: str) -> str:
    """An account id (or ``<sender_id>|<account_id>``) as alerts show it: a phone number only as its pseudonym."""
    sender_id, bar, account_id = account.rpartition("|")
    if _NUMBER_AS_ID.match(account_id):
        return f"{sender_id}{bar}{ctx.pseudonym(account_id)}"
    return account


def _top(counter: Counter, n: int = 5) -> dict:
    return {k: v for k, v in counter.most_common(n) if k is not None}


# --- account_flapping ------------------------------------------------------------

@dataclass(slots=True)
class AccountState:
    #: moves, oldest first: (ts, old number pn or None, new number pn, event_id, channel, device)
    moves: list = field(default_factory=list)
    pending: dict = field(default_factory=dict)  # bucket start -> latest binding ts in it
    last_ts: int = 0


class AccountRebinds(Part):
    """Per account: its recent moves; flags one that keeps changing or returns to a number it left."""

    name = "rebind_account"
    inputs: ClassVar = {BINDINGS: _account_key}
    emits = (NUMBER_BINDINGS,)

    def process(self, topic: str, key: str, b: Any):
        state = self.entities.get(key) or AccountState()
        pn = self.ctx.pseudonym
        old_pn = pn(b.old_number) if b.old_number is not None else None
        new_pn = pn(b.new_number)
        move = (b.ts, old_pn, new_pn, b.event_id, b.channel, b.device_id)
        state.moves.append(move)
        _keep_in_time_order(state.moves)
        state.moves = [m for m in state.moves if m[0] >= b.ts - FLAP_HORIZON_MS][-MAX_MOVES:]
        state.last_ts = max(state.last_ts, b.ts)
        if b.old_number is not None:
            start = self.mark(key, b.ts)
            state.pending[start] = max(state.pending.get(start, 0), b.ts)
        self.save(key, state)
        facts = [(NUMBER_BINDINGS, NumberBinding(b.ts, b.new_number, True, b.sender_id, b.account_id, old_pn,
                                                 b.event_id, b.channel, b.device_id))]
        if b.old_number is not None:
            facts.append((NUMBER_BINDINGS, NumberBinding(b.ts, b.old_number, False, b.sender_id, b.account_id,
                                                         new_pn, b.event_id, b.channel, b.device_id)))
        return facts

    def close(self, key: str, start: int, end: int) -> Iterable[Finding]:
        state = self.entities.get(key)
        if state is None or state.pending.pop(start, None) is None:
            return ()
        moves = [m for m in state.moves if end - FLAP_HORIZON_MS <= m[0] < end]
        changes = [m for m in moves if m[1] is not None]
        if len(changes) < 2:
            return ()
        held: list[str] = []
        returns = 0
        for _, old, new, *_ in moves:
            if old is not None and old not in held:
                held.append(old)
            if new in held:
                returns += 1
            if new not in held:
                held.append(new)
        if returns == 0 and len(changes) < 3:
            return ()
        shown = shown_account(self.ctx, key)
        sender_id, _, account_id = shown.partition("|")
        span_h = (changes[-1][0] - changes[0][0]) / HOUR_MS
        numbers = []
        for m in changes:
            for n in (m[1], m[2]):
                if n not in numbers:
                    numbers.append(n)
        score = min(3.0 * len(changes) + 4.0 * returns, 300.0)
        severity = "critical" if len(changes) >= 4 or returns >= 2 else "warning"
        back = f", {returns} time(s) back to a number it had left" if returns else ""
        return [Finding(
            kind=KIND,
            reason="account_flapping",
            severity=severity,
            entity_type="account",
            entity_id=shown,
            window_start=changes[0][0] - changes[0][0] % BUCKET_MS,
            window_end=end,
            observed=len(changes),
            expected=1.0,
            score=score,
            summary=(
                f"account {account_id} at {sender_id} changed number {len(changes)} times in {span_h:.1f} h"
                f"{back} (a customer changes number about once)"
            ),
            evidence={
                "numbers": numbers,
                "event_ids": [m[3] for m in changes],
                "channels": sorted({m[4] for m in changes if m[4]}),
                "devices": sorted({m[5] for m in changes if m[5]}),
            },
            sender_id=sender_id,
            last_seen=changes[-1][0],
        )]

    def idle_since(self, state: AccountState) -> int:
        # Moves older than the flapping horizon say nothing; keep the state no longer than that.
        return state.last_ts + FLAP_HORIZON_MS - self.ctx.idle_ms


# --- number_fan_in and stale_binding_send -----------------------------------------

@dataclass(slots=True)
class NumberState:
    #: accounts rebound to this number: (ts, sender_id, account_id, origin pn, event_id, device)
    arrivals: list = field(default_factory=list)
    #: "<sender>|<account>" -> [ts it left, pn it moved to, loan sends about it here since]
    departures: dict = field(default_factory=dict)
    #: bucket start -> [sends after a move, message ids, accounts]
    stale: dict = field(default_factory=dict)
    fan_in_due: dict = field(default_factory=dict)  # bucket start -> True when arrivals changed
    last_ts: int = 0


class NumberRebinds(Part):
    """Per number: accounts that arrived (fan-in) and left it (stale sends after the move)."""

    name = "rebind_number"
    inputs: ClassVar = {NUMBER_BINDINGS: _fact_number, SENDS: _loan_send_number}

    def process(self, topic: str, key: str, value: Any):
        state = self.entities.get(key)
        if topic == SENDS:
            if state is None or not state.departures:
                return None
            self._stale_send(state, key, value)
            return None
        f: NumberBinding = value
        if state is None:
            if f.arrived and f.other_pn is None:
                return None  # a first binding to a number with no history: nothing to remember
            state = NumberState()
        acct = f"{f.sender_id}|{f.account_id}"
        state.last_ts = max(state.last_ts, f.ts)
        if f.arrived:
            state.departures.pop(acct, None)
            # The number is this lender's customer's again: sends to it are no longer stale.
            for other in [a for a in state.departures if a.partition("|")[0] == f.sender_id]:
                if state.departures[other][0] <= f.ts:
                    del state.departures[other]
            if f.other_pn is not None:
                state.arrivals.append((f.ts, f.sender_id, f.account_id, f.other_pn, f.event_id, f.device_id))
                _keep_in_time_order(state.arrivals)
                state.arrivals = [a for a in state.arrivals if a[0] >= f.ts - FAN_IN_HORIZON_MS][-MAX_ARRIVALS:]
                start = self.mark(key, f.ts)
                state.fan_in_due[start] = True
        else:
            state.arrivals = [a for a in state.arrivals if f"{a[1]}|{a[2]}" != acct or a[0] > f.ts]
            state.departures[acct] = [f.ts, f.other_pn, 0]
            if len(state.departures) > MAX_DEPARTURES:
                oldest = min(state.departures, key=lambda a: state.departures[a][0])
                del state.departures[oldest]
        self.save(key, state)
        return None

    def _stale_send(self, state: NumberState, key: str, send) -> None:
        acct = f"{send.sender_id}|{send.account_id}" if send.account_id else None
        left = state.departures.get(acct) if acct else None
        if left is None or send.ts < left[0] + STALE_GRACE_MS or send.ts > left[0] + STALE_HORIZON_MS:
            return
        start = self.mark(key, send.ts)
        row = state.stale.get(start)
        if row is None:
            row = state.stale[start] = [0, [], acct, send.ts]
        row[0] += 1
        row[3] = max(row[3], send.ts)
        if len(row[1]) < SAMPLES:
            row[1].append(send.message_id)
        left[2] += 1
        state.last_ts = max(state.last_ts, send.ts)
        self.save(key, state)

    def close(self, key: str, start: int, end: int) -> Iterable[Finding]:
        state = self.entities.get(key)
        if state is None:
            return ()
        out = []
        row = state.stale.pop(start, None)
        if row is not None:
            left = state.departures.get(row[2])
            if left is not None and (left[2] >= 2 or row[3] - left[0] >= STALE_SINGLE_AFTER_MS):
                out.append(self._stale_finding(state, key, start, end, row))
        if state.fan_in_due.pop(start, None):
            fan = self._fan_in_finding(state, key, end)
            if fan is not None:
                out.append(fan)
        self.save(key, state)
        # One dedup key per number: the stronger finding speaks.
        if len(out) > 1:
            out = [max(out, key=lambda f: f.score)]
        return out

    def _stale_finding(self, state: NumberState, key: str, start: int, end: int, row) -> Finding:
        count, samples, acct, last = row
        moved_at, moved_to, since_move = state.departures[acct]
        sender_id, _, account_id = shown_account(self.ctx, acct).partition("|")
        since_h = (last - moved_at) / HOUR_MS
        severity = "critical" if since_move >= 3 else "warning"
        return Finding(
            kind=KIND,
            reason="stale_binding_send",
            severity=severity,
            entity_type="number",
            entity_id=self.ctx.pseudonym(key),
            window_start=start,
            window_end=end,
            observed=since_move,
            expected=0.0,
            score=min(8.0 + 4.0 * since_move + min(since_h, 24.0) / 4.0, 300.0),
            summary=(
                f"{sender_id} sent {since_move} loan SMS about account {account_id} to a number that account "
                f"left {since_h:.1f} h earlier (the number may belong to someone else now)"
            ),
            evidence={
                "message_ids": samples,
                "accounts": [shown_account(self.ctx, acct)],
                "moved_to": [moved_to] if moved_to else [],
                "moved_at": moved_at,
            },
            sender_id=sender_id,
            last_seen=last,
        )

    def _fan_in_finding(self, state: NumberState, key: str, end: int) -> Finding | None:
        recent = [a for a in state.arrivals if a[0] >= end - FAN_IN_HORIZON_MS and a[0] < end]
        origins: dict[str, tuple] = {}
        for a in recent:
            origins.setdefault(a[3], a)
        n = len(origins)
        senders = sorted({a[1] for a in recent})
        # Two accounts from two numbers: a family sharing a phone looks the same, so only across lenders
        # and only as info; from FAN_IN_MIN numbers on, no household explains it.
        if n < FAN_IN_MIN and not (n == 2 and len(senders) >= 2):
            return None
        accounts = [shown_account(self.ctx, f"{a[1]}|{a[2]}") for a in recent]
        span_h = (recent[-1][0] - recent[0][0]) / HOUR_MS
        if n < FAN_IN_MIN:
            severity = "info"
        else:
            severity = "critical" if n >= 5 or len(senders) >= 2 else "warning"
        return Finding(
            kind=KIND,
            reason="number_fan_in",
            severity=severity,
            entity_type="number",
            entity_id=self.ctx.pseudonym(key),
            window_start=recent[0][0] - recent[0][0] % BUCKET_MS,
            window_end=end,
            observed=n,
            expected=1.0,
            score=min(4.0 * n + 4.0 * (len(senders) - 1), 300.0),
            summary=(
                f"{len(accounts)} accounts at {len(senders)} lender(s) ({', '.join(senders[:3])}) were moved to one "
                f"number from {n} different numbers within {span_h:.1f} h (a customer's change comes from one)"
            ),
            evidence={
                "accounts": accounts,
                "senders": senders,
                "numbers": list(origins),
                "event_ids": [a[4] for a in recent],
                "devices": sorted({a[5] for a in recent if a[5]}),
            },
            sender_id=senders[0] if len(senders) == 1 else None,
            last_seen=recent[-1][0],
        )

    def idle_since(self, state: NumberState) -> int:
        # Departures matter for STALE_HORIZON_MS, arrivals for FAN_IN_HORIZON_MS; then the number is forgotten.
        if state.departures:
            newest = max(d[0] for d in state.departures.values())
            return max(newest + STALE_HORIZON_MS, state.last_ts + FAN_IN_HORIZON_MS) - self.ctx.idle_ms
        return state.last_ts + FAN_IN_HORIZON_MS - self.ctx.idle_ms


# --- mass_rebind -------------------------------------------------------------------

@dataclass(slots=True)
class SenderState:
    window: BucketWindow = field(default_factory=BucketWindow)  # [start, rebinds]
    rate: DelayedRate = field(default_factory=DelayedRate)
    #: rebinds in the buckets closed so far (for a young sender's rate)
    total: int = 0
    #: recent rebinds for evidence: (ts, account_id, old pn, device, ip, channel)
    recent: list = field(default_factory=list)
    last_ts: int = 0


class SenderRebinds(Part):
    """Per sender: rebinds in trailing windows against the sender's own rate."""

    name = "rebind_sender"
    inputs: ClassVar = {BINDINGS: _rebind_sender}
    ACCEPT_AFTER_MS: ClassVar[int] = 12 * HOUR_MS

    def process(self, topic: str, key: str, b: Any):
        state = self.entities.get(key) or SenderState()
        state.last_ts = max(state.last_ts, b.ts)
        start = self.mark(key, b.ts)
        state.window.add(start, 1)
        state.recent.append((b.ts, b.account_id, self.ctx.pseudonym(b.old_number), b.device_id, b.source_ip,
                             b.channel))
        _keep_in_time_order(state.recent)
        if len(state.recent) > MAX_SENDER_ROWS:
            del state.recent[: len(state.recent) - MAX_SENDER_ROWS]
        self.save(key, state)
        return None

    def close(self, key: str, start: int, end: int) -> Iterable[Finding]:
        state = self.entities.get(key)
        if state is None:
            return ()
        state.window.prune(end - SENDER_WINDOWS_MS[-1])
        count = next((r[1] for r in state.window.rows if r[0] == start), 0)
        state.rate.settle(start, SENDER_WINDOWS_MS[-1], self.ACCEPT_AFTER_MS)
        per_day = state.rate.per_day(start, SENDER_PRIOR_PER_DAY, SENDER_PRIOR_DAYS)
        state.total += count
        young = state.rate.young(end)
        first_ts = state.rate.first_ts or start
        best: tuple = (0.0, 0, 0.0, SENDER_WINDOWS_MS[0], per_day)
        for w in SENDER_WINDOWS_MS:
            # Accounts, not rebinds: one account flapping is account_flapping's business.
            n = len({r[1] for r in state.recent if end - w <= r[0] < end})
            expected_per_day = per_day
            if young:
                # The learned rate lags a window behind: judge against what came before this window.
                history = end - w - first_ts
                if history < w:
                    continue  # less of this lender's history than the window itself to judge it against
                before = state.total - sum(r[1] for r in state.window.rows if end - w <= r[0] < end)
                expected_per_day = max(per_day, before * DAY_MS / history)
            lam = expected_per_day * w / DAY_MS * BUSINESS_HOURS_FACTOR
            score = poisson_tail_score(n, lam) if n >= MASS_REBIND_MIN else 0.0
            if score > best[0]:
                best = (score, n, lam, w, expected_per_day)
        score, n, lam, w, per_day = best
        abnormal = score >= HOLD_SCORE
        # A young sender's rate is still mostly the prior: learn all of it, or a large lender's
        # ordinary day would be held out as abnormal and never learned.
        state.rate.observe(start, count, abnormal and not young)
        self.save(key, state)
        if not abnormal:
            return ()
        fire_score = SENDER_COLD_FIRE_SCORE if young else FIRE_SCORE
        rows = [r for r in state.recent if end - w <= r[0] < end]
        devices = Counter(r[3] for r in rows)
        ips = Counter(r[4] for r in rows)
        channels = Counter(r[5] for r in rows)
        top_device = devices.most_common(1)[0] if devices else (None, 0)
        concentrated = (
            f"; {top_device[1]} from device {top_device[0]}" if top_device[0] and top_device[1] >= 2 else ""
        )
        return [Finding(
            kind=KIND,
            reason="mass_rebind",
            severity="critical" if score >= 2 * fire_score and n >= 10 else "warning",
            entity_type="sender",
            entity_id=key,
            window_start=end - w,
            window_end=end,
            observed=n,
            expected=round(lam, 4),
            score=score,
            summary=(
                f"{key}: {int(n)} accounts changed number in the last {w // MINUTE_MS} min, against about "
                f"{lam:.2f} usual ({per_day:.1f} a day){concentrated}"
                + ("; rebinds first seen at this lender less than a day ago" if young else "")
            ),
            evidence={
                "accounts": [shown_account(self.ctx, r[1]) for r in rows][-SAMPLES:],
                "numbers": [r[2] for r in rows][-SAMPLES:],
                "devices": _top(devices),
                "source_ips": _top(ips),
                "channels": _top(channels),
            },
            sender_id=key,
            last_seen=rows[-1][0] if rows else end,
            firing=score >= fire_score,
        )]


# --- device_fan_out -----------------------------------------------------------------

@dataclass(slots=True)
class DeviceState:
    #: rebinds: (ts, "<sender>|<account>", old pn, new pn, channel)
    rows: list = field(default_factory=list)
    rate: DelayedRate = field(default_factory=DelayedRate)
    staff: bool = False
    last_ts: int = 0
    pending: dict = field(default_factory=dict)  # bucket start -> rebinds in it


class DeviceRebinds(Part):
    """Per device: how many accounts it moved away from different numbers, against its own rate."""

    name = "rebind_device"
    inputs: ClassVar = {BINDINGS: _rebind_device}
    ACCEPT_AFTER_MS: ClassVar[int] = 12 * HOUR_MS

    def process(self, topic: str, key: str, b: Any):
        state = self.entities.get(key) or DeviceState()
        state.last_ts = max(state.last_ts, b.ts)
        state.staff = state.staff or b.channel in STAFF_CHANNELS
        pn = self.ctx.pseudonym
        state.rows.append((b.ts, f"{b.sender_id}|{b.account_id}", pn(b.old_number), pn(b.new_number), b.channel))
        _keep_in_time_order(state.rows)
        state.rows = [r for r in state.rows if r[0] >= b.ts - DEVICE_WINDOW_MS][-MAX_DEVICE_ROWS:]
        start = self.mark(key, b.ts)
        state.pending[start] = state.pending.get(start, 0) + 1
        self.save(key, state)
        return None

    def close(self, key: str, start: int, end: int) -> Iterable[Finding]:
        state = self.entities.get(key)
        if state is None:
            return ()
        count = state.pending.pop(start, 0)
        rows = [r for r in state.rows if end - DEVICE_WINDOW_MS <= r[0] < end]
        # Distinct numbers the accounts left: one customer moving all their loans counts once.
        origins = {r[2] for r in rows}
        n = len(origins)
        state.rate.settle(start, DEVICE_WINDOW_MS, self.ACCEPT_AFTER_MS)
        if state.staff:
            # a branch or call-centre device moves accounts all day: its own rate takes over quickly
            per_day = state.rate.per_day(start, STAFF_DEVICE_PRIOR_PER_DAY, SENDER_PRIOR_DAYS)
        else:
            per_day = state.rate.per_day(start, DEVICE_PRIOR_PER_DAY)
        young = state.rate.young(start)
        # a branch or call-centre device works business hours; a customer's phone has no such rhythm
        lam = per_day * DEVICE_WINDOW_MS / DAY_MS * (BUSINESS_HOURS_FACTOR if state.staff else 1.0)
        score = poisson_tail_score(n, lam) if n >= DEVICE_FAN_OUT_MIN else 0.0
        accounts = [r[1] for r in rows]
        senders = sorted({a.partition("|")[0] for a in accounts})
        # Two people's accounts at two lenders moved from one customer phone: a helpful relative, or the
        # start of a fan-out. Worth an info, never more, until a third account follows.
        early = n == 2 and len(senders) >= 2 and not state.staff and poisson_tail_score(n, lam) >= 1.0
        abnormal = score >= HOLD_SCORE
        # as for a young lender: a device's first day is learned whole, so a busy staff device's
        # ordinary day is not held out as abnormal and never learned
        state.rate.observe(start, count, abnormal and not (young and state.staff))
        self.save(key, state)
        if not (abnormal or early):
            return ()
        if early and not abnormal:
            score = poisson_tail_score(n, lam)
        new_numbers = {r[3] for r in rows}
        return [Finding(
            kind=KIND,
            reason="device_fan_out",
            severity="info" if not abnormal else ("critical" if n >= 10 or len(senders) >= 2 else "warning"),
            entity_type="device",
            entity_id=key,
            window_start=end - DEVICE_WINDOW_MS,
            window_end=end,
            observed=n,
            expected=round(lam, 4),
            score=score,
            summary=(
                f"device {key} moved {len(accounts)} accounts at {', '.join(senders[:3])} away from {n} different "
                f"numbers in the last {DEVICE_WINDOW_MS // HOUR_MS} h (to {len(new_numbers)} number(s)); "
                f"usual for it: {lam:.2f}"
            ),
            evidence={
                "accounts": [shown_account(self.ctx, a) for a in accounts[-SAMPLES:]],
                "numbers": sorted(new_numbers)[:SAMPLES],
                "senders": senders,
                "channels": _top(Counter(r[4] for r in rows)),
            },
            sender_id=senders[0] if len(senders) == 1 else None,
            last_seen=rows[-1][0] if rows else end,
            firing=early or score >= DEVICE_FIRE_SCORE,
        )]


#: In fact order: the account part feeds the number part.
REBIND_PARTS: list[type[Part]] = [AccountRebinds, NumberRebinds, SenderRebinds, DeviceRebinds]
