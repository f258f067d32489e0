"""``delivery_failure_spike``: carriers blocking or failing a sender's traffic.

- ``ReceiptJoin`` (keyed by ``message_id``) joins each send to its final
  receipt in either order and emits a ``DeliveryOutcome``; the join buffer
  is bounded in time (``JOIN_HORIZON_MS``) and size (``MAX_PENDING``);
  receipts that never find their send are counted (``unmatched_receipts``).
- ``SenderDelivery``, ``TemplateDelivery`` and ``CarrierDelivery`` judge the
  share of ``BLOCKED`` receipts (reason ``blocked_rate``) and of other
  failures (``failure_rate``) among final receipts, against the entity's
  own baseline.

Outcomes are counted at the receipt's event time, and only *prompt* ones
(receipt within ``PROMPT_MS`` of its send): carriers report ``EXPIRED`` and
other stragglers hours later (up to 72 h), and those describe traffic of
hours ago, not now; counted as they arrive they would make every night look
like a failure storm (the day's expiries landing on little night traffic).
Stragglers are still joined and counted (``late_outcomes``), not judged. So
a slow carrier changes neither the mix of prompt outcomes nor, once slower
than ``PROMPT_MS``, anything judged at all: it does not fire. A carrier
starting to block one sender's reminders moves that sender's blocked share
within minutes. ``ACCEPTD`` is not final and is not counted; a second final
receipt for a message already joined is ignored.
"""

from __future__ import annotations

from typing import Any, ClassVar, NamedTuple

from smsstream.detection.base import BUCKET_MS, Part
from smsstream.detection.controls import CARRIER_FAILURES, Subject, ids_of
from smsstream.detection.facts import BLOCKED, DELIVERED, DELIVERY_OUTCOMES, FAILED, DeliveryOutcome, RoutineCount
from smsstream.detection.share import Share, SharePart, ShareState
from smsstream.records import RECEIPTS, SENDS
from smsstream.vocabulary import (
    BLOCKED_RATE, CARRIER, DELIVERY_FAILURE_SPIKE, FAILURE_RATE, HOUR_MS, SENDER, TEMPLATE,
)

OUTCOME = {
    "DELIVRD": DELIVERED,
    "BLOCKED": BLOCKED,
    "REJECTD": FAILED,
    "UNDELIV": FAILED,
    "EXPIRED": FAILED,
    "DELETED": FAILED,
    "UNKNOWN": FAILED,
}

#: How long a send waits for its receipt (and a receipt for its send), event time.
JOIN_HORIZON_MS = 24 * HOUR_MS
#: Outcomes reported later than this after their send are counted, not judged.
PROMPT_MS = HOUR_MS
#: Most messages waiting in the join at once; the oldest hour goes first beyond it.
MAX_PENDING = 2_000_000


def _message_id(record) -> str:
    return record.message_id


class WaitingSend(NamedTuple):
    """A send waiting for its final receipt."""

    ts: int
    sender_id: str
    template_id: str | None
    carrier: str | None


class WaitingReceipt(NamedTuple):
    """A final receipt waiting for its send."""

    ts: int
    status: str
    error_code: str | None
    carrier: str | None


