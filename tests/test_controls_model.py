"""Control entries: what a valid entry reads as, how a bad one is refused, and what is in force when."""

from __future__ import annotations

import re

import orjson
import pytest

from smsstream.controls.store import ControlRecord, apply_record, load_entries
from smsstream.detection.controls import (
    HIGH, LOW, NORMAL, ControlBook, Entry, Scope, Subject, parse_entry,
)
from smsstream.errors import InvalidJson, RecordError, TooLarge

T = 1_772_409_600_000  # Monday 2 March 2026, 00:00 UTC
MIN = 60_000


def value(**fields) -> dict:
    base = {"control": "sensitivity", "scope": {"kind": "non_borrower_spike"}, "level": "high",
            "set_by": "oncall-ana", "why": "trying a stricter rule", "ts": T}
    base.update(fields)
    return {k: v for k, v in base.items() if v is not None}


def entry(entry_id: str = "e1", **fields) -> Entry:
    parsed = parse_entry(entry_id, value(**fields))
    assert parsed is not None
    return parsed


SUBJECT = Subject("non_borrower_spike", "non_borrower_share", "acme", None, "sender", "acme")


# --- reading entries ---------------------------------------------------------------

@pytest.mark.parametrize("fields", [
    {},
    {"control": "silence", "scope": {"kind": "non_borrower_spike", "entity_type": "sender", "entity_id": "acme"},
     "level": None, "until": T + 60 * MIN},
    {"control": "shadow", "scope": {"reason": "volume_burst"}, "level": None},
    {"control": "allow", "allow": "non_borrower_sends", "scope": {"sender_id": "acme"}, "ceiling": 0.3, "level": None},
    {"control": "allow", "allow": "partner_senders", "scope": {"template_id": "T7"}, "senders": ["acme-sub"],
     "level": None},
    {"control": "allow", "allow": "links", "scope": {"sender_id": "acme"}, "domains": ["https://www.Acme.com/pay"],
     "callback_numbers": ["pn:0123456789abcdef"], "level": None},
    {"control": "allow", "allow": "bulk_rebinds", "scope": {}, "devices": ["branch-7"], "networks": ["10.1.2.7/24"],
     "level": None},
    {"control": "allow", "allow": "carrier_failures", "scope": {"sender_id": "acme"}, "carriers": ["carrier-x"],
     "level": None},
])
def test_each_control_reads_back_as_it_is_written(fields):
    parsed = entry(**fields)
    again = parse_entry(parsed.id, orjson.dumps(parsed.value()))
    assert again == parsed


def test_domains_and_networks_are_written_the_way_they_are_matched():
    parsed = entry(control="allow", allow="links", scope={"sender_id": "acme"}, domains=["https://www.Acme.com/pay"],
                   level=None)
    assert parsed.domains == ("acme.com",)
    assert parsed.allows_domain("pay.acme.com") and parsed.allows_domain("acme.com")
    assert not parsed.allows_domain("notacme.com")
    rebinds = entry(control="allow", allow="bulk_rebinds", scope={}, networks=["10.1.2.7/24"], level=None)
    assert rebinds.networks == ("10.1.2.0/24",) and rebinds.allows_ip("10.1.2.200") and not rebinds.allows_ip("10.1.3.1")


