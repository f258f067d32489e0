"""Facts: what one part tells another part keyed differently.

Facts are small, slotted and JSON-serialisable (``to_dict``), each with an
event time ``ts``. They are additive per bucket, so a worker may forward
partial counts for a hot key instead of one message per send.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

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

    def to_dict(self) -> dict:
        return asdict(self)
