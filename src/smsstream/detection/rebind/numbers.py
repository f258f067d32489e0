"""``number_fan_in`` and ``stale_binding_send``: what happens to one recipient number.

Keyed by number (from ``NumberBinding`` facts and loan-obligation sends).
``number_fan_in``: accounts rebound *to* one number from ``FAN_IN_MIN`` or
more different numbers within ``FAN_IN_HORIZON_MS``, across lenders too (one
customer moving all their loans to a new number comes from one number; a
family sharing a phone is two). ``stale_binding_send``: a lender still
sending loan-obligation SMS about an account to the number that account
moved away from, more than ``STALE_GRACE_MS`` after the move (the number may
now belong to someone else: a debt disclosed to a stranger).

A number keeps at most ``MAX_ARRIVALS`` arrivals within ``FAN_IN_HORIZON_MS``
and ``MAX_DEPARTURES`` departures within ``STALE_HORIZON_MS``; a number with
neither is forgotten, so state grows with numbers *rebound* in the last
month, not with all numbers. Every number here is a pseudonym, the key
included (``intake``). Sensitivity moves the fewest origins of a fan-in
(``FAN_IN_LEVELS``) and how soon stale sends page (``STALE_LEVELS``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar, Iterable, NamedTuple

from smsstream.detection.alerts import Finding
from smsstream.detection.base import BUCKET_MS, Part
from smsstream.detection.controls import HIGH, LOW, NORMAL, Subject
from smsstream.detection.rebind.evidence import SAMPLES, keep_in_time_order, shown_account
from smsstream.detection.rebind.facts import NUMBER_BINDINGS, NumberBinding
from smsstream.records import LOAN_OBLIGATION, SENDS
from smsstream.vocabulary import (
    CRITICAL, DAY_MS, HOUR_MS, INFO, MINUTE_MS, NUMBER, NUMBER_FAN_IN, REBIND_ANOMALY, STALE_BINDING_SEND, WARNING,
)

FAN_IN_HORIZON_MS = 3 * DAY_MS
FAN_IN_MIN = 3
MAX_ARRIVALS = 32
STALE_HORIZON_MS = 30 * DAY_MS
#: Sends in the first minutes after a move may have been queued before it: they never count.
STALE_GRACE_MS = 5 * MINUTE_MS
#: Within the first hour a single send is a stray; two make a pattern. After it, one is enough.
STALE_SINGLE_AFTER_MS = HOUR_MS
MAX_DEPARTURES = 16
#: By sensitivity level: the fewest different numbers an account moves from to one number that page ...
FAN_IN_LEVELS = {LOW: 4, NORMAL: FAN_IN_MIN, HIGH: 2}
#: ... and (sends about the account since it left, or time since it left) that make a stale send page.
STALE_LEVELS = {LOW: (3, 6 * HOUR_MS), NORMAL: (2, STALE_SINGLE_AFTER_MS), HIGH: (1, 0)}


def _fact_number(f: NumberBinding) -> str:
    return f.number


def _loan_send_number(s) -> str | None:
    return s.number if s.category in LOAN_OBLIGATION else None


class Arrival(NamedTuple):
    """An account rebound to this number from another one."""

    ts: int
    sender_id: str
    account_id: str
    #: pseudonym of the number the account came from
    origin_pn: str
    event_id: str
    device_id: str | None


@dataclass(slots=True)
class Departure:
    """An account that left this number."""

    left_at: int
    #: pseudonym of the number it moved to
    moved_to: str | None
    #: loan-obligation sends about it to this number since it left
    sends_since: int = 0


@dataclass(slots=True)
class StaleSends:
    """One bucket's loan-obligation sends to this number about an account that had left it."""

    #: "<sender>|<account>" of the first such send in the bucket
    account: str
    last_ts: int
    sends: int = 0
    message_ids: list = field(default_factory=list)


