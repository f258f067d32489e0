"""The worker's dataflow without Faust: envelopes, the event-time merge, and one shard of a part.

Each detector part runs on a stream repartitioned by its key. A shard (one
partition of that stream) receives records and facts from many upstream
partitions ("origins"), each in its own order and at its own pace. Feeding
them to the part as they arrive would let a fast origin push the part's clock
past a slow origin's events, which would then count as late. So a shard first
merges its origins by event time, the way ``replay`` reads one time-ordered
file: it releases an item only once every origin that still has data to come
has reached that item's time (watermark of the slowest busy origin). Origins
that have caught up with their partition's end are *idle* and do not hold the
merge back. The merge buffer is bounded: past ``max_buffered`` items the oldest
are released anyway (bounded skew), and may then be dead-lettered as late.
"""

from __future__ import annotations

import heapq
import pickle
from dataclasses import dataclass, field
from typing import Iterable, Mapping, Sequence

from smsstream.detection.base import Part, PartContext, partition_of
from smsstream.detection.driver import Item, Outcome, PartDriver, Source
from smsstream.detection.routing import Routes
from smsstream.records import BINDINGS, INPUT_TOPICS, RECEIPTS, SENDS

__all__ = ["EventTimeMerge", "Heartbeat", "Item", "Outbox", "Shard", "Source", "Topology"]

#: Input topics whose event time every part's clock follows, as in ``Engine``; reference topics
#: hold back only the parts that read them, and only until they have caught up.
EVENT_TOPICS = (SENDS, RECEIPTS, BINDINGS)
#: Items a shard may hold back while waiting for a slow origin.
MAX_BUFFERED = 100_000


@dataclass(slots=True)
class Heartbeat:
    """An origin's progress: every item it sends from now on has ``ts >= watermark`` (roughly)."""

    origin: str
    watermark: int
    idle: bool


@dataclass
class OriginState:
    watermark: int = 0
    idle: bool = False
    seen: bool = False
    seq: int = -1


@dataclass
class EventTimeMerge:
    """Releases items in event-time order once all busy origins have passed them.

    Ties in event time are broken by origin and position, never by arrival:
    a shard restored from a snapshot then processes the same items in the
    same order and numbers its facts as before, so its downstream can drop
    the re-sent ones by number.
    """

    expected: frozenset[str] = frozenset()
    max_buffered: int = MAX_BUFFERED
    origins: dict[str, OriginState] = field(default_factory=dict)
    released_until: int = 0
    #: items released only because the buffer was full (before every busy origin had passed them)
    overflowed: int = 0
    _heap: list = field(default_factory=list)
    _seq: int = 0

    def _origin(self, name: str) -> OriginState:
        state = self.origins.get(name)
        if state is None:
            state = self.origins[name] = OriginState()
        return state

    def offer(self, item: Item) -> bool:
        """Buffer an item; False (and dropped) when it is a re-sent copy of one already taken."""
        state = self._origin(item.origin)
        if item.seq >= 0:
            if item.seq <= state.seq:
                return False
            state.seq = item.seq
        state.seen = True
        state.idle = False
        if item.ts > state.watermark:
            state.watermark = item.ts
        self._seq += 1
        heapq.heappush(self._heap, (item.ts, item.origin, item.seq, self._seq, item))
        return True

    def heartbeat(self, beat: Heartbeat) -> None:
        state = self._origin(beat.origin)
        state.seen = True
        state.idle = beat.idle
        if beat.watermark > state.watermark:
            state.watermark = beat.watermark

    def bound(self) -> int | None:
        """Event time up to which every busy origin has delivered; None: wait (an origin never reported)."""
        busy = []
        for name in self.expected | self.origins.keys():
            state = self.origins.get(name)
            if state is None or not state.seen:
                return None
            if not state.idle:
                busy.append(state.watermark)
        if busy:
            return min(busy)
        return max((s.watermark for s in self.origins.values()), default=0) if self.origins else None

    @property
    def all_idle(self) -> bool:
        return bool(self.expected | self.origins.keys()) and all(
            (s := self.origins.get(n)) is not None and s.seen and s.idle
            for n in self.expected | self.origins.keys()
        )

    def release(self) -> list[Item]:
        out: list[Item] = []
        heap = self._heap
        if self.all_idle:
            while heap:
                out.append(heapq.heappop(heap)[-1])
        else:
            bound = self.bound()
            if bound is not None:
                while heap and heap[0][0] <= bound:
                    out.append(heapq.heappop(heap)[-1])
            while len(heap) > self.max_buffered:
                out.append(heapq.heappop(heap)[-1])
                self.overflowed += 1
        if out and out[-1].ts > self.released_until:
            self.released_until = out[-1].ts
        return out

    def __len__(self) -> int:
        return len(self._heap)


