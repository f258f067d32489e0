"""The hand-written parser and the published JSON Schemas accept exactly the same values.

The parser runs on the hot path; the schemas are what producers and outside
tools see. Hypothesis builds values near every rule's edge (missing, null,
wrong type, empty, one character over a limit, one millisecond outside the
time range, a near-miss E.164 number, an unknown enum word, extra fields) and
checks that both sides agree on each. One rule lives outside the schemas on
purpose: a raw record over 64 KiB is refused before parsing.
"""

from __future__ import annotations

import json
import re

from hypothesis import given, settings
from hypothesis import strategies as st
from jsonschema import Draft202012Validator, validators
from jsonschema.exceptions import ValidationError

from smsstream.errors import RecordError
from smsstream.records import (
    BINDING_CHANNELS,
    BORROWER_STATUSES,
    CATEGORIES,
    MAX_BODY_CHARS,
    MAX_ID_CHARS,
    MAX_TS,
    MIN_TS,
    PARSERS,
    RECEIPT_STATUSES,
    decode,
)
from smsstream.topics import load_specs

SPECS = {spec.name: spec for spec in load_specs()}


def _ecma_pattern(validator, pattern, instance, schema):
    """JSON Schema patterns are ECMA-262: ``$`` matches only at the very end (Python's also before a final newline)."""
    if not validator.is_type(instance, "string"):
        return
    if pattern.endswith("$") and not pattern.endswith("\\$"):
        pattern = pattern[:-1] + r"\Z"
    if not re.search(pattern, instance):
        yield ValidationError(f"{instance!r} does not match {pattern!r}")


EcmaValidator = validators.extend(Draft202012Validator, {"pattern": _ecma_pattern})


VALIDATORS = {name: EcmaValidator(spec.schema()) for name, spec in SPECS.items()}


def schema_accepts(topic: str, value) -> bool:
    return VALIDATORS[topic].is_valid(value)


def parser_accepts(topic: str, value) -> bool:
    try:
        decode(topic, json.dumps(value).encode())
    except RecordError:
        return False
    return True


# --- values near each rule's edge --------------------------------------------

WRONG_TYPES = st.sampled_from([True, False, 0, 1.5, [], {}, ["x"], {"a": 1}])


def near_string(limit: int, allow_empty: bool):
    return st.one_of(
        st.text(min_size=0 if allow_empty else 1, max_size=12),
        st.just(""),
        st.integers(limit - 1, limit + 1).map(lambda n: "a" * n),
        st.text(alphabet="é漢🙂", min_size=limit, max_size=limit + 1),
    )


def near_e164():
    digits = st.text(alphabet="0123456789", min_size=5, max_size=17)
    return st.one_of(
        digits.map(lambda d: "+" + d),
        digits.map(lambda d: "+1" + d[:14]),
        digits,
        digits.map(lambda d: "+" + d + "\n"),
        digits.map(lambda d: "+" + d[:3] + " " + d[3:]),
        st.sampled_from(["+0123456789", "+١٢٣٤٥٦٧٨", "+12345678901234567", "+1234567"]),
    )


def near_enum(allowed: frozenset[str]):
    return st.one_of(st.sampled_from(sorted(allowed)), st.sampled_from(sorted(allowed)).map(str.upper), st.text(max_size=10))


