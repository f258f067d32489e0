"""What every detector part shares: the finding it reports, its event clock and bucket closing.

The detection core is plain Python on event time, split into *parts*. A part
is keyed by exactly one entity (a number, a sender, a message id, ...): it
declares, per input topic or fact stream, the function that gives a record's
key, keeps its state in ``entities[key]`` and may emit small *facts* to parts
keyed differently. A ``driver.PartDriver`` runs a part: the streaming worker
one per partition of a stream repartitioned by the part's key, ``Engine``
one per part in-process for ``replay`` and the tests.

Time is event time only. A part marks the bucket (``BUCKET_MS``) each event
falls in; once the watermark (latest event time minus the allowed lateness)
has passed a bucket, ``advance`` closes it and calls ``close`` for every key
with data in it, in arrival order. Detectors judge closed buckets only, so
findings do not depend on arrival order within the allowed lateness nor on
replay speed. Findings go straight to the part's ``AlertBook``, which owns
the lifecycle of the dedup keys of the entities this part is keyed by.

State rules for every part:
- ``entities`` values are plain picklable objects (slotted dataclasses,
  dicts, tuples): the worker snapshots a whole part into its table;
- bounded: idle entities go in ``expire``; per-number state is small;
- numbers arrive as pseudonyms (``intake``); free text that may hide one
  (a link host, a signature) goes through ``ctx.pseudonymizer.redact``.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, ClassVar, Iterable, MutableMapping

from smsstream.detection.alerts import AlertBook, Finding
from smsstream.detection.controls import ControlBook
from smsstream.pseudonym import Pseudonymizer
from smsstream.vocabulary import DAY_MS, HOUR_MS, MINUTE_MS, SECOND_MS

if TYPE_CHECKING:
    from smsstream.config import Settings

__all__ = ["BUCKET_MS", "DEFAULT_LATENESS_MS", "DEFAULT_LATE_HORIZON_MS", "DEFAULT_IDLE_MS", "Finding", "Part",
           "PartContext", "partition_of"]

BUCKET_MS = MINUTE_MS
#: How far behind the latest event time a send or binding may arrive and still count in its own
#: bucket (docs/detection.md, "Late records", says why seconds).
DEFAULT_LATENESS_MS = 10 * SECOND_MS
#: How far behind it a send or binding may arrive and still count at all (in the first open bucket).
DEFAULT_LATE_HORIZON_MS = 30 * MINUTE_MS
#: How long an entity with no events keeps its state (baselines included).
DEFAULT_IDLE_MS = 14 * DAY_MS

KeyFn = Callable[[Any], "str | tuple[str, ...] | None"]


@dataclass(slots=True)
class PartContext:
    """What every part is built with; the same for all parts of one engine or worker."""

    pseudonymizer: Pseudonymizer
    alert_repeat_ms: int = HOUR_MS
    lateness_ms: int = DEFAULT_LATENESS_MS
    late_horizon_ms: int = DEFAULT_LATE_HORIZON_MS
    idle_ms: int = DEFAULT_IDLE_MS
    #: how long a number's non-borrower loan SMS from one lender wait for another lender's (``shared_list``)
    shared_list_window_ms: int = DAY_MS
    #: the operator controls in force (``controls``); not part of any state: the worker reads them from
    #: their topic, replay from its configuration
    controls: ControlBook = field(default_factory=ControlBook)

    @classmethod
    def from_settings(cls, settings: "Settings", controls: ControlBook | None = None) -> "PartContext":
        """The context the settings describe: the worker's and replay's alike."""
        return cls(Pseudonymizer(settings.require_pseudonym_key()), alert_repeat_ms=settings.alert_repeat_s * 1000,
                   lateness_ms=settings.allowed_lateness_s * 1000, late_horizon_ms=settings.late_horizon_s * 1000,
                   shared_list_window_ms=settings.shared_list_window_s * 1000,
                   controls=controls if controls is not None else ControlBook())

    def pseudonym(self, number: str) -> str:
        return self.pseudonymizer.pseudonym(number)


class EventClock:
    """Watermark of one part: the latest event time it has seen minus the allowed lateness."""

    __slots__ = ("max_ts", "lateness_ms")

    def __init__(self, lateness_ms: int = DEFAULT_LATENESS_MS):
        self.max_ts = 0
        self.lateness_ms = lateness_ms

    @property
    def watermark(self) -> int:
        return self.max_ts - self.lateness_ms if self.max_ts else 0



def partition_of(key: str, partitions: int) -> int:
    """The worker's internal-topic partition of a part key; every writer of the internal topics uses this."""
    return zlib.crc32(key.encode()) % partitions


