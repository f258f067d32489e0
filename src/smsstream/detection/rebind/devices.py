"""``device_fan_out``: one device moving many accounts away from different numbers.

Keyed by ``device_id``. A device keeps the rebinds of the last
``DEVICE_WINDOW_MS`` (at most ``MAX_DEVICE_ROWS``); staff devices (branch,
call centre) earn their own higher rate. Sensitivity moves the fire score
and the fewest numbers (``DEVICE_LEVELS``); a device a ``bulk_rebinds``
allowance names for a lender does not count that lender's accounts.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any, ClassVar, Iterable, NamedTuple

from smsstream.detection.alerts import Finding
from smsstream.detection.base import Part
from smsstream.detection.controls import BULK_REBINDS, HIGH, LOW, NORMAL, Subject
from smsstream.detection.rebind.evidence import SAMPLES, keep_in_time_order, shown_account, top_counts
from smsstream.detection.rebind.rates import BUSINESS_HOURS_FACTOR, HOLD_SCORE, SENDER_PRIOR_DAYS, DelayedRate
from smsstream.detection.stats import poisson_tail_score
from smsstream.records import BINDINGS
from smsstream.vocabulary import CRITICAL, DAY_MS, DEVICE, DEVICE_FAN_OUT, HOUR_MS, INFO, REBIND_ANOMALY, WARNING

DEVICE_WINDOW_MS = 6 * HOUR_MS
MAX_DEVICE_ROWS = 64
DEVICE_FAN_OUT_MIN = 3
#: A device's fan-out fires lower: three accounts moved off three numbers from one phone is already odd.
DEVICE_FIRE_SCORE = 2.5
DEVICE_PRIOR_PER_DAY = 0.5
STAFF_DEVICE_PRIOR_PER_DAY = 20.0
STAFF_CHANNELS = frozenset({"branch", "call_center"})
#: By sensitivity level: (fire score, fewest distinct numbers left).
DEVICE_LEVELS = {LOW: (4.0, 4), NORMAL: (DEVICE_FIRE_SCORE, DEVICE_FAN_OUT_MIN), HIGH: (2.0, 3)}


def _rebind_device(b) -> str | None:
    return b.device_id if b.old_number is not None and b.device_id else None


class DeviceRebind(NamedTuple):
    """An account this device moved from one number to another (numbers as pseudonyms)."""

    ts: int
    #: "<sender>|<account>"
    account: str
    old_pn: str
    new_pn: str
    channel: str | None


@dataclass(slots=True)
class DeviceState:
    #: rebinds (DeviceRebind), oldest first
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
        state.rows.append(DeviceRebind(b.ts, f"{b.sender_id}|{b.account_id}", b.old_number, b.new_number,
                                      b.channel))
        keep_in_time_order(state.rows)
        state.rows = [r for r in state.rows if r.ts >= b.ts - DEVICE_WINDOW_MS][-MAX_DEVICE_ROWS:]
        start = self.mark(key, b.ts)
        state.pending[start] = state.pending.get(start, 0) + 1
        self.save(key, state)
        return None

    def close(self, key: str, start: int, end: int) -> Iterable[Finding]:
        state = self.entities.get(key)
        if state is None:
            return ()
        count = state.pending.pop(start, 0)
        rows = [r for r in state.rows if end - DEVICE_WINDOW_MS <= r.ts < end]
        level: str = NORMAL
        ids: tuple[str, ...] = ()
        if self.ctx.controls.active:
            rows, level, ids = self._controls(key, rows, end)
        fire_score, least = DEVICE_LEVELS[level]
        # Distinct numbers the accounts left: one customer moving all their loans counts once.
        origins = {r.old_pn for r in rows}
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
        score = poisson_tail_score(n, lam) if n >= least else 0.0
        accounts = [r.account for r in rows]
        senders = sorted({a.partition("|")[0] for a in accounts})
        # Two people's accounts at two lenders moved from one customer phone: a helpful relative, or the
        # start of a fan-out. Worth an info, never more, until a third account follows.
        early = n == 2 and len(senders) >= 2 and not state.staff and poisson_tail_score(n, lam) >= 1.0
        abnormal = score >= min(HOLD_SCORE, fire_score)
        # as for a young lender: a device's first day is learned whole, so a busy staff device's
        # ordinary day is not held out as abnormal and never learned
        state.rate.observe(start, count, abnormal and not (young and state.staff))
        self.save(key, state)
        if not (abnormal or early):
            return ()
        if early and not abnormal:
            score = poisson_tail_score(n, lam)
        new_numbers = {r.new_pn for r in rows}
        return [Finding(
            kind=REBIND_ANOMALY,
            reason=DEVICE_FAN_OUT,
            severity=INFO if not abnormal else (CRITICAL if n >= 10 or len(senders) >= 2 else WARNING),
            entity_type=DEVICE,
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
                "channels": top_counts(Counter(r.channel for r in rows)),
            },
            sender_id=senders[0] if len(senders) == 1 else None,
            last_seen=rows[-1].ts if rows else end,
            firing=early or score >= fire_score,
            controls=ids,
        )]

    def _controls(self, key: str, rows: list, t: int) -> tuple[list, str, tuple[str, ...]]:
        """The rows that count (not those of a lender whose allowance names this device), the sensitivity
        level in force, and the ids of the entries that shaped them."""
        book = self.ctx.controls
        senders = sorted({r.account.partition("|")[0] for r in rows})
        used: list[str] = []
        if BULK_REBINDS in book.present:
            excused = set()
            for sender in senders:
                found = [e for e in book.allowances(BULK_REBINDS, Subject(REBIND_ANOMALY, DEVICE_FAN_OUT, sender, None,
                                                                          DEVICE, key), t) if key in e.devices]
                if found:
                    excused.add(sender)
                    used += [e.id for e in found]
            if excused:
                rows = [r for r in rows if r.account.partition("|")[0] not in excused]
                senders = [s for s in senders if s not in excused]
        level, ids = book.level(Subject(REBIND_ANOMALY, DEVICE_FAN_OUT, senders[0] if len(senders) == 1 else None,
                                        None, DEVICE, key), t)
        return rows, level, tuple(dict.fromkeys(ids + tuple(used)))
