"""The part driver: runs one part on its records and facts, in replay and in the worker alike.

A part (``base.Part``) judges one entity's buckets. The driver around it
decides which records count (duplicates and lateness, ``EventGate``), when
buckets close (its event-time clock, on the hourly expiry grid), and what
the part tells other parts (facts, with its routine ones added up per minute
by a ``RoutineTally``). ``Engine`` runs one driver per part in one process
and hands facts from driver to driver directly (replay, the tests); the
worker runs one driver per partition of each part, behind an event-time
merge of everything upstream (``worker.flow.Shard``). Both give each driver
its items in event-time order, so both write the same alert records: the
logic that decides them is this one class.
"""

from __future__ import annotations

import gc
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Iterator

from smsstream.detection.base import BUCKET_MS, Part
from smsstream.detection.facts import ADDED_UP, RoutineCount, RoutineTally, TemplateTally
from smsstream.detection.gate import EventGate
from smsstream.errors import RecordError
from smsstream.vocabulary import HOUR_MS

#: Young-generation threshold of the cyclic collector while drivers run (CPython's default is 700).
#: They allocate records, facts and per-bucket tallies that die young and form no cycles; at the
#: default the collector walks them (and, every few passes, the whole detection state) hundreds of
#: times per simulated day and finds next to nothing: a fifth of the worker's own time, a few
#: percent of a replay's.
GC_YOUNG = 10_000

#: How often (event time) idle entities and old duplicate ids are forgotten.
EXPIRE_EVERY_MS = HOUR_MS


@contextmanager
def fewer_gc_passes() -> Iterator[None]:
    """Run the block with the collector's young generation at ``GC_YOUNG`` (replay, a worker's life)."""
    thresholds = gc.get_threshold()
    gc.set_threshold(max(thresholds[0], GC_YOUNG), *thresholds[1:])
    try:
        yield
    finally:
        gc.set_threshold(*thresholds)


def next_expiry(limit: int) -> int:
    """The first point of the hourly expiry grid after ``limit``."""
    return limit - limit % EXPIRE_EVERY_MS + EXPIRE_EVERY_MS


@dataclass(slots=True)
class Source:
    """Where an input record came from, for the dead-letter topic (``partition`` is None in replay)."""

    topic: str
    partition: int | None
    offset: int
    key: bytes | None
    raw: Any


@dataclass(slots=True)
class Item:
    """An input record (``source`` set) or a fact for one part, keyed by that part's key."""

    stream: str
    key: str
    value: Any
    ts: int
    origin: str
    source: Source | None = None
    #: position in its origin (input offset, or the emitting driver's fact count): an item
    #: re-sent after its origin restarted from a snapshot is recognised and dropped
    seq: int = -1


@dataclass(slots=True)
class Outcome:
    """What a driver's items produced: alert records, facts for other parts, dead letters."""

    alerts: list[dict] = field(default_factory=list)
    #: (stream, fact, event time, sequence number in this driver's output; -1 for routine counts)
    facts: list[tuple[str, Any, int, int]] = field(default_factory=list)
    dead: list[tuple[Source, RecordError]] = field(default_factory=list)
    processed: int = 0


