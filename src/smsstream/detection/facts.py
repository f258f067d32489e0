"""Facts: what one part tells another part keyed differently.

Facts are small, slotted and picklable (the worker's internal topics carry
them pickled), each with an event time ``ts``. They are additive per bucket: a *routine* fact (a loan
send to a borrower, a delivered receipt) carries nothing but its count, so a
producer adds routine facts up per bucket (``RoutineTally``) and forwards one
``RoutineCount`` per sender, template and carrier instead of one fact per
send. A hot sender's millions of sends a day then reach its shard as a few
counts a minute from each producer shard. Facts that are hits (non-borrower
sends, blocked or failed receipts) travel one by one: they are the evidence
an alert shows.

A template's sends are read (against its registration) on several keys, so a
hot template spreads too; each read (``TemplateRead``) is added up per bucket
into a ``TemplateTally`` the same way, and the template's own key merges the
tallies of its readers. Their samples are the sends with the lowest hash of
their message id, so the merged tally does not depend on which reader saw
what, or in which order.
"""

from __future__ import annotations

import zlib
from bisect import insort
from dataclasses import dataclass, field, replace

from smsstream.detection.base import BUCKET_MS

#: Loan-obligation sends judged against the borrower book (number-keyed -> sender/template-keyed).
LOAN_SENDS = "fact.loan-sends"
#: Sends joined to their final receipt (message-keyed -> sender/template/carrier-keyed).
DELIVERY_OUTCOMES = "fact.delivery-outcomes"
#: Numbers two lenders both sent non-borrower loan SMS to (number-keyed -> sender-keyed).
SHARED_NUMBERS = "fact.shared-numbers"


@dataclass(slots=True)
class LoanSend:
    """A loan-obligation send, with whether its recipient is a borrower of its sender."""

    ts: int
    sender_id: str
    template_id: str | None
    message_id: str
    non_borrower: bool
    #: pseudonymised recipient, only for sends to non-borrowers (evidence)
    number_pn: str | None = None

    @property
    def routine(self) -> bool:
        return not self.non_borrower


@dataclass(slots=True)
class SharedNumber:
    """A number ``sender_id`` and ``other_id`` both sent loan-obligation SMS to, owing neither, within the window.

    One per lender of the pair; ``ts`` is when the later of the two sends
    happened. ``message_id`` is ``sender_id``'s send when it was the later
    one (the number part keeps no message ids), else None.
    """

    ts: int
    sender_id: str
    other_id: str
    number_pn: str
    message_id: str | None = None


#: Outcome classes of a final delivery receipt.
DELIVERED, BLOCKED, FAILED = "delivered", "blocked", "failed"


@dataclass(slots=True)
class DeliveryOutcome:
    """One send joined to its final receipt."""

    ts: int
    sender_id: str
    template_id: str | None
    carrier: str | None
    outcome: str
    status: str
    message_id: str
    error_code: str | None = None

    @property
    def routine(self) -> bool:
        return self.outcome == DELIVERED


@dataclass(slots=True)
class RoutineCount:
    """Routine facts of one bucket and one sender, template and carrier, added up.

    ``ts`` is the latest event time among them and ``first_ts`` the earliest.
    In the worker ``count`` is cumulative for its producer shard and bucket:
    a count sent again (after a restart, or grown since) replaces the one
    before instead of adding to it.
    """

    ts: int
    first_ts: int
    sender_id: str
    template_id: str | None
    carrier: str | None
    count: int

    routine = True
    replaces = False

    @property
    def group(self) -> tuple:
        return (self.sender_id, self.template_id, self.carrier)

    def add(self, fact) -> None:
        self.count += 1
        ts = fact.ts
        if ts > self.ts:
            self.ts = ts
        elif ts < self.first_ts:
            self.first_ts = ts

    def copy(self) -> "RoutineCount":
        return replace(self)


#: Samples kept per row of a template tally.
MAX_SAMPLES = 5
#: Distinct markers, senders and sources one tally names; the rest count as "other" (senders, sources)
#: or not at all (markers).
MAX_TALLY_MARKERS = 32
MAX_TALLY_SENDERS = 16
MAX_TALLY_SOURCES = 32


def rank_of(text: str) -> int:
    """Order-free rank of a message id or number: which sends a tally keeps as samples."""
    return zlib.crc32(text.encode())


@dataclass(slots=True)
class TemplateRead:
    """One send read against its template's registration (or, unregistered, its markers alone)."""

    ts: int
    template_id: str
    #: the reader's key (template id and spread slot): a tally per reader and bucket
    reader: str
    message_id: str
    rank: int
    #: rank of the recipient: two distinct ones show a marker repeats across people
    recipient: int
    #: the sender, when it is not the registered owner (or the template is unregistered)
    stranger: str | None
    #: (api key, source ip), or None
    source: tuple | None
    #: marker keys ("d:host", "p:+digits", "s:signature") the body carries, each as often as found
    markers: tuple
    #: of those, the ones that differ from the registered text
    unregistered: tuple
    fitting: bool
    #: for a body that does not fit: what changed (redacted), else None
    diff: str | None = None


