"""Typed input records and their parsers: the one place raw Kafka values become data.

Parsing is hand-written on top of orjson because it runs once per event on the
hot path; the JSON Schemas under ``topics/schemas/`` describe the same rules for
people and outside tools, and a property test keeps the two in agreement.

A parser returns a record or raises :class:`RecordError` whose message names the
field and never echoes a phone number.
"""

from __future__ import annotations

import base64
import json
import re
from dataclasses import dataclass
from typing import Any, Callable

import orjson

from smsstream.errors import InvalidJson, NullValue, RecordError, TooLarge, UnknownTopic
from smsstream.pseudonym import redact_without_key

SENDS = "sms.sends"
RECEIPTS = "sms.delivery-receipts"
BORROWERS = "sms.borrowers"
TEMPLATES = "sms.templates"
BINDINGS = "sms.bindings"
ALERTS = "sms.alerts"
DEAD_LETTER = "sms.dead-letter"
#: Operator controls (``detection.controls``): every worker reads all of it, outside its consumer group.
CONTROLS = "sms.detector-config"
INPUT_TOPICS = (SENDS, RECEIPTS, BORROWERS, TEMPLATES, BINDINGS)

CATEGORIES = frozenset(
    {
        "repayment_reminder",
        "overdue_notice",
        "collection",
        "loan_status",
        "loan_marketing",
        "otp",
        "notification",
        "other",
    }
)
#: Categories that presuppose the recipient owes the sender money.
LOAN_OBLIGATION = frozenset({"repayment_reminder", "overdue_notice", "collection", "loan_status"})
RECEIPT_STATUSES = frozenset(
    {"DELIVRD", "EXPIRED", "DELETED", "UNDELIV", "ACCEPTD", "UNKNOWN", "REJECTD", "BLOCKED"}
)
BORROWER_STATUSES = frozenset({"active", "closed", "written_off"})
BINDING_CHANNELS = frozenset({"app", "web", "branch", "call_center", "api"})

#: Bounds that keep one bad record from costing memory or time downstream.
MAX_RECORD_BYTES = 64 * 1024
MAX_BODY_CHARS = 4096
MAX_ID_CHARS = 256
#: Event time must lie in [2000-01-01, 2100-01-01): catches seconds-for-ms and garbage.
MIN_TS = 946_684_800_000
MAX_TS = 4_102_444_800_000

#: ``\Z``, not ``$``: Python's ``$`` also matches before a final newline, ECMA-262's (JSON Schema) does not.
E164 = re.compile(r"^\+[1-9][0-9]{6,14}\Z")


@dataclass(slots=True)
class Source:
    api_key_id: str | None = None
    source_ip: str | None = None
    channel: str | None = None


@dataclass(slots=True)
class Send:
    message_id: str
    ts: int
    sender_id: str
    template_id: str | None
    number: str
    category: str
    body: str
    account_id: str | None = None
    source: Source | None = None
    carrier: str | None = None


@dataclass(slots=True)
class Receipt:
    message_id: str
    ts: int
    status: str
    error_code: str | None = None
    carrier: str | None = None


@dataclass(slots=True)
class Borrower:
    """One lender-borrower pair; ``removed`` marks a tombstone (the pair no longer exists)."""

    sender_id: str
    number: str
    account_id: str | None
    status: str
    ts: int
    removed: bool = False


@dataclass(slots=True)
class Template:
    template_id: str
    sender_id: str
    category: str
    text: str
    ts: int


@dataclass(slots=True)
class Binding:
    event_id: str
    ts: int
    sender_id: str
    account_id: str
    old_number: str | None
    new_number: str
    channel: str | None = None
    device_id: str | None = None
    source_ip: str | None = None


Record = Send | Receipt | Borrower | Template | Binding


# --- field readers -----------------------------------------------------------

def _obj(value: Any) -> dict:
    if not isinstance(value, dict):
        raise RecordError(f"value must be a JSON object, got {json_type(value)}")
    return value