class PartDriver:
    """One part (or one partition of it) with its gate, clock, expiry grid and routine tally.

    ``reports`` names the input topics whose refused records this driver
    dead-letters: every part that reads a topic gates what it gets, but only
    one (the topic's *reporting* part) writes the dead letter, so one bad
    record yields one dead letter.
    """

    def __init__(self, part: Part, reports: frozenset[str] = frozenset()):
        self.part = part
        self.reports = reports
        self.gate = EventGate(part.ctx.late_horizon_ms)
        self.tally = RoutineTally()
        #: per producing origin: the latest bucket it sent routine counts for, and the count per group
        self.routine_seen: dict[str, tuple[int, dict]] = {}
        self.facts_sent = 0
        self.next_expiry = 0
        self.out = Outcome()
        #: told each value the part took and the facts it made of it (the worker's dashboards count them)
        self.watch: Callable[[Any, list | None], None] | None = None

    def take(self, item: Item) -> None:
        """Count one item in event-time order: close the buckets it has passed, gate it, run the part on it."""
        part = self.part
        ts = item.ts
        out = self.out
        # an item meets the buckets closed by the items before it
        watermark = ts - 1 - part.ctx.lateness_ms
        if watermark - watermark % BUCKET_MS > part.closed_until:
            self.advance(watermark)
        tally = self.tally
        if ts >= tally.open_bucket + BUCKET_MS:
            self._send_routine(tally.roll(ts))
        value = item.value
        if item.source is not None:
            try:
                self.gate.check(item.stream, value)
            except RecordError as exc:
                if item.stream in self.reports:
                    out.dead.append((item.source, exc))
                return
        elif value.__class__ in ADDED_UP:
            value = self._routine_delta(item.origin, item.stream, value)
            if value is None:
                return
        out.processed += 1
        if item.key:
            made = part.process(item.stream, item.key, value)
            if part.fired:
                out.alerts.extend(part.fired)
                part.fired.clear()
            if self.watch is not None:
                self.watch(value, made)
            for stream, fact in made or ():
                if tally.take(stream, fact):
                    continue
                self.facts_sent += 1
                out.facts.append((stream, fact, ts, self.facts_sent))

    def catch_up(self, bound: int, finished: bool = False) -> None:
        """Everything up to event time ``bound`` has been taken: hand over routine counts, close buckets.

        ``finished``: nothing more is to come for now (every upstream is
        idle), so the buckets up to ``bound`` itself may close.
        """
        self.hand_over(bound, finished)
        self.advance(bound - self.part.ctx.lateness_ms - (0 if finished else 1))

    def hand_over(self, bound: int, finished: bool = False) -> None:
        """The input has passed the open bucket (or gone quiet): consumers need its routine counts so far."""
        tally = self.tally
        if tally.groups and (bound >= tally.open_bucket + BUCKET_MS or finished):
            self._send_routine(tally.unsent())

    def advance(self, watermark: int) -> None:
        """Close the part's buckets up to ``watermark``, expiring on the hourly grid on the way.

        Expiry happens after closing exactly up to each grid point, so the
        alerts do not depend on how far one advance jumps.
        """
        limit = watermark - watermark % BUCKET_MS
        part = self.part
        if watermark <= 0 or limit <= part.closed_until:
            return
        alerts = self.out.alerts
        while self.next_expiry and self.next_expiry <= limit:
            at = self.next_expiry
            alerts.extend(part.advance(at))
            part.expire(at)
            self.gate.expire()
            self.next_expiry = at + EXPIRE_EVERY_MS
        alerts.extend(part.advance(watermark))
        if not self.next_expiry:
            self.next_expiry = next_expiry(limit)

    def flush(self) -> None:
        """End of input (replay): hand over every routine count and close every bucket that holds data."""
        self._send_routine(self.tally.roll(self.tally.open_bucket + BUCKET_MS))
        self.out.alerts.extend(self.part.flush())

    def take_outcome(self) -> Outcome:
        out, self.out = self.out, Outcome()
        return out

    def _send_routine(self, counts: list) -> None:
        """Routine counts carry no sequence number: a count sent again replaces, not adds (``_routine_delta``)."""
        facts = self.out.facts
        for stream, counted in counts:
            facts.append((stream, counted, counted.ts, -1))

    def _routine_delta(self, origin: str, stream: str, counted: RoutineCount | TemplateTally):
        """What a producer's cumulative count adds to what this driver already took from it; None if nothing.

        A producer sends a bucket's counts in order, and a later bucket only
        once the earlier one is complete, so a count for an older bucket than
        the latest from that origin is a re-sent copy. A tally that grew is
        passed whole: the part replaces the one before (``replaces``).
        """
        bucket = counted.first_ts - counted.first_ts % BUCKET_MS
        seen = self.routine_seen.get(origin)
        if seen is None or bucket > seen[0]:
            seen = self.routine_seen[origin] = (bucket, {})
        elif bucket < seen[0]:
            return None
        group = (stream, counted.group)
        before = seen[1].get(group, 0)
        if counted.count <= before:
            return None
        seen[1][group] = counted.count
        if not before or counted.replaces:
            return counted
        return replace(counted, count=counted.count - before)

    def state(self) -> dict:
        """Everything this driver holds, for a snapshot (the part's context is rebuilt on restore)."""
        return {
            "part": {k: v for k, v in vars(self.part).items() if k != "ctx"},
            "gate": self.gate,
            "tally": self.tally,
            "routine_seen": self.routine_seen,
            "facts_sent": self.facts_sent,
            "next_expiry": self.next_expiry,
        }

    def restore(self, state: dict) -> None:
        vars(self.part).update(state["part"])
        self.gate = state["gate"]
        self.tally = state["tally"]
        self.routine_seen = state["routine_seen"]
        self.facts_sent = state["facts_sent"]
        self.next_expiry = state["next_expiry"]