class Shard:
    """One partition of one part: the event-time merge of everything upstream, in front of the part's driver.

    The shard closes buckets on the event time of the whole input (the merge
    bound covers every partition of the event topics), not only on the items
    this part gets, as ``Engine`` does with its one clock.
    """

    def __init__(self, part: Part, expected: Iterable[str] = (), reports: frozenset[str] = frozenset()):
        self.driver = PartDriver(part, reports)
        self.merge = EventTimeMerge(expected=frozenset(expected))
        #: event time this shard has processed and forwarded; facts it sends later are not older
        self.emitted_until = 0
        #: idle as of the last run whose facts are on their way (``sent``), not mid-run
        self.emitted_idle = False
        #: offset of the last message of this shard's own partition that its state holds (-1: none yet)
        self.covered = -1
        #: items the last run took that a full merge buffer released early (``EventTimeMerge.overflowed``)
        self.overflowed = 0
        #: its snapshot could not be used: it reads its partition again from the start, sending nothing it
        #: sent before (``resume_step``, ``ShardHost.run``)
        self.rebuilding = False
        #: while rebuilding, the messages up to this offset were processed before: their output is not sent again
        self.quiet_until = -1

    @property
    def part(self) -> Part:
        return self.driver.part

    def offer(self, message: list) -> None:
        """Take a message of items or of heartbeats (``transport.decode``)."""
        merge = self.merge
        for element in message:
            if element.__class__ is Heartbeat:
                merge.heartbeat(element)
            else:
                merge.offer(element)

    def run(self) -> Outcome:
        """Process every item the merge can release, in event-time order, then close due buckets."""
        merge = self.merge
        overflowed = merge.overflowed
        driver = self.driver
        take = driver.take
        for item in merge.release():
            take(item)
        bound = merge.bound()
        if bound is not None:
            driver.catch_up(bound, finished=merge.all_idle)
        self.overflowed = merge.overflowed - overflowed
        return driver.take_outcome()

    def progress(self) -> int:
        """Event time up to which this shard has forwarded all it will: what it tells its downstream.

        Not beyond the merge bound: items released early from a full merge
        buffer run ahead of it, and the slowest origin can still deliver
        older ones. Routine counts of the open bucket do not hold it back:
        they are handed over in the run whose bound passes the bucket's end
        (``PartDriver.catch_up``), before any heartbeat claims that bound, so
        they reach the downstream before it can close the bucket; a bucket's
        state does not depend on the order its items arrive in. An item of
        evidence thus goes downstream at once, not a minute later.
        """
        bound = self.merge.bound()
        return self.merge.released_until if bound is None else bound

    @property
    def idle(self) -> bool:
        return self.merge.all_idle and not len(self.merge)

    def sent(self) -> None:
        """The facts of the last run are on their way: heartbeats may now claim its progress and idleness.

        A heartbeat that said "idle" while a run's facts were still being
        sent would let the downstream close buckets those facts belong to.
        """
        self.emitted_until = self.progress()
        self.emitted_idle = self.idle

    def state(self) -> dict:
        return {
            "driver": self.driver.state(),
            "merge": self.merge,
            "emitted_until": self.emitted_until,
            "covered": self.covered,
        }

    def snapshot(self) -> bytes:
        """The shard as bytes: ``S``, the snapshot format, and a pickle of its ``state``."""
        return SNAPSHOT_HEADER + pickle.dumps(self.state(), protocol=pickle.HIGHEST_PROTOCOL)

    @classmethod
    def from_state(
        cls,
        part_cls: type[Part],
        ctx: PartContext,
        data: dict,
        expected: Iterable[str] = (),
        reports: frozenset[str] = frozenset(),
    ) -> "Shard":
        shard = cls(part_cls(ctx), expected, reports)
        shard.driver.restore(data["driver"])
        shard.merge = data["merge"]
        shard.merge.expected = frozenset(expected)
        shard.emitted_until = data["emitted_until"]
        shard.covered = data["covered"]
        return shard


#: The snapshot format this release writes; ``read_snapshot`` says which one a snapshot is in.
SNAPSHOT_FORMAT = 1
SNAPSHOT_HEADER = b"S" + bytes([SNAPSHOT_FORMAT])


def read_snapshot(raw: bytes) -> tuple[int, dict]:
    """A snapshot's format (0: release 0.1, whose snapshots have no header) and its state.

    Raises whatever unpickling raises for one that cannot be read (a class
    renamed since, a truncated blob), and ``ValueError`` for a newer format.
    """
    if raw[:1] == b"S":
        if raw[1] > SNAPSHOT_FORMAT:
            raise ValueError(f"snapshot format {raw[1]} is newer than this release's {SNAPSHOT_FORMAT}")
        return raw[1], pickle.loads(memoryview(raw)[2:])
    return 0, pickle.loads(raw)


#: what a shard does with the next message of its partition (``resume_step``)
TAKE, HELD, MISSED = "take", "held", "missed"


