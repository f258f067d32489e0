"""Intake: input records as the detectors take them, every phone number already a pseudonym.

The one place a number in clear becomes a ``pn:`` pseudonym before anything
is keyed, routed, sent between parts or saved: the recipient of a send, the
number of a borrower pair, both numbers of a rebind, an account id that is a
phone number, and the phone numbers in a body or a registered template text
(``textshape.pseudonymise_phones``; the template detectors read the tokens as
phone numbers). ``replay`` (``Engine.ingest``) and the worker's router both
call it right after decoding, so they key and judge the same records, and
the worker's internal topics and snapshots never hold a number in clear.
The raw record stays where it was: on the input topic, and on the dead-letter
topic for a record that cannot be used.
"""

from __future__ import annotations

import re
from typing import Any, overload

from smsstream.detection.textshape import pseudonymise_phones
from smsstream.pseudonym import Pseudonymizer
from smsstream.records import BINDINGS, BORROWERS, SENDS, TEMPLATES, Binding, Borrower, Send, Template

#: An account id that is itself a phone number: some lenders key accounts by the customer's mobile.
NUMBER_AS_ID = re.compile(r"\+?[0-9]{7,15}\Z")


class Intake:
    """Pseudonymises the numbers of decoded input records under one key."""

    __slots__ = ("pseudonym",)

    def __init__(self, pseudonymizer: Pseudonymizer):
        self.pseudonym = pseudonymizer.pseudonym

    def __call__(self, topic: str, record: Any) -> Any:
        """``record`` with its numbers pseudonymised (a new record; None stays None)."""
        if record is None:
            return None
        pn = self.pseudonym
        if topic == SENDS:
            return Send(record.message_id, record.ts, record.sender_id, record.template_id, pn(record.number),
                        record.category, self.text(record.body), self.account(record.account_id), record.source,
                        record.carrier)
        if topic == BORROWERS:
            return Borrower(record.sender_id, pn(record.number), self.account(record.account_id), record.status,
                            record.ts, record.removed)
        if topic == BINDINGS:
            old = record.old_number
            return Binding(record.event_id, record.ts, record.sender_id, self.account(record.account_id),
                           None if old is None else pn(old), pn(record.new_number), record.channel,
                           record.device_id, record.source_ip)
        if topic == TEMPLATES:
            return Template(record.template_id, record.sender_id, record.category, self.text(record.text),
                            record.ts)
        return record

    def text(self, text: str) -> str:
        """Free text (a body, a template text) with its phone numbers pseudonymised."""
        return pseudonymise_phones(text, self.pseudonym)

    @overload
    def account(self, account_id: str) -> str: ...

    @overload
    def account(self, account_id: None) -> None: ...

    def account(self, account_id: str | None) -> str | None:
        """An account id that is a phone number, as its pseudonym; any other as it is."""
        if account_id is not None and NUMBER_AS_ID.match(account_id):
            return self.pseudonym(account_id)
        return account_id