@pytest.mark.parametrize("fields, named", [
    ({"control": "mute"}, "'control'"),
    ({"scope": None}, "'scope'"),
    ({"scope": {"sender": "acme"}}, "'scope.sender'"),
    ({"scope": {"kind": "spam"}}, "'scope.kind'"),
    ({"scope": {"kind": "rebind_anomaly", "reason": "volume_burst"}}, "'scope.reason'"),
    ({"scope": {"entity_id": "acme"}}, "'scope.entity_id'"),
    ({"scope": {"entity_type": "number", "entity_id": "12345"}}, "'scope.entity_id'"),
    ({"set_by": ""}, "'set_by'"),
    ({"why": None}, "'why'"),
    ({"ts": "yesterday"}, "'ts'"),
    ({"ts": 1_772_409_600}, "'ts'"),
    ({"until": T - 1}, "'until'"),
    ({"level": "extreme"}, "'level'"),
    ({"control": "silence", "level": None}, "'until'"),
    ({"control": "silence", "scope": {"kind": "rebind_anomaly"}, "until": T + MIN, "level": None}, "'scope'"),
    ({"control": "shadow", "scope": {}, "level": None}, "'scope'"),
    ({"control": "allow", "allow": "everything", "scope": {}, "level": None}, "'allow'"),
    ({"control": "allow", "allow": "non_borrower_sends", "scope": {"sender_id": "a"}, "level": None}, "'ceiling'"),
    ({"control": "allow", "allow": "non_borrower_sends", "scope": {"sender_id": "a"}, "ceiling": 30, "level": None},
     "'ceiling'"),
    ({"control": "allow", "allow": "non_borrower_sends", "scope": {"kind": "non_borrower_spike"}, "ceiling": 0.3,
      "level": None}, "'scope.kind'"),
    ({"control": "allow", "allow": "partner_senders", "scope": {"sender_id": "a"}, "senders": ["b"], "level": None},
     "'scope'"),
    ({"control": "allow", "allow": "links", "scope": {"sender_id": "a"}, "domains": ["not a domain"], "level": None},
     "'domains[0]'"),
    ({"control": "allow", "allow": "bulk_rebinds", "scope": {}, "networks": ["10.1.2"], "level": None},
     "'networks[0]'"),
    ({"control": "allow", "allow": "carrier_failures", "scope": {}, "carriers": [], "level": None}, "'carriers'"),
])
def test_a_bad_entry_is_refused_with_an_error_naming_its_field(fields, named):
    with pytest.raises(RecordError, match=re.escape(named)):
        parse_entry("e1", value(**fields))


@pytest.mark.parametrize("fields, named", [
    ({"why": "customer +91 98765 43210 complained"}, "'why'"),
    ({"scope": {"sender_id": "+919876543210"}}, "'scope.sender_id'"),
    ({"scope": {"entity_type": "number", "entity_id": "+919876543210"}}, "'scope.entity_id'"),
    ({"scope": {"entity_type": "account", "entity_id": "acme|919876543210"}}, "'scope.entity_id'"),
    ({"control": "allow", "allow": "links", "scope": {"sender_id": "a"}, "callback_numbers": ["+919876543210"],
      "level": None}, "'callback_numbers[0]'"),
])
def test_a_phone_number_in_clear_is_refused_and_never_repeated(fields, named):
    with pytest.raises(RecordError, match=re.escape(named)) as refused:
        parse_entry("e1", value(**fields))
    assert "98765" not in str(refused.value) and "pn:" in str(refused.value)


def test_the_record_itself_must_be_a_keyed_json_object():
    with pytest.raises(InvalidJson):
        parse_entry("e1", b"{not json")
    with pytest.raises(RecordError, match="key"):
        parse_entry(None, orjson.dumps(value()))
    with pytest.raises(RecordError, match="key"):
        parse_entry("has space", orjson.dumps(value()))
    with pytest.raises(RecordError, match="'id'"):
        parse_entry("e1", value(id="e2"))
    with pytest.raises(TooLarge):
        parse_entry("e1", b" " * 70_000)
    assert parse_entry("e1", None) is None


def test_unknown_fields_of_an_entry_are_ignored_but_not_unknown_scope_fields():
    assert entry(comment="kept by nobody").level == HIGH
    with pytest.raises(RecordError, match="scope"):
        parse_entry("e1", value(scope={"kind": "non_borrower_spike", "tenant": "x"}))


# --- what is in force when -------------------------------------------------------------

def test_an_entry_is_in_force_from_its_ts_until_its_until():
    book = ControlBook([entry(ts=T + 10 * MIN, until=T + 20 * MIN)])
    assert book.level(SUBJECT, T + 10 * MIN - 1) == (NORMAL, ())
    assert book.level(SUBJECT, T + 10 * MIN) == (HIGH, ("e1",))
    assert book.level(SUBJECT, T + 20 * MIN - 1) == (HIGH, ("e1",))
    assert book.level(SUBJECT, T + 20 * MIN) == (NORMAL, ())


