"""`smsstream replay`: the detectors offline over a JSONL file, deterministic, bad input dead-lettered."""

import dataclasses
import random

import orjson
import pytest
from jsonschema import Draft202012Validator

from smsstream.cli import main
from smsstream.errors import DuplicateEvent, LateEvent
from smsstream.records import ALERTS, RECEIPTS, SENDS, Receipt, Send
from smsstream.topics import load_specs
from traffic import HOUR, KEY, MINUTE, T0, Sends, book, engine, numbers


def attack_file(path, seed=1):
    rng = random.Random(seed)
    borrowers = numbers(rng, 1000)
    events = book("lender-a", borrowers)
    sends = Sends(rng, "lender-a", "tpl-remind", borrowers)
    events += sends.run(T0, 5 * 60, 20)
    events += sends.run(T0 + 5 * HOUR, 30, 20, stranger_share=0.5)
    events += sends.run(T0 + 5 * HOUR + 30 * MINUTE, 150, 20)
    events.sort(key=lambda e: e[1].ts)
    with open(path, "wb") as f:
        for topic, record in events:
            f.write(orjson.dumps({"topic": topic, "value": dataclasses.asdict(record)}) + b"\n")
    return len(events)


def read_jsonl(path):
    return [orjson.loads(line) for line in path.read_bytes().splitlines()]


@pytest.fixture
def keyed(monkeypatch):
    monkeypatch.setenv("SMSSTREAM_PSEUDONYM_KEY", KEY)


def test_replay_writes_contract_alerts_and_reports_throughput(tmp_path, keyed, capsys):
    events, alerts = tmp_path / "events.jsonl", tmp_path / "alerts.jsonl"
    attack_file(events)
    assert main(["replay", str(events), "-o", str(alerts), "--quiet"]) == 0
    records = read_jsonl(alerts)
    assert {r["kind"] for r in records} == {"non_borrower_spike"}
    assert {r["status"] for r in records} == {"firing", "resolved"}
    schema = next(spec for spec in load_specs() if spec.name == ALERTS).schema()
    for record in records:
        Draft202012Validator(schema).validate(record)
    err = capsys.readouterr().err
    assert "lines/s" in err and "firing" in err


def test_replay_is_deterministic_bar_detected_at(tmp_path, keyed):
    events = tmp_path / "events.jsonl"
    attack_file(events)
    outputs = []
    for name in ("a", "b"):
        out = tmp_path / f"{name}.jsonl"
        main(["replay", str(events), "-o", str(out), "--quiet"])
        outputs.append([{k: v for k, v in r.items() if k != "detected_at"} for r in read_jsonl(out)])
    assert outputs[0] == outputs[1] and outputs[0]


def test_bad_lines_are_dead_lettered_with_their_line_number_and_good_ones_still_count(tmp_path, keyed):
    good = {"message_id": "m1", "ts": T0, "sender_id": "s", "template_id": None, "number": "+8613800000000",
            "category": "otp", "body": "code"}
    lines = [
        orjson.dumps({"topic": SENDS, "value": good}),
        b"this is not json",
        orjson.dumps({"topic": SENDS, "value": "{not json either"}),
        orjson.dumps({"topic": SENDS, "value": {**good, "message_id": "m2", "ts": "yesterday"}}),
        orjson.dumps({"topic": SENDS, "value": good}),
        orjson.dumps({"topic": "sms.unknown", "value": good}),
        orjson.dumps({"topic": "sms.borrowers", "value": None, "key": "lender-a|+8613800000000"}),
        orjson.dumps({"topic": SENDS, "value": orjson.dumps({**good, "message_id": "m3"}).decode()}),
    ]
    events, dl = tmp_path / "events.jsonl", tmp_path / "dl.jsonl"
    events.write_bytes(b"\n".join(lines) + b"\n")
    assert main(["replay", str(events), "-o", str(tmp_path / "a.jsonl"), "--dead-letter", str(dl), "--quiet"]) == 0
    dead = read_jsonl(dl)
    assert [d["offset"] for d in dead] == [2, 3, 4, 5, 6]
    assert all(d["partition"] is None for d in dead)
    assert "'ts'" in dead[2]["error"]
    assert "duplicate" in dead[3]["error"]
    assert orjson.loads(dead[2]["raw"])["ts"] == "yesterday"
    assert "+8613800000000" not in "".join(d["error"] for d in dead)


