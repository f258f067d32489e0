"""Alertmanager (API v2) as a target: the latest state of every dedup key, kept in sync.

Alertmanager holds alerts, not events, and forgets a firing alert once its
``endsAt`` passes. So this target keeps the latest record per dedup key and
reconciles: a firing alert is sent with ``endsAt`` ``5 * refresh_s`` ahead and
re-sent every ``refresh_s``; one that resolves, or stops being pageable (shadow,
silenced, no record for ``firing_ttl_s``), is sent once with ``endsAt`` = now. A
record counts as delivered when its state, or a newer one of its key, has been
accepted. While Alertmanager is down, newer states replace older ones in the
next attempt, so an outage costs one POST, not one per record.

Labels identify an alert (``alertname`` = ``smsstream_<kind>``, kind, reason,
severity, entity, sender, dedup key); when they change within an episode (the
severity rises) the old label set is ended in the same request.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Callable

import orjson
from aiokafka import TopicPartition

from smsstream.config import NotifySettings
from smsstream.notify.alert import AlertRecord
from smsstream.notify.delivery import FAILED, REJECTED, SENT, Courier, Ledger, Pending
from smsstream.notify.metrics import NotifyMetrics

log = logging.getLogger("smsstream.notify")

API_PATH = "/api/v2/alerts"
#: Alertmanager holds a firing alert this many refresh intervals: a few missed refreshes do not resolve it.
HOLD_REFRESHES = 5
#: At most this many dedup keys are tracked; past it the oldest is let go (counted as too_many_firing).
MAX_TRACKED = 10_000
#: Alerts per POST.
MAX_BATCH = 200

_LABEL_FIELDS = ("kind", "reason", "severity", "entity_type", "entity_id", "dedup_key")


def api_url(base: str) -> str:
    """``http://am:9093`` (or the full alerts URL) -> ``http://am:9093/api/v2/alerts``."""
    base = base.rstrip("/")
    return base if base.endswith(API_PATH) else base + API_PATH


