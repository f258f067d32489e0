"""An ``sms.alerts`` record as the notifier reads it: checked, masked, and judged worth paging.

The notifier relies only on the fields it pages with; anything else in the record
goes on to the webhook untouched. It never keeps or logs the raw value of a
record it cannot read, only why (which field, never its content).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import orjson

#: A phone number in clear: ``+`` and at least 7 digits, as E.164 or grouped (``+91 98765-43210``).
#: Alerts carry ``pn:`` pseudonyms; one that does not (a writer's bug) still never leaves the notifier.
CLEAR_NUMBER = re.compile(rb"(?<![\w.+])\+\d[\d\-. ()]{5,24}\d(?!\d)")
MIN_DIGITS = 7
MASK = b"<number>"

_TEXT = ("alert_id", "dedup_key", "kind", "reason", "severity", "status", "entity_type", "entity_id", "summary")
_TIMES = ("first_seen", "detected_at")
_FIGURES = ("observed", "expected")
STATUSES = ("firing", "resolved")


class Unusable(Exception):
    """A record the notifier cannot page with; ``reason`` is a metric label, the message names the field."""

    def __init__(self, reason: str, why: str):
        super().__init__(why)
        self.reason = reason


def mask_clear_numbers(text: bytes) -> tuple[bytes, int]:
    """``text`` with every phone number in clear replaced by ``<number>``, and how many there were."""
    found = 0

    def mask(match: re.Match) -> bytes:
        nonlocal found
        if sum(48 <= c <= 57 for c in match.group(0)) < MIN_DIGITS:
            return match.group(0)
        found += 1
        return MASK

    return CLEAR_NUMBER.sub(mask, text), found


@dataclass(frozen=True)
class AlertRecord:
    """One alert state change; ``body`` is what a webhook receives (the record as written, numbers masked)."""

    body: bytes
    fields: dict[str, Any]
    masked: int = 0

    def __getitem__(self, name: str) -> Any:
        return self.fields[name]

    def get(self, name: str, default: Any = None) -> Any:
        return self.fields.get(name, default)

    @property
    def dedup_key(self) -> str:
        return self.fields["dedup_key"]

    @property
    def firing(self) -> bool:
        return self.fields["status"] == "firing"

    @property
    def shadow(self) -> bool:
        """Written under a shadow-mode control: never paged (CONTRACT.md, optional alert fields)."""
        return self.fields.get("shadow") is True

    def silenced(self, now_ms: int) -> bool:
        """A silence covers this alert at ``now_ms`` (wall clock): written, not paged."""
        until = self.fields.get("silenced_until")
        return isinstance(until, int) and not isinstance(until, bool) and until > now_ms

    def stale(self, now_ms: int, ttl_s: float) -> bool:
        """No record for this alert for ``ttl_s``: its episode is taken as lost, not as still firing."""
        return now_ms - self.fields["detected_at"] > ttl_s * 1000

    def hold_back(self, now_ms: int) -> str | None:
        """Why this record must not page now (``shadow``, ``silenced``), or None."""
        if self.shadow:
            return "shadow"
        if self.firing and self.silenced(now_ms):
            return "silenced"
        return None


def read_alert(value: bytes | None) -> AlertRecord:
    """Parse and check one record value; raises :class:`Unusable` naming the field at fault."""
    if value is None:
        raise Unusable("invalid_record", "value is null (sms.alerts has no tombstones)")
    body, masked = mask_clear_numbers(value)
    try:
        fields = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise Unusable("invalid_json", f"value is not valid JSON ({len(value)} bytes)") from None
    if not isinstance(fields, dict):
        raise Unusable("invalid_record", f"value is a JSON {type(fields).__name__}, not an object")
    for name in _TEXT:
        if not isinstance(fields.get(name), str) or not fields[name]:
            raise Unusable("invalid_record", f"field {name!r} is missing or not a non-empty string")
    for name in _TIMES:
        if not isinstance(fields.get(name), int) or isinstance(fields[name], bool):
            raise Unusable("invalid_record", f"field {name!r} is missing or not an integer (epoch ms)")
    for name in _FIGURES:
        value_ = fields.get(name)
        if not isinstance(value_, (int, float)) or isinstance(value_, bool):
            raise Unusable("invalid_record", f"field {name!r} is missing or not a number")
    if fields["status"] not in STATUSES:
        raise Unusable("invalid_record", "field 'status' is neither 'firing' nor 'resolved'")
    return AlertRecord(body=body, fields=fields, masked=masked)