def sample_ids(samples: list) -> list[str]:
    """The message ids of a tally row's samples (``(rank, message id)``, lowest rank first)."""
    return [entry[1] for entry in samples]


def _keep(samples: list, rank: int, *rest) -> None:
    """Keep the ``MAX_SAMPLES`` entries of lowest rank (entries are tuples led by their rank)."""
    if len(samples) < MAX_SAMPLES:
        insort(samples, (rank, *rest))
    elif rank <= samples[-1][0]:
        insort(samples, (rank, *rest))
        del samples[MAX_SAMPLES:]


def _merge_samples(a: list, b: list) -> list:
    return sorted(set(a) | set(b))[:MAX_SAMPLES]


OTHER = "other"


@dataclass(slots=True)
class SendsRow:
    """One stranger's or one source's sends in a tally, with the lowest-ranked few as samples."""

    sends: int = 0
    #: ``(rank, message id)``, lowest rank first, at most ``MAX_SAMPLES``
    samples: list = field(default_factory=list)


@dataclass(slots=True)
class MarkerRow:
    """One marker's sends in a tally."""

    sends: int = 0
    #: ``(rank, message id)``, lowest rank first, at most ``MAX_SAMPLES``
    samples: list = field(default_factory=list)
    #: the (at most two) lowest recipient ranks: two show that the marker repeats across people
    recipients: list = field(default_factory=list)
    #: ``(rank, diff)`` of the lowest-ranked send whose new markers this one leads (what changed in its body)
    drift: tuple | None = None


def _key_rank(key) -> int:
    return rank_of(key if key.__class__ is str else "|".join(p or "" for p in key))


def _make_room(table: dict, key, cap: int, spill: bool) -> bool:
    """May ``key`` get a row of its own in a full ``table``? Named rows are the ``cap`` keys of lowest
    rank, so tallies merged in any grouping name the same keys. The row it displaces spills into
    ``"other"`` (``spill``) or is dropped."""
    named = [k for k in table if k != OTHER]
    if len(named) < cap:
        return True
    worst = max(named, key=_key_rank)
    if _key_rank(key) >= _key_rank(worst):
        return False
    row = table.pop(worst)
    if spill:
        _add_row(table, OTHER, row)
    return True


def _add_row(table: dict, key, row: SendsRow) -> None:
    mine = table.get(key)
    if mine is None:
        table[key] = SendsRow(row.sends, list(row.samples))
    else:
        mine.sends += row.sends
        mine.samples = _merge_samples(mine.samples, row.samples)


def _bump(table: dict, key, rank: int, mid: str, cap: int) -> None:
    row = table.get(key)
    if row is None:
        if not _make_room(table, key, cap, spill=True):
            key = OTHER
            row = table.get(key)
        if row is None:
            row = table[key] = SendsRow()
    row.sends += 1
    _keep(row.samples, rank, mid)


