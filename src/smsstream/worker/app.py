"""The Faust app: agents, topics, tables and rebalance hooks around the worker's plain classes.

The agents only move messages: what happens to a record is ``router.InputRouter``'s,
what happens to a part's message is ``shards.ShardHost``'s (and, within it, the
detection core's ``PartDriver``), and both run without Faust in the dataflow tests.

Dataflow (one repartition per part)::

    sms.sends ─────────────┐  route agents, one per input topic:
    sms.delivery-receipts ─┤    decode ─✗─> sms.dead-letter (key: original key)
    sms.bindings ──────────┤      │
    sms.borrowers ─────────┤      └─> one copy per part that consumes the topic,
    sms.templates ─────────┘          keyed by that part's key (number, message_id, ...)
                                         │   + heartbeats: each input partition's event time
                                         v
              smsstream-part-<name>  (internal topic, one per part)
                                         │
                     part agent: per partition a Shard = event-time merge of all
                     upstream partitions -> duplicate/late gate -> Part.process
                     -> Part.advance (buckets close on the slowest busy partition)
                     state: table <name>-state (one snapshot per partition, changelogged)
                        │                                   │
                        │ facts, keyed by the next part's    └─> sms.alerts (key: dedup_key)
                        └─> key (sender, template, carrier), back into smsstream-part-<next>

Offsets are acknowledged only after the shard's snapshot is written to its
table, so a worker killed between snapshots re-reads those events and rebuilds
the same state (at least once; alert ids depend on the episode only, so a
re-sent alert record is the same record).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any, Awaitable, Iterable, Sequence

import orjson

from smsstream import kafka, records
from smsstream.config import Settings
from smsstream.detection.base import Part, PartContext
from smsstream.detection.controls import ControlBook
from smsstream.detection.intake import Intake
from smsstream.errors import BrokerUnreachable, ConfigError, RecordError
from smsstream.metrics import Metrics, create, register_process_metrics
from smsstream.worker.controls import ControlsReader, dead_letter_agent
from smsstream.worker.flow import HELD, MISSED, Item, Source, Topology, resume_step
from smsstream.worker.transport import encode
from smsstream.worker.router import InputRouter
from smsstream.worker.shards import ShardHost, ShardOutput
from smsstream.worker.snapshots import checkpoint, load_snapshot
from smsstream.worker.telemetry import Telemetry
from smsstream.worker import reread
from smsstream.worker.connection import BrokerConnection
from smsstream.worker.shutdown import ShutdownGuard, app_class, fold_client_repeats, log_thread_exceptions, worker_class

log = logging.getLogger(__name__)

#: Partitions of each part's internal topic and state table: the unit of scale-out.
INTERNAL_PARTITIONS = 4
HEARTBEAT_S = 1.0
#: ``/health/live`` fails once no heartbeat round has started for this long (a stuck event loop or task).
LIVENESS_S = 60.0


def part_topic_name(app_id: str, part: type[Part]) -> str:
    return f"{app_id}-part-{part.name}"


async def preflight(settings: Settings, topics: Iterable[str] = (*records.INPUT_TOPICS, records.ALERTS, records.DEAD_LETTER,
                                                                 records.CONTROLS)) -> dict[str, int]:
    """Partition count of every contract topic; clear errors when the broker or a topic is missing."""
    from aiokafka import AIOKafkaConsumer
    from aiokafka.errors import KafkaError

    kwargs = kafka.client_kwargs(settings)
    consumer = AIOKafkaConsumer(**kwargs, request_timeout_ms=10_000, connections_max_idle_ms=60_000)
    try:
        await asyncio.wait_for(consumer.start(), timeout=15)
    except (KafkaError, OSError, asyncio.TimeoutError) as exc:
        await consumer.stop()
        raise BrokerUnreachable(
            f"cannot reach the Kafka broker at {', '.join(kwargs['bootstrap_servers'])} "
            f"({exc.__class__.__name__}); start one with `smsstream broker`, or set SMSSTREAM_BROKER "
            "to your cluster's bootstrap address (kafka://host:port)"
        ) from None
    try:
        # Counted on this fetch's own metadata: the consumer's cache holds only topics it has been
        # asked about (on Apache Kafka it starts empty), and a zero count would let every shard's
        # event-time merge run ahead of input partitions it was never told to wait for.
        cluster = await consumer._client.fetch_all_metadata()
        missing = [t for t in topics if t not in cluster.topics()]
        if missing:
            raise ConfigError(
                f"topics missing on {settings.broker}: {', '.join(missing)}; create them with `smsstream topics apply`"
            )
        counts = {t: len(cluster.partitions_for_topic(t) or ()) for t in topics}
        unknown = [t for t, n in counts.items() if not n]
        if unknown:
            raise BrokerUnreachable(
                f"the broker at {settings.broker} reports no partitions for {', '.join(unknown)}; "
                "it may still be starting: retry in a few seconds"
            )
        return counts
    finally:
        await consumer.stop()


class Worker:
    """The Faust app of one worker process, its topics and tables, and what its agents share."""

    def __init__(self, settings: Settings, parts: Sequence[type[Part]], topic_partitions: dict[str, int],
                 partitions: int, registry: Any, web_port: int | None):
        import faust

        self.settings = settings
        self.registry = registry
        self.metrics: Metrics = create(registry)
        self.ctx = PartContext.from_settings(settings, ControlBook())
        #: the operator controls: read whole before Faust starts (``smsstream worker``), then followed
        self.controls = ControlsReader(settings, self.ctx.controls, self.metrics)
        self.topology = Topology(parts, topic_partitions, partitions)
        self.parts = self.topology.parts
        self.partitions = partitions
        self.connection = BrokerConnection(settings, self.metrics)
        self.guard = ShutdownGuard(settings.shutdown_timeout_s, self.unsaved, self.connection.probe)
        app_id = settings.app_id
        self.app = app = app_class(self.guard)(
            app_id,
            Worker=worker_class(self.guard),
            **kafka.faust_config(settings),
            store=settings.store,
            datadir=settings.data_dir,
            topic_partitions=partitions,
            topic_disable_leader=True,
            key_serializer="raw",
            value_serializer="raw",
            processing_guarantee="at_least_once",
            consumer_auto_offset_reset="earliest",
            web_port=web_port or 6066,
            # /health: loopback unless SMSSTREAM_BIND_HOST opens it (a Kubernetes probe needs 0.0.0.0)
            web_bind=settings.bind_host,
            web_host="127.0.0.1",
            # Events are acknowledged only at shard snapshots; a rebalance must not wait for that
            # (unacknowledged events are simply read again by the partition's next owner).
            stream_wait_empty=False,
            # a crashed worker's partitions move to the others after this long
            broker_session_timeout=20.0,
            broker_heartbeat_interval=3.0,
            # a new deployment's internal topics are created as the worker starts; one created just before the
            # group's first assignment can be missing from the consumer's metadata, and aiokafka then ignores it
            # until the next refresh (5 min by default): seconds, not minutes, without its part's stream
            consumer_metadata_max_age_ms=10_000,
        )
        raw = {"key_serializer": "raw", "value_serializer": "raw"}
        self.alerts_topic = app.topic(records.ALERTS, **raw)
        self.dead_topic = app.topic(records.DEAD_LETTER, **raw)
        self.part_topics = {p.name: app.topic(part_topic_name(app_id, p), partitions=partitions, internal=True, **raw)
                            for p in self.parts}
        self.part_of_topic = {t.get_topic_name(): name for name, t in self.part_topics.items()}
        self.tables = {p.name: app.Table(f"{p.name}-state", partitions=partitions, key_type=bytes, value_type=bytes)
                       for p in self.parts}
        register_process_metrics(registry)
        self.telemetry = Telemetry(self.metrics, self.topology)
        self.router = InputRouter(self.topology, Intake(self.ctx.pseudonymizer), self.telemetry)
        self.shards = ShardHost(self.topology, self.ctx, lambda name, i: load_snapshot(self.tables[name], i),
                                self.telemetry.watch)
        #: when the heartbeat loop last started a round (monotonic): the liveness probe's evidence
        self.last_round = time.monotonic()
        #: topic -> the lock that keeps one route flush at a time (items of a partition must arrive in order)
        self.route_locks = {t: asyncio.Lock() for t in self.topology.input_topics}
        #: topic -> its route agent's stream, which acknowledges its records
        self.route_ackers: dict[str, Any] = {}
        #: parts whose merge buffer has overflowed (warned once each)
        self.overflow_warned: set[str] = set()

    # --- sending -------------------------------------------------------------

    async def send_dead(self, source: Source, error: RecordError) -> Awaitable:
        value = records.dead_letter(source.topic, source.partition, source.offset, str(error), source.raw)
        delivery = await self.dead_topic.send(key=source.key, value=orjson.dumps(value))
        self.metrics.dead_letters.labels(source.topic, error.reason).inc()
        return delivery

    async def send_items(self, messages: Iterable[tuple[tuple[str, int], list[Item]]]) -> list[Awaitable]:
        return [await self.part_topics[name].send(key=None, value=encode(items), partition=partition)
                for (name, partition), items in messages]

    async def send_output(self, name: str, output: ShardOutput) -> list[Awaitable]:
        """A shard's facts, alerts and dead letters onto their topics; their deliveries."""
        if output.overflowed:
            self._overflowed(name, output.overflowed)
        dead = await reread.with_raw(self.settings, output.dead) if output.dead else []
        sent = [await self.send_dead(source, error) for source, error in dead]
        sent += await self.send_items(output.facts)
        for alert in output.alerts:
            alert["detected_at"] = int(time.time() * 1000)
            sent.append(await self.alerts_topic.send(key=alert["dedup_key"].encode(), value=orjson.dumps(alert)))
            self.metrics.alerts.labels(alert["kind"], alert["status"]).inc()
        return sent

    def _overflowed(self, name: str, count: int) -> None:
        if name not in self.overflow_warned:
            self.overflow_warned.add(name)
            log.warning("part %s: merge buffer full, releasing the oldest before every upstream partition has "
                        "passed them; alerts of this backlog may differ slightly from replay "
                        "(smsstream_merge_overflow_total counts them; docs/architecture.md)", name)
        self.metrics.merge_overflow.labels(name).inc(count)

    async def flush_route(self, topic: str) -> None:
        """Send a topic's routed records on, let heartbeats claim their time, then acknowledge them.

        One flush at a time per topic: the items of an input partition must
        reach each part partition in offset order (a shard drops an item
        numbered below one it already has, as a re-sent copy).
        """
        async with self.route_locks[topic]:
            messages, held, reached = self.router.take_batch(topic)
            await self.send_items(messages)
            self.router.sent(reached)
            acker = self.route_ackers[topic]
            for event in held:
                await acker.ack(event)

    async def read_again(self, where: str, message: Any, start: int) -> list[tuple[int, Any, Any]] | None:
        """The messages of ``message``'s partition from ``start`` up to it, which the consumer skipped.

        Read past the worker's consumer, whose seek would race the fetches it
        already holds. A read that fails (None), or that finds some of them
        gone to retention, is logged: a repair must not stop an agent.
        """
        end = message.offset
        try:
            got = await kafka.read_range(self.settings, message.topic, message.partition, start, end)
        except Exception as exc:  # noqa: BLE001 - see the docstring
            log.error("%s: could not read messages %d to %d again (%s: %s); their events are missing",
                      where, start, end - 1, type(exc).__name__, exc)
            return None
        first = got[0][0] if got else end
        if first > start:
            log.error("%s: messages %d to %d are no longer in the topic (retention); their events are missing",
                      where, start, first - 1)
        return got

    # --- the agents ------------------------------------------------------------

    def route_agent(self, topic: str):
        """The agent of one input topic: each record decoded, dead-lettered or fanned out to the parts."""
        router = self.router

        async def take(partition: int, offset: int, key: bytes | None, raw: bytes | None, event: Any = None) -> None:
            dead = router.take(topic, partition, offset, key, raw, event, time.monotonic())
            if dead is not None:
                await self.send_dead(*dead)

        async def route(stream):
            self.route_ackers[topic] = acker = stream.noack()
            async for event in acker.events():
                message = event.message
                start = router.skipped_before(topic, message.partition, message.offset)
                if start is not None:
                    await self._take_skipped(topic, message, start, take)
                await take(message.partition, message.offset, message.key, message.value, event)
                if router.due(topic, time.monotonic()):
                    await self.flush_route(topic)

        route.__name__ = f"route_{topic.replace('.', '_').replace('-', '_')}"
        return route

    async def _take_skipped(self, topic: str, message: Any, start: int, take) -> None:
        skipped = await self.read_again(f"{topic} partition {message.partition}", message, start)
        if skipped is None:
            return
        self.metrics.input_rewinds.labels(topic).inc()
        log.warning("%s partition %d: after the rebalance the consumer went on at offset %d, but this worker had "
                    "sent on records only up to %d; the %d in between were read from the partition itself",
                    topic, message.partition, message.offset, start - 1, len(skipped))
        for offset, key, raw in skipped:
            await take(message.partition, offset, key, raw)

    def part_agent(self, name: str):
        """The agent of one part's internal topic: each message through its partition's shard."""
        shards = self.shards

        async def run_part(stream):
            acker = stream.noack()
            async for event in acker.events():
                message = event.message
                partition = message.partition
                earlier = await self._release_0_1(name) if shards.needs_earlier(name, partition) else None
                shard = shards.shard(name, partition, earlier)
                step = resume_step(shard.covered, message.offset, shard.rebuilding)
                if step is HELD:
                    # already in the state this shard was restored from, which is saved
                    await acker.ack(event)
                    continue
                if step is MISSED:
                    for offset, value in await self._read_missed(name, shard, message):
                        await self._run(shard, name, partition, offset, value)
                await self._run(shard, name, partition, message.offset, message.value)
                if not shards.owns(name, partition, shard):
                    # revoked while this event was in flight: its next owner reads it again from
                    # the last snapshot, so this shard's newer state must not be saved or acknowledged
                    continue
                if shards.hold(name, partition, event, len(message.value or b""), time.monotonic()):
                    for done in await self._checkpoint(name, partition, shard):
                        await acker.ack(done)

        run_part.__name__ = f"part_{name.replace('-', '_')}"
        return run_part

    async def _run(self, shard, name: str, partition: int, offset: int, value: bytes) -> None:
        output = self.shards.run(shard, name, partition, offset, value)
        self.shards.sent(name, partition, await self.send_output(name, output))

    async def _release_0_1(self, name: str):
        """What release 0.1 left on every partition of a part keyed by numbers (``shards.Earlier``)."""
        changelog = self.tables[name].changelog_topic.get_topic_name()
        return await reread.release_0_1(self.settings, self.part_topics[name].get_topic_name(), changelog,
                                        self.partitions)

    async def _read_missed(self, name: str, shard, message: Any) -> list[tuple[int, bytes]]:
        """The messages of a shard's partition between its state and ``message``, which its consumer skipped
        (or, for a shard rebuilding a lost state, every message before it)."""
        if shard.rebuilding:
            self.shards.rebuild_from(shard, message.offset)
            got = await self.read_again(f"part {name} partition {message.partition}", message, 0)
            return [(offset, value) for offset, _, value in got or ()]
        start, end = shard.covered + 1, message.offset
        self.metrics.shard_rewinds.labels(name).inc()
        log.warning("part %s partition %d: message %d arrived but the shard's state ends at %d; reading the %d in "
                    "between again", name, message.partition, end, start - 1, end - start)
        got = await self.read_again(f"part {name} partition {message.partition}", message, start)
        return [(offset, value) for offset, _, value in got or ()]

    async def _checkpoint(self, name: str, partition: int, shard) -> list:
        """Save the shard's snapshot once its output is delivered; the events it covers, to acknowledge."""
        slot = self.shards.slots[(name, partition)]
        outcome = await checkpoint(self.tables[name], partition, slot.unconfirmed, shard.snapshot,
                                   lambda: self.shards.owns(name, partition, shard))
        if not self.shards.owns(name, partition, shard):
            return []  # revoked while its deliveries were awaited: see run_part
        if outcome.failed is not None:
            self.metrics.checkpoint_failures.labels(name).inc()
            log.error("part %s partition %d: facts, alerts or dead letters it sent were not delivered (%s: %s): "
                      "parts downstream miss them, and alerts may differ from replay's. Its snapshot is not saved "
                      "and its last %d events stay unacknowledged; the next checkpoint tries again shortly. Check "
                      "the broker's health.", name, partition, type(outcome.failed).__name__, outcome.failed,
                      len(slot.held))
            self.shards.retry_later(name, partition, time.monotonic())
            return []
        self.metrics.snapshot_seconds.labels(name).observe(outcome.seconds)
        return self.shards.checkpointed(name, partition, outcome.seconds)

    def _observe(self, name: str) -> None:
        mine = self.shards.of_part(name)
        metrics = self.metrics
        if not mine:
            # no shard of this part is this worker's any more: its figures are another worker's
            for gauge in (metrics.state_entities, metrics.merge_buffered, metrics.lag_seconds):
                with contextlib.suppress(KeyError):
                    gauge.remove(name)
            return
        metrics.state_entities.labels(name).set(sum(len(s.part.entities) for s in mine))
        metrics.merge_buffered.labels(name).set(sum(len(s.merge) for s in mine))
        max_ts = max((s.part.clock.max_ts or s.merge.released_until for s in mine), default=0)
        if max_ts:
            metrics.lag_seconds.labels(name).set(max(0.0, time.time() - max_ts / 1000))

    # --- heartbeats, rebalances, health ----------------------------------------

    async def heartbeat_loop(self) -> None:
        """Tell every shard how far each upstream partition this process owns has got in event time.

        A round starts ``HEARTBEAT_S`` after the last one ended. Under a
        backlog the broker answers a round's request for the partitions' end
        offsets late (0.6-1.5 s): a Faust timer, on a fixed beat, logged nearly
        every round as "overlapping". A failed round (the broker busy, a
        rebalance under way) is logged and the next one tries again: an
        exception escaping this task would stop the whole worker.
        """
        from faust.exceptions import NotReady

        app = self.app
        while not app.should_stop:
            await app.sleep(HEARTBEAT_S)
            if app.should_stop:
                return
            self.last_round = time.monotonic()
            try:
                await self.send_heartbeats()
            except NotReady:
                continue  # the producer starts after the tasks, and stops before them
            except Exception as exc:  # noqa: BLE001 - see the docstring
                self.metrics.heartbeat_failures.inc()
                log.warning("heartbeat round failed (%s: %s); retrying in %s s", type(exc).__name__, exc,
                            HEARTBEAT_S)

    async def send_heartbeats(self) -> None:
        for topic, batch in self.router.batches.items():
            if batch.held:
                await self.flush_route(topic)
        consumer = self.app.consumer
        inputs = [tp for tp in consumer.assignment() if tp.topic in self.topology.input_topics]
        ends = await consumer.highwaters(*inputs) if inputs else {}
        committed = consumer._committed_offset
        ends_of = {(tp.topic, tp.partition): ends.get(tp) for tp in inputs}
        beats = self.router.heartbeats(ends_of, {(tp.topic, tp.partition): committed.get(tp) for tp in inputs},
                                       time.monotonic())
        self.telemetry.consumer_lag(self.router.lag(ends_of))
        self.telemetry.episodes(self.shards.shards.values())
        for p in self.parts:
            self._observe(p.name)
        for name, more in self.shards.heartbeats().items():
            beats.setdefault(name, []).extend(more)
        for name, batch in beats.items():
            value = encode(batch)
            for i in range(self.partitions):
                await self.part_topics[name].send(key=None, value=value, partition=i)

    async def follow_controls(self) -> None:
        """Apply new entries of the control topic as they come (``worker.controls``)."""
        app = self.app
        await self.controls.follow(lambda: bool(app.should_stop), app.sleep)

    async def on_revoked(self, app_, revoked, **kwargs) -> None:
        self.router.revoked([(tp.topic, tp.partition) for tp in revoked])
        gone = set()
        for tp in revoked:
            name = self.part_of_topic.get(tp.topic)
            if name is not None:
                self.shards.revoked(name, tp.partition)
                gone.add(name)
        for name in gone:
            self._observe(name)

    async def on_assigned(self, app_, assigned, **kwargs) -> None:
        self.metrics.rebalances.inc()
        self.router.assigned([(tp.topic, tp.partition) for tp in assigned])

    def unsaved(self) -> str:
        """One line on what this worker's shards hold that no saved snapshot covers (said when it stops)."""
        held = {f"{name}/{partition}": len(slot.held) for (name, partition), slot in list(self.shards.slots.items())
                if slot.held}
        routing = sum(len(batch.held) for batch in list(self.router.batches.values()))
        if not held and not routing:
            return "Everything this worker read is covered by a saved snapshot."
        shown = ", ".join(f"{k}: {n}" for k, n in sorted(held.items(), key=lambda kv: -kv[1])[:8])
        return (f"Not covered by a saved snapshot: {sum(held.values())} part-topic messages of {len(held)} shards "
                f"({shown}{', ...' if len(held) > 8 else ''}) and {routing} input records not yet routed; none of "
                "them was acknowledged, so whoever owns those partitions next reads them again.")

    def health(self) -> tuple[dict, bool]:
        """What ``/health`` says, and whether the worker is ready (broker answering, partitions assigned,
        not rebalancing)."""
        app = self.app
        assigned = app.consumer.assignment() if app.consumer else set()
        shards = self.shards.shards.values()
        connected = self.connection.connected
        ready = bool(assigned) and not app.rebalancing and connected
        return {
            "status": "ok" if ready else "not ready" if connected else "broker unreachable",
            "broker": self.connection.health(),
            "assigned_partitions": len(assigned),
            "rebalancing": bool(app.rebalancing),
            "shards": len(shards),
            # a shard is idle once every upstream partition has caught up and its merge is empty
            "idle_shards": sum(shard.idle for shard in shards),
            "parts": [p.name for p in self.parts],
            "controls": self.controls.health(),
        }, ready

    def alive(self) -> tuple[dict, bool]:
        """What ``/health/live`` says: the event loop answers, and the heartbeat loop ran a round lately."""
        since = time.monotonic() - self.last_round
        return {"last_heartbeat_round_s": round(since, 1)}, since < LIVENESS_S

    def wire(self) -> None:
        """Register the agents, the heartbeat task, the rebalance hooks and the health page with Faust."""
        app = self.app
        app_id = self.settings.app_id
        for topic in self.topology.input_topics:
            source = app.topic(topic, key_serializer="raw", value_serializer="raw")
            app.agent(source, name=f"{app_id}.route.{topic}")(self.route_agent(topic))
        for p in self.parts:
            app.agent(self.part_topics[p.name], name=f"{app_id}.part.{p.name}")(self.part_agent(p.name))
        app.task(self.heartbeat_loop)
        app.task(self.follow_controls)
        controls = app.topic(records.CONTROLS, key_serializer="raw", value_serializer="raw")
        app.agent(controls, name=f"{app_id}.controls")(dead_letter_agent(self.send_dead))

        async def watch_broker() -> None:
            await self.connection.run(lambda: app.should_stop)

        app.task(watch_broker)
        fold_client_repeats()
        log_thread_exceptions()
        app.on_partitions_revoked.connect(self.on_revoked)
        app.on_partitions_assigned.connect(self.on_assigned)

        async def health(web, request):
            body, ready = self.health()
            return web.json(body, status=200 if ready else 503)

        async def live(web, request):
            body, alive = self.alive()
            return web.json(body, status=200 if alive else 503)

        app.page("/health")(health)
        app.page("/health/live")(live)


def build(
    settings: Settings,
    parts: Sequence[type[Part]] | None = None,
    *,
    topic_partitions: dict[str, int] | None = None,
    partitions: int = INTERNAL_PARTITIONS,
    registry: Any = None,
    web_port: int | None = None,
) -> Worker:
    """The worker for ``settings``; ``topic_partitions`` comes from :func:`preflight`."""
    from prometheus_client import CollectorRegistry

    if parts is None:
        from smsstream.detection.engine import DETECTOR_PARTS

        parts = DETECTOR_PARTS
    worker = Worker(settings, parts, topic_partitions or {}, partitions,
                    registry if registry is not None else CollectorRegistry(), web_port)
    worker.wire()
    return worker
