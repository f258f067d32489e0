"""The Faust app: routes input topics to the detector parts, keeps their state in tables.

Dataflow (one repartition per part; the worker itself holds no logic)::

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
import logging
import time
import zlib
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable, Iterable, Sequence

import orjson

from smsstream import kafka, records
from smsstream.config import Settings
from smsstream.detection.base import Part, PartContext
from smsstream.errors import BrokerUnreachable, ConfigError, RecordError
from smsstream.metrics import Metrics, create, dead_letter_reason
from smsstream.pseudonym import Pseudonymizer
from smsstream.worker.flow import (
    HELD, MISSED, Heartbeat, Item, Outbox, Shard, Source, Topology, decode, encode, resume_step,
)

log = logging.getLogger(__name__)

APP_ID = "smsstream"
#: Partitions of each part's internal topic and state table: the unit of scale-out.
INTERNAL_PARTITIONS = 4
HEARTBEAT_S = 1.0
#: An input partition counts as idle once it has been caught up for this long.
IDLE_AFTER_S = 3.0
#: A shard's snapshot is saved at most this often, and at least this often ...
CHECKPOINT_S = 5.0
CHECKPOINT_MAX_S = 600.0
#: ... and within that, rarely enough that saving all of a worker's shards takes at most this share
#: of its time (a snapshot is the whole shard: a borrower book of millions of numbers, or a merge
#: buffer full of a backlog, takes seconds, and a worker holds dozens of shards).
CHECKPOINT_BUDGET = 0.05
#: ... or sooner, once the messages it holds unacknowledged (kept in memory until then) reach this size.
CHECKPOINT_HELD_BYTES = 64 * 1024 * 1024
#: Table values stay well under Kafka's default 1 MB message limit.
CHUNK_BYTES = 256 * 1024
#: A shard looks through what it sent for deliveries already confirmed once it holds this many
#: (snapshots of large states are minutes apart; only those in flight or failed need keeping).
MAX_UNCONFIRMED = 4096
#: A route agent sends what its input records fan out to once it holds this many items, or after this long.
ROUTE_BATCH_ITEMS = 2_000
ROUTE_BATCH_S = 0.25


def part_topic_name(app_id: str, part: type[Part]) -> str:
    return f"{app_id}-part-{part.name}"


async def preflight(settings: Settings, topics: Iterable[str] = (*records.INPUT_TOPICS, records.ALERTS, records.DEAD_LETTER)) -> dict[str, int]:
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


@dataclass
class RouteBatch:
    """Input records a route agent has read and routed but not yet sent on: acknowledged only once sent."""

    outbox: Outbox
    acker: Any = None
    held: list = field(default_factory=list)
    #: input partition -> (highest event time, last offset) among the held records
    reached: dict[tuple[str, int], tuple[int, int]] = field(default_factory=dict)
    opened: float = 0.0
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)


@dataclass
class Worker:
    """The Faust app and what its agents share in this process."""

    app: Any
    metrics: Metrics
    registry: Any
    parts: Sequence[type[Part]]
    ctx: PartContext
    topology: Topology | None = None
    #: (part name, partition) -> shard, for the partitions assigned to this process
    shards: dict[tuple[str, int], Shard] = field(default_factory=dict)


def build(
    settings: Settings,
    parts: Sequence[type[Part]] | None = None,
    *,
    topic_partitions: dict[str, int] | None = None,
    app_id: str = APP_ID,
    partitions: int = INTERNAL_PARTITIONS,
    registry: Any = None,
    web_port: int | None = None,
) -> Worker:
    """The Faust app for ``settings``; ``topic_partitions`` comes from :func:`preflight`."""
    import faust
    from faust.exceptions import NotReady
    from prometheus_client import CollectorRegistry

    if parts is None:
        from smsstream.detection.engine import DETECTOR_PARTS

        parts = DETECTOR_PARTS
    pseudonymizer = Pseudonymizer(settings.require_pseudonym_key())
    ctx = PartContext(pseudonymizer, alert_repeat_ms=settings.alert_repeat_s * 1000)
    topic_partitions = topic_partitions or {}
    registry = registry if registry is not None else CollectorRegistry()
    metrics = create(registry)

    app = faust.App(
        app_id,
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
        web_host="127.0.0.1",
        # Events are acknowledged only at shard snapshots; a rebalance must not wait for that
        # (unacknowledged events are simply read again by the partition's next owner).
        stream_wait_empty=False,
        # a crashed worker's partitions move to the others after this long
        broker_session_timeout=20.0,
        broker_heartbeat_interval=3.0,
    )
    topology = Topology(parts, topic_partitions, partitions)
    parts = topology.parts
    worker = Worker(app=app, metrics=metrics, registry=registry, parts=parts, ctx=ctx)
    worker.topology = topology
    alerts_topic = app.topic(records.ALERTS, key_serializer="raw", value_serializer="raw")
    dead_topic = app.topic(records.DEAD_LETTER, key_serializer="raw", value_serializer="raw")
    part_topics = {
        p.name: app.topic(part_topic_name(app_id, p), partitions=partitions, internal=True,
                          key_serializer="raw", value_serializer="raw")
        for p in parts
    }
    topic_to_part = {t.get_topic_name(): name for name, t in part_topics.items()}
    tables = {p.name: app.Table(f"{p.name}-state", partitions=partitions, key_type=bytes, value_type=bytes)
              for p in parts}

    async def send_dead(source: Source, error: RecordError) -> Awaitable:
        value = records.dead_letter(source.topic, source.partition, source.offset, str(error), source.raw)
        delivery = await dead_topic.send(key=source.key, value=orjson.dumps(value))
        metrics.dead_letters.labels(source.topic, dead_letter_reason(error)).inc()
        return delivery

    # --- route agents: input topic -> part topics ---------------------------
    #: input partition -> [max event ts, last offset] of the records sent on to the parts
    progress: dict[tuple[str, int], list[int]] = {}
    idle_since: dict[tuple[str, int], float] = {}
    routes: dict[str, RouteBatch] = {}
    #: input partition -> last offset whose records this worker sent on; kept through a rebalance that
    #: gives the partition back (nobody else read it in between), to catch records its consumer skips
    routed_until: dict[tuple[str, int], int] = {}
    #: input partitions whose first record since their assignment has been checked against ``routed_until``
    resumed: set[tuple[str, int]] = set()

    async def read_again(where: str, message: Any, start: int) -> list[tuple[int, Any, Any]] | None:
        """The messages of ``message``'s partition from ``start`` up to it, which the consumer skipped.

        Read past the worker's consumer, whose seek would race the fetches it
        already holds. A read that fails (None), or that finds some of them
        gone to retention, is logged: a repair must not stop an agent.
        """
        end = message.offset
        try:
            got = await kafka.read_range(settings, message.topic, message.partition, start, end)
        except Exception as exc:  # noqa: BLE001 - see the docstring
            log.error("%s: could not read messages %d to %d again (%s: %s); their events are missing",
                      where, start, end - 1, type(exc).__name__, exc)
            return None
        first = got[0][0] if got else end
        if first > start:
            log.error("%s: messages %d to %d are no longer in the topic (retention); their events are missing",
                      where, start, first - 1)
        return got

    async def send_items(outbox: Outbox) -> list[Awaitable]:
        return [await part_topics[name].send(key=None, value=encode(items), partition=partition)
                for (name, partition), items in outbox.take()]

    async def flush_route(batch: RouteBatch) -> None:
        """Send the held records' items, then let heartbeats claim their time, then acknowledge them.

        One flush at a time: the items of an input partition must reach each
        part partition in offset order (a shard drops an item numbered below
        one it already has, as a re-sent copy).
        """
        async with batch.lock:
            held, batch.held = batch.held, []
            reached, batch.reached = batch.reached, {}
            await send_items(batch.outbox)
            for tp, (ts, offset) in reached.items():
                state = progress.get(tp)
                if state is not None:
                    state[0] = max(state[0], ts)
                    state[1] = max(state[1], offset)
                    routed_until[tp] = max(routed_until.get(tp, -1), offset)
            for event in held:
                await batch.acker.ack(event)

    def make_route(topic: str):
        batch = routes[topic] = RouteBatch(Outbox(partitions))
        reporter = topology.reporter.get(topic)

        async def take(partition: int, offset: int, key: bytes | None, raw: bytes | None) -> None:
            """Decode one input record (or dead-letter it) and add its copies for the parts to the batch."""
            tp = (topic, partition)
            metrics.events_in.labels(topic).inc()
            state = progress.setdefault(tp, [0, -1])
            idle_since.pop(tp, None)
            ts, _ = batch.reached.get(tp, (state[0], 0))
            source = Source(topic, partition, offset, key, raw)
            try:
                record = records.decode(topic, raw, key)
            except RecordError as exc:
                await send_dead(source, exc)
                record = None
            if record is not None:
                ts = max(ts, record.ts or 0)
                origin = f"{topic}/{partition}"
                # only the reporting part dead-letters, so only its copy carries the raw bytes
                lean = Source(topic, partition, offset, key, None)
                for name, part_key, route_key in topology.route(topic, record):
                    item = Item(topic, part_key, record, record.ts or ts, origin,
                                source if name == reporter else lean, offset)
                    batch.outbox.add(name, route_key, item)
            batch.reached[tp] = (ts, offset)

        async def take_skipped(message: Any, start: int) -> None:
            """Records between the last this worker sent on and the first the consumer gave back after a
            rebalance: Faust's consumer can skip a few there. Read from the partition itself."""
            skipped = await read_again(f"{topic} partition {message.partition}", message, start)
            if skipped is None:
                return
            metrics.input_rewinds.labels(topic).inc()
            log.warning("%s partition %d: after the rebalance the consumer went on at offset %d, but this worker had "
                        "sent on records only up to %d; the %d in between were read from the partition itself",
                        topic, message.partition, message.offset, start - 1, len(skipped))
            for offset, key, raw in skipped:
                await take(message.partition, offset, key, raw)

        async def route(stream):
            batch.acker = acker = stream.noack()
            async for event in acker.events():
                message = event.message
                tp = (topic, message.partition)
                if tp not in resumed:
                    resumed.add(tp)
                    last = routed_until.get(tp)
                    if last is not None and message.offset > last + 1:
                        await take_skipped(message, last + 1)
                await take(message.partition, message.offset, message.key, message.value)
                if not batch.held:
                    batch.opened = time.monotonic()
                batch.held.append(event)
                if (batch.outbox.items >= ROUTE_BATCH_ITEMS or batch.outbox.full
                        or time.monotonic() - batch.opened >= ROUTE_BATCH_S):
                    await flush_route(batch)

        route.__name__ = f"route_{topic.replace('.', '_').replace('-', '_')}"
        return route

    for topic in topology.input_topics:
        source_topic = app.topic(topic, key_serializer="raw", value_serializer="raw")
        app.agent(source_topic, name=f"{app_id}.route.{topic}")(make_route(topic))

    # --- part agents: one shard per assigned partition ----------------------
    #: (part, partition) -> events processed since the shard's last snapshot, not yet acknowledged
    pending: dict[tuple[str, int], list] = {}
    #: (part, partition) -> deliveries of the facts, alerts and dead letters sent since the shard's last snapshot
    unconfirmed: dict[tuple[str, int], list[Awaitable]] = {}
    held_bytes: dict[tuple[str, int], int] = {}
    next_checkpoint: dict[tuple[str, int], float] = {}

    def shard_for(p: type[Part], partition: int) -> Shard:
        shard = worker.shards.get((p.name, partition))
        if shard is None:
            snapshot = load_snapshot(tables[p.name], partition)
            shard = topology.new_shard(p.name, ctx, snapshot)
            if snapshot:
                log.info("part %s partition %d: state restored from its table; it holds messages up to offset %d",
                         p.name, partition, shard.covered)
            worker.shards[(p.name, partition)] = shard
        return shard

    #: parts whose merge buffer has overflowed (warned once each)
    overflow_warned: set[str] = set()

    async def read_missed(p: type[Part], shard: Shard, message: Any) -> list[tuple[int, bytes]]:
        """The messages of a shard's partition between its state and ``message``, which its consumer skipped."""
        start, end = shard.covered + 1, message.offset
        metrics.shard_rewinds.labels(p.name).inc()
        log.warning("part %s partition %d: message %d arrived but the shard's state ends at %d; reading the %d in "
                    "between again", p.name, message.partition, end, start - 1, end - start)
        got = await read_again(f"part {p.name} partition {message.partition}", message, start)
        return [(offset, value) for offset, _, value in got or ()]

    def make_part_agent(p: type[Part]):
        table = tables[p.name]

        facts = Outbox(partitions)

        async def take(shard: Shard, partition: int, offset: int, value: bytes) -> None:
            """One message of the shard's partition: run it, send on its facts, alerts and dead letters."""
            sent = unconfirmed.setdefault((p.name, partition), [])
            shard.offer(decode(value))
            shard.covered = offset
            out = shard.run()
            if out.overflowed:
                if p.name not in overflow_warned:
                    overflow_warned.add(p.name)
                    log.warning(
                        "part %s: merge buffer full (%d items), releasing the oldest before every upstream "
                        "partition has passed them; alerts of this backlog may differ slightly from replay "
                        "(smsstream_merge_overflow_total counts them; README: streaming dataflow)",
                        p.name, shard.merge.max_buffered)
                metrics.merge_overflow.labels(p.name).inc(out.overflowed)
            for source, error in out.dead:
                sent.append(await send_dead(source, error))
            origin = f"{p.name}/{partition}"
            for stream_name, fact, ts, seq in out.facts:
                for name, fact_key in topology.route_fact(stream_name, fact):
                    facts.add(name, fact_key, Item(stream_name, fact_key, fact, ts, origin, seq=seq))
            sent.extend(await send_items(facts))
            for alert in out.alerts:
                alert["detected_at"] = int(time.time() * 1000)
                sent.append(await alerts_topic.send(key=alert["dedup_key"].encode(), value=orjson.dumps(alert)))
                metrics.alerts.labels(alert["kind"], alert["status"]).inc()
            if len(sent) >= MAX_UNCONFIRMED:
                forget_delivered(sent)

        async def run_part(stream):
            acker = stream.noack()
            async for event in acker.events():
                message = event.message
                partition = message.partition
                shard = shard_for(p, partition)
                step = resume_step(shard.covered, message.offset)
                if step is HELD:
                    # already in the state this shard was restored from, which is saved
                    await acker.ack(event)
                    continue
                if step is MISSED:
                    for offset, value in await read_missed(p, shard, message):
                        await take(shard, partition, offset, value)
                await take(shard, partition, message.offset, message.value)
                key = (p.name, partition)
                if worker.shards.get(key) is not shard:
                    # revoked while this event was in flight: its next owner reads it again from
                    # the last snapshot, so this shard's newer state must not be saved or acknowledged
                    unconfirmed.pop(key, None)
                    continue
                shard.sent()
                held = pending.setdefault(key, [])
                held.append(event)
                held_bytes[key] = size = held_bytes.get(key, 0) + len(event.message.value or b"")
                now = time.monotonic()
                if size < CHECKPOINT_HELD_BYTES and now < next_checkpoint.get(key, 0):
                    continue
                outcome = await checkpoint(table, partition, unconfirmed.setdefault(key, []), shard.snapshot,
                                           lambda: worker.shards.get(key) is shard)
                if worker.shards.get(key) is not shard:
                    continue  # revoked while its deliveries were awaited: see above
                if outcome.failed is not None:
                    metrics.checkpoint_failures.labels(p.name).inc()
                    log.error("part %s partition %d: facts, alerts or dead letters it sent were not delivered "
                              "(%s: %s): parts downstream miss them, and alerts may differ from replay's. Its "
                              "snapshot is not saved and its last %d events stay unacknowledged; the next "
                              "checkpoint tries again in %.0f s. Check the broker's health.",
                              p.name, partition, type(outcome.failed).__name__, outcome.failed, len(held),
                              CHECKPOINT_S)
                    next_checkpoint[key] = now + CHECKPOINT_S
                    continue
                metrics.snapshot_seconds.labels(p.name).observe(outcome.seconds)
                for e in held:
                    await acker.ack(e)
                held.clear()
                held_bytes[key] = 0
                next_checkpoint[key] = time.monotonic() + min(
                    CHECKPOINT_MAX_S, max(CHECKPOINT_S, outcome.seconds * len(worker.shards) / CHECKPOINT_BUDGET))
                _observe(p, shard)

        run_part.__name__ = f"part_{p.name.replace('-', '_')}"
        return run_part

    def _observe(p: type[Part], shard: Shard) -> None:
        mine = [s for (name, _), s in worker.shards.items() if name == p.name]
        metrics.state_entities.labels(p.name).set(sum(len(s.part.entities) for s in mine))
        metrics.merge_buffered.labels(p.name).set(sum(len(s.merge) for s in mine))
        max_ts = max((s.part.clock.max_ts or s.merge.released_until for s in mine), default=0)
        if max_ts:
            metrics.lag_seconds.labels(p.name).set(max(0.0, time.time() - max_ts / 1000))

    for p in parts:
        app.agent(part_topics[p.name], name=f"{app_id}.part.{p.name}")(make_part_agent(p))

    # --- heartbeats: event-time progress of every upstream partition --------
    @app.task
    async def heartbeat() -> None:
        """Tell every shard how far each upstream partition this process owns has got in event time.

        A round starts ``HEARTBEAT_S`` after the last one ended. Under a
        backlog the broker answers a round's request for the partitions' end
        offsets late (0.6-1.5 s): a Faust timer, on a fixed beat, logged nearly
        every round as "overlapping". A failed round (the broker busy, a
        rebalance under way) is logged and the next one tries again: an
        exception escaping this task would stop the whole worker.
        """
        while not app.should_stop:
            await app.sleep(HEARTBEAT_S)
            if app.should_stop:
                return
            try:
                await send_heartbeats()
            except NotReady:
                continue  # the producer starts after the tasks, and stops before them
            except Exception as exc:  # noqa: BLE001 - see the docstring
                metrics.heartbeat_failures.inc()
                log.warning("heartbeat round failed (%s: %s); retrying in %s s", type(exc).__name__, exc,
                            HEARTBEAT_S)

    async def send_heartbeats() -> None:
        for batch in routes.values():
            if batch.held:
                await flush_route(batch)
        inputs = [tp for tp in app.consumer.assignment() if tp.topic in topology.input_topics]
        ends = await app.consumer.highwaters(*inputs) if inputs else {}
        now = time.monotonic()
        beats: dict[str, list[Heartbeat]] = {}
        for tp in inputs:
            key = (tp.topic, tp.partition)
            state = progress.get(key)
            end = ends.get(tp)
            if end is None:
                caught_up = False
            elif state is not None:
                caught_up = state[1] + 1 >= end
            else:
                # nothing processed here yet: caught up only if nothing is left after the committed offset
                # (the fetch position would also count records fetched but still waiting in a buffer)
                committed = app.consumer._committed_offset.get(tp)
                caught_up = end == 0 or (committed is not None and committed >= end)
            if caught_up:
                idle_since.setdefault(key, now)
            else:
                idle_since.pop(key, None)
            idle = caught_up and now - idle_since[key] >= IDLE_AFTER_S
            beat = Heartbeat(f"{tp.topic}/{tp.partition}", state[0] if state else 0, idle)
            for name in topology.heartbeat_targets(tp.topic):
                beats.setdefault(name, []).append(beat)
        for (name, partition), shard in list(worker.shards.items()):
            beat = Heartbeat(f"{name}/{partition}", shard.emitted_until, shard.emitted_idle)
            for target in topology.downstream[name]:
                beats.setdefault(target, []).append(beat)
        for name, batch in beats.items():
            value = encode(batch)
            for i in range(partitions):
                await part_topics[name].send(key=None, value=value, partition=i)

    @app.on_partitions_revoked.connect
    async def on_revoked(app_, revoked, **kwargs) -> None:
        gone = {(tp.topic, tp.partition) for tp in revoked}
        for batch in routes.values():
            # not sent, so not acknowledged: the partition's next owner reads and routes them again
            batch.outbox.drop({f"{topic}/{partition}" for topic, partition in gone})
            batch.held = [e for e in batch.held if (e.message.topic, e.message.partition) not in gone]
            for tp in gone:
                batch.reached.pop(tp, None)
        for tp in revoked:
            resumed.discard((tp.topic, tp.partition))
            progress.pop((tp.topic, tp.partition), None)
            idle_since.pop((tp.topic, tp.partition), None)
            name = topic_to_part.get(tp.topic)
            if name is not None:
                # the next owner re-reads from the last snapshot's offsets: forget what came after
                worker.shards.pop((name, tp.partition), None)
                pending.pop((name, tp.partition), None)
                unconfirmed.pop((name, tp.partition), None)
                held_bytes.pop((name, tp.partition), None)
                next_checkpoint.pop((name, tp.partition), None)

    @app.on_partitions_assigned.connect
    async def on_assigned(app_, assigned, **kwargs) -> None:
        # a partition that went elsewhere may come back later, read on by another worker meanwhile
        mine = {(tp.topic, tp.partition) for tp in assigned}
        for tp in [tp for tp in routed_until if tp not in mine]:
            del routed_until[tp]

    @app.page("/health")
    async def health(web, request):
        assigned = app.consumer.assignment() if app.consumer else set()
        return web.json(
            {
                "status": "ok",
                "assigned_partitions": len(assigned),
                "rebalancing": bool(app.rebalancing),
                "shards": len(worker.shards),
                # a shard is idle once every upstream partition has caught up and its merge is empty
                "idle_shards": sum(shard.idle for shard in worker.shards.values()),
                "parts": [p.name for p in parts],
            }
        )

    return worker


