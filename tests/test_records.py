"""Malformed input of every topic becomes a dead-letter record with an error naming the field.

The pipeline contract: ``decode`` either returns a record or raises RecordError;
the caller turns the error into the ``sms.dead-letter`` value. Nothing else may
escape, and the error text never carries a phone number.
"""

from __future__ import annotations

import base64
import json

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from jsonschema import Draft202012Validator

from smsstream.detection.intake import Intake
from smsstream.errors import RecordError
from smsstream.pseudonym import Pseudonymizer
from smsstream.records import (
    BINDINGS,
    BORROWERS,
    MAX_BODY_CHARS,
    MAX_ID_CHARS,
    MAX_RECORD_BYTES,
    RECEIPTS,
    SENDS,
    TEMPLATES,
    Borrower,
    Send,
    dead_letter,
    decode,
)
from smsstream.topics import load_specs

NUMBER = "+8613800138000"
OTHER_NUMBER = "+8613900139000"
TS = 1_772_409_600_000

GOOD = {
    SENDS: {
        "message_id": "m-1", "ts": TS, "sender_id": "lender-a", "template_id": "t-1", "number": NUMBER,
        "category": "repayment_reminder", "body": "Your repayment of 500 is due", "account_id": "acct-9",
        "source": {"api_key_id": "k-1", "source_ip": "10.0.0.1", "channel": "api"}, "carrier": "cmcc",
    },
    RECEIPTS: {"message_id": "m-1", "ts": TS, "status": "DELIVRD", "error_code": None, "carrier": "cmcc"},
    BORROWERS: {"sender_id": "lender-a", "number": NUMBER, "account_id": "acct-9", "status": "active", "ts": TS},
    TEMPLATES: {"template_id": "t-1", "sender_id": "lender-a", "category": "collection", "text": "Pay {amount}", "ts": TS},
    BINDINGS: {
        "event_id": "e-1", "ts": TS, "sender_id": "lender-a", "account_id": "acct-9", "old_number": OTHER_NUMBER,
        "new_number": NUMBER, "channel": "app", "device_id": "d-1", "source_ip": "10.0.0.2",
    },
}
#: (topic, field, a value of the wrong type)
REQUIRED = {
    SENDS: ["message_id", "ts", "sender_id", "number", "category", "body"],
    RECEIPTS: ["message_id", "ts", "status"],
    BORROWERS: ["sender_id", "number", "status", "ts"],
    TEMPLATES: ["template_id", "sender_id", "category", "text", "ts"],
    BINDINGS: ["event_id", "ts", "sender_id", "account_id", "new_number"],
}
ENUMS = {SENDS: "category", RECEIPTS: "status", BORROWERS: "status", TEMPLATES: "category", BINDINGS: "channel"}

DEAD_LETTER_SCHEMA = next(s for s in load_specs() if s.name == "sms.dead-letter").schema()


def to_dead_letter(topic: str, raw, key=None, offset: int = 42) -> dict | None:
    """What the worker and replay do with one raw value: a record, or its dead-letter value."""
    try:
        decode(topic, raw, key)
    except RecordError as exc:
        return dead_letter(topic, 3, offset, str(exc), raw)
    return None


def assert_clean_error(letter: dict, *fields: str) -> None:
    assert letter is not None, "expected a dead-letter record"
    Draft202012Validator(DEAD_LETTER_SCHEMA).validate(letter)
    for field in fields:
        assert f"'{field}'" in letter["error"], letter["error"]
    for number in (NUMBER, OTHER_NUMBER):
        assert number[1:] not in letter["error"], letter["error"]


def with_(topic: str, **changes) -> bytes:
    value = dict(GOOD[topic])
    value.update(changes)
    return orjson.dumps(value)


def without(topic: str, field: str) -> bytes:
    value = dict(GOOD[topic])
    del value[field]
    return orjson.dumps(value)


@pytest.mark.parametrize("topic", list(GOOD))
def test_a_well_formed_record_of_every_topic_parses(topic):
    assert to_dead_letter(topic, orjson.dumps(GOOD[topic])) is None