class Part:
    """One keyed piece of a detector; subclass and fill in ``inputs``, ``process`` and ``close``.

    ``inputs`` maps each consumed topic (``records.SENDS``, ...) or fact
    stream (``facts.LOAN_SENDS``, ...) to the function that gives a record's
    key (or a tuple of keys, for a record every one of them must see); a key
    of None means "not for this part" and the record is skipped.
    """

    name: ClassVar[str] = "part"
    inputs: ClassVar[dict[str, KeyFn]] = {}
    #: Fact streams this part emits (for wiring and documentation).
    emits: ClassVar[tuple[str, ...]] = ()
    #: Whether the part reads a send's ``body``: the worker sends the others a copy without it.
    reads_body: ClassVar[bool] = False

    def __init__(self, ctx: PartContext):
        self.ctx = ctx
        self.entities: MutableMapping[str, Any] = {}
        self.book = AlertBook(repeat_ms=ctx.alert_repeat_ms)
        self.clock = EventClock(ctx.lateness_ms)
        #: bucket start -> keys with data in that bucket (insertion-ordered, so closing is deterministic)
        self._due: dict[int, dict[str, None]] = {}
        #: every bucket starting before this is closed
        self.closed_until = 0
        #: alert records of findings fired at once (``fire_now``), for the driver to take
        self.fired: list[dict] = []

    @classmethod
    def spread_over(cls, partitions: int) -> type["Part"]:
        """This part as run on ``partitions`` partitions; a part whose keys fan out per partition overrides it."""
        return cls

    # --- to implement --------------------------------------------------------

    def process(self, topic: str, key: str, value: Any) -> list[tuple[str, Any]] | None:
        """Take one record or fact; return facts for other parts as ``(stream, fact)`` pairs."""
        raise NotImplementedError

    def close(self, key: str, start: int, end: int) -> Iterable[Finding]:
        """Judge bucket ``[start, end)`` of one key that had data in it."""
        return ()

    def idle_since(self, state: Any) -> int:
        """Event time of a state's latest activity; states idle for ``ctx.idle_ms`` are expired."""
        return getattr(state, "last_ts", 0)

    # --- shared machinery ----------------------------------------------------

    def fire_now(self, finding: Finding, key: str) -> None:
        """A finding whose evidence one record completes: to the alert book at once, not when its bucket closes.

        Its figures must depend on that record and on closed buckets only, so
        that replay and the worker write the same record whatever else they
        have taken of the open bucket by then.
        """
        records = self.book.offer(finding, key)
        if self.ctx.controls.active:
            records = [self.ctx.controls.mark(r) for r in records]
        self.fired.extend(records)

    def save(self, key: str, state: Any) -> None:
        """Write a new or replaced state under its key."""
        self.entities[key] = state

    def mark(self, key: str, ts: int) -> int:
        """Note that ``key`` has data at event time ``ts``; returns the bucket it counts in.

        Data older than the closed buckets (legitimately late input such as a
        receipt hours after its send) counts in the first open bucket.
        """
        clock = self.clock
        if ts > clock.max_ts:
            clock.max_ts = ts
        start = ts - ts % BUCKET_MS
        if start < self.closed_until:
            start = self.closed_until
        keys = self._due.get(start)
        if keys is None:
            self._due[start] = {key: None}
        else:
            keys[key] = None
        return start

    def advance(self, watermark: int | None = None) -> list[dict]:
        """Close every bucket that ends at or before ``watermark``; return alert records."""
        if watermark is None:
            watermark = self.clock.watermark
        limit = watermark - watermark % BUCKET_MS
        out: list[dict] = []
        if limit <= self.closed_until:
            return out
        due = sorted(b for b in self._due if b < limit)
        for start in due:
            # resolve what had gone quiet before this bucket, as a step-by-step advance would:
            # the alerts must not depend on how far one call jumps (worker shards jump further)
            out.extend(self.book.advance(start))
            end = start + BUCKET_MS
            for key in self._due.pop(start):
                for finding in self.close(key, start, end):
                    out.extend(self.book.offer(finding, key))
        self.closed_until = limit
        out.extend(self.book.advance(limit))
        if out and self.ctx.controls.active:
            # silences and shadows only mark what the lifecycle writes (``ControlBook.mark``)
            out = [self.ctx.controls.mark(r) for r in out]
        return out

    def flush(self) -> list[dict]:
        """End of input: close every bucket that holds data."""
        if not self._due:
            return []
        return self.advance(max(self._due) + BUCKET_MS)

    def expire(self, now: int) -> int:
        """Forget entities idle since before ``now - ctx.idle_ms`` unless an alert on them fires."""
        horizon = now - self.ctx.idle_ms
        stale = [k for k, s in self.entities.items() if self.idle_since(s) < horizon]
        pending = {k for keys in self._due.values() for k in keys}
        dropped = 0
        for key in stale:
            if key in pending or self.book.holds_entity(key):
                continue
            del self.entities[key]
            dropped += 1
        return dropped
