"""Every detector part in one process: what ``replay`` and the tests drive.

The streaming worker runs each part of ``DETECTOR_PARTS`` on a stream
repartitioned by the part's key, one ``PartDriver`` per partition behind an
event-time merge. Here each part gets one ``PartDriver`` and the drivers hand
facts to each other directly, in the order the input gives them. The
drivers and the routes are the worker's own, so replay writes the alert
records the worker writes.
"""

from __future__ import annotations

from collections import Counter
from typing import Any, Iterable

from smsstream.detection.base import BUCKET_MS, DEFAULT_LATE_HORIZON_MS, DEFAULT_LATENESS_MS, Part, PartContext
from smsstream.detection.controls import ControlBook
from smsstream.detection.delivery import DELIVERY_PARTS
from smsstream.detection.driver import EXPIRE_EVERY_MS, Item, Outcome, PartDriver, Source
from smsstream.detection.intake import Intake
from smsstream.detection.non_borrower import NON_BORROWER_PARTS
from smsstream.detection.rebind import REBIND_PARTS
from smsstream.detection.routing import Routes
from smsstream.detection.templates import TEMPLATE_PARTS
from smsstream.config import Settings
from smsstream.pseudonym import Pseudonymizer
from smsstream.vocabulary import DAY_MS

__all__ = ["DETECTOR_PARTS", "Engine"]

#: Every part of every detector, in the order facts flow (producers before consumers).
#: Detector modules add their parts here.
DETECTOR_PARTS: list[type[Part]] = [*NON_BORROWER_PARTS, *DELIVERY_PARTS, *TEMPLATE_PARTS, *REBIND_PARTS]

#: The origin name of replay's input: one stream, in file order.
INPUT = "input"


class Engine:
    """Feeds typed records to every part's driver and collects the alert records they write."""

    def __init__(
        self,
        pseudonymizer: Pseudonymizer,
        alert_repeat_s: int = 3600,
        lateness_ms: int = DEFAULT_LATENESS_MS,
        parts: Iterable[type[Part]] | None = None,
        idle_ms: int | None = None,
        late_horizon_ms: int = DEFAULT_LATE_HORIZON_MS,
        shared_list_window_ms: int = DAY_MS,
        controls: ControlBook | None = None,
    ):
        ctx = PartContext(pseudonymizer, alert_repeat_ms=alert_repeat_s * 1000, lateness_ms=lateness_ms,
                          late_horizon_ms=max(late_horizon_ms, lateness_ms), shared_list_window_ms=shared_list_window_ms,
                          controls=controls if controls is not None else ControlBook())
        if idle_ms is not None:
            ctx.idle_ms = idle_ms
        self.ctx = ctx
        self.intake = Intake(pseudonymizer)
        given = DETECTOR_PARTS if parts is None else list(parts)
        self.routes = Routes(given)
        #: producers first (``Routes``), so routine counts reach their consumers before a bucket closes
        self.drivers = {p.name: PartDriver(p(ctx), self.routes.reports(p.name)) for p in self.routes.parts}
        #: the parts in the order given
        self.parts: list[Part] = [self.drivers[p.name].part for p in given]
        #: one outcome for all drivers: facts are handed on as soon as they appear
        self.out = Outcome()
        for driver in self.drivers.values():
            driver.out = self.out
        self.max_ts = 0
        #: the input's bucket, and the bucket its watermark is in, as of the last catch-up
        self._caught_up = (0, 0)
        self.events: Counter[str] = Counter()
        self.dead_letters: Counter[str] = Counter()
        self.alerts: Counter[str] = Counter()

    @classmethod
    def from_settings(cls, settings: Settings, controls: ControlBook | None = None) -> "Engine":
        """The engine the worker's settings describe (key, repeat interval, lateness): replay's."""
        return cls(Pseudonymizer(settings.require_pseudonym_key()), alert_repeat_s=settings.alert_repeat_s,
                   lateness_ms=settings.allowed_lateness_s * 1000, late_horizon_ms=settings.late_horizon_s * 1000,
                   shared_list_window_ms=settings.shared_list_window_s * 1000, controls=controls)

    @property
    def controls(self) -> ControlBook:
        """The operator controls the parts consult; replay applies control lines of its input here."""
        return self.ctx.controls

    def ingest(self, topic: str, record: Any, source: Source | None = None) -> list[dict]:
        """Take one decoded record; return the alert records it caused (buckets it closed, evidence it completed).

        Raises the ``RecordError`` (``DuplicateEvent``, ``LateEvent``) of a
        record to dead-letter; nothing of it has been counted.
        """
        if record is None:
            return []
        record = self.intake(topic, record)
        ts = record.ts or self.max_ts
        if ts > self.max_ts:
            self.max_ts = ts
            self._catch_up(ts)
        item_source = source or Source(topic, None, 0, None, None)
        for name, part_key, _ in self.routes.route(topic, record):
            self._take(name, Item(topic, part_key, record, ts, INPUT, item_source))
        out = self.out
        if out.dead:
            dead, out.dead = out.dead, []
            error = dead[0][1]
            self.dead_letters[error.reason] += 1
            raise error
        self.events[topic] += 1
        return self._alerts()

    def _take(self, name: str, item: Item) -> None:
        """One item into one driver, and the facts it makes into theirs, depth first."""
        self.drivers[name].take(item)
        self._hand_on(name)

    def _hand_on(self, name: str) -> None:
        out = self.out
        if not out.facts:
            return
        facts, out.facts = out.facts, []
        route_fact = self.routes.route_fact
        for stream, fact, ts, _ in facts:
            for target, key in route_fact(stream, fact):
                self._take(target, Item(stream, key, fact, ts, name))

    def _catch_up(self, ts: int) -> None:
        """The input has reached ``ts``: once that enters a new bucket, or its watermark does, every
        driver catches up, as a worker's shards do on their merge bound.

        Producers hand over their routine counts first, so they reach their
        consumers before those close the bucket; then every part closes its
        buckets, one hourly expiry point after the other, as one clock.
        """
        watermark = ts - 1 - self.ctx.lateness_ms
        now = (ts // BUCKET_MS, watermark // BUCKET_MS)
        if now == self._caught_up:
            return
        self._caught_up = now
        drivers = self.drivers
        for name, driver in drivers.items():
            driver.hand_over(ts)
            self._hand_on(name)
        limit = watermark - watermark % BUCKET_MS
        at = min((d.next_expiry for d in drivers.values() if d.next_expiry), default=0)
        while at and at <= limit:
            for driver in drivers.values():
                driver.advance(at)
            at += EXPIRE_EVERY_MS
        for driver in drivers.values():
            driver.advance(watermark)

    def _alerts(self) -> list[dict]:
        out = self.out
        if not out.alerts:
            return []
        alerts, out.alerts = out.alerts, []
        for record in alerts:
            self.alerts[record["status"]] += 1
        return alerts

    def flush(self) -> list[dict]:
        """End of input: close every bucket still open and return what that writes."""
        for name, driver in self.drivers.items():
            driver.flush()
            self._hand_on(name)
        return self._alerts()

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
