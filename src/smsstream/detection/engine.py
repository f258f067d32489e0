"""All detector parts wired in-process: what ``replay`` and the tests drive.

The streaming worker runs each part of ``DETECTOR_PARTS`` as its own agent on
a stream repartitioned by the part's key; here the same parts are chained
directly. One ``EventGate`` decides duplicates and lateness for the whole
input, and one watermark (latest event time minus the allowed lateness)
closes buckets in every part, so the alerts do not depend on how events
interleave within the allowed lateness.
"""

from __future__ import annotations

from collections import Counter
from typing import Any, Iterable

from smsstream.detection.base import BUCKET_MS, DEFAULT_LATENESS_MS, Part, PartContext
from smsstream.detection.delivery import DELIVERY_PARTS
from smsstream.detection.facts import RoutineTally
from smsstream.detection.gate import DEFAULT_DEDUP_HORIZON_MS, DuplicateEvent, EventGate, LateEvent
from smsstream.detection.non_borrower import NON_BORROWER_PARTS
from smsstream.detection.rebind import REBIND_PARTS
from smsstream.detection.templates import TEMPLATE_PARTS
from smsstream.pseudonym import Pseudonymizer

__all__ = ["DETECTOR_PARTS", "Engine", "DuplicateEvent", "LateEvent"]

#: Every part of every detector, in the order facts flow (producers before consumers).
#: Detector modules add their parts here.
DETECTOR_PARTS: list[type[Part]] = [*NON_BORROWER_PARTS, *DELIVERY_PARTS, *TEMPLATE_PARTS, *REBIND_PARTS]

#: How often (event time) idle entities and old duplicate ids are forgotten.
EXPIRE_EVERY_MS = 3_600_000


def next_expiry(limit: int) -> int:
    """The first point of the hourly expiry grid after ``limit``."""
    return limit - limit % EXPIRE_EVERY_MS + EXPIRE_EVERY_MS


class Engine:
    """Feeds typed records to every part and collects the alert records they write."""

    def __init__(
        self,
        pseudonymizer: Pseudonymizer,
        alert_repeat_s: int = 3600,
        lateness_ms: int = DEFAULT_LATENESS_MS,
        dedup_horizon_ms: int = DEFAULT_DEDUP_HORIZON_MS,
        parts: Iterable[type[Part]] | None = None,
        idle_ms: int | None = None,
    ):
        ctx = PartContext(pseudonymizer, alert_repeat_ms=alert_repeat_s * 1000, lateness_ms=lateness_ms)
        if idle_ms is not None:
            ctx.idle_ms = idle_ms
        self.ctx = ctx
        self.parts: list[Part] = [cls(ctx) for cls in (DETECTOR_PARTS if parts is None else parts)]
        self.routes: dict[str, list[tuple[Part, Any]]] = {}
        for part in self.parts:
            for stream, keyfn in part.inputs.items():
                self.routes.setdefault(stream, []).append((part, keyfn))
        self.gate = EventGate(lateness_ms, dedup_horizon_ms)
        self.tally = RoutineTally()
        self._roll_at = 0
        self.events: Counter[str] = Counter()
        self.dead_letters: Counter[str] = Counter()
        self.alerts: Counter[str] = Counter()
        self._closed_until = 0
        self._next_expiry = 0

    def ingest(self, topic: str, record: Any) -> list[dict]:
        """Take one decoded record; return the alert records of the buckets its event time closed.

        Raises ``DuplicateEvent`` or ``LateEvent`` (both ``RecordError``) for
        records to dead-letter; nothing of them has been counted.
        """
        if record is None:
            return []
        try:
            self.gate.check(topic, record)
        except DuplicateEvent:
            self.dead_letters["duplicate"] += 1
            raise
        except LateEvent:
            self.dead_letters["late"] += 1
            raise
        self.events[topic] += 1
        gate = self.gate
        if gate.max_ts >= self._roll_at:
            self._roll(gate.max_ts)
        routes = self.routes
        for part, keyfn in routes.get(topic, ()):
            key = keyfn(record)
            if key is None:
                continue
            for key in (key,) if key.__class__ is str else key:
                facts = part.process(topic, key, record)
                if facts:
                    self._route_facts(facts)
        if gate.max_ts:
            watermark = gate.max_ts - gate.lateness_ms
            if watermark - watermark % BUCKET_MS > self._closed_until:
                return self._advance(watermark)
        return []

    def _roll(self, ts: int) -> None:
        """Forward the routine counts of the bucket the input has left (they are not judged before it closes)."""
        rolled = self.tally.roll(ts)
        self._roll_at = self.tally.open_bucket + BUCKET_MS
        if rolled:
            self._route_facts(rolled, add_up=False)

    def _route_facts(self, facts: list, add_up: bool = True) -> None:
        routes = self.routes
        take = self.tally.take
        for stream, value in facts:
            if add_up and take(stream, value):
                continue
            for part, keyfn in routes.get(stream, ()):
                key = keyfn(value)
                if key is not None:
                    more = part.process(stream, key, value)
                    if more:
                        self._route_facts(more, add_up)

    def _advance(self, watermark: int) -> list[dict]:
        out: list[dict] = []
        limit = watermark - watermark % BUCKET_MS
        # Expire on a fixed hourly grid of event time, after closing exactly up to each grid
        # point, so alerts do not depend on how far one advance jumps (worker shards jump further).
        while self._next_expiry and self._next_expiry <= limit:
            at = self._next_expiry
            for part in self.parts:
                out.extend(part.advance(at))
                part.expire(at)
            self.gate.expire()
            self._next_expiry = at + EXPIRE_EVERY_MS
        for part in self.parts:
            out.extend(part.advance(watermark))
        if not self._next_expiry:
            self._next_expiry = next_expiry(limit)
        self._closed_until = limit
        for record in out:
            self.alerts[record["status"]] += 1
        return out

    def flush(self) -> list[dict]:
        """End of input: close every bucket still open and return what that writes."""
        self._route_facts(self.tally.roll(self.tally.open_bucket + BUCKET_MS), add_up=False)
        out: list[dict] = []
        for part in self.parts:
            out.extend(part.flush())
        for record in out:
            self.alerts[record["status"]] += 1
        return out

    def counters(self) -> dict[str, Any]:
        """What the engine did, for metrics and the end-of-replay report."""
        parts: Counter[str] = Counter()
        for part in self.parts:
            parts.update(getattr(part, "counters", {}))
        return {
            "events": dict(self.events),
            "dead_letters": dict(self.dead_letters),
            "alerts": dict(self.alerts),
            **{name: n for name, n in sorted(parts.items())},
        }
