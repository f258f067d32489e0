"""What the part agents do with their messages, without Faust: a shard per partition, and when to save it.

The part agent hands each message of a part's internal topic to
``ShardHost.run``, sends what comes back (facts for other parts' topics,
alert records, dead letters), and acknowledges the message only once a
snapshot covering it is saved (``hold``, then ``checkpointed``). The
in-process dataflow tests drive this same class.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable

from smsstream.detection.base import PartContext
from smsstream.detection.driver import Item, Source
from smsstream.errors import RecordError
from smsstream.worker.flow import Heartbeat, Outbox, Shard, Topology
from smsstream.worker.transport import decode
from smsstream.worker.snapshots import forget_delivered

log = logging.getLogger(__name__)

#: A shard's snapshot is saved at most this often, and at least this often ...
CHECKPOINT_S = 5.0
CHECKPOINT_MAX_S = 600.0
#: ... and within that, rarely enough that saving all of a worker's shards takes at most this share
#: of its time (a snapshot is the whole shard: a borrower book of millions of numbers, or a merge
#: buffer full of a backlog, takes seconds, and a worker holds dozens of shards).
CHECKPOINT_BUDGET = 0.05
#: ... or sooner, once the messages it holds unacknowledged (kept in memory until then) reach this size.
CHECKPOINT_HELD_BYTES = 64 * 1024 * 1024
#: A shard looks through what it sent for deliveries already confirmed once it holds this many
#: (snapshots of large states are minutes apart; only those in flight or failed need keeping).
MAX_UNCONFIRMED = 4096

ShardKey = tuple[str, int]


@dataclass
class ShardOutput:
    """What one message of a shard's partition produced, to send on."""

    #: facts for other parts: ((part, partition), items), one message each
    facts: list[tuple[tuple[str, int], list[Item]]]
    alerts: list[dict]
    dead: list[tuple[Source, RecordError]]
    #: of the items it took, those a full merge buffer released early
    overflowed: int
    #: items the part processed (those the gate let through)
    processed: int


@dataclass
class Slot:
    """One shard this worker owns, with the events it holds unacknowledged and the deliveries it awaits."""

    shard: Shard
    held: list = field(default_factory=list)
    held_bytes: int = 0
    #: deliveries of the facts, alerts and dead letters sent since the shard's last snapshot
    unconfirmed: list[Awaitable] = field(default_factory=list)
    next_checkpoint: float = 0.0


class ShardHost:
    """The shards of the part partitions assigned to this worker."""

    def __init__(self, topology: Topology, ctx: PartContext, load: Callable[[str, int], bytes | None],
                 watch: Callable[[str], Callable | None] | None = None):
        self.topology = topology
        self.ctx = ctx
        self._load = load
        #: part name -> what its drivers tell what they take (``PartDriver.watch``), if anything
        self._watch = watch
        self.slots: dict[ShardKey, Slot] = {}
        self._facts = Outbox(topology.partitions)

    def shard(self, name: str, partition: int) -> Shard:
        """The shard of a partition, restored from its snapshot the first time this worker gets it."""
        slot = self.slots.get((name, partition))
        if slot is None:
            snapshot = self._load(name, partition)
            shard = self.topology.new_shard(name, self.ctx, snapshot)
            if self._watch is not None:
                shard.driver.watch = self._watch(name)
            if snapshot:
                log.info("part %s partition %d: state restored from its table; it holds messages up to offset %d",
                         name, partition, shard.covered)
            slot = self.slots[(name, partition)] = Slot(shard)
        return slot.shard

    def owns(self, name: str, partition: int, shard: Shard) -> bool:
        """Is ``shard`` still this worker's? A rebalance may have taken it while a message was in flight."""
        slot = self.slots.get((name, partition))
        return slot is not None and slot.shard is shard

    def run(self, shard: Shard, name: str, partition: int, offset: int, value: bytes) -> ShardOutput:
        """One message of the shard's partition through the shard, and its facts addressed to their parts."""
        shard.offer(decode(value))
        shard.covered = offset
        out = shard.run()
        facts = self._facts
        route_fact = self.topology.route_fact
        origin = f"{name}/{partition}"
        for stream, fact, ts, seq in out.facts:
            for target, key in route_fact(stream, fact):
                facts.add(target, key, Item(stream, key, fact, ts, origin, seq=seq))
        return ShardOutput(facts.take(), out.alerts, out.dead, shard.overflowed, out.processed)

    def sent(self, name: str, partition: int, deliveries: list[Awaitable]) -> None:
        """What a message's output sent, to be confirmed before the shard's next snapshot."""
        slot = self.slots[(name, partition)]
        slot.unconfirmed.extend(deliveries)
        if len(slot.unconfirmed) >= MAX_UNCONFIRMED:
            forget_delivered(slot.unconfirmed)

    def hold(self, name: str, partition: int, event: Any, size: int, now: float) -> bool:
        """A message's output is on its way: keep the message unacknowledged until a snapshot covers it.

        Returns whether a checkpoint is due. From here on, heartbeats may
        claim the shard's progress and idleness (``Shard.sent``).
        """
        slot = self.slots[(name, partition)]
        slot.shard.sent()
        slot.held.append(event)
        slot.held_bytes += size
        return slot.held_bytes >= CHECKPOINT_HELD_BYTES or now >= slot.next_checkpoint

    def checkpointed(self, name: str, partition: int, seconds: float, now: float | None = None) -> list:
        """The shard's snapshot is saved: the events it covers, to acknowledge; the next one is spaced by its cost."""
        slot = self.slots[(name, partition)]
        held, slot.held, slot.held_bytes = slot.held, [], 0
        now = time.monotonic() if now is None else now
        slot.next_checkpoint = now + min(CHECKPOINT_MAX_S,
                                         max(CHECKPOINT_S, seconds * len(self.slots) / CHECKPOINT_BUDGET))
        return held

    def retry_later(self, name: str, partition: int, now: float) -> None:
        """A checkpoint failed (a delivery did not make it): keep the events, try again shortly."""
        self.slots[(name, partition)].next_checkpoint = now + CHECKPOINT_S

    def revoked(self, name: str, partition: int) -> None:
        """The partition went to another worker, which re-reads from the last snapshot: forget what came after."""
        self.slots.pop((name, partition), None)

    def heartbeats(self) -> dict[str, list[Heartbeat]]:
        """Each shard's forwarded progress, for the parts downstream of it."""
        beats: dict[str, list[Heartbeat]] = {}
        downstream = self.topology.downstream
        for (name, partition), slot in self.slots.items():
            beat = Heartbeat(f"{name}/{partition}", slot.shard.emitted_until, slot.shard.emitted_idle)
            for target in downstream[name]:
                beats.setdefault(target, []).append(beat)
        return beats

    def of_part(self, name: str) -> list[Shard]:
        return [slot.shard for (part, _), slot in self.slots.items() if part == name]

    @property
    def shards(self) -> dict[ShardKey, Shard]:
        return {key: slot.shard for key, slot in self.slots.items()}