@pytest.mark.parametrize("topic", list(GOOD))
def test_text_that_is_not_json_is_dead_lettered_with_the_raw_text_kept(topic):
    raw = b'{"message_id": "m-1", "ts": ' + NUMBER.encode() + b"}"
    letter = to_dead_letter(topic, raw)
    assert_clean_error(letter)
    assert "not valid JSON" in letter["error"]
    assert letter["raw"] == raw.decode() and letter["topic"] == topic and letter["offset"] == 42


@pytest.mark.parametrize("topic", list(GOOD))
def test_bytes_that_are_not_utf8_are_dead_lettered_as_base64(topic):
    raw = b"\xff\xfe" + orjson.dumps(GOOD[topic])
    letter = to_dead_letter(topic, raw)
    assert_clean_error(letter)
    assert letter["raw_encoding"] == "base64"
    assert base64.b64decode(letter["raw"]) == raw


@pytest.mark.parametrize("topic", list(GOOD))
def test_a_json_value_that_is_not_an_object_is_dead_lettered(topic):
    letter = to_dead_letter(topic, orjson.dumps([GOOD[topic]]))
    assert_clean_error(letter)
    assert "JSON object" in letter["error"]


@pytest.mark.parametrize("topic,field", [(t, f) for t, fields in REQUIRED.items() for f in fields])
def test_a_missing_required_field_is_named(topic, field):
    assert_clean_error(to_dead_letter(topic, without(topic, field)), field)


@pytest.mark.parametrize("topic,field", [(t, f) for t, fields in REQUIRED.items() for f in fields])
def test_a_required_field_of_the_wrong_type_is_named(topic, field):
    wrong = ["not", "a", "string"] if field != "ts" else "1772409600000"
    letter = to_dead_letter(topic, with_(topic, **{field: wrong}))
    assert_clean_error(letter, field)
    assert "must be" in letter["error"]


@pytest.mark.parametrize("topic,field", list(ENUMS.items()))
def test_an_unknown_category_or_status_is_named_with_the_allowed_values(topic, field):
    letter = to_dead_letter(topic, with_(topic, **{field: "payday_special"}))
    assert_clean_error(letter, field)
    assert "payday_special" in letter["error"] and "expected one of" in letter["error"]


def test_a_phone_number_put_in_the_category_is_not_echoed():
    assert_clean_error(to_dead_letter(SENDS, with_(SENDS, category=NUMBER)), "category")


@pytest.mark.parametrize("topic,field", [(SENDS, "number"), (BORROWERS, "number"), (BINDINGS, "new_number"), (BINDINGS, "old_number")])
def test_a_number_not_in_e164_is_named_but_not_echoed(topic, field):
    spaced = "+86 138 0013 8000"
    letter = to_dead_letter(topic, with_(topic, **{field: spaced}))
    assert_clean_error(letter, field)
    assert "E.164" in letter["error"] and "138 0013" not in letter["error"]


def test_a_replay_line_whose_topic_is_a_phone_number_is_not_echoed():
    letter = to_dead_letter(NUMBER, GOOD[SENDS])
    assert letter is not None and "not an smsstream input topic" in letter["error"]
    assert NUMBER[1:] not in letter["error"] and "sms.sends" in letter["error"]


