"""``non_borrower_spike``: loan-obligation SMS going to numbers that owe the sender nothing.

Parts, each keyed by one entity:

- ``BorrowerBook`` (keyed by recipient number) holds the lenders each number
  owes (from ``sms.borrowers``, tombstones included) and turns every
  loan-obligation send into a ``LoanSend`` fact: borrower of this sender or
  not;
- ``SenderShare`` and ``TemplateShare`` judge, per sender and per template,
  the share of those sends to non-borrowers against the entity's own
  baseline (reason ``non_borrower_share``);
- ``NumberLenders`` (keyed by the number's pseudonym) tells each sender which
  of the numbers it sent non-borrower loan SMS to other lenders sent them
  too, and ``SenderShare`` judges whether that overlap is beyond chance
  (reason ``shared_list``, module ``shared_list``).

Reminders to *former* borrowers (the pair was removed recently, e.g. the
account moved to a new number) are stale data and not counted as
non-borrower sends; what stale data remains (about 1 % of reminders, to
numbers entered by mistake) is the baseline, not an anomaly; ``loan_marketing`` is not a
loan-obligation category, so marketing to non-borrowers never counts. A
purchased list, or reminders aimed at another lender's book, move the share
by far more than its usual wobble and fire within minutes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Iterable, cast

from smsstream.detection.alerts import Finding
from smsstream.detection.base import BUCKET_MS, Part
from smsstream.detection.controls import NON_BORROWER_SENDS, Subject
from smsstream.detection.facts import LOAN_SENDS, SHARED_NUMBERS, LoanSend, RoutineCount, SharedNumber
from smsstream.detection.share import Share, SharePart, ShareState, window_samples
from smsstream.detection.shared_list import NumberLenders, SharedList
from smsstream.records import BORROWERS, LOAN_OBLIGATION, SENDS
from smsstream.vocabulary import (
    DAY_MS, HOUR_MS, NON_BORROWER_SHARE, NON_BORROWER_SPIKE, SENDER, SEVERITIES, SHARED_LIST, TEMPLATE,
)


def _loan_send_number(send) -> str | None:
    return send.number if send.category in LOAN_OBLIGATION else None


def _borrower_number(borrower) -> str:
    return borrower.number


#: A number that left a lender's book is a *former* borrower of it for this long.
FORMER_MS = 30 * DAY_MS


class BorrowerBook(Part):
    """Per number: the lenders it owes, and the lenders it owed until recently.

    State is a sender id (the common case: one current lender), or a tuple
    whose ``str`` items are current lenders and ``(sender_id, removed_ts)``
    items former ones. A loan-obligation send to a former borrower (the pair
    was removed within ``FORMER_MS``) is stale data, not a non-borrower send:
    reminders still chasing a number whose account moved are
    ``rebind_anomaly``'s ``stale_binding_send``, and a purchased list or
    another lender's book consists of numbers this lender never had.

    Reference data is never late: the compacted ``sms.borrowers`` topic is
    the truth, and a tombstone removes a pair (at the book's latest event
    time, since a tombstone carries none). Only former entries expire.
    """

    name = "borrower_book"
    inputs: ClassVar = {BORROWERS: _borrower_number, SENDS: _loan_send_number}
    emits = (LOAN_SENDS,)

    def __init__(self, ctx):
        super().__init__(ctx)
        self.counters = {"loan_sends_to_former_borrowers": 0}
        self._next_sweep = 0

    def process(self, topic: str, key: str, value: Any):
        lenders = self.entities.get(key)
        clock = self.clock
        if value.ts > clock.max_ts:
            clock.max_ts = value.ts
        if topic == SENDS:
            sender = value.sender_id
            former = False
            if lenders is None:
                borrower = False
            elif lenders.__class__ is str:
                borrower = lenders == sender
            else:
                borrower = sender in lenders
                if not borrower:
                    horizon = clock.max_ts - FORMER_MS
                    former = any(item.__class__ is tuple and item[0] == sender and item[1] >= horizon
                                 for item in lenders)
            if former:
                self.counters["loan_sends_to_former_borrowers"] += 1
            non_borrower = not borrower and not former
            # the key is the recipient's pseudonym (``intake``)
            fact = LoanSend(value.ts, sender, value.template_id, value.message_id, non_borrower,
                            key if non_borrower else None)
            return [(LOAN_SENDS, fact)]
        sender = value.sender_id
        if not value.removed and (lenders is None or lenders == sender):
            # The common case: a number's first (or only, again) lender.
            self.entities[key] = sender
            return None
        items: tuple = () if lenders is None else (lenders,) if lenders.__class__ is str else lenders
        horizon = clock.max_ts - FORMER_MS
        kept = tuple(i for i in items if (i != sender if i.__class__ is str else i[0] != sender and i[1] >= horizon))
        if value.removed:
            if sender in items:
                kept += ((sender, clock.max_ts),)
        else:
            kept = (sender, *kept)
        if not kept:
            if lenders is not None:
                del self.entities[key]
        elif len(kept) == 1 and kept[0].__class__ is str:
            self.save(key, kept[0])
        else:
            self.save(key, kept)
        return None

    def expire(self, now: int) -> int:
        """Drop former entries past ``FORMER_MS`` (a sweep of the whole book, so at most daily)."""
        if now < self._next_sweep:
            return 0
        self._next_sweep = now + DAY_MS
        horizon = now - FORMER_MS
        dropped = 0
        for key, lenders in [(k, v) for k, v in self.entities.items() if v.__class__ is not str]:
            kept = tuple(i for i in lenders if i.__class__ is str or i[1] >= horizon)
            if len(kept) == len(lenders):
                continue
            if not kept:
                del self.entities[key]
                dropped += 1
            else:
                self.save(key, kept[0] if len(kept) == 1 and kept[0].__class__ is str else kept)
        return dropped


class _NonBorrowerShare(SharePart):
    kind = NON_BORROWER_SPIKE
    trials_word = "loan-obligation SMS"
    #: a small lender's first few reminders to strangers are the whole evidence: score them exactly
    EXACT_MAX_HITS = 10
    shares = (
        Share(NON_BORROWER_SHARE, prior=0.01, prior_weight=300.0,
              hits_word="sent to numbers that are not its borrowers"),
    )

    def process(self, topic: str, key: str, value: LoanSend | RoutineCount):
        if isinstance(value, RoutineCount):
            self.count_routine(key, value)
        else:
            self.count(key, value.ts, 1 if value.non_borrower else 0, value.message_id,
                       value.number_pn, value.sender_id, value.template_id)
        return None

    def why(self, share: Share) -> str:
        return "Likely a purchased number list or another lender's book being messaged as debtors."

    def allowance(self, subject: Subject, t: int) -> tuple[float, tuple[str, ...]]:
        """An allowed ceiling of non-borrower sends (marketing-like traffic the operator expects): the most
        specific ``non_borrower_sends`` allowance in force."""
        if NON_BORROWER_SENDS not in self.ctx.controls.present:
            return 0.0, ()
        allowed = self.ctx.controls.allowances(NON_BORROWER_SENDS, subject, t)
        if not allowed:
            return 0.0, ()
        return allowed[0].ceiling or 0.0, (allowed[0].id,)

    def evidence(self, state: ShareState, column: int, since: int, k: int, n: int, until: int | None = None) -> dict:
        hits = window_samples(state.samples[column], since, until)
        return {
            "non_borrower_sends": k,
            "loan_sends": n,
            "message_ids": [s[1] for s in hits],
            "numbers": list(dict.fromkeys(s[2] for s in hits if s[2])),
        }


def _fact_sender(fact: LoanSend | RoutineCount | SharedNumber) -> str:
    return fact.sender_id


def _fact_template(fact: LoanSend | RoutineCount) -> str | None:
    return fact.template_id


@dataclass(slots=True)
class SenderShareState(ShareState):
    """A sender's share state, with its side of ``shared_list`` once it has sent to a non-borrower."""

    listed: SharedList | None = None