def test_a_new_version_takes_over_from_its_own_ts_and_the_old_one_holds_before_it():
    book = ControlBook([entry(level="high", ts=T)])
    book.put(entry(level="low", ts=T + 30 * MIN))
    assert book.level(SUBJECT, T + 29 * MIN)[0] == HIGH
    assert book.level(SUBJECT, T + 30 * MIN)[0] == LOW
    assert [e.level for e in book.entries()] == [LOW]
    # a version stamped earlier than the last replaces it from its own ts on
    book.put(entry(level="normal", ts=T + 10 * MIN))
    assert book.level(SUBJECT, T + 5 * MIN)[0] == HIGH
    assert book.level(SUBJECT, T + 40 * MIN)[0] == NORMAL


def test_a_removed_entry_is_nowhere_in_force():
    book = ControlBook([entry()])
    assert book.active
    book.apply("e1", None)
    assert not book.active and book.level(SUBJECT, T + MIN) == (NORMAL, ())


def test_the_most_specific_scope_wins_and_equals_go_to_the_latest():
    book = ControlBook([
        entry("global", scope={}, level="low"),
        entry("kind", scope={"kind": "non_borrower_spike"}, level="high"),
        entry("sender", scope={"sender_id": "acme"}, level="normal"),
    ])
    assert book.level(SUBJECT, T) == (NORMAL, ("sender",))
    assert book.level(SUBJECT._replace(sender_id="other", entity_id="other"), T) == (HIGH, ("kind",))
    assert book.level(Subject("rebind_anomaly", "mass_rebind", "other"), T) == (LOW, ("global",))
    book.put(entry("sender-later", scope={"sender_id": "acme"}, level="low", ts=T + MIN))
    assert book.level(SUBJECT, T + MIN) == (LOW, ("sender-later",))
    # an entity outranks its sender, a template outranks a sender
    assert Scope(entity_type="sender", entity_id="acme").rank() > Scope(sender_id="acme").rank()
    assert Scope(template_id="T1").rank() > Scope(sender_id="acme", kind="template_hijack").rank()


def test_silences_and_shadows_mark_a_record_and_name_themselves():
    book = ControlBook([
        entry("mute", control="silence", scope={"sender_id": "acme"}, until=T + 60 * MIN, level=None),
        entry("try", control="shadow", scope={"kind": "non_borrower_spike"}, level=None),
    ])
    record = {"kind": "non_borrower_spike", "reason": "non_borrower_share", "sender_id": "acme", "template_id": None,
              "entity_type": "sender", "entity_id": "acme", "window_end": T + 5 * MIN, "controls": ["sens"]}
    book.mark(record)
    assert record["silenced_until"] == T + 60 * MIN and record["shadow"] is True
    assert record["controls"] == ["sens", "mute", "try"]
    later = dict(record, window_end=T + 60 * MIN, controls=[])
    del later["silenced_until"], later["shadow"]
    book.mark(later)
    assert "silenced_until" not in later and later["shadow"] is True


def test_an_invalid_record_for_an_entry_in_force_changes_nothing():
    book = ControlBook()
    good = ControlRecord(0, 0, b"e1", orjson.dumps(value()))
    bad = ControlRecord(0, 1, b"e1", orjson.dumps(value(level="extreme")))
    assert apply_record(book, good) == "applied"
    assert apply_record(book, bad) == "invalid"
    assert book.level(SUBJECT, T) == (HIGH, ("e1",))
    assert apply_record(book, ControlRecord(0, 2, b"e1", None)) == "removed"
    assert not book.active


def test_a_file_of_entries_reads_into_a_book_and_names_a_bad_line():
    lines = [orjson.dumps({"id": "e1", **value()}), b"", b"# a comment",
             orjson.dumps({"id": "e2", **value(scope={"sender_id": "acme"}, level="low")})]
    book = load_entries(lines)
    assert [e.id for e in book.entries()] == ["e1", "e2"]
    with pytest.raises(RecordError, match="line 2: field 'level'"):
        load_entries([lines[0], orjson.dumps({"id": "e3", **value(level="loud")})])
    removed = load_entries(lines + [orjson.dumps({"id": "e1", "value": None})])
    assert [e.id for e in removed.entries()] == ["e2"]
