"""What the route agents do with input records, without Faust: decode, dead-letter, fan out to the parts.

Each input record is decoded once, its numbers made pseudonyms (``Intake``),
and copied to every part that reads its topic, keyed by that part's key, into
an ``Outbox`` per input topic. The copies carry where the record came from
(topic, partition, offset), never its raw bytes or its key: a record one of
the parts refuses is dead-lettered from the input itself (``worker.deadletter``). The
route agent sends a topic's outbox as one message per part partition, then
acknowledges the records it held. The router also keeps each input
partition's event-time progress, which the heartbeats tell every shard.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, Iterable

from smsstream import records
from smsstream.detection.driver import Item, Source
from smsstream.detection.intake import Intake
from smsstream.errors import RecordError
from smsstream.worker.flow import Heartbeat, Outbox, Topology

#: A route agent sends what its input records fan out to once it holds this many items, or after this long
#: (the items spread over every part partition: a message carries a few hundred).
ROUTE_BATCH_ITEMS = 10_000
ROUTE_BATCH_S = 0.25
#: An input partition counts as idle once it has been caught up for this long.
IDLE_AFTER_S = 3.0

Partition = tuple[str, int]


@dataclass
class RouteBatch:
    """Input records of one topic read and routed but not yet sent on: acknowledged only once sent."""

    outbox: Outbox
    #: the records (Faust events) to acknowledge once the outbox is sent
    held: list = field(default_factory=list)
    #: input partition -> (highest event time, last offset) among the held records
    reached: dict[Partition, tuple[int, int]] = field(default_factory=dict)
    opened: float = 0.0


class InputRouter:
    """Decodes input records and fans them out to the parts, per topic; tracks each input partition's progress."""

    def __init__(self, topology: Topology, intake: Intake, telemetry: Any = None):
        self.topology = topology
        self.intake = intake
        self.batches = {topic: RouteBatch(Outbox(topology.partitions)) for topic in topology.input_topics}
        #: input partition -> [max event time, last offset] of the records sent on to the parts
        self.progress: dict[Partition, list[int]] = {}
        self.idle_since: dict[Partition, float] = {}
        #: input partition -> last offset whose records this worker sent on; kept through a rebalance that
        #: gives the partition back (nobody else read it in between), to catch records its consumer skips
        self.routed_until: dict[Partition, int] = {}
        #: input partitions whose first record since their assignment has been checked against ``routed_until``
        self.resumed: set[Partition] = set()
        #: told every record read and every record decoded (``telemetry.Telemetry``), or None
        self.telemetry = telemetry
        #: the parts that read a send's body; the others get a copy without it (a fraction of the bytes)
        self.body_readers = frozenset(p.name for p in topology.parts if p.reads_body)

    def skipped_before(self, topic: str, partition: int, offset: int) -> int | None:
        """For the first record of a partition given back to this worker: the first offset its consumer skipped.

        Faust's consumer can go on past records after a rebalance; those
        between the last this worker sent on and ``offset`` must be read
        from the partition itself. None when nothing was skipped.
        """
        tp = (topic, partition)
        if tp in self.resumed:
            return None
        self.resumed.add(tp)
        last = self.routed_until.get(tp)
        return last + 1 if last is not None and offset > last + 1 else None

    def take(self, topic: str, partition: int, offset: int, key: bytes | None, raw: bytes | None,
             event: Any = None, now: float = 0.0) -> tuple[Source, RecordError] | None:
        """Decode one input record and add its copies for the parts to its topic's batch.

        Returns ``(source, error)`` for a record to dead-letter. ``event`` is
        held for acknowledgement once the batch is sent.
        """
        batch = self.batches[topic]
        tp = (topic, partition)
        telemetry = self.telemetry
        if telemetry is not None:
            telemetry.read(topic)
        state = self.progress.setdefault(tp, [0, -1])
        self.idle_since.pop(tp, None)
        ts, _ = batch.reached.get(tp, (state[0], 0))
        dead = None
        try:
            record = records.decode(topic, raw, key)
        except RecordError as exc:
            dead = (Source(topic, partition, offset, key, raw), exc)
            record = None
        if record is not None:
            if telemetry is not None:
                telemetry.decoded(topic, record)
            record = self.intake(topic, record)
            ts = max(ts, record.ts or 0)
            origin = f"{topic}/{partition}"
            topology = self.topology
            reporter = topology.reporter.get(topic)
            # raw bytes are read back from the input when a part dead-letters (numbers in clear stay there)
            source = Source(topic, partition, offset, None, None)
            size = len(raw or b"")
            bodiless = None
            add = batch.outbox.add
            for name, part_key, route_key in topology.route(topic, record):
                value = record
                if topic == records.SENDS and name not in self.body_readers:
                    if bodiless is None:
                        bodiless = replace(record, body="")
                    value = bodiless
                # the reporting part's copy counts the record's size: one per record
                add(name, route_key, Item(topic, part_key, value, record.ts or ts, origin, source, offset),
                    size if name == reporter else 0)
        batch.reached[tp] = (ts, offset)
        if event is not None:
            if not batch.held:
                batch.opened = now
            batch.held.append(event)
        return dead

    def due(self, topic: str, now: float) -> bool:
        """Is the topic's batch large or old enough to be sent?"""
        batch = self.batches[topic]
        outbox = batch.outbox
        return outbox.items >= ROUTE_BATCH_ITEMS or outbox.full or now - batch.opened >= ROUTE_BATCH_S

    def take_batch(self, topic: str) -> tuple[list[tuple[tuple[str, int], list[Item]]], list, dict]:
        """The batch's messages, the records to acknowledge once they are sent, and how far they reach."""
        batch = self.batches[topic]
        held, batch.held = batch.held, []
        reached, batch.reached = batch.reached, {}
        return batch.outbox.take(), held, reached

    def sent(self, reached: dict[Partition, tuple[int, int]]) -> None:
        """The messages of a batch reaching this far are on their way: heartbeats may claim it."""
        for tp, (ts, offset) in reached.items():
            state = self.progress.get(tp)
            if state is not None:
                state[0] = max(state[0], ts)
                state[1] = max(state[1], offset)
                self.routed_until[tp] = max(self.routed_until.get(tp, -1), offset)

    def lag(self, ends: dict[Partition, int | None]) -> dict[str, int]:
        """Records of the given partitions not read yet, by topic (``ends``: each partition's end offset)."""
        out: dict[str, int] = {}
        for tp, end in ends.items():
            if end is None:
                continue
            read = self.progress.get(tp, [0, -1])[1]
            reached = self.batches[tp[0]].reached.get(tp)
            if reached is not None:
                read = max(read, reached[1])
            out[tp[0]] = out.get(tp[0], 0) + max(0, end - read - 1)
        return out

    def revoked(self, partitions: Iterable[Partition]) -> None:
        """Forget what was read but not sent of these partitions: their next owner reads and routes it again."""
        gone = set(partitions)
        origins = {f"{topic}/{partition}" for topic, partition in gone}
        for batch in self.batches.values():
            batch.outbox.drop(origins)
            batch.held = [e for e in batch.held if (e.message.topic, e.message.partition) not in gone]
            for tp in gone:
                batch.reached.pop(tp, None)
        for tp in gone:
            self.resumed.discard(tp)
            self.progress.pop(tp, None)
            self.idle_since.pop(tp, None)

    def assigned(self, partitions: Iterable[Partition]) -> None:
        """A partition that went elsewhere may come back later, read on by another worker meanwhile."""
        mine = set(partitions)
        for tp in [tp for tp in self.routed_until if tp not in mine]:
            del self.routed_until[tp]

    def heartbeats(self, ends: dict[Partition, int | None], committed: dict[Partition, int | None],
                   now: float) -> dict[str, list[Heartbeat]]:
        """Each assigned input partition's progress, for every part that must hear it.

        ``ends`` gives each partition's end offset (None: unknown), and
        ``committed`` the group's committed offset of partitions this worker
        has not processed anything of yet.
        """
        beats: dict[str, list[Heartbeat]] = {}
        for tp, end in ends.items():
            state = self.progress.get(tp)
            if end is None:
                caught_up = False
            elif state is not None:
                caught_up = state[1] + 1 >= end
            else:
                # nothing processed here yet: caught up only if nothing is left after the committed offset
                # (the fetch position would also count records fetched but still waiting in a buffer)
                done = committed.get(tp)
                caught_up = end == 0 or (done is not None and done >= end)
            if caught_up:
                self.idle_since.setdefault(tp, now)
            else:
                self.idle_since.pop(tp, None)
            idle = caught_up and now - self.idle_since[tp] >= IDLE_AFTER_S
            beat = Heartbeat(f"{tp[0]}/{tp[1]}", state[0] if state else 0, idle)
            for name in self.topology.heartbeat_targets(tp[0]):
                beats.setdefault(name, []).append(beat)
        return beats