class ReceiptJoin(Part):
    """Per message id: the send waiting for its receipt, or a receipt waiting for its send.

    State is a ``WaitingSend`` or a ``WaitingReceipt``; it is deleted once joined.
    """

    name = "receipt_join"
    inputs: ClassVar = {SENDS: _message_id, RECEIPTS: _message_id}
    emits = (DELIVERY_OUTCOMES,)

    def __init__(self, ctx):
        super().__init__(ctx)
        #: hour start -> message ids that entered the buffer then (for expiry in time order)
        self._by_hour: dict[int, list[str]] = {}
        self.counters = {
            "joined_outcomes": 0,
            "unmatched_receipts": 0,
            "sends_without_receipt": 0,
            "receipts_not_final": 0,
            "receipts_after_join": 0,
            "late_outcomes": 0,
        }

    def _remember(self, key: str, ts: int) -> None:
        hour = ts - ts % HOUR_MS
        ids = self._by_hour.get(hour)
        if ids is None:
            self._by_hour[hour] = [key]
        else:
            ids.append(key)
        if len(self.entities) > MAX_PENDING:
            self._drop_hour(min(self._by_hour))

    def process(self, topic: str, key: str, value: Any):
        entities = self.entities
        waiting = entities.get(key)
        ts = value.ts
        clock = self.clock
        if ts > clock.max_ts:
            clock.max_ts = ts
        if topic == SENDS:
            if waiting.__class__ is WaitingReceipt:
                del entities[key]
                received, status, error_code, carrier = waiting
                return self._joined(key, received, ts, value.sender_id, value.template_id,
                                    carrier or value.carrier, status, error_code)
            entities[key] = WaitingSend(ts, value.sender_id, value.template_id, value.carrier)
            self._remember(key, ts)
            return None
        status = value.status
        outcome = OUTCOME.get(status)
        if outcome is None:
            self.counters["receipts_not_final"] += 1
            return None
        if waiting is None:
            entities[key] = WaitingReceipt(ts, status, value.error_code, value.carrier)
            self._remember(key, ts)
            return None
        if waiting.__class__ is WaitingReceipt:
            self.counters["receipts_after_join"] += 1
            return None
        del entities[key]
        sent, sender_id, template_id, carrier = waiting
        counters = self.counters
        counters["joined_outcomes"] += 1
        if ts - sent > PROMPT_MS:
            counters["late_outcomes"] += 1
            return None
        return [(DELIVERY_OUTCOMES, DeliveryOutcome(
            ts, sender_id, template_id, value.carrier or carrier, outcome, status, key, value.error_code))]

    def _joined(self, key, ts, sent, sender_id, template_id, carrier, status, error_code):
        self.counters["joined_outcomes"] += 1
        if ts - sent > PROMPT_MS:
            self.counters["late_outcomes"] += 1
            return None
        return [(DELIVERY_OUTCOMES, DeliveryOutcome(
            ts, sender_id, template_id, carrier, OUTCOME[status], status, key, error_code))]

    def _drop_hour(self, hour: int) -> None:
        for key in self._by_hour.pop(hour, ()):
            waiting = self.entities.pop(key, None)
            if waiting is None:
                continue
            if waiting.__class__ is WaitingReceipt:
                self.counters["unmatched_receipts"] += 1
            else:
                self.counters["sends_without_receipt"] += 1

    def expire(self, now: int) -> int:
        before = len(self.entities)
        for hour in [h for h in self._by_hour if h + HOUR_MS <= now - JOIN_HORIZON_MS]:
            self._drop_hour(hour)
        return before - len(self.entities)

    def flush(self) -> list[dict]:
        """End of input: receipts still waiting will never be joined; count them."""
        self.counters["unmatched_receipts_at_end"] = sum(
            1 for w in self.entities.values() if w.__class__ is WaitingReceipt)
        return []


#: outcome -> 0, or 1 + the index of the share it is a hit of
_HIT = {DELIVERED: 0, BLOCKED: 1, FAILED: 2}


class _DeliveryShare(SharePart):
    kind = DELIVERY_FAILURE_SPIKE
    trials_word = "final delivery receipts"
    # A carrier that starts blocking a sender's reminders between campaigns shows as 3 blocked of
    # 3 or 4 receipts where a fraction of a percent is usual: three hits are evidence here, scored
    # exactly (the Chernoff bound undersells small counts) and not held to a 3-hit *excess*.
    MIN_EXCESS = 2.5
    EXACT_MAX_HITS = 10
    shares = (
        Share(BLOCKED_RATE, prior=0.005, prior_weight=400.0, hits_word="BLOCKED by the carrier or handset"),
        Share(FAILURE_RATE, prior=0.03, prior_weight=400.0,
              hits_word="undelivered (UNDELIV/REJECTD/EXPIRED/DELETED/UNKNOWN)"),
    )

    def process(self, topic: str, key: str, value: DeliveryOutcome | RoutineCount):
        if value.carrier is not None and CARRIER_FAILURES in self.ctx.controls.present and self._ignored(value):
            return None
        if isinstance(value, RoutineCount):
            self.count_routine(key, value, self.slice_of(value))
        else:
            self.count(key, value.ts, _HIT[value.outcome], value.message_id, self.label_of(value),
                       value.sender_id, value.template_id, self.slice_of(value))
        return None

    def _ignored(self, value: DeliveryOutcome | RoutineCount) -> bool:
        """Outcomes on a carrier whose failures the operator expects (``carrier_failures``) are not counted.

        Decided per bucket (at its start), so an outcome and the routine
        count of its bucket are counted alike, as replay counts them.
        """
        ts = value.first_ts if isinstance(value, RoutineCount) else value.ts
        subject = Subject(self.kind, None, value.sender_id, value.template_id)
        allowed = self.ctx.controls.allowances(CARRIER_FAILURES, subject, ts - ts % BUCKET_MS)
        return any(value.carrier in e.carriers for e in allowed)

    def allowance(self, subject: Subject, t: int) -> tuple[float, tuple[str, ...]]:
        """No ceiling; but ignored carriers shaped what was counted, so their allowances are named."""
        if CARRIER_FAILURES not in self.ctx.controls.present:
            return 0.0, ()
        if subject.entity_type == CARRIER:
            # a carrier's counts lose the outcomes of every sender it is ignored for
            found = [e for e in self.ctx.controls.allowances(CARRIER_FAILURES, None, t) if subject.entity_id in e.carriers]
        else:
            found = self.ctx.controls.allowances(CARRIER_FAILURES, subject, t)
        return 0.0, ids_of(found)

    def label_of(self, outcome: DeliveryOutcome) -> str | None:
        """What a hit is labelled with in the evidence."""
        return outcome.carrier

    def slice_of(self, outcome: DeliveryOutcome | RoutineCount) -> str | None:
        """The slice of the entity an outcome also counts in (with ``MAX_SUBS``)."""
        return None

    def label_name(self) -> str:
        return "carriers"

    def why(self, share: Share) -> str:
        if share.reason == BLOCKED_RATE:
            return "A carrier or handset filter has started blocking this traffic."
        return "Messages are failing to deliver far more than usual."