class SenderShare(_NonBorrowerShare):
    """Per sender: the non-borrower share (``non_borrower_share``) and numbers shared with other lenders
    (``shared_list``, ``shared_list.SharedList``), both on ``non_borrower_spike/sender/<id>``."""

    name = "non_borrower_sender"
    entity_type = SENDER
    inputs: ClassVar = {LOAN_SENDS: _fact_sender, SHARED_NUMBERS: _fact_sender}
    state_class = SenderShareState

    def process(self, topic: str, key: str, value: LoanSend | RoutineCount | SharedNumber):
        if isinstance(value, SharedNumber):
            state = cast(SenderShareState, self.entities.get(key) or self.new_state(value.ts))
            listed = state.listed
            if listed is None:
                listed = state.listed = SharedList()
            listed.take(value, self.mark(key, value.ts))
            self.entities[key] = state
            return None
        super().process(topic, key, value)
        if isinstance(value, LoanSend) and value.non_borrower:
            state = self.entities[key]
            if state.listed is None:
                state.listed = SharedList()
            state.listed.count_stray(self.mark(key, value.ts))  # the bucket it counted in
        return None

    def close(self, key: str, start: int, end: int) -> Iterable[Finding]:
        found = super().close(key, start, end)
        state: SenderShareState | None = self.entities.get(key)
        if state is None or state.listed is None:
            return found
        listed = state.listed
        idx = start // BUCKET_MS
        strays = state.ring.get(idx)[1]
        if not listed.shared and not listed.fresh:
            listed.learn_quiet(end, strays, self.ctx.shared_list_window_ms)
            if listed.empty:
                state.listed = None
            return found
        this_hour = state.ring.sums(idx + 1, (idx + 1 - (start - start % HOUR_MS) // BUCKET_MS,))[0][1]
        firing = self.book.is_firing(f"{NON_BORROWER_SPIKE}/{SENDER}/{key}")
        level, ids = self.ctx.controls.level(Subject(NON_BORROWER_SPIKE, SHARED_LIST, key, None, SENDER, key), end)
        finding = listed.judge(key, start, end, strays, this_hour, self.ctx.shared_list_window_ms, firing, level, ids)
        if finding is None:
            return found
        return together([*found, finding])


def together(found: list[Finding]) -> list[Finding]:
    """One finding per sender and bucket: a firing one leads (the stronger, if both fire), the other rides along.

    A ``shared_list`` finding that rides along keeps its evidence (the other
    lenders, the shared numbers) under its reason, so the alert points to
    the related senders whichever reason leads.
    """
    if len(found) < 2:
        return found
    lead = max(found, key=lambda f: (f.firing, SEVERITIES.index(f.severity), f.score))
    for other in found:
        if other is not lead:
            lead.evidence.setdefault("also", []).append(f"{other.reason}: {other.summary}")
            lead.controls = tuple(dict.fromkeys(lead.controls + other.controls))  # every entry that shaped it
            if other.reason == SHARED_LIST:
                lead.evidence[SHARED_LIST] = other.evidence
    return [lead]


class TemplateShare(_NonBorrowerShare):
    name = "non_borrower_template"
    entity_type = TEMPLATE
    inputs: ClassVar = {LOAN_SENDS: _fact_template}


NON_BORROWER_PARTS = [BorrowerBook, SenderShare, TemplateShare, NumberLenders]