def json_type(value: Any) -> str:
    """A value's JSON type, as errors about input name it."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, (int, float)):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    return "object"


def _str(d: dict, field: str, limit: int = MAX_ID_CHARS) -> str:
    value = d.get(field)
    if value is None:
        raise RecordError(f"field '{field}' is missing or null; it is required (string)")
    if not isinstance(value, str):
        raise RecordError(f"field '{field}' must be a string, got {json_type(value)}")
    if not value:
        raise RecordError(f"field '{field}' must not be empty")
    if len(value) > limit:
        raise TooLarge(f"field '{field}' is {len(value)} characters long; at most {limit} accepted")
    return value


def _opt_str(d: dict, field: str, limit: int = MAX_ID_CHARS) -> str | None:
    value = d.get(field)
    if value is None:
        return None
    if not isinstance(value, str):
        raise RecordError(f"field '{field}' must be a string or null, got {json_type(value)}")
    if len(value) > limit:
        raise TooLarge(f"field '{field}' is {len(value)} characters long; at most {limit} accepted")
    return value


def _ts(d: dict, field: str = "ts") -> int:
    value = d.get(field)
    if value is None:
        raise RecordError(f"field '{field}' is missing or null; it is required (integer, epoch ms)")
    if isinstance(value, float) and value.is_integer():
        value = int(value)  # JSON has one number type: 1.7e12 is the integer JSON Schema says it is
    if isinstance(value, bool) or not isinstance(value, int):
        raise RecordError(f"field '{field}' must be an integer (epoch ms), got {json_type(value)}")
    if not MIN_TS <= value < MAX_TS:
        hint = " (looks like seconds; send milliseconds)" if 946_684_800 <= value < 4_102_444_800 else ""
        raise RecordError(
            f"field '{field}' is outside 2000-01-01..2100-01-01 in epoch ms{hint}"  # no echo: could be a phone number
        )
    return value


def _number(d: dict, field: str, required: bool = True) -> str | None:
    value = d.get(field)
    if value is None:
        if required:
            raise RecordError(f"field '{field}' is missing or null; it is required (E.164 string)")
        return None
    if not isinstance(value, str):
        raise RecordError(f"field '{field}' must be an E.164 string, got {json_type(value)}")
    if not E164.match(value):
        raise RecordError(
            f"field '{field}' is not an E.164 number ('+' then 7 to 15 digits, no spaces)"
        )
    return value


def _enum(d: dict, field: str, allowed: frozenset[str], required: bool = True) -> str | None:
    value = d.get(field)
    if value is None:
        if required:
            raise RecordError(f"field '{field}' is missing or null; it is required (one of {_list(allowed)})")
        return None
    if not isinstance(value, str):
        raise RecordError(f"field '{field}' must be a string, got {json_type(value)}")
    if value not in allowed:
        shown = value if len(value) <= 40 and not any(c.isdigit() for c in value) else "<redacted>"
        raise RecordError(f"field '{field}' has unknown value '{shown}'; expected one of {_list(allowed)}")
    return value


def _list(allowed: frozenset[str]) -> str:
    return ", ".join(sorted(allowed))


# --- parsers -----------------------------------------------------------------

# Each parser first tries a fast path that only accepts the well-formed case
# (one type check per field, written out in place: a helper call per field
# costs more than the check); anything else goes the field-by-field way
# below, which names the first bad field.

def parse_send(d: Any) -> Send:
    if d.__class__ is dict:
        try:
            body, number, category = d["body"], d["number"], d["category"]
            message_id, ts, sender_id = d["message_id"], d["ts"], d["sender_id"]
        except KeyError:
            pass  # a required field is missing: the error path below names it
        else:
            get = d.get
            src, template_id, account_id, carrier = get("source"), get("template_id"), get("account_id"), get("carrier")
            if (
                body.__class__ is str and len(body) <= MAX_BODY_CHARS
                and number.__class__ is str and E164.match(number)
                and category.__class__ is str and category in CATEGORIES
                and message_id.__class__ is str and 0 < len(message_id) <= MAX_ID_CHARS
                and ts.__class__ is int and MIN_TS <= ts < MAX_TS
                and sender_id.__class__ is str and 0 < len(sender_id) <= MAX_ID_CHARS
                and (template_id is None or (template_id.__class__ is str and len(template_id) <= MAX_ID_CHARS))
                and (account_id is None or (account_id.__class__ is str and len(account_id) <= MAX_ID_CHARS))
                and (carrier is None or (carrier.__class__ is str and len(carrier) <= MAX_ID_CHARS))
            ):
                if src is None:
                    return Send(message_id, ts, sender_id, template_id, number, category, body, account_id, None,
                                carrier)
                if src.__class__ is dict:
                    api_key_id, source_ip, channel = src.get("api_key_id"), src.get("source_ip"), src.get("channel")
                    if ((api_key_id is None or (api_key_id.__class__ is str and len(api_key_id) <= MAX_ID_CHARS))
                            and (source_ip is None or (source_ip.__class__ is str and len(source_ip) <= MAX_ID_CHARS))
                            and (channel is None or (channel.__class__ is str and len(channel) <= MAX_ID_CHARS))):
                        return Send(message_id, ts, sender_id, template_id, number, category, body, account_id,
                                    Source(api_key_id, source_ip, channel), carrier)
    d = _obj(d)
    body = d.get("body")
    if body is None:
        raise RecordError("field 'body' is missing or null; it is required (string)")
    if not isinstance(body, str):
        raise RecordError(f"field 'body' must be a string, got {json_type(body)}")
    if len(body) > MAX_BODY_CHARS:
        raise TooLarge(f"field 'body' is {len(body)} characters long; at most {MAX_BODY_CHARS} accepted")
    src = d.get("source")
    source = None
    if src is not None:
        if not isinstance(src, dict):
            raise RecordError(f"field 'source' must be an object or null, got {json_type(src)}")
        source = Source(
            api_key_id=_opt_str(src, "api_key_id"),
            source_ip=_opt_str(src, "source_ip"),
            channel=_opt_str(src, "channel"),
        )
    return Send(
        message_id=_str(d, "message_id"),
        ts=_ts(d),
        sender_id=_str(d, "sender_id"),
        template_id=_opt_str(d, "template_id"),
        number=_number(d, "number"),  # type: ignore[arg-type]
        category=_enum(d, "category", CATEGORIES),  # type: ignore[arg-type]
        body=body,
        account_id=_opt_str(d, "account_id"),
        source=source,
        carrier=_opt_str(d, "carrier"),
    )


def parse_receipt(d: Any) -> Receipt:
    if d.__class__ is dict:
        try:
            message_id, ts, status = d["message_id"], d["ts"], d["status"]
        except KeyError:
            message_id = None  # a required field is missing: the error path below names it
        error_code, carrier = d.get("error_code"), d.get("carrier")
        if (message_id.__class__ is str and 0 < len(message_id) <= MAX_ID_CHARS
                and ts.__class__ is int and MIN_TS <= ts < MAX_TS
                and status.__class__ is str and status in RECEIPT_STATUSES
                and (error_code is None or (error_code.__class__ is str and len(error_code) <= MAX_ID_CHARS))
                and (carrier is None or (carrier.__class__ is str and len(carrier) <= MAX_ID_CHARS))):
            return Receipt(message_id, ts, status, error_code, carrier)
    d = _obj(d)
    return Receipt(
        message_id=_str(d, "message_id"),
        ts=_ts(d),
        status=_enum(d, "status", RECEIPT_STATUSES),  # type: ignore[arg-type]
        error_code=_opt_str(d, "error_code"),
        carrier=_opt_str(d, "carrier"),
    )


def parse_borrower(d: Any) -> Borrower:
    if d.__class__ is dict:
        try:
            sender_id, number, status, ts = d["sender_id"], d["number"], d["status"], d["ts"]
        except KeyError:
            sender_id = None  # a required field is missing: the error path below names it
        account_id = d.get("account_id")
        if (sender_id.__class__ is str and 0 < len(sender_id) <= MAX_ID_CHARS
                and number.__class__ is str and E164.match(number)
                and (account_id is None or (account_id.__class__ is str and len(account_id) <= MAX_ID_CHARS))
                and status.__class__ is str and status in BORROWER_STATUSES
                and ts.__class__ is int and MIN_TS <= ts < MAX_TS):
            return Borrower(sender_id, number, account_id, status, ts)
    d = _obj(d)
    return Borrower(
        sender_id=_str(d, "sender_id"),
        number=_number(d, "number"),  # type: ignore[arg-type]
        account_id=_opt_str(d, "account_id"),
        status=_enum(d, "status", BORROWER_STATUSES),  # type: ignore[arg-type]
        ts=_ts(d),
    )


def parse_template(d: Any) -> Template:
    d = _obj(d)
    return Template(
        template_id=_str(d, "template_id"),
        sender_id=_str(d, "sender_id"),
        category=_enum(d, "category", CATEGORIES),  # type: ignore[arg-type]
        text=_str(d, "text", MAX_BODY_CHARS),
        ts=_ts(d),
    )


def parse_binding(d: Any) -> Binding:
    d = _obj(d)
    return Binding(
        event_id=_str(d, "event_id"),
        ts=_ts(d),
        sender_id=_str(d, "sender_id"),
        account_id=_str(d, "account_id"),
        old_number=_number(d, "old_number", required=False),
        new_number=_number(d, "new_number"),  # type: ignore[arg-type]
        channel=_enum(d, "channel", BINDING_CHANNELS, required=False),
        device_id=_opt_str(d, "device_id"),
        source_ip=_opt_str(d, "source_ip"),
    )


PARSERS: dict[str, Callable[[dict], Record]] = {
    SENDS: parse_send,
    RECEIPTS: parse_receipt,
    BORROWERS: parse_borrower,
    TEMPLATES: parse_template,
    BINDINGS: parse_binding,
}


def borrower_tombstone(key: str | bytes | None) -> Borrower:
    """A null value on ``sms.borrowers`` removes the pair named by its key ``<sender_id>|<number>``."""
    if isinstance(key, bytes):
        try:
            key = key.decode("utf-8")
        except UnicodeDecodeError:
            raise RecordError("tombstone key is not valid UTF-8; expected '<sender_id>|<number>'") from None
    if not key or "|" not in key:
        raise RecordError("tombstone without a '<sender_id>|<number>' key; cannot tell which pair to remove")
    sender_id, _, number = key.rpartition("|")
    if not sender_id or not E164.match(number):
        raise RecordError("tombstone key is not '<sender_id>|<E.164 number>'")
    return Borrower(sender_id=sender_id, number=number, account_id=None, status="closed", ts=0, removed=True)


def decode(topic: str, raw: Any, key: bytes | str | None = None) -> Record | None:
    """Raw value of one input record to a typed record.

    ``raw`` is the bytes or text of a Kafka record, or a value ``replay``
    already took out of its JSON line (any JSON type). Returns None for a
    tombstone on a topic where tombstones mean nothing (templates, bindings);
    raises RecordError for anything unusable.
    """
    parser = PARSERS.get(topic)
    if parser is None:
        raise UnknownTopic(f"topic '{redact_without_key(topic[:100])}' is not an smsstream input topic; "
                          f"expected one of {', '.join(INPUT_TOPICS)}")
    if raw is None:
        if topic == BORROWERS:
            return borrower_tombstone(key)
        if topic == TEMPLATES:
            return None
        raise NullValue("value is null; only sms.borrowers and sms.templates accept tombstones")
    if not isinstance(raw, (bytes, str)):
        return parser(raw)
    if len(raw) > MAX_RECORD_BYTES:
        raise TooLarge(f"record is {len(raw)} bytes; at most {MAX_RECORD_BYTES} accepted")
    try:
        value = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise InvalidJson(f"value is not valid JSON: {str(exc).split(':')[0]}{_surrogate_field(raw)}") from None
    return parser(value)


def _surrogate_field(raw: bytes | str) -> str:
    """Where a lone UTF-16 surrogate escape (which orjson refuses as text) sits, for the error; else ``""``.

    Only on the error path: the standard library reads such escapes, so the
    field holding one can be named.
    """
    try:
        value = json.loads(raw)
    except ValueError:
        return ""
    if not isinstance(value, dict):
        return ""
    for name, field in [*value.items(), *((value.get("source") or {}).items()
                                          if isinstance(value.get("source"), dict) else ())]:
        if isinstance(field, str) and any("\ud800" <= c <= "\udfff" for c in field):
            return f" (field '{name}' holds a lone UTF-16 surrogate, which is not text)"
    return ""


def dead_letter(
    topic: str, partition: int | None, offset: int | None, error: str, raw: Any
) -> dict:
    """The ``sms.dead-letter`` value of CONTRACT.md for one unusable record (``raw`` as ``decode`` takes it)."""
    encoding = "utf-8"
    if raw is None or isinstance(raw, str):
        raw_text: str | None = raw
    elif isinstance(raw, bytes):
        try:
            raw_text = raw.decode("utf-8")
        except UnicodeDecodeError:
            raw_text = base64.b64encode(raw).decode("ascii")
            encoding = "base64"
    else:
        raw_text = orjson.dumps(raw).decode()
    return {
        "topic": topic,
        "partition": partition,
        "offset": offset,
        "error": error,
        "raw": raw_text,
        "raw_encoding": encoding,
    }