def _outcome_sender(o: DeliveryOutcome | RoutineCount) -> str:
    return o.sender_id


def _outcome_template(o: DeliveryOutcome | RoutineCount) -> str | None:
    return o.template_id


def _outcome_carrier(o: DeliveryOutcome | RoutineCount) -> str | None:
    return o.carrier


class SenderDelivery(_DeliveryShare):
    """Per sender, and per sender on each carrier: a carrier blocking one sender shows there first."""

    name = "delivery_sender"
    entity_type = SENDER
    inputs: ClassVar = {DELIVERY_OUTCOMES: _outcome_sender}
    MAX_SUBS = 8

    def slice_of(self, outcome: DeliveryOutcome | RoutineCount) -> str | None:
        return outcome.carrier

    def sub_name(self) -> str:
        return "carrier"


class TemplateDelivery(_DeliveryShare):
    name = "delivery_template"
    entity_type = TEMPLATE
    inputs: ClassVar = {DELIVERY_OUTCOMES: _outcome_template}


class CarrierDelivery(_DeliveryShare):
    """Per carrier; a rise that one sender accounts for is that sender's alert, not the carrier's.

    The carrier keeps per-sender slices (the first ``MAX_SUBS`` senders it
    sees) only to explain its own figures: if one sender carries at least
    ``ONE_SENDER`` of the excess hits in the window, the carrier does not
    fire (the sender's own alert says it better). Two senders failing at
    once split the excess about evenly whether the carrier blocks both or
    each has its own trouble (seen on simulated traffic: two senders'
    failure-rate jumps overlapping); a carrier alert on that would be wrong
    as often as right, so the carrier speaks once no sender carries half.
    """

    name = "delivery_carrier"
    entity_type = CARRIER
    inputs: ClassVar = {DELIVERY_OUTCOMES: _outcome_carrier}
    MAX_SUBS = 64
    JUDGE_SUBS = False
    ONE_SENDER = 0.5

    def label_of(self, outcome: DeliveryOutcome) -> str | None:
        return outcome.sender_id

    def slice_of(self, outcome: DeliveryOutcome | RoutineCount) -> str | None:
        return outcome.sender_id

    def label_name(self) -> str:
        return "senders"

    def sub_name(self) -> str:
        return "sender"

    def may_fire(self, state: ShareState, column: int, end: int, window_ms: int, expected: float,
                 n: float, k: float) -> bool:
        excess = k - n * expected
        if excess <= 0 or not state.subs:
            return True
        idx, width = end // BUCKET_MS, window_ms // BUCKET_MS
        for ring, _ in state.subs.values():
            counts = ring.sums(idx, (width,))[0]
            if counts[column + 1] - counts[0] * expected >= self.ONE_SENDER * excess:
                return False
        return True


DELIVERY_PARTS = [ReceiptJoin, SenderDelivery, TemplateDelivery, CarrierDelivery]
