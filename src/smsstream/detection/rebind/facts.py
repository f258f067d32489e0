"""What the account part tells the number part: accounts arriving at and leaving numbers."""

from __future__ import annotations

from dataclasses import dataclass

#: Fact stream: an account arrived at / left a number (account-keyed -> number-keyed).
NUMBER_BINDINGS = "fact.number-bindings"


@dataclass(slots=True)
class NumberBinding:
    """An account arrived at (``arrived=True``) or left ``number``; the other side only as a pseudonym."""

    ts: int
    #: the number's pseudonym (``intake``): the number part's key
    number: str
    arrived: bool
    sender_id: str
    account_id: str
    #: pseudonym of the number on the other side of the move (None for a first binding)
    other_pn: str | None
    event_id: str
    channel: str | None = None
    device_id: str | None = None