def near_ts():
    return st.one_of(
        st.sampled_from([MIN_TS - 1, MIN_TS, MAX_TS - 1, MAX_TS, MIN_TS // 1000, -1, 0]),
        st.integers(MIN_TS, MAX_TS - 1),
        st.integers(MIN_TS, MAX_TS - 1).map(float),
        st.floats(MIN_TS, MAX_TS, allow_nan=False),
        st.integers(MIN_TS, MAX_TS - 1).map(str),
    )


def bent(values):
    """A (present?, value) draw: absent, null, a value near the rule, or a wrong type."""
    present = st.one_of(values, WRONG_TYPES, st.none()).map(lambda v: (True, v))
    return st.one_of(present, st.just((False, None)))


ID = near_string(MAX_ID_CHARS, allow_empty=False)
OPT = near_string(MAX_ID_CHARS, allow_empty=True)
BODY = near_string(MAX_BODY_CHARS, allow_empty=True)

FIELDS = {
    "sms.sends": {
        "message_id": ID, "ts": near_ts(), "sender_id": ID, "template_id": OPT, "number": near_e164(),
        "category": near_enum(CATEGORIES), "body": BODY, "account_id": OPT, "carrier": OPT,
        "source": st.fixed_dictionaries({}, optional={"api_key_id": OPT | WRONG_TYPES, "channel": OPT, "x": OPT}),
    },
    "sms.delivery-receipts": {
        "message_id": ID, "ts": near_ts(), "status": near_enum(RECEIPT_STATUSES), "error_code": OPT, "carrier": OPT,
    },
    "sms.borrowers": {
        "sender_id": ID, "number": near_e164(), "account_id": OPT, "status": near_enum(BORROWER_STATUSES), "ts": near_ts(),
    },
    "sms.templates": {
        "template_id": ID, "sender_id": ID, "category": near_enum(CATEGORIES), "text": BODY, "ts": near_ts(),
    },
    "sms.bindings": {
        "event_id": ID, "ts": near_ts(), "sender_id": ID, "account_id": ID, "old_number": near_e164(),
        "new_number": near_e164(), "channel": near_enum(BINDING_CHANNELS), "device_id": OPT, "source_ip": OPT,
    },
}


GOOD_ID = st.text(min_size=1, max_size=12)
GOOD_OPT = st.none() | st.text(max_size=12)
GOOD_NUMBER = st.from_regex(r"\+[1-9][0-9]{6,14}", fullmatch=True)
GOOD_TS = st.integers(MIN_TS, MAX_TS - 1)
GOOD_SOURCE = st.none() | st.fixed_dictionaries({}, optional={"api_key_id": GOOD_OPT, "channel": GOOD_OPT})


def good_enum(allowed: frozenset[str]):
    return st.sampled_from(sorted(allowed))


#: Valid by construction, so drawing a mostly-valid record costs no rejected examples.
GOOD_FIELDS = {
    "sms.sends": {
        "message_id": GOOD_ID, "ts": GOOD_TS, "sender_id": GOOD_ID, "template_id": GOOD_OPT, "number": GOOD_NUMBER,
        "category": good_enum(CATEGORIES), "body": st.text(max_size=20), "account_id": GOOD_OPT, "carrier": GOOD_OPT,
        "source": GOOD_SOURCE,
    },
    "sms.delivery-receipts": {
        "message_id": GOOD_ID, "ts": GOOD_TS, "status": good_enum(RECEIPT_STATUSES), "error_code": GOOD_OPT,
        "carrier": GOOD_OPT,
    },
    "sms.borrowers": {
        "sender_id": GOOD_ID, "number": GOOD_NUMBER, "account_id": GOOD_OPT, "status": good_enum(BORROWER_STATUSES),
        "ts": GOOD_TS,
    },
    "sms.templates": {
        "template_id": GOOD_ID, "sender_id": GOOD_ID, "category": good_enum(CATEGORIES), "text": GOOD_ID, "ts": GOOD_TS,
    },
    "sms.bindings": {
        "event_id": GOOD_ID, "ts": GOOD_TS, "sender_id": GOOD_ID, "account_id": GOOD_ID, "old_number": st.none() | GOOD_NUMBER,
        "new_number": GOOD_NUMBER, "channel": st.none() | good_enum(BINDING_CHANNELS), "device_id": GOOD_OPT,
        "source_ip": GOOD_OPT,
    },
}


@st.composite
def candidate(draw, topic: str):
    """Mostly-valid values: each field keeps a good value unless hypothesis decides to bend it."""
    value = {}
    for name, strategy in FIELDS[topic].items():
        if draw(st.integers(0, 5)) != 0:
            value[name] = draw(GOOD_FIELDS[topic][name])
            continue
        present, bent_value = draw(bent(strategy))
        if present:
            value[name] = bent_value
    if draw(st.booleans()):
        value[draw(st.text(max_size=6).filter(lambda k: k not in FIELDS[topic]))] = draw(OPT | WRONG_TYPES)
    return value


def test_every_input_topic_has_a_schema_and_a_parser():
    assert {name for name, spec in SPECS.items() if spec.role == "input"} == set(PARSERS)


def _agree(topic: str, value) -> None:
    by_schema, by_parser = schema_accepts(topic, value), parser_accepts(topic, value)
    assert by_schema == by_parser, f"schema says {by_schema}, parser says {by_parser} for {value!r}"


@settings(max_examples=400, deadline=None)
@given(value=candidate("sms.sends"))
def test_sends_parser_and_schema_agree(value):
    _agree("sms.sends", value)


@settings(max_examples=250, deadline=None)
@given(value=candidate("sms.delivery-receipts"))
def test_receipts_parser_and_schema_agree(value):
    _agree("sms.delivery-receipts", value)


@settings(max_examples=250, deadline=None)
@given(value=candidate("sms.borrowers"))
def test_borrowers_parser_and_schema_agree(value):
    _agree("sms.borrowers", value)


@settings(max_examples=250, deadline=None)
@given(value=candidate("sms.templates"))
def test_templates_parser_and_schema_agree(value):
    _agree("sms.templates", value)


@settings(max_examples=300, deadline=None)
@given(value=candidate("sms.bindings"))
def test_bindings_parser_and_schema_agree(value):
    _agree("sms.bindings", value)


@settings(max_examples=100, deadline=None)
@given(topic=st.sampled_from(sorted(FIELDS)), value=st.one_of(st.lists(st.integers()), st.text(), st.integers(), st.none()))
def test_values_that_are_not_objects_are_refused_by_both(topic, value):
    assert not schema_accepts(topic, value)
    assert not parser_accepts(topic, value)


def test_the_agreement_tests_see_both_verdicts():
    """Guards the generators: a strategy that only ever produced valid (or invalid) values would prove nothing."""
    seen = set()

    @settings(max_examples=200, deadline=None)
    @given(value=candidate("sms.sends"))
    def probe(value):
        seen.add(parser_accepts("sms.sends", value))

    probe()
    assert seen == {True, False}


def test_the_size_limit_lives_outside_the_schemas():
    from smsstream.records import MAX_RECORD_BYTES

    value = {
        "message_id": "m", "ts": MIN_TS, "sender_id": "s", "template_id": None, "number": "+8613800138000",
        "category": "other", "body": "x" * MAX_BODY_CHARS, "padding": "y" * MAX_RECORD_BYTES,
    }
    assert schema_accepts("sms.sends", value)
    assert not parser_accepts("sms.sends", value)