def rfc3339(epoch_s: float) -> str:
    return datetime.fromtimestamp(epoch_s, tz=timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _figure(x: Any) -> str:
    return f"{x:g}" if isinstance(x, float) else str(x)


def alert_labels(alert: AlertRecord) -> dict[str, str]:
    out = {"alertname": f"smsstream_{alert['kind']}"}
    out.update((name, alert[name]) for name in _LABEL_FIELDS)
    if isinstance(alert.get("sender_id"), str) and alert["sender_id"]:
        out["sender_id"] = alert["sender_id"]
    return out


def alert_annotations(alert: AlertRecord, runbook_base_url: str) -> dict[str, str]:
    observed, expected = _figure(alert["observed"]), _figure(alert["expected"])
    out = {
        "summary": alert["summary"],
        "description": f"observed {observed} against expected {expected}"
                       + (f" (score {_figure(alert['score'])})" if isinstance(alert.get("score"), (int, float)) else "")
                       + _window(alert),
        "observed": observed,
        "expected": expected,
        "runbook_url": f"{runbook_base_url}/{alert['kind']}/{alert['reason']}.md",
        "alert_id": alert["alert_id"],
    }
    if isinstance(alert.get("template_id"), str):
        out["template_id"] = alert["template_id"]
    return out


def _window(alert: AlertRecord) -> str:
    start, end = alert.get("window_start"), alert.get("window_end")
    if isinstance(start, int) and isinstance(end, int):
        return f", event time {rfc3339(start / 1000)} to {rfc3339(end / 1000)}"
    return ""


def to_alertmanager(alert: AlertRecord, now_s: float, ends_at_s: float, runbook_base_url: str,
                    label_set: dict[str, str] | None = None) -> dict[str, Any]:
    """One API v2 alert for ``alert``, starting when its episode began (never in the future)."""
    started = min(alert["first_seen"] / 1000, now_s)
    return {
        "labels": label_set if label_set is not None else alert_labels(alert),
        "annotations": alert_annotations(alert, runbook_base_url),
        "startsAt": rfc3339(started),
        "endsAt": rfc3339(max(ends_at_s, started)),
    }


@dataclass(eq=False)
class Tracked:
    """The latest state of one dedup key, and what Alertmanager holds of it."""

    alert: AlertRecord
    tp: TopicPartition
    #: records of this key read and not yet settled, oldest first
    waiting: list[Pending] = field(default_factory=list)
    #: the label set Alertmanager holds as firing (None: none this notifier knows of)
    in_am: dict[str, str] | None = None
    #: monotonic time by which the firing alert is sent again
    refresh_at: float = 0.0


@dataclass
class Change:
    """What one reconcile pass does for one dedup key."""

    key: str
    tracked: Tracked
    #: the records of this key the change covers (those waiting when it was planned)
    settles: list[Pending]
    alerts: list[dict[str, Any]]
    in_am: dict[str, str] | None
    #: why nothing is sent for records that wait (skipped metric), if so
    skip: str | None = None
    refresh: bool = False


class AlertmanagerTarget:
    name = "alertmanager"

    def __init__(self, courier: Courier, settings: NotifySettings, ledger: Ledger, metrics: NotifyMetrics,
                 wall: Callable[[], float] = time.time, mono: Callable[[], float] = time.monotonic):
        self.courier, self.settings, self.ledger, self.metrics = courier, settings, ledger, metrics
        self._wall, self._mono = wall, mono
        self.tracked: dict[str, Tracked] = {}
        self._wake = asyncio.Event()
        #: after a refused batch, this many passes send one key at a time to find the refused one
        self._isolate = 0
        metrics.firing.labels(self.name).set_function(lambda: sum(t.in_am is not None for t in self.tracked.values()))

    def offer(self, pending: Pending, alert: AlertRecord) -> None:
        tracked = self._track(pending.tp, alert)
        tracked.waiting.append(pending)
        self._wake.set()

    def restore(self, tp: TopicPartition, alert: AlertRecord) -> None:
        """A record from before the committed offset: only its state matters, to keep firing alerts firing."""
        self._track(tp, alert)
        self._wake.set()

    def revoke(self, partitions) -> None:
        """Records of these partitions no longer wait here (their next owner reads them again); the alerts
        this notifier holds in Alertmanager are still refreshed until the new assignment is known."""
        partitions = set(partitions)
        for tracked in self.tracked.values():
            if tracked.tp in partitions:
                tracked.waiting = []

    def keep_only(self, partitions) -> None:
        """After an assignment: let go of dedup keys whose partition another notifier owns now."""
        partitions = set(partitions)
        for key in [k for k, t in self.tracked.items() if t.tp not in partitions]:
            del self.tracked[key]

    def status(self) -> dict:
        return {"tracked": len(self.tracked), "firing": sum(t.in_am is not None for t in self.tracked.values())}

    def _track(self, tp: TopicPartition, alert: AlertRecord) -> Tracked:
        tracked = self.tracked.get(alert.dedup_key)
        if tracked is None:
            if len(self.tracked) >= MAX_TRACKED:
                self._let_go_oldest()
            tracked = self.tracked[alert.dedup_key] = Tracked(alert, tp)
        tracked.alert, tracked.tp, tracked.refresh_at = alert, tp, 0.0
        return tracked

    def _let_go_oldest(self) -> None:
        key = min(self.tracked, key=lambda k: self.tracked[k].alert["detected_at"])
        dropped = self.tracked.pop(key)
        log.error("more than %d alerts tracked for Alertmanager; the oldest is no longer refreshed there and its "
                  "%d unsent record(s) are dropped", MAX_TRACKED, len(dropped.waiting))
        self.metrics.dropped.labels(self.name, "too_many_firing").inc(max(1, len(dropped.waiting)))
        for pending in dropped.waiting:
            self.ledger.settle(pending, self.name)

    def _change(self, key: str, tracked: Tracked, now_s: float, now_mono: float) -> Change | None:
        alert, in_am = tracked.alert, tracked.in_am
        now_ms = int(now_s * 1000)
        held = alert.hold_back(now_ms) or ("stale" if alert.firing and alert.stale(now_ms, self.settings.firing_ttl_s)
                                           else None)
        base = self.settings.runbook_base_url
        if alert.firing and not held:
            wanted = alert_labels(alert)
            due = tracked.waiting or now_mono >= tracked.refresh_at or in_am != wanted
            if not due:
                return None
            ends = now_s + HOLD_REFRESHES * self.settings.refresh_s
            sent = [to_alertmanager(alert, now_s, ends, base, wanted)]
            if in_am is not None and in_am != wanted:
                sent.insert(0, to_alertmanager(alert, now_s, now_s, base, in_am))
            return Change(key, tracked, list(tracked.waiting), sent, wanted, refresh=not tracked.waiting)
        if in_am is not None:
            return Change(key, tracked, list(tracked.waiting), [to_alertmanager(alert, now_s, now_s, base, in_am)], None)
        if tracked.waiting and not alert.firing and not alert.shadow:
            # another notifier instance may have sent it firing: ending an unknown alert is harmless
            return Change(key, tracked, list(tracked.waiting), [to_alertmanager(alert, now_s, now_s, base)], None)
        if tracked.waiting:
            return Change(key, tracked, list(tracked.waiting), [], None, skip=held)
        if not alert.firing or held != "silenced":
            del self.tracked[key]  # nothing to send now or later (a silence may lapse: that one stays)
        return None

    def plan(self, limit: int = MAX_BATCH) -> list[Change]:
        """The changes due now, at most ``limit`` that send anything; keys with nothing left are let go."""
        now_s, now_mono = self._wall(), self._mono()
        changes: list[Change] = []
        loud = 0
        for key, tracked in list(self.tracked.items()):
            change = self._change(key, tracked, now_s, now_mono)
            if change is None:
                continue
            changes.append(change)
            loud += bool(change.alerts)
            if loud >= limit:
                break
        return changes

    def apply(self, change: Change, outcome: str) -> None:
        """Settle the records ``change`` covered; on success Alertmanager now holds ``change.in_am``."""
        tracked = change.tracked
        covered = set(change.settles)
        settled = [p for p in tracked.waiting if p in covered]
        tracked.waiting = [p for p in tracked.waiting if p not in covered]
        for pending in settled:
            self.ledger.settle(pending, self.name)
        if change.skip:
            self.metrics.skipped.labels(self.name, change.skip).inc(len(settled))
        elif outcome == SENT:
            self.metrics.sent.labels(self.name).inc(len(settled))
        elif settled:
            self.metrics.dropped.labels(self.name, outcome).inc(len(settled))
        if outcome == SENT:
            tracked.in_am = change.in_am
            if change.refresh:
                self.metrics.refreshed.labels(self.name).inc()
        if outcome == REJECTED and self.tracked.get(change.key) is tracked:
            del self.tracked[change.key]  # the same payload would be refused at every refresh
            return
        tracked.refresh_at = self._mono() + self.settings.refresh_s

    async def step(self) -> bool:
        """One reconcile pass: settle what needs no request, send what is due; False when nothing was."""
        changes = self.plan(1 if self._isolate else MAX_BATCH)
        for change in changes:
            if not change.alerts:
                self.apply(change, SENT)
        loud = [c for c in changes if c.alerts]
        if not loud:
            return False
        body = orjson.dumps([a for change in loud for a in change.alerts])
        outcome = await self.courier.deliver(body, lambda: {"Content-Type": "application/json"})
        if outcome == FAILED:
            return True
        if outcome == REJECTED and len(loud) > 1:
            self._isolate = len(loud)
            return True
        self._isolate = max(0, self._isolate - 1)
        for change in loud:
            self.apply(change, outcome)
        return True

    async def run(self) -> None:
        while True:
            if await self.step():
                continue
            self._wake.clear()
            try:
                await asyncio.wait_for(self._wake.wait(), timeout=min(1.0, self.settings.refresh_s / 4))
            except asyncio.TimeoutError:
                pass