@dataclass(frozen=True)
class Checkpointed:
    """What :func:`checkpoint` did."""

    saved: bool
    #: the first delivery that failed; nothing was saved then
    failed: BaseException | None = None
    #: time to take and save the snapshot, not counting the wait for deliveries
    seconds: float = 0.0


def _failure(delivery: asyncio.Future) -> BaseException | None:
    """Why a finished delivery failed, or None if the broker took it."""
    if delivery.cancelled():
        return asyncio.CancelledError("the delivery was cancelled (the producer is stopping)")
    return delivery.exception()


def forget_delivered(sent: list) -> None:
    """Drop the deliveries already confirmed; keep those in flight, and failures for the next checkpoint."""
    sent[:] = [f for f in sent if not f.done() or _failure(f) is not None]


async def delivered(sent: list[Awaitable]) -> BaseException | None:
    """Wait until every message in ``sent`` is delivered or has failed; the first failure, if any.

    Cancelling the wait (a worker shutting down) leaves the deliveries
    themselves alone: they belong to the producer, which flushes them.
    """
    futures = [asyncio.ensure_future(f) for f in sent]
    sent.clear()
    if futures:
        await asyncio.wait(futures)
    return next((failure for failure in map(_failure, futures) if failure is not None), None)


async def checkpoint(table: Any, partition: int, sent: list[Awaitable], snapshot: Callable[[], bytes],
                     owned: Callable[[], bool]) -> Checkpointed:
    """Save a shard's snapshot once everything it sent since the last one is on the broker.

    A snapshot marks its events as done. Saved while their facts, alerts or
    dead letters were still in the producer's buffers, a worker killed then
    would restore a state whose outputs never left: the parts downstream
    would miss those facts for good. Nothing is saved if a delivery failed,
    nor for a shard that stopped being this worker's during the wait (its
    partition's table is its new owner's).
    """
    failed = await delivered(sent)
    if failed is not None or not owned():
        return Checkpointed(saved=False, failed=failed)
    started = time.monotonic()
    save_snapshot(table, partition, snapshot())
    return Checkpointed(saved=True, seconds=time.monotonic() - started)


