"""What the part agents do with their messages, without Faust: a shard per partition, and when to save it.

The part agent hands each message of a part's internal topic to
``ShardHost.run``, sends what comes back (facts for other parts' topics,
alert records, dead letters), and acknowledges the message only once a
snapshot covering it is saved (``hold``, then ``checkpointed``). The
in-process dataflow tests drive this same class.

A shard starts from its partition's last snapshot. One of release 0.1 is
made like today's (``worker.upgrade``); for a part keyed by numbers that
takes what 0.1 left on every partition (``Earlier``, asked for by
``needs_earlier``). A snapshot that cannot be used (unreadable, or of a newer
release) is said in one log line, and the shard rebuilds its state from its
partition, read again from the start (``Shard.rebuilding``).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable

from smsstream.detection.base import PartContext
from smsstream.detection.driver import Item, Source
from smsstream.detection.intake import Intake
from smsstream.errors import RecordError
from smsstream.worker.flow import Heartbeat, Outbox, Shard, Topology, read_snapshot
from smsstream.worker.transport import NewerFormat, Upgraded, decode
from smsstream.worker.snapshots import forget_delivered
from smsstream.worker.upgrade import REKEYED, Release01

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
class Earlier:
    """What release 0.1 left for a part keyed by numbers, on every partition: its snapshot, and the messages
    routed after it that no shard had read (partition -> ``(snapshot or None, [(offset, message)])``)."""

    partitions: dict[int, tuple[bytes | None, list[tuple[int, bytes]]]]


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
        self.release_0_1 = Release01(topology.by_name, Intake(ctx.pseudonymizer))
        #: messages that could not be read (a newer release's): (part, partition) -> count
        self.unreadable: dict[ShardKey, int] = {}

    def needs_earlier(self, name: str, partition: int) -> bool:
        """Does restoring this shard need what release 0.1 left on every partition (``Earlier``)?

        Only a part keyed by numbers whose own partition holds a 0.1 snapshot:
        its entities are partitioned by pseudonym now (``worker.upgrade``).
        """
        if (name, partition) in self.slots or name not in REKEYED:
            return False
        raw = self._load(name, partition)
        return bool(raw) and raw[:1] != b"S"

    def shard(self, name: str, partition: int, earlier: Earlier | None = None) -> Shard:
        """The shard of a partition, restored from its snapshot the first time this worker gets it."""
        slot = self.slots.get((name, partition))
        if slot is None:
            shard = self._restore(name, partition, earlier)
            if self._watch is not None:
                shard.driver.watch = self._watch(name)
            slot = self.slots[(name, partition)] = Slot(shard)
        return slot.shard

    def _restore(self, name: str, partition: int, earlier: Earlier | None) -> Shard:
        where = f"part {name} partition {partition}"
        try:
            raw = self._load(name, partition)
            version, state = read_snapshot(raw) if raw else (None, None)
        except Exception as exc:  # noqa: BLE001 - any unreadable snapshot is rebuilt from the partition
            log.error("%s: its snapshot cannot be read (%s: %s); rebuilding its state from its partition, read "
                      "again from the start (what retention still holds)", where, type(exc).__name__, exc)
            shard = self.topology.new_shard(name, self.ctx)
            shard.rebuilding = True
            return shard
        if state is None:
            return self.topology.new_shard(name, self.ctx)
        if version == 0:
            state = self._upgraded(name, partition, state, earlier)
        shard = self.topology.new_shard(name, self.ctx, state)
        log.info("part %s partition %d: state restored from its table%s; it holds messages up to offset %d",
                 name, partition, " (written by release 0.1, upgraded)" if version == 0 else "", shard.covered)
        return shard

    def _upgraded(self, name: str, partition: int, state: dict, earlier: Earlier | None) -> dict:
        """A release 0.1 snapshot's state made like today's; regrouped from every partition's if keyed by numbers."""
        upgrade = self.release_0_1
        if name not in REKEYED:
            return upgrade.state(name, state)
        if earlier is None:
            raise ValueError(f"part {name} partition {partition}: a release 0.1 snapshot of a part keyed by "
                             "numbers needs every partition's (needs_earlier)")
        states: dict[int, dict] = {}
        unread: dict[int, list[Item]] = {}
        covered = state["covered"]
        for q, (raw, messages) in earlier.partitions.items():
            if raw:
                states[q] = upgrade.state(name, read_snapshot(raw)[1])
            unread[q] = []
            for offset, message in messages:
                decoded = decode(message, lambda items: upgrade.items(name, items))
                if decoded.__class__ is Upgraded:
                    unread[q] += decoded
                    if q == partition:
                        covered = max(covered, offset)
        if partition not in states:
            states[partition] = upgrade.state(name, state)
        regrouped = upgrade.regroup(name, partition, self.topology.partitions, states, unread)
        regrouped["covered"] = covered
        log.warning("part %s partition %d: release 0.1 partitioned this part by phone number, today's by its "
                    "pseudonym: its state is taken from every partition's 0.1 snapshot and the %d messages 0.1 left "
                    "unread", name, partition, sum(len(m) for _, m in earlier.partitions.values()))
        return regrouped

    def rebuild_from(self, shard: Shard, first: int) -> None:
        """A shard whose snapshot was lost reads its partition before ``first`` again, sending none of it.

        Its state is what those messages make of it (what retention still
        holds); its facts are numbered from a fresh epoch, above any number
        its predecessor used, so the parts downstream take the new ones.
        """
        shard.rebuilding = False
        shard.quiet_until = first - 1
        shard.driver.facts_sent = max(shard.driver.facts_sent, int(time.time() * 1000) << 20)

    def _unreadable(self, name: str, partition: int, offset: int, error: Exception) -> None:
        key = (name, partition)
        if key not in self.unreadable:
            log.error("part %s partition %d: message %d %s; it is skipped, as are later ones like it (counted)",
                      name, partition, offset, error)
        self.unreadable[key] = self.unreadable.get(key, 0) + 1

    def owns(self, name: str, partition: int, shard: Shard) -> bool:
        """Is ``shard`` still this worker's? A rebalance may have taken it while a message was in flight."""
        slot = self.slots.get((name, partition))
        return slot is not None and slot.shard is shard

    def run(self, shard: Shard, name: str, partition: int, offset: int, value: bytes) -> ShardOutput:
        """One message of the shard's partition through the shard, and its facts addressed to their parts."""
        try:
            message = decode(value, lambda items: self.release_0_1.items(name, items))
        except NewerFormat as exc:
            message = []
            self._unreadable(name, partition, offset, exc)
        if message.__class__ is Upgraded and name in REKEYED:
            # a part keyed by numbers took 0.1's messages of every partition when it was restored
            log.warning("part %s partition %d: message %d was written by release 0.1 after this shard was "
                        "restored; its items are not taken: stop every 0.1 worker before starting this release "
                        "(README, Upgrading)", name, partition, offset)
            message = []
        shard.offer(message)
        shard.covered = offset
        out = shard.run()
        if offset <= shard.quiet_until:
            # rebuilding: this message's output was sent before the snapshot was lost
            out.facts.clear()
            out.alerts.clear()
            out.dead.clear()
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
