"""How rebind alerts show what they found: rows in event-time order, accounts without phone numbers."""

from __future__ import annotations

from collections import Counter

from smsstream.detection.base import PartContext
from smsstream.detection.intake import NUMBER_AS_ID

#: Rows of evidence an alert names at most.
SAMPLES = 20


def keep_in_time_order(rows: list) -> None:
    """Rows of (ts, ...) stay in event-time order whatever order events arrive in within the allowed
    lateness, so evidence and ``last_seen`` are the same in replay and in the worker."""
    if len(rows) > 1 and rows[-2][0] > rows[-1][0]:
        rows.sort(key=_row_ts)


def _row_ts(row: tuple) -> int:
    return row[0]


def shown_account(ctx: PartContext, account: str) -> str:
    """An account id (or ``<sender_id>|<account_id>``) as alerts show it: a phone number only as its pseudonym.

    ``intake`` pseudonymises such account ids already; this keeps an alert
    safe whatever a part is given."""
    sender_id, bar, account_id = account.rpartition("|")
    if NUMBER_AS_ID.match(account_id):
        return f"{sender_id}{bar}{ctx.pseudonym(account_id)}"
    return account


def top_counts(counter: Counter, n: int = 5) -> dict:
    """The ``n`` most common values and their counts, without None."""
    return {k: v for k, v in counter.most_common(n) if k is not None}
