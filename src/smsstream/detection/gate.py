"""The input gate: which events are duplicates or too late to count, decided on event time.

Sends (by ``message_id``), bindings (by ``event_id``) and receipts (by
``message_id`` + ``status``) seen again within the duplicate horizon of event
time are duplicates: counting them twice would inflate every rate.

A send or binding behind the latest event time by more than the allowed
lateness still counts: its own bucket may be judged already, so it counts in
the first bucket still open (``base.Part.mark``). Only one behind by more than
the *late horizon* is refused as late: whatever it was evidence of has been
judged long ago. Both refusals are dead-lettered with a clear error, never
dropped silently. The duplicate horizon is never shorter than the late
horizon, so a late copy of a record is still known as a copy.

Receipts are never late: carriers report hours (up to 72 h) after the send.
Reference data (borrowers, templates) is never late either.
"""

from __future__ import annotations

from smsstream.detection.base import BUCKET_MS, DEFAULT_LATE_HORIZON_MS
from smsstream.errors import DuplicateEvent, LateEvent
from smsstream.records import BINDINGS, RECEIPTS, SENDS
from smsstream.vocabulary import HOUR_MS, MINUTE_MS, SECOND_MS

#: How long an id is remembered for duplicate detection (event time).
DEFAULT_DEDUP_HORIZON_MS = HOUR_MS


class EventGate:
    """Remembers recent event ids per time bucket (bounded) and the latest event time."""

    def __init__(self, late_horizon_ms: int = DEFAULT_LATE_HORIZON_MS, horizon_ms: int = DEFAULT_DEDUP_HORIZON_MS):
        self.late_horizon_ms = late_horizon_ms
        self.horizon_ms = max(horizon_ms, late_horizon_ms)
        self.max_ts = 0
        self.seen: dict[str, int] = {}
        #: bucket start -> ids first seen in it, so expiry walks whole buckets
        self._by_bucket: dict[int, list[str]] = {}

    def check(self, topic: str, record) -> None:
        """Raise ``DuplicateEvent`` or ``LateEvent``, or note the event as seen."""
        if topic == SENDS:
            ident = record.message_id
        elif topic == RECEIPTS:
            ident = "r|" + record.message_id + "|" + record.status
        elif topic == BINDINGS:
            ident = "b|" + record.event_id
        else:
            return
        ts = record.ts
        seen = self.seen
        max_ts = self.max_ts
        if ident in seen or (topic != RECEIPTS and max_ts and ts < max_ts - self.late_horizon_ms):
            self._reject(topic, record, ident)
        if ts > max_ts:
            self.max_ts = ts
        seen[ident] = ts
        b = ts - ts % BUCKET_MS
        ids = self._by_bucket.get(b)
        if ids is None:
            self._by_bucket[b] = [ident]
        else:
            ids.append(ident)

    def _reject(self, topic: str, record, ident: str) -> None:
        """Raise the error that says why ``record`` is a duplicate or late."""
        what = "send" if topic == SENDS else "binding" if topic == BINDINGS else "receipt"
        ts = record.ts
        if ident in self.seen:
            first = self.seen[ident]
            label = "event_id" if topic == BINDINGS else "message_id"
            extra = f" with status {record.status}" if topic == RECEIPTS else ""
            raise DuplicateEvent(
                f"duplicate {what}{extra}: this {label} was already seen at ts={first} "
                f"(ids are remembered for {self.horizon_ms // MINUTE_MS} min of event time)"
            )
        behind = (self.max_ts - ts) // SECOND_MS
        raise LateEvent(
            f"late {what}: ts={ts} is {behind} s behind the latest event time; "
            f"at most {self.late_horizon_ms // SECOND_MS} s is accepted (SMSSTREAM_LATE_HORIZON_S)"
        )

    def expire(self) -> None:
        """Forget ids older than the horizon."""
        limit = self.max_ts - self.horizon_ms
        for b in [b for b in self._by_bucket if b < limit]:
            for ident in self._by_bucket.pop(b):
                self.seen.pop(ident, None)