def save_snapshot(table: Any, partition: int, blob: bytes) -> None:
    """Write a shard's snapshot compressed, in chunks, into the slot not in use, then switch slots.

    Two slots make the switch atomic: a worker killed half-way leaves the
    manifest pointing at the previous, complete snapshot.
    """
    data = zlib.compress(blob, 1)
    chunks = [data[i:i + CHUNK_BYTES] for i in range(0, len(data), CHUNK_BYTES)] or [b""]
    key = str(partition).encode()
    manifest = orjson.loads(table[key]) if table.get(key) else {"slot": 1, "counts": [0, 0]}
    slot = 1 - manifest["slot"]
    for i, chunk in enumerate(chunks):
        table[b"%s/%d/%d" % (key, slot, i)] = chunk
    for i in range(len(chunks), manifest["counts"][slot]):
        # a worker killed between these deletes and the manifest leaves some of them done already
        table.pop(b"%s/%d/%d" % (key, slot, i), None)
    manifest["counts"][slot] = len(chunks)
    manifest["slot"] = slot
    table[key] = orjson.dumps(manifest)


def load_snapshot(table: Any, partition: int) -> bytes | None:
    key = str(partition).encode()
    raw = table.get(key)
    if not raw:
        return None
    manifest = orjson.loads(raw)
    slot = manifest["slot"]
    data = b"".join(table[b"%s/%d/%d" % (key, slot, i)] for i in range(manifest["counts"][slot]))
    return zlib.decompress(data)
