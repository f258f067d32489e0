"""The notifier's loop: ``sms.alerts`` in its own consumer group, every record to every target.

A partition is committed only up to its first record some target has not
settled (delivered, or dropped and counted), so a crash, a restart or a
rebalance re-reads whatever was in flight. At most ``max_inflight`` records wait
at a time; past that the consumer pauses its partitions (and keeps its group
membership) until deliveries catch up, so a dead target costs no memory.

On every assignment the partition is read from its beginning up to the
committed offset first, as *history*: Alertmanager forgets alerts that are not
re-sent, so the latest state of each dedup key is restored from there and firing
alerts stay firing across restarts, rebalances and Alertmanager restarts.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Protocol

from aiohttp import web
from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import KafkaConnectionError, KafkaError
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from smsstream import kafka
from smsstream.config import Settings
from smsstream.errors import BrokerUnreachable, ConfigError
from smsstream.notify import alertmanager, metrics as notify_metrics
from smsstream.notify.alert import AlertRecord, Unusable, read_alert
from smsstream.notify.delivery import Courier, Ledger, Pending, shown
from smsstream.notify.webhook import WebhookTarget
from smsstream.records import ALERTS

log = logging.getLogger("smsstream.notify")

#: How often a progress line is logged while records flow.
PROGRESS_EVERY_S = 60.0


class Target(Protocol):
    name: str
    courier: Courier

    def offer(self, pending: Pending, alert: AlertRecord) -> None: ...
    def restore(self, tp: TopicPartition, alert: AlertRecord) -> None: ...
    def revoke(self, partitions) -> None: ...
    def keep_only(self, partitions) -> None: ...
    def status(self) -> dict: ...
    async def run(self) -> None: ...


def check_url(name: str, url: str) -> str:
    if not url.startswith(("http://", "https://")):
        raise ConfigError(f"{name} is not an http:// or https:// URL; write it as http://host:port[/path]")
    return url


def build_targets(settings: Settings, ledger: Ledger, metrics: notify_metrics.NotifyMetrics) -> list[Target]:
    """The targets the settings name; at least one, or a ConfigError naming both variables."""
    notify = settings.notify
    targets: list[Target] = []
    if settings.alertmanager_url:
        url = alertmanager.api_url(check_url("SMSSTREAM_ALERTMANAGER_URL", settings.alertmanager_url))
        courier = Courier(alertmanager.AlertmanagerTarget.name, url, notify, metrics)
        targets.append(alertmanager.AlertmanagerTarget(courier, notify, ledger, metrics))
    if settings.webhook_url:
        url = check_url("SMSSTREAM_WEBHOOK_URL", settings.webhook_url)
        if not settings.webhook_secret:
            raise ConfigError("SMSSTREAM_WEBHOOK_SECRET is not set: webhook posts are signed with it. "
                              "Set it to a secret shared with the receiver.")
        courier = Courier(WebhookTarget.name, url, notify, metrics)
        targets.append(WebhookTarget(courier, str(settings.webhook_secret), ledger, metrics))
    if not targets:
        raise ConfigError("nothing to notify: set SMSSTREAM_ALERTMANAGER_URL (Alertmanager, API v2) "
                          "and/or SMSSTREAM_WEBHOOK_URL with SMSSTREAM_WEBHOOK_SECRET")
    return targets


class _Rebalance(ConsumerRebalanceListener):
    def __init__(self, notifier: "Notifier"):
        self.notifier = notifier

    async def on_partitions_revoked(self, revoked) -> None:
        await self.notifier.revoked(set(revoked))

    async def on_partitions_assigned(self, assigned) -> None:
        await self.notifier.assigned(set(assigned))


class Notifier:
    """Reads ``sms.alerts`` and hands every record to every target; commits what all have settled."""

    def __init__(self, settings: Settings, registry: CollectorRegistry | None = None):
        self.settings = settings
        self.registry = registry if registry is not None else CollectorRegistry()
        self.metrics = notify_metrics.create(self.registry)
        self.ledger = Ledger()
        self.targets = build_targets(settings, self.ledger, self.metrics)
        self.restores = any(isinstance(t, alertmanager.AlertmanagerTarget) for t in self.targets)
        #: per assigned partition, the offset below which records are history (settled before)
        self.history_until: dict[TopicPartition, int] = {}
        self._to_commit: dict[TopicPartition, int] = {}
        self.consumer: AIOKafkaConsumer | None = None
        self.stopping = asyncio.Event()
        #: records read (not history), for the progress line
        self.read = 0
        for target in self.targets:
            self._gauge_target(target.name)

    def _gauge_target(self, name: str) -> None:
        """``queued`` and ``queue_age_seconds`` of a target, read from the ledger at scrape time."""
        self.metrics.queued.labels(name).set_function(lambda: self.ledger.owed(name)[0])
        self.metrics.queue_age.labels(name).set_function(lambda: self._queue_age(name))

    def _queue_age(self, target: str) -> float:
        oldest = self.ledger.owed(target)[1]
        return 0.0 if oldest is None else max(0.0, time.monotonic() - oldest)

    async def revoked(self, partitions: set[TopicPartition]) -> None:
        await self._commit()
        self.ledger.forget(partitions)
        for target in self.targets:
            target.revoke(partitions)
        for tp in partitions:
            self.history_until.pop(tp, None)

    async def assigned(self, partitions: set[TopicPartition]) -> None:
        """Read each partition from its beginning: records below the committed offset are history."""
        consumer = self.consumer
        assert consumer is not None
        for target in self.targets:
            target.keep_only(partitions)
        if not partitions:
            return
        beginnings = await consumer.beginning_offsets(list(partitions))
        ends = await consumer.end_offsets(list(partitions)) if self.settings.notify.start == "latest" else {}
        first_time = {}
        for tp in partitions:
            committed = await consumer.committed(tp)
            if committed is None and tp in ends:
                first_time[tp] = ends[tp]
            self.history_until[tp] = committed if committed is not None else ends.get(tp, 0)
            # only Alertmanager needs the history; a webhook alone goes on from the committed offset
            consumer.seek(tp, beginnings[tp] if self.restores else max(beginnings[tp], self.history_until[tp]))
        if first_time:
            # the group starts here for good: after a restart, what came after is new, not history
            await consumer.commit(first_time)
        log.info("assigned %d partition(s) of %s: %s", len(partitions), ALERTS,
                 ", ".join(f"{tp.partition} (history to offset {self.history_until[tp]})"
                           for tp in sorted(partitions)))

    def take(self, tp: TopicPartition, offset: int, value: bytes | None) -> None:
        """One record: history restores state; a new one goes to every target, or is dropped and counted."""
        if tp not in self.history_until:
            # fetched while the assignment was being prepared: the seek there reads it again
            return
        history = offset < self.history_until[tp]
        try:
            alert = read_alert(value)
        except Unusable as exc:
            if not history:
                log.warning("%s partition %d offset %d: %s; skipped and counted (smsstream_notify_dropped_total)",
                            ALERTS, tp.partition, offset, exc)
                for target in self.targets:
                    self.metrics.dropped.labels(target.name, exc.reason).inc()
                self.ledger.add(tp, offset, time.monotonic(), ())  # settled: the commit goes past it
            return
        if history:
            for target in self.targets:
                target.restore(tp, alert)
            return
        self.metrics.records.inc()
        self.read += 1
        if alert.masked:
            self.metrics.masked.inc(alert.masked)
            log.error("%s partition %d offset %d carried %d phone number(s) in clear; masked before sending "
                      "(the writer must pseudonymise numbers)", ALERTS, tp.partition, offset, alert.masked)
        pending = self.ledger.add(tp, offset, time.monotonic(), (t.name for t in self.targets))
        for target in self.targets:
            target.offer(pending, alert)

    async def _commit(self) -> None:
        self._to_commit.update(self.ledger.commit_points())
        if not self._to_commit or self.consumer is None:
            return
        offsets = {tp: o for tp, o in self._to_commit.items() if tp in self.consumer.assignment()}
        try:
            if offsets:
                await self.consumer.commit(offsets)
        except KafkaError as exc:
            log.warning("commit of %d partition(s) failed (%s); retried on the next round", len(offsets), exc)
            return
        self._to_commit.clear()

    def _flow_control(self) -> int:
        """Pause every partition while ``max_inflight`` records wait; how many more may be read now."""
        consumer = self.consumer
        assert consumer is not None
        room = self.settings.notify.max_inflight - len(self.ledger)
        if room <= 0:
            if consumer.assignment() and not consumer.paused():
                log.debug("%d records wait for delivery (SMSSTREAM_NOTIFY_MAX_INFLIGHT); pausing reads",
                         len(self.ledger))
                consumer.pause(*consumer.assignment())
                self.metrics.pauses.inc()
        elif consumer.paused():
            log.debug("deliveries caught up; reading again")
            consumer.resume(*consumer.paused())
        return max(room, 1)

    def status(self) -> dict:
        consumer = self.consumer
        targets = {}
        for target in self.targets:
            queued, _ = self.ledger.owed(target.name)
            targets[target.name] = {"queued": queued, "queue_age_s": round(self._queue_age(target.name), 3),
                                    **target.status()}
        return {
            "status": "ok",
            "group": self.settings.notify.group_id,
            # partitions whose assignment is prepared (history bound set, position sought)
            "assigned_partitions": len(self.history_until),
            "paused": bool(consumer and consumer.paused()),
            "targets": targets,
        }

    async def run(self) -> None:
        """Until :attr:`stopping` is set; raises when the broker cannot be reached or a target task dies."""
        notify = self.settings.notify
        web_runner = await serve_health(self, self.settings.bind_host, notify.metrics_port)
        try:
            self.consumer = await self._start_consumer()
            tasks = [asyncio.create_task(t.run(), name=f"notify-{t.name}") for t in self.targets]
            log.info("notifying %s from %s as consumer group %r", ", ".join(
                f"{t.name} at {shown(t.courier.url)}" for t in self.targets), ALERTS, notify.group_id)
            try:
                await self._loop(tasks)
            finally:
                for task in tasks:
                    task.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
                await self._commit()
                await self.consumer.stop()
                for target in self.targets:
                    await target.courier.close()
        finally:
            if web_runner is not None:
                await web_runner.cleanup()

    async def _start_consumer(self) -> AIOKafkaConsumer:
        consumer = AIOKafkaConsumer(
            **kafka.client_kwargs(self.settings), group_id=self.settings.notify.group_id, enable_auto_commit=False,
            auto_offset_reset="earliest", client_id="smsstream-notify",
            # a member that left is noticed sooner, so its partitions' alerts are re-sent sooner
            heartbeat_interval_ms=1000,
        )
        try:
            await consumer.start()
            if ALERTS not in await consumer.topics():
                raise ConfigError(f"the topic {ALERTS} does not exist on {self.settings.broker}; create the "
                                  "topics with `smsstream topics apply`")
        except KafkaConnectionError:
            await consumer.stop()
            raise BrokerUnreachable(f"cannot reach the Kafka broker at {self.settings.broker}; check "
                                    "SMSSTREAM_BROKER (and the SMSSTREAM_KAFKA_* security settings)") from None
        except ConfigError:
            await consumer.stop()
            raise
        consumer.subscribe([ALERTS], listener=_Rebalance(self))
        return consumer

    async def _loop(self, tasks: list[asyncio.Task]) -> None:
        consumer = self.consumer
        assert consumer is not None
        next_progress, read_then = time.monotonic() + PROGRESS_EVERY_S, 0
        while not self.stopping.is_set():
            for task in tasks:
                if task.done():
                    raise RuntimeError(f"{task.get_name()} stopped") from task.exception()
            batch = await consumer.getmany(timeout_ms=200, max_records=self._flow_control())
            for tp, records in batch.items():
                for record in records:
                    self.take(tp, record.offset, record.value)
            await self._commit()
            if time.monotonic() >= next_progress:
                next_progress = time.monotonic() + PROGRESS_EVERY_S
                if self.read != read_then or len(self.ledger):
                    log.info("%d records read so far; %s", self.read, self.status()["targets"])
                read_then = self.read


async def serve_health(notifier: Notifier, host: str, port: int) -> web.AppRunner | None:
    """``/health`` (JSON) and ``/metrics`` on ``host:port``; port 0 serves nothing."""
    if not port:
        return None

    async def health(request: web.Request) -> web.Response:
        return web.json_response(notifier.status())

    async def metrics(request: web.Request) -> web.Response:
        return web.Response(body=generate_latest(notifier.registry), headers={"Content-Type": CONTENT_TYPE_LATEST})

    app = web.Application()
    app.router.add_get("/health", health)
    app.router.add_get("/metrics", metrics)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    try:
        await web.TCPSite(runner, host, port).start()
    except OSError as exc:
        await runner.cleanup()
        raise ConfigError(f"cannot serve /health and /metrics on {host}:{port} ({exc.strerror}); set "
                          "SMSSTREAM_NOTIFY_METRICS_PORT to a free port or SMSSTREAM_BIND_HOST to a local address"
                          ) from None
    return runner