def resume_step(covered: int, offset: int, rebuilding: bool = False) -> str:
    """Whether a shard takes the message at ``offset``, holds it already, or missed messages before it.

    A shard goes on from the position its snapshot holds, not from its
    consumer group's committed offset: that offset is committed on a timer,
    so after a rebalance it can lag the snapshot (the messages in between are
    in the state already, and their old heartbeats would wind its merge
    back), or run past it (a snapshot older than the commit), and then the
    messages in between must be read again. A shard whose snapshot could
    not be used (``rebuilding``) reads everything before ``offset`` again.
    """
    if rebuilding:
        return MISSED if offset > 0 else TAKE
    if covered < 0 or offset == covered + 1:
        return TAKE
    return HELD if offset <= covered else MISSED


class Topology(Routes):
    """The routes of the parts as run on ``partitions`` partitions, and whose progress each shard waits for."""

    def __init__(self, parts: Sequence[type[Part]], topic_partitions: Mapping[str, int], partitions: int):
        super().__init__([p.spread_over(partitions) for p in parts])
        self.partitions = partitions
        emitters: dict[str, list[type[Part]]] = {}
        for p in self.parts:
            for stream in p.emits:
                emitters.setdefault(stream, []).append(p)
        self.clock_topics = [t for t in EVENT_TOPICS if t in self.consumers]
        #: part -> the origins its shards' merges wait for
        self.expected: dict[str, frozenset[str]] = {}
        self.downstream: dict[str, list[str]] = {}
        for p in self.parts:
            origins = {f"{t}/{i}" for t in self.clock_topics for i in range(topic_partitions.get(t, 0))}
            for stream in p.inputs:
                if stream in INPUT_TOPICS:
                    origins |= {f"{stream}/{i}" for i in range(topic_partitions.get(stream, 0))}
                for upstream in emitters.get(stream, ()):
                    origins |= {f"{upstream.name}/{i}" for i in range(partitions)}
            self.expected[p.name] = frozenset(origins)
            self.downstream[p.name] = sorted({q.name for s in p.emits for q in self.consumers.get(s, ())})

    def heartbeat_targets(self, topic: str) -> list[str]:
        """Parts that must hear an input partition's progress: all of them for event topics."""
        if topic in EVENT_TOPICS:
            return [p.name for p in self.parts]
        return [p.name for p in self.consumers.get(topic, ())]

    def new_shard(self, name: str, ctx: PartContext, state: dict | None = None) -> Shard:
        """A shard of part ``name``, empty or from a snapshot's ``state`` (``read_snapshot``)."""
        p = self.by_name[name]
        if state is not None:
            return Shard.from_state(p, ctx, state, self.expected[name], self.reports(name))
        return Shard(p(ctx), self.expected[name], self.reports(name))


class Outbox:
    """Items for the parts' internal topics, grouped by target partition, sent as one message per group.

    Faust's cost is per message, not per byte: an input record fans out to
    several parts and facts, and one message per record and part would make
    that fan-out the worker's limit (and pin a hot sender's partition to
    Faust's per-message rate). Items keep their origin's order within a group.
    """

    #: a group is sent once it holds this many bytes of raw input (well under Kafka's 1 MB message limit)
    MAX_GROUP_BYTES = 256 * 1024
    #: and no message carries more items than this (a fact pickles to ~100 bytes; a long-held merge
    #: can release a day of them in one run)
    MAX_MESSAGE_ITEMS = 2_000

    def __init__(self, partitions: int):
        self.partitions = partitions
        self.groups: dict[tuple[str, int], list[Item]] = {}
        self.items = 0
        self.largest = 0
        self._bytes: dict[tuple[str, int], int] = {}

    def add(self, part: str, key: str, item: Item, size: int = 0) -> None:
        """Add an item for ``part``'s partition of ``key``; ``size``: the bytes of raw input it stands for."""
        target = (part, partition_of(key, self.partitions))
        group = self.groups.get(target)
        if group is None:
            group = self.groups[target] = []
        group.append(item)
        self.items += 1
        if size:
            total = self._bytes[target] = self._bytes.get(target, 0) + size
            if total > self.largest:
                self.largest = total

    @property
    def full(self) -> bool:
        return self.largest >= self.MAX_GROUP_BYTES

    def take(self) -> list[tuple[tuple[str, int], list[Item]]]:
        """Every group as messages: ``((part, partition), items)``, in order within a group."""
        groups = self.groups
        self.groups, self._bytes, self.items, self.largest = {}, {}, 0, 0
        step = self.MAX_MESSAGE_ITEMS
        return [(target, group[i:i + step]) for target, group in groups.items() for i in range(0, len(group), step)]

    def drop(self, origins: set[str]) -> None:
        """Forget items from these origins (their partitions were revoked: the next owner sends them)."""
        for target, group in list(self.groups.items()):
            kept = [item for item in group if item.origin not in origins]
            self.items -= len(group) - len(kept)
            if kept:
                self.groups[target] = kept
            else:
                del self.groups[target]
                self._bytes.pop(target, None)