@dataclass(slots=True)
class TemplateTally:
    """What one bucket of a template's sends showed, from one reader (or merged from all of them).

    ``count`` sends, between ``first_ts`` and ``ts``. Samples are ``(rank, message id)``,
    lowest ranks kept; the senders, sources and markers named are those of lowest rank
    (``_make_room``), so merging gives the same tally however the sends were split.
    A tally sent again by its reader (grown, or after a restart) replaces the one
    before (``replaces``); reads that arrive one by one add up.
    """

    template_id: str
    reader: str
    ts: int = 0
    first_ts: int = 0
    count: int = 0
    fitting: int = 0
    #: marker key -> MarkerRow
    markers: dict = field(default_factory=dict)
    #: sends whose markers differ from the registered text: marker key -> count
    unregistered_markers: dict = field(default_factory=dict)
    words_drift: int = 0
    #: sends that fit nowhere but carry no new marker (words changed): (rank, message id, diff)
    words_samples: list = field(default_factory=list)
    #: stranger sender -> SendsRow
    senders: dict = field(default_factory=dict)
    #: (api key, source ip) -> SendsRow
    sources: dict = field(default_factory=dict)

    replaces = True

    @classmethod
    def start(cls, read: TemplateRead) -> "TemplateTally":
        return cls(read.template_id, read.reader, read.ts, read.ts)

    @property
    def group(self) -> str:
        return self.reader

    def add(self, read: TemplateRead) -> None:
        ts = read.ts
        if not self.count or ts < self.first_ts:
            self.first_ts = ts
        if ts > self.ts:
            self.ts = ts
        self.count += 1
        rank, mid = read.rank, read.message_id
        if read.stranger is not None:
            _bump(self.senders, read.stranger, rank, mid, MAX_TALLY_SENDERS)
        if read.source is not None:
            _bump(self.sources, read.source, rank, mid, MAX_TALLY_SOURCES)
        if read.fitting:
            self.fitting += 1
        markers = self.markers
        for k in read.markers:
            row = markers.get(k)
            if row is None:
                if len(markers) >= MAX_TALLY_MARKERS and not _make_room(markers, k, MAX_TALLY_MARKERS, spill=False):
                    continue
                row = markers[k] = MarkerRow()
            row.sends += 1
            _keep(row.samples, rank, mid)
            recipients = row.recipients
            if read.recipient not in recipients:
                recipients.append(read.recipient)
                recipients.sort()
                del recipients[2:]
        keys = read.unregistered
        for k in keys:
            self.unregistered_markers[k] = self.unregistered_markers.get(k, 0) + 1
        if read.diff is None:
            return
        if not keys:
            self.words_drift += 1
            _keep(self.words_samples, rank, mid, read.diff)
            return
        row = markers.get(keys[0])
        if row is not None and (row.drift is None or (rank, read.diff) < row.drift):
            row.drift = (rank, read.diff)

    def merge(self, other: "TemplateTally") -> None:
        if not other.count:
            return
        if not self.count or other.first_ts < self.first_ts:
            self.first_ts = other.first_ts
        self.ts = max(self.ts, other.ts)
        self.count += other.count
        self.fitting += other.fitting
        markers = self.markers
        for k, row in other.markers.items():
            mine = markers.get(k)
            if mine is None:
                if len(markers) >= MAX_TALLY_MARKERS and not _make_room(markers, k, MAX_TALLY_MARKERS, spill=False):
                    continue
                markers[k] = MarkerRow(row.sends, list(row.samples), list(row.recipients), row.drift)
                continue
            mine.sends += row.sends
            mine.samples = _merge_samples(mine.samples, row.samples)
            mine.recipients = sorted(set(mine.recipients) | set(row.recipients))[:2]
            if row.drift is not None and (mine.drift is None or row.drift < mine.drift):
                mine.drift = row.drift
        for k, n in other.unregistered_markers.items():
            self.unregistered_markers[k] = self.unregistered_markers.get(k, 0) + n
        self.words_drift += other.words_drift
        self.words_samples = _merge_samples(self.words_samples, other.words_samples)
        for mine_table, table, cap in ((self.senders, other.senders, MAX_TALLY_SENDERS),
                                       (self.sources, other.sources, MAX_TALLY_SOURCES)):
            for k, row in table.items():
                if k != OTHER and k not in mine_table and not _make_room(mine_table, k, cap, spill=True):
                    k = OTHER
                _add_row(mine_table, k, row)

    def top_stranger(self) -> str | None:
        """The stranger that sent the most of these sends (the first by name of equals)."""
        senders = self.senders
        return min(senders, key=lambda k: (-senders[k].sends, k)) if senders else None

    def copy(self) -> "TemplateTally":
        twin = TemplateTally(self.template_id, self.reader)
        twin.merge(self)
        return twin


#: What a producer forwards added up per bucket, cumulatively.
ADDED_UP = (RoutineCount, TemplateTally)


class RoutineTally:
    """Adds up a producer's routine facts (and template reads) for the bucket its input is in.

    A routine fact of the open bucket is absorbed (``take``); anything else,
    including a routine fact older than the open bucket, passes through as it
    is. Once the input reaches a later bucket, ``roll`` hands over the open
    bucket's counts. Which facts are absorbed depends only on the order of
    the input, so a producer restored from a snapshot re-forms the same counts.
    """

    __slots__ = ("open_bucket", "groups", "sent")

    def __init__(self) -> None:
        self.open_bucket = 0
        #: (stream, sender, template, carrier) -> the open bucket's count
        self.groups: dict[tuple, RoutineCount | TemplateTally] = {}
        #: the count last handed over early for a group still open (``unsent``)
        self.sent: dict[tuple, int] = {}

    def take(self, stream: str, fact) -> bool:
        ts = fact.ts
        if ts - ts % BUCKET_MS != self.open_bucket:
            return False
        if fact.__class__ is TemplateRead:
            group: tuple = (stream, fact.reader)
            counted = self.groups.get(group)
            if counted is None:
                counted = self.groups[group] = TemplateTally.start(fact)
            counted.add(fact)
            return True
        if not getattr(fact, "routine", False):
            return False
        carrier = getattr(fact, "carrier", None)
        group = (stream, fact.sender_id, fact.template_id, carrier)
        counted = self.groups.get(group)
        if counted is None:
            self.groups[group] = RoutineCount(ts, ts, fact.sender_id, fact.template_id, carrier, 1)
        else:
            counted.add(fact)
        return True

    def roll(self, ts: int) -> list[tuple[str, RoutineCount | TemplateTally]]:
        """The open bucket's counts once the input has reached ``ts`` in a later bucket; that bucket opens."""
        start = ts - ts % BUCKET_MS
        if start <= self.open_bucket:
            return []
        sent = self.sent
        out = [(group[0], counted) for group, counted in self.groups.items() if sent.get(group) != counted.count]
        self.groups = {}
        self.sent = {}
        self.open_bucket = start
        return out

    def unsent(self) -> list[tuple[str, RoutineCount | TemplateTally]]:
        """The open bucket's counts that grew since last handed over, handed over now and kept open.

        For a producer whose input has gone quiet: its consumers need the
        counts so far without waiting for a later bucket.
        """
        out = []
        for group, counted in self.groups.items():
            if self.sent.get(group) != counted.count:
                self.sent[group] = counted.count
                out.append((group[0], counted.copy()))
        return out
