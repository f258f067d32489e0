"""`smsstream config`: entries checked before they are written, a dry run on a replay file, show/set/remove live."""

from __future__ import annotations

import asyncio
import uuid

import orjson
import pytest

from smsstream.broker import free_port
from smsstream.cli import main
from smsstream.controls.cli import parse_time
from smsstream.controls.store import write_records
from smsstream.config import Settings
from smsstream.pseudonym import Pseudonymizer
from smsstream.topics import apply_topics
from test_controls import lines_of, template_traffic, two_senders_attacked
from traffic import T0

ENTRY = {"control": "shadow", "scope": {"reason": "volume_burst"}, "set_by": "ana", "why": "trying it", "ts": T0}


@pytest.fixture
def offline(monkeypatch, pseudonym_key):
    """No broker answers: whatever needs one fails, so a test passing here never touched one."""
    monkeypatch.setenv("SMSSTREAM_BROKER", f"kafka://127.0.0.1:{free_port()}")
    monkeypatch.setenv("SMSSTREAM_OPERATOR", "oncall-ana")


def entries_file(tmp_path, *lines: dict):
    path = tmp_path / "entries.jsonl"
    path.write_bytes(b"".join(orjson.dumps(line) + b"\n" for line in lines))
    return path


def test_validate_names_each_bad_line_and_its_field(offline, tmp_path, capsys):
    path = entries_file(tmp_path, {"id": "ok", **ENTRY}, {"id": "bad", **ENTRY, "scope": {"reason": "louder"}},
                        {"id": "worse", **ENTRY, "why": "call +91 98765 43210"})
    assert main(["config", "validate", str(path)]) == 1
    out = capsys.readouterr().out
    assert f"{path}:2: bad: field 'scope.reason'" in out and f"{path}:3: worse: field 'why'" in out
    assert "1 valid, 2 invalid" in out and "98765" not in out
    assert main(["config", "validate", str(entries_file(tmp_path, {"id": "ok", **ENTRY}))]) == 0


def test_an_invalid_entry_is_refused_before_anything_is_written(offline, capsys):
    assert main(["config", "set", "mute", "silence", "--sender", "acme", "--why", "incident 42"]) == 1
    err = capsys.readouterr().err
    assert "field 'until'" in err and "nothing written" in err and "broker" not in err


def test_a_dry_run_prints_the_alerts_that_would_disappear_or_be_marked(offline, tmp_path, capsys):
    events = tmp_path / "events.jsonl"
    events.write_bytes(b"\n".join(lines_of(template_traffic(partner_on=("T1", "T2")) + two_senders_attacked())))
    none = entries_file(tmp_path)
    assert main(["config", "set", "partner", "allow", "partner_senders", "--template", "T1", "--partner", "P",
                 "--why", "P sends T1 for lenderA", "--dry-run", str(events), "--config", str(none), "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "disappear  template_hijack/template/T1 (critical" in out and "T2" not in out
    assert main(["config", "set", "mute", "silence", "--dedup-key", "non_borrower_spike/sender/lender-a",
                 "--until", "+1d", "--why", "known", "--dry-run", str(events), "--config", str(none), "--quiet"]) == 0
    assert "marked     non_borrower_spike/sender/lender-a: now silenced" in capsys.readouterr().out


def test_numbers_given_in_clear_are_written_as_pseudonyms(offline, capsys, pseudonym_key):
    pn = Pseudonymizer(pseudonym_key).pseudonym("+919876543210")
    assert main(["config", "pseudonym", "+91 98765-43210"]) == 0
    assert capsys.readouterr().out.strip() == pn
    from smsstream.controls.cli import build_entry, configure
    import argparse

    parser = argparse.ArgumentParser()
    configure(parser)
    args = parser.parse_args(["set", "links", "allow", "links", "--sender", "acme", "--callback-number",
                              "+919876543210", "--why", "their hotline"])
    entry = build_entry(args, Settings.from_env(), T0)
    assert entry.callback_numbers == {pn} and entry.ts == T0 + 5000 and entry.set_by == "oncall-ana"
    args = parser.parse_args(["set", "quiet", "silence", "--entity-type", "number", "--entity-id", "+919876543210",
                              "--until", "+2h", "--why", "a customer's number"])
    assert build_entry(args, Settings.from_env(), T0).scope.entity_id == pn


def test_times_are_read_as_now_relative_iso_or_epoch():
    assert parse_time("now", T0) == T0
    assert parse_time("+4h", T0) == T0 + 4 * 3_600_000
    assert parse_time("+30m", T0) == T0 + 1_800_000
    assert parse_time("2026-03-02T01:00Z", 0) == T0 + 3_600_000
    assert parse_time(str(T0), 0) == T0


def test_show_reads_a_file_and_its_json_reads_back(offline, tmp_path, capsys):
    path = entries_file(tmp_path, {"id": "try-bursts", **ENTRY})
    assert main(["config", "show", "--config", str(path)]) == 0
    out = capsys.readouterr().out
    assert "try-bursts" in out and "reason=volume_burst" in out and "ana: trying it" in out
    assert main(["config", "show", "--config", str(path), "--json"]) == 0
    again = tmp_path / "again.jsonl"
    again.write_text(capsys.readouterr().out)
    assert main(["config", "validate", str(again)]) == 0


@pytest.mark.broker
def test_set_show_and_remove_an_entry_on_the_topic(broker_url, monkeypatch, pseudonym_key, capsys):
    apply_topics(broker_url)
    monkeypatch.setenv("SMSSTREAM_BROKER", broker_url)
    entry_id = f"cli-test-{uuid.uuid4().hex[:8]}"
    try:
        assert main(["config", "set", entry_id, "sensitivity", "--level", "high", "--kind", "rebind_anomaly",
                     "--why", "tighter for the night", "--by", "ana"]) == 0
        assert f"written {entry_id}: sensitivity" in capsys.readouterr().out
        assert main(["config", "set", entry_id, "sensitivity", "--level", "low", "--kind", "rebind_anomaly",
                     "--why", "back to lax", "--by", "ana"]) == 0
        capsys.readouterr()
        assert main(["config", "show", "--json"]) == 0
        shown = [orjson.loads(line) for line in capsys.readouterr().out.splitlines()]
        assert [e["level"] for e in shown if e["id"] == entry_id] == ["low"]
        asyncio.run(write_records(Settings.from_env(), [(f"{entry_id}-bad", {"control": "loud"})]))
        assert main(["config", "validate"]) == 1
        assert f"{entry_id}-bad: field 'control' has an unknown value" in capsys.readouterr().out
    finally:
        assert main(["config", "remove", entry_id]) == 0
        assert main(["config", "remove", f"{entry_id}-bad"]) == 0
    capsys.readouterr()
    assert main(["config", "show", "--json"]) == 0
    assert entry_id not in capsys.readouterr().out