def test_timestamps_in_seconds_get_a_hint_and_are_not_echoed():
    letter = to_dead_letter(RECEIPTS, with_(RECEIPTS, ts=TS // 1000))
    assert_clean_error(letter, "ts")
    assert "looks like seconds" in letter["error"] and str(TS // 1000) not in letter["error"]


def test_a_phone_number_given_as_timestamp_is_not_echoed():
    letter = to_dead_letter(SENDS, with_(SENDS, ts=int(NUMBER[1:])))
    assert_clean_error(letter, "ts")


def test_a_huge_body_is_dead_lettered_naming_the_limit():
    letter = to_dead_letter(SENDS, with_(SENDS, body="x" * 5000))
    assert_clean_error(letter, "body")
    assert "4096" in letter["error"]


def test_a_record_over_64_kib_is_refused_before_parsing():
    letter = to_dead_letter(SENDS, with_(SENDS, body="x" * MAX_RECORD_BYTES))
    assert_clean_error(letter)
    assert str(MAX_RECORD_BYTES) in letter["error"]


def test_a_too_long_identifier_is_named():
    assert_clean_error(to_dead_letter(RECEIPTS, with_(RECEIPTS, message_id="m" * 300)), "message_id")


def test_a_malformed_source_object_is_dead_lettered():
    assert_clean_error(to_dead_letter(SENDS, with_(SENDS, source="api")), "source")
    assert_clean_error(to_dead_letter(SENDS, with_(SENDS, source={"channel": 7})), "channel")


def test_unknown_extra_fields_are_ignored_not_rejected():
    record = decode(SENDS, with_(SENDS, priority="high", meta={"campaign": "spring"}))
    assert isinstance(record, Send) and record.message_id == "m-1"


def test_a_borrower_tombstone_removes_the_pair_named_by_its_key():
    record = decode(BORROWERS, None, key=f"lender-a|{NUMBER}".encode())
    assert isinstance(record, Borrower) and record.removed
    assert (record.sender_id, record.number) == ("lender-a", NUMBER)


def test_a_borrower_tombstone_without_a_usable_key_is_dead_lettered_with_a_null_raw():
    letter = to_dead_letter(BORROWERS, None, key=b"lender-a")
    assert_clean_error(letter)
    assert letter["raw"] is None and "tombstone" in letter["error"]


def test_a_template_tombstone_is_ignored():
    assert decode(TEMPLATES, None, key=b"t-1") is None


@pytest.mark.parametrize("topic", [SENDS, RECEIPTS, BINDINGS])
def test_a_null_value_on_an_event_topic_is_dead_lettered(topic):
    assert_clean_error(to_dead_letter(topic, None, key=b"k"))


@settings(max_examples=300, deadline=None)
@given(topic=st.sampled_from(list(GOOD)), raw=st.binary(max_size=300))
def test_arbitrary_bytes_never_raise_anything_but_a_record_error(topic, raw):
    letter = to_dead_letter(topic, raw)
    if letter is not None:
        Draft202012Validator(DEAD_LETTER_SCHEMA).validate(letter)


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1) | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=6,
)


@settings(max_examples=300, deadline=None)
@given(topic=st.sampled_from(list(GOOD)), data=st.data())
def test_any_field_replaced_by_any_json_value_never_raises_anything_but_a_record_error(topic, data):
    value = dict(GOOD[topic])
    field = data.draw(st.sampled_from(sorted(value)))
    value[field] = data.draw(JSON_VALUES)
    letter = to_dead_letter(topic, json.dumps(value).encode())
    if letter is not None:
        assert NUMBER[1:] not in letter["error"]


# --- near-valid records, property-based: each field dropped, retyped, oversized or mutated ----------------

INTAKE = Intake(Pseudonymizer("test-records"))
#: The longest text each field accepts (the others: identifiers, MAX_ID_CHARS).
TEXT_LIMITS = {"body": MAX_BODY_CHARS, "text": MAX_BODY_CHARS}
JSON_TYPES = {type(None): "null", bool: "boolean", int: "number", float: "number", str: "string", list: "array",
              dict: "object"}


def fields_of(topic: str) -> list[str]:
    """Every field of the topic's good record; a send's source fields as ``source.<name>``."""
    value = GOOD[topic]
    return sorted([f for f in value] + [f"source.{f}" for f in value.get("source") or {}])


def outcome(topic: str, value: dict) -> tuple[object, dict | None]:
    """What the worker makes of one record: ``(record with its numbers as pseudonyms, None)`` or ``(None, dead letter)``.

    Anything but a RecordError escaping ``decode``, or any error from intake, fails the test.
    """
    raw = json.dumps(value).encode()
    try:
        record = decode(topic, raw)
    except RecordError as exc:
        letter = dead_letter(topic, 3, 42, str(exc), raw)
        Draft202012Validator(DEAD_LETTER_SCHEMA).validate(letter)
        for number in (NUMBER, OTHER_NUMBER):
            assert number[1:] not in letter["error"], letter["error"]
        return None, letter
    return INTAKE(topic, record), None


def changed(topic: str, field: str, new) -> dict:
    """The good record with ``field`` set to ``new`` (or dropped, for the DROP marker)."""
    value = json.loads(json.dumps(GOOD[topic]))
    holder, name = (value["source"], field[7:]) if field.startswith("source.") else (value, field)
    if new is DROP:
        del holder[name]
    else:
        holder[name] = new
    return value


DROP = object()


def named(letter: dict, field: str) -> bool:
    return f"'{field.removeprefix('source.')}'" in letter["error"]


@settings(max_examples=300, deadline=None)
@given(topic=st.sampled_from(list(GOOD)), data=st.data())
def test_a_record_with_one_field_dropped_parses_or_is_dead_lettered_naming_that_field(topic, data):
    field = data.draw(st.sampled_from(fields_of(topic)))
    record, letter = outcome(topic, changed(topic, field, DROP))
    if field in REQUIRED[topic]:
        assert letter is not None and named(letter, field), letter
    else:
        assert record is not None, f"dropping optional field '{field}': {letter}"


@settings(max_examples=400, deadline=None)
@given(topic=st.sampled_from(list(GOOD)), data=st.data())
def test_a_record_with_one_field_of_another_json_type_is_dead_lettered_naming_that_field(topic, data):
    field = data.draw(st.sampled_from(fields_of(topic)))
    original = GOOD[topic]["source"][field[7:]] if field.startswith("source.") else GOOD[topic][field]
    new = data.draw(JSON_VALUES.filter(lambda v: v is not None and JSON_TYPES[type(v)] != JSON_TYPES[type(original)]))
    record, letter = outcome(topic, changed(topic, field, new))
    if original is None:  # a field that may be null: its type was not pinned by the good record
        assert letter is None or named(letter, field), letter
    else:
        assert letter is not None and named(letter, field), f"'{field}' = {new!r} was accepted"


@settings(max_examples=200, deadline=None)
@given(topic=st.sampled_from(list(GOOD)), data=st.data())
def test_a_record_with_one_field_oversized_is_dead_lettered_naming_that_field(topic, data):
    field = data.draw(st.sampled_from(fields_of(topic)))
    limit = TEXT_LIMITS.get(field, MAX_ID_CHARS)
    if field == "ts":
        new = data.draw(st.integers(4_102_444_800_000, 2**200))
    else:
        new = data.draw(st.sampled_from("x7 é")) * data.draw(st.integers(limit + 1, 40_000))
    value = changed(topic, field, new)
    record, letter = outcome(topic, value)
    assert letter is not None, f"'{field}' of {len(str(new))} characters was accepted"
    if len(json.dumps(value).encode()) > MAX_RECORD_BYTES:  # refused before it is parsed: the size is named
        assert letter["error"].startswith("record is ") and "accepted" in letter["error"], letter["error"]
    else:
        assert named(letter, field), letter["error"]


@settings(max_examples=400, deadline=None)
@given(topic=st.sampled_from(list(GOOD)), data=st.data())
def test_a_record_with_one_field_mutated_parses_or_is_dead_lettered_naming_that_field(topic, data):
    field = data.draw(st.sampled_from(fields_of(topic)))
    original = GOOD[topic]["source"][field[7:]] if field.startswith("source.") else GOOD[topic][field]
    if isinstance(original, int):
        new = data.draw(st.integers(-(2**63), 2**63 - 1) | st.floats(allow_nan=False, allow_infinity=False))
    else:
        text = str(original or "")
        new = data.draw(st.text(max_size=40) | st.builds(lambda i, c: text[:i] + c + text[i + 1:],
                                                         st.integers(0, max(0, len(text) - 1)), st.characters()))
    record, letter = outcome(topic, changed(topic, field, new))
    assert letter is None or named(letter, field), letter
    if record is not None:
        for number in (NUMBER, OTHER_NUMBER):
            assert number not in repr(record), f"a number in clear got past intake: {record!r}"


@settings(max_examples=300, deadline=None)
@given(topic=st.sampled_from(list(GOOD)), raw=st.binary(max_size=300), key=st.none() | st.binary(max_size=40))
def test_arbitrary_bytes_and_keys_are_parsed_or_dead_lettered_and_intake_takes_whatever_parses(topic, raw, key):
    for value in (raw, None):
        try:
            record = decode(topic, value, key)
        except RecordError as exc:
            Draft202012Validator(DEAD_LETTER_SCHEMA).validate(dead_letter(topic, 3, 42, str(exc), value))
        else:
            INTAKE(topic, record)
