"""Facts: what one part tells another part keyed differently.

Facts are small, slotted and JSON-serialisable (``to_dict``), each with an
event time ``ts``. They are additive per bucket: a *routine* fact (a loan
send to a borrower, a delivered receipt) carries nothing but its count, so a
producer adds routine facts up per bucket (``RoutineTally``) and forwards one
``RoutineCount`` per sender, template and carrier instead of one fact per
send. A hot sender's millions of sends a day then reach its shard as a few
counts a minute from each producer shard. Facts that are hits (non-borrower
sends, blocked or failed receipts) travel one by one: they are the evidence
an alert shows.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace

from smsstream.detection.base import BUCKET_MS

#: Loan-obligation sends judged against the borrower book (number-keyed -> sender/template-keyed).
LOAN_SENDS = "fact.loan-sends"
#: Sends joined to their final receipt (message-keyed -> sender/template/carrier-keyed).
DELIVERY_OUTCOMES = "fact.delivery-outcomes"

FACT_STREAMS = (LOAN_SENDS, DELIVERY_OUTCOMES)


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
    #: the recipient owes another lender (a sender's reminders pointed at another book)
    other_lender: bool = False

    @property
    def routine(self) -> bool:
        return not self.non_borrower

    def to_dict(self) -> dict:
        return asdict(self)


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

    def to_dict(self) -> dict:
        return asdict(self)


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

    def to_dict(self) -> dict:
        return asdict(self)


class RoutineTally:
    """Adds up a producer's routine facts for the bucket its input is in.

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
        self.groups: dict[tuple, RoutineCount] = {}
        #: the count last handed over early for a group still open (``unsent``)
        self.sent: dict[tuple, int] = {}

    def take(self, stream: str, fact) -> bool:
        ts = fact.ts
        if not getattr(fact, "routine", False) or ts - ts % BUCKET_MS != self.open_bucket:
            return False
        carrier = getattr(fact, "carrier", None)
        group = (stream, fact.sender_id, fact.template_id, carrier)
        counted = self.groups.get(group)
        if counted is None:
            self.groups[group] = RoutineCount(ts, ts, fact.sender_id, fact.template_id, carrier, 1)
        else:
            counted.count += 1
            if ts > counted.ts:
                counted.ts = ts
            elif ts < counted.first_ts:
                counted.first_ts = ts
        return True

    def roll(self, ts: int) -> list[tuple[str, RoutineCount]]:
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

    def unsent(self) -> list[tuple[str, RoutineCount]]:
        """The open bucket's counts that grew since last handed over, handed over now and kept open.

        For a producer whose input has gone quiet: its consumers need the
        counts so far without waiting for a later bucket.
        """
        out = []
        for group, counted in self.groups.items():
            if self.sent.get(group) != counted.count:
                self.sent[group] = counted.count
                out.append((group[0], replace(counted)))
        return out

    def pending_since(self) -> int | None:
        """Earliest event time of counts not yet handed over: the producer's forwarded progress stops there."""
        times = [c.first_ts for g, c in self.groups.items() if self.sent.get(g) != c.count]
        return min(times) if times else None