@dataclass(slots=True)
class NumberState:
    #: accounts rebound to this number (Arrival), oldest first
    arrivals: list = field(default_factory=list)
    #: "<sender>|<account>" -> Departure
    departures: dict = field(default_factory=dict)
    #: bucket start -> StaleSends
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
                if state.departures[other].left_at <= f.ts:
                    del state.departures[other]
            if f.other_pn is not None:
                state.arrivals.append(Arrival(f.ts, f.sender_id, f.account_id, f.other_pn, f.event_id, f.device_id))
                keep_in_time_order(state.arrivals)
                state.arrivals = [a for a in state.arrivals if a.ts >= f.ts - FAN_IN_HORIZON_MS][-MAX_ARRIVALS:]
                start = self.mark(key, f.ts)
                state.fan_in_due[start] = True
        else:
            state.arrivals = [a for a in state.arrivals if f"{a.sender_id}|{a.account_id}" != acct or a.ts > f.ts]
            state.departures[acct] = Departure(f.ts, f.other_pn)
            if len(state.departures) > MAX_DEPARTURES:
                oldest = min(state.departures, key=lambda a: state.departures[a].left_at)
                del state.departures[oldest]
        self.save(key, state)
        return None

    def _stale_send(self, state: NumberState, key: str, send) -> None:
        if not send.account_id:
            return
        acct = f"{send.sender_id}|{send.account_id}"
        left = state.departures.get(acct)
        if left is None or send.ts < left.left_at + STALE_GRACE_MS or send.ts > left.left_at + STALE_HORIZON_MS:
            return
        start = self.mark(key, send.ts)
        row = state.stale.get(start)
        if row is None:
            row = state.stale[start] = StaleSends(acct, send.ts)
        row.sends += 1
        row.last_ts = max(row.last_ts, send.ts)
        if len(row.message_ids) < SAMPLES:
            row.message_ids.append(send.message_id)
        left.sends_since += 1
        state.last_ts = max(state.last_ts, send.ts)
        self.save(key, state)

    def close(self, key: str, start: int, end: int) -> Iterable[Finding]:
        state = self.entities.get(key)
        if state is None:
            return ()
        out = []
        row = state.stale.pop(start, None)
        if row is not None:
            left = state.departures.get(row.account)
            level, ids = self._level(key, STALE_BINDING_SEND, row.account.partition("|")[0], end)
            least, single_after = STALE_LEVELS[level]
            if left is not None and (left.sends_since >= least or row.last_ts - left.left_at >= single_after):
                out.append(self._stale_finding(state, key, start, end, row))
                out[-1].controls = ids
        if state.fan_in_due.pop(start, None):
            fan = self._fan_in_finding(state, key, end)
            if fan is not None:
                out.append(fan)
        self.save(key, state)
        # One dedup key per number: the stronger finding speaks.
        if len(out) > 1:
            out = [max(out, key=lambda f: f.score)]
        return out

    def _stale_finding(self, state: NumberState, key: str, start: int, end: int, row: StaleSends) -> Finding:
        acct, last, samples = row.account, row.last_ts, row.message_ids
        left = state.departures[acct]
        moved_at, moved_to, since_move = left.left_at, left.moved_to, left.sends_since
        sender_id, _, account_id = shown_account(self.ctx, acct).partition("|")
        since_h = (last - moved_at) / HOUR_MS
        severity = CRITICAL if since_move >= 3 else WARNING
        return Finding(
            kind=REBIND_ANOMALY,
            reason=STALE_BINDING_SEND,
            severity=severity,
            entity_type=NUMBER,
            entity_id=key,
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
        recent = [a for a in state.arrivals if end - FAN_IN_HORIZON_MS <= a.ts < end]
        origins: dict[str, tuple] = {}
        for a in recent:
            origins.setdefault(a.origin_pn, a)
        n = len(origins)
        senders = sorted({a.sender_id for a in recent})
        level, ids = self._level(key, NUMBER_FAN_IN, senders[0] if len(senders) == 1 else None, end)
        least = FAN_IN_LEVELS[level]
        # Two accounts from two numbers: a family sharing a phone looks the same, so only across lenders
        # and only as info; from FAN_IN_MIN numbers on, no household explains it.
        if n < least and not (n == 2 and len(senders) >= 2 and level == NORMAL):
            return None
        accounts = [shown_account(self.ctx, f"{a.sender_id}|{a.account_id}") for a in recent]
        span_h = (recent[-1].ts - recent[0].ts) / HOUR_MS
        if n < least:
            severity = INFO
        else:
            severity = CRITICAL if n >= 5 or len(senders) >= 2 else WARNING
        return Finding(
            kind=REBIND_ANOMALY,
            reason=NUMBER_FAN_IN,
            severity=severity,
            entity_type=NUMBER,
            entity_id=key,
            window_start=recent[0].ts - recent[0].ts % BUCKET_MS,
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
                "event_ids": [a.event_id for a in recent],
                "devices": sorted({a.device_id for a in recent if a.device_id}),
            },
            sender_id=senders[0] if len(senders) == 1 else None,
            last_seen=recent[-1].ts,
            controls=ids,
        )

    def _level(self, key: str, reason: str, sender_id: str | None, t: int) -> tuple[str, tuple[str, ...]]:
        """The sensitivity level in force for this number (a pseudonym since intake) and reason."""
        book = self.ctx.controls
        if not book.active:
            return NORMAL, ()
        return book.level(Subject(REBIND_ANOMALY, reason, sender_id, None, NUMBER, key), t)

    def idle_since(self, state: NumberState) -> int:
        # Departures matter for STALE_HORIZON_MS, arrivals for FAN_IN_HORIZON_MS; then the number is forgotten.
        if state.departures:
            newest = max(d.left_at for d in state.departures.values())
            return max(newest + STALE_HORIZON_MS, state.last_ts + FAN_IN_HORIZON_MS) - self.ctx.idle_ms
        return state.last_ts + FAN_IN_HORIZON_MS - self.ctx.idle_ms