def test_missing_pseudonym_key_is_a_clear_error(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("SMSSTREAM_PSEUDONYM_KEY", raising=False)
    events = tmp_path / "events.jsonl"
    events.write_bytes(b"")
    assert main(["replay", str(events), "-o", str(tmp_path / "a.jsonl")]) == 1
    assert "SMSSTREAM_PSEUDONYM_KEY" in capsys.readouterr().err


def test_duplicate_send_binding_and_receipt_are_refused():
    eng = engine()
    send = Send("m1", T0, "lender-a", None, "+8613800000000", "otp", "code 1")
    eng.ingest(SENDS, send)
    with pytest.raises(DuplicateEvent, match="message_id"):
        eng.ingest(SENDS, send)
    eng.ingest(RECEIPTS, Receipt("m1", T0 + 1, "ACCEPTD"))
    eng.ingest(RECEIPTS, Receipt("m1", T0 + 2, "DELIVRD"))
    with pytest.raises(DuplicateEvent, match="DELIVRD"):
        eng.ingest(RECEIPTS, Receipt("m1", T0 + 3, "DELIVRD"))
    assert eng.counters()["dead_letters"] == {"duplicate": 2}


def late_attack(delay_ms: int):
    """A lender's reminders to strangers, each reaching the feed ``delay_ms`` after it was sent."""
    rng = random.Random(11)
    borrowers = numbers(rng, 1000)
    sends = Sends(rng, "lender-a", "tpl-remind", borrowers)
    on_time = book("lender-a", borrowers) + sends.run(T0, 5 * 60, 20) + sends.run(T0 + 5 * HOUR, 60, 20)
    attack = [(t, r) for t, r in sends.run(T0 + 5 * HOUR, 30, 20, stranger_share=1.0) if t == SENDS]
    arriving = [(r.ts, t, r) for t, r in on_time] + [(r.ts + delay_ms, t, r) for t, r in attack]
    return [(t, r) for _, t, r in sorted(arriving, key=lambda e: e[0])]


def replayed(events):
    eng = engine()
    alerts, refused = [], []
    for topic, record in events:
        try:
            alerts += eng.ingest(topic, record)
        except LateEvent as exc:
            refused.append(str(exc))
    return alerts + eng.flush(), refused


def test_reminders_to_strangers_arriving_minutes_late_still_raise_the_spike():
    # three minutes: far beyond the allowed lateness (their own minutes are judged), within the late horizon
    alerts, refused = replayed(late_attack(3 * MINUTE))
    assert refused == []
    assert any(a["kind"] == "non_borrower_spike" and a["status"] == "firing" for a in alerts)


def test_reminders_arriving_beyond_the_late_horizon_are_dead_lettered_and_raise_nothing():
    alerts, refused = replayed(late_attack(40 * MINUTE))
    assert len(refused) == 600 and "SMSSTREAM_LATE_HORIZON_S" in refused[0]
    assert not any(a["kind"] == "non_borrower_spike" for a in alerts)


def test_shuffling_within_the_allowed_lateness_gives_the_same_alerts(tmp_path, keyed):
    events = tmp_path / "events.jsonl"
    attack_file(events, seed=3)
    lines = events.read_bytes().splitlines()
    rng = random.Random(0)
    shuffled = []
    # lines within one window shorter than the allowed lateness (10 s by default) trade places
    windows: dict[int, list[bytes]] = {}
    for line in lines:
        windows.setdefault(orjson.loads(line)["value"]["ts"] // 9_000, []).append(line)
    for _, chunk in sorted(windows.items()):
        rng.shuffle(chunk)
        shuffled += chunk
    (tmp_path / "shuffled.jsonl").write_bytes(b"\n".join(shuffled) + b"\n")
    outs = []
    for name in ("events", "shuffled"):
        main(["replay", str(tmp_path / f"{name}.jsonl"), "-o", str(tmp_path / f"{name}.out"), "--quiet"])
        outs.append(sorted((r["dedup_key"], r["status"], r["window_end"], r["observed"], r["alert_id"],
                            r["last_seen"], orjson.dumps(r["evidence"], option=orjson.OPT_SORT_KEYS))
                           for r in read_jsonl(tmp_path / f"{name}.out")))
    assert outs[0] == outs[1] and outs[0]


def test_idle_entities_are_forgotten_but_not_while_their_alert_fires():
    rng = random.Random(5)
    borrowers = numbers(rng, 500)
    events = book("lender-a", borrowers) + book("lender-b", borrowers)
    events += Sends(rng, "lender-a", "tpl-a", borrowers).run(T0, 2 * 60, 10)
    events += Sends(rng, "lender-b", "tpl-b", borrowers).run(T0, 4 * 60, 10)
    events += Sends(rng, "lender-b", "tpl-b", borrowers).run(T0 + 4 * HOUR, 40, 10, stranger_share=0.6)
    eng = engine(idle_ms=2 * HOUR)
    for topic, record in sorted(events, key=lambda e: e[1].ts):
        eng.ingest(topic, record)
    senders = next(p for p in eng.parts if p.name == "non_borrower_sender")
    assert senders.book.is_firing("non_borrower_spike/sender/lender-b")
    for part in eng.parts:
        part.expire(T0 + 10 * HOUR)
    assert "lender-a" not in senders.entities
    assert "lender-b" in senders.entities


def test_blank_lines_are_skipped_and_lines_without_topic_or_value_are_dead_lettered(tmp_path, keyed):
    lines = [
        b"",
        b"                    ",
        b'{"topic": 5, "value": {}}',
        b"[1, 2]",
        orjson.dumps({"topic": SENDS}),
        b'"just a string"',
    ]
    events, dl = tmp_path / "events.jsonl", tmp_path / "dl.jsonl"
    events.write_bytes(b"\n".join(lines) + b"\n")
    assert main(["replay", str(events), "-o", str(tmp_path / "a.jsonl"), "--dead-letter", str(dl), "--quiet"]) == 0
    dead = read_jsonl(dl)
    assert [d["offset"] for d in dead] == [3, 4, 5, 6]
    assert all(d["topic"] == "unknown" for d in dead)
    assert ["no string 'topic'" in d["error"] for d in dead] == [True, True, False, True]
    assert "no 'value'" in dead[2]["error"]


def test_a_line_whose_value_is_a_number_or_an_array_is_dead_lettered_and_replay_goes_on(tmp_path, keyed):
    good = {"message_id": "m1", "ts": T0, "sender_id": "s", "template_id": None, "number": "+8613800000000",
            "category": "otp", "body": "code"}
    lines = [
        orjson.dumps({"topic": SENDS, "value": 5}),
        orjson.dumps({"topic": SENDS, "value": [good]}),
        orjson.dumps({"topic": "sms.bindings", "value": "[1]"}),
        orjson.dumps({"topic": SENDS, "value": good}),
    ]
    events, dl, out = tmp_path / "events.jsonl", tmp_path / "dl.jsonl", tmp_path / "a.jsonl"
    events.write_bytes(b"\n".join(lines) + b"\n")
    assert main(["replay", str(events), "-o", str(out), "--dead-letter", str(dl)]) == 0
    dead = read_jsonl(dl)
    assert [(d["offset"], d["error"]) for d in dead] == [
        (1, "value must be a JSON object, got number"),
        (2, "value must be a JSON object, got array"),
        (3, "value must be a JSON object, got array"),
    ]
    assert [d["raw"] for d in dead] == ["5", orjson.dumps([good]).decode(), "[1]"]
