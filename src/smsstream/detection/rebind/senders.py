"""``mass_rebind``: more of a lender's accounts changing number than its own rate explains.

Keyed by sender. Rebinds in the trailing 10 min / 30 min / 1 h / 6 h are
judged against the lender's own rate (a big lender's handful a day is its
normal), with the devices, IPs and channels they came from. A sender keeps
6 h of per-bucket counts and ``MAX_SENDER_ROWS`` recent rebinds for evidence.
Sensitivity moves the scores and the fewest accounts (``MASS_REBIND_LEVELS``);
rebinds from devices or networks a ``bulk_rebinds`` allowance names (a
branch, a call centre) are not counted in the windows judged.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any, ClassVar, Iterable, NamedTuple

from smsstream.detection.alerts import Finding
from smsstream.detection.base import Part
from smsstream.detection.controls import BULK_REBINDS, HIGH, LOW, NORMAL, Entry, Subject
from smsstream.detection.rebind.evidence import SAMPLES, keep_in_time_order, shown_account, top_counts
from smsstream.detection.rebind.rates import (
    BUSINESS_HOURS_FACTOR, FIRE_SCORE, HOLD_SCORE, SENDER_PRIOR_DAYS, DelayedRate,
)
from smsstream.detection.stats import BucketWindow, poisson_tail_score
from smsstream.records import BINDINGS
from smsstream.vocabulary import CRITICAL, DAY_MS, HOUR_MS, MASS_REBIND, MINUTE_MS, REBIND_ANOMALY, SENDER, WARNING

MAX_SENDER_ROWS = 200
SENDER_WINDOWS_MS = (10 * MINUTE_MS, 30 * MINUTE_MS, HOUR_MS, 6 * HOUR_MS)
MASS_REBIND_MIN = 5
SENDER_COLD_FIRE_SCORE = 12.0
#: Assumed rebinds per day for an entity with no history (and how many days that guess weighs).
SENDER_PRIOR_PER_DAY = 2.0
#: By sensitivity level: (fire score, hold score, a young lender's fire score, fewest accounts).
MASS_REBIND_LEVELS = {
    LOW: (8.0, 4.0, 16.0, 8),
    NORMAL: (FIRE_SCORE, HOLD_SCORE, SENDER_COLD_FIRE_SCORE, MASS_REBIND_MIN),
    HIGH: (4.0, 2.0, 9.0, 4),
}


def _rebind_sender(b) -> str | None:
    return b.sender_id if b.old_number is not None else None


class Rebind(NamedTuple):
    """One of a lender's accounts moved to a new number (the old one as a pseudonym)."""

    ts: int
    account_id: str
    old_pn: str
    device_id: str | None
    source_ip: str | None
    channel: str | None


class WindowScore(NamedTuple):
    """How surprising the accounts rebound in one trailing window are against the lender's rate."""

    score: float
    accounts: int
    #: rebinds the window would hold at the lender's rate
    expected: float
    window_ms: int
    per_day: float


@dataclass(slots=True)
class SenderState:
    window: BucketWindow = field(default_factory=BucketWindow)  # [start, rebinds]
    rate: DelayedRate = field(default_factory=DelayedRate)
    #: rebinds in the buckets closed so far (for a young sender's rate)
    total: int = 0
    #: recent rebinds for evidence (Rebind), oldest first
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
        state.recent.append(Rebind(b.ts, b.account_id, b.old_number, b.device_id, b.source_ip,
                                   b.channel))
        keep_in_time_order(state.recent)
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
        level, ids, allowed = self._controls(key, end)
        fire_score, hold_score, cold_fire_score, least = MASS_REBIND_LEVELS[level]
        recent = state.recent if not allowed else [r for r in state.recent if not _in_bulk(r, allowed)]
        if len(recent) < len(state.recent):
            ids += tuple(e.id for e in allowed if any(_in_bulk(r, [e]) for r in state.recent))
        best = WindowScore(0.0, 0, 0.0, SENDER_WINDOWS_MS[0], per_day)
        for w in SENDER_WINDOWS_MS:
            # Accounts, not rebinds: one account flapping is account_flapping's business.
            n = len({r.account_id for r in recent if end - w <= r.ts < end})
            expected_per_day = per_day
            if young:
                # The learned rate lags a window behind: judge against what came before this window.
                history = end - w - first_ts
                if history < w:
                    continue  # less of this lender's history than the window itself to judge it against
                before = state.total - sum(r[1] for r in state.window.rows if end - w <= r[0] < end)
                expected_per_day = max(per_day, before * DAY_MS / history)
            lam = expected_per_day * w / DAY_MS * BUSINESS_HOURS_FACTOR
            score = poisson_tail_score(n, lam) if n >= least else 0.0
            if score > best.score:
                best = WindowScore(score, n, lam, w, expected_per_day)
        score, n, lam, w, per_day = best
        abnormal = score >= hold_score
        # A young sender's rate is still mostly the prior: learn all of it, or a large lender's
        # ordinary day would be held out as abnormal and never learned.
        state.rate.observe(start, count, abnormal and not young)
        self.save(key, state)
        if not abnormal:
            return ()
        fire_score = cold_fire_score if young else fire_score
        rows = [r for r in recent if end - w <= r.ts < end]
        devices = Counter(r.device_id for r in rows)
        ips = Counter(r.source_ip for r in rows)
        channels = Counter(r.channel for r in rows)
        top_device = devices.most_common(1)[0] if devices else (None, 0)
        concentrated = (
            f"; {top_device[1]} from device {top_device[0]}" if top_device[0] and top_device[1] >= 2 else ""
        )
        return [Finding(
            kind=REBIND_ANOMALY,
            reason=MASS_REBIND,
            severity=CRITICAL if score >= 2 * fire_score and n >= 10 else WARNING,
            entity_type=SENDER,
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
                "accounts": [shown_account(self.ctx, r.account_id) for r in rows][-SAMPLES:],
                "numbers": [r.old_pn for r in rows][-SAMPLES:],
                "devices": top_counts(devices),
                "source_ips": top_counts(ips),
                "channels": top_counts(channels),
            },
            sender_id=key,
            last_seen=rows[-1].ts if rows else end,
            firing=score >= fire_score,
            controls=tuple(dict.fromkeys(ids)),
        )]

    def _controls(self, key: str, t: int) -> tuple[str, tuple[str, ...], list[Entry]]:
        """The sensitivity level in force for the lender (and its entry's id), and its bulk-rebind allowances."""
        book = self.ctx.controls
        if not book.active:
            return NORMAL, (), []
        subject = Subject(REBIND_ANOMALY, MASS_REBIND, key, None, SENDER, key)
        level, ids = book.level(subject, t)
        allowed = book.allowances(BULK_REBINDS, subject, t) if BULK_REBINDS in book.present else []
        return level, ids, allowed


def _in_bulk(row: Rebind, allowed: list[Entry]) -> bool:
    """A rebind from a device or network that an allowance says rebinds in bulk."""
    return any((row.device_id is not None and row.device_id in e.devices) or e.allows_ip(row.source_ip)
               for e in allowed)
