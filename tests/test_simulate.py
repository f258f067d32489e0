"""`smsstream simulate`: a seeded, realistic, labelled world whose labels are true and whose records parse."""

from __future__ import annotations

import io
import random
import json
from collections import Counter, defaultdict
from pathlib import Path

import orjson
import pytest

from smsstream.cli import main
from smsstream.errors import RecordError
from smsstream.records import BINDINGS, BORROWERS, LOAN_OBLIGATION, RECEIPTS, SENDS, TEMPLATES, decode
from smsstream.simulate import Options, simulate
from smsstream.simulate.attacks import SCENARIO_NAMES
from smsstream.simulate.output import JsonlWriter
from smsstream.simulate.world import REGIONS
from smsstream.simulate.world import World as WorldModel

HOUR = 3_600_000
SCHEMAS = Path(__file__).resolve().parents[1] / "topics" / "schemas"


def run(**kw) -> tuple[bytes, list[dict], dict]:
    buffer = io.BytesIO()
    writer = JsonlWriter(buffer)
    result = simulate(Options(**kw), writer)
    writer.close()
    return buffer.getvalue(), result.labels, result.manifest


class World:
    """What an observer of the output can tell: records by topic, the borrower book replayed in event time."""

    def __init__(self, data: bytes):
        self.lines = [orjson.loads(line) for line in data.splitlines()]
        self.malformed = [l for l in self.lines if isinstance(l["value"], str)]
        seen: set[tuple[str, str]] = set()
        records = []
        for i, line in enumerate(self.lines):
            value = line["value"]
            if isinstance(value, str):
                continue
            if value is not None:
                ident = value.get("message_id") or value.get("event_id")
                if ident and line["topic"] in (SENDS, RECEIPTS, BINDINGS):
                    if (line["topic"], ident) in seen:
                        continue
                    seen.add((line["topic"], ident))
            ts = value["ts"] if value is not None else None
            records.append((ts, i, line))
        # tombstones take the time of the nearest earlier record (they carry none)
        last = 0
        ordered = []
        for ts, i, line in records:
            if ts is None:
                ts = last
            last = ts
            ordered.append((ts, i, line))
        ordered.sort(key=lambda r: (r[0], r[1]))
        self.sends: list[dict] = []
        self.receipts: list[dict] = []
        self.bindings: list[dict] = []
        self.templates: dict[str, dict] = {}
        book: set[str] = set()
        for _, _, line in ordered:
            topic, value = line["topic"], line["value"]
            if topic == BORROWERS:
                if value is None:
                    book.discard(line["key"])
                else:
                    book.add(f"{value['sender_id']}|{value['number']}")
            elif topic == SENDS:
                value = dict(value, non_borrower=value["category"] in LOAN_OBLIGATION
                             and f"{value['sender_id']}|{value['number']}" not in book)
                self.sends.append(value)
            elif topic == RECEIPTS:
                self.receipts.append(value)
            elif topic == BINDINGS:
                self.bindings.append(value)
            elif topic == TEMPLATES:
                self.templates[value["template_id"]] = value
        self.send_by_id = {s["message_id"]: s for s in self.sends}


@pytest.fixture(scope="module", params=[(3, "in"), (11, "ng"), (5, "ph")], ids=lambda p: f"seed{p[0]}-{p[1]}")
def small(request):
    seed, region = request.param
    data, labels, manifest = run(days=2, senders=20, rate=0.05, seed=seed, region=region)
    return World(data), labels, manifest


def inside(ts, episode):
    return episode["start"] <= ts <= episode["end"]


# --- determinism -------------------------------------------------------------------

def test_same_seed_and_options_give_byte_identical_output():
    a = run(days=1, senders=12, rate=0.02, seed=5)
    b = run(days=1, senders=12, rate=0.02, seed=5)
    assert a[0] == b[0]
    assert a[1] == b[1]
    assert a[2] == b[2]
    assert run(days=1, senders=12, rate=0.02, seed=6)[0] != a[0]


# --- records -----------------------------------------------------------------------

def test_every_record_not_deliberately_malformed_parses_and_every_malformed_one_is_rejected(small):
    world, _, manifest = small
    for line in world.lines:
        value = line["value"]
        if isinstance(value, str):
            with pytest.raises(RecordError):
                decode(line["topic"], value, line["key"])
        else:
            decode(line["topic"], None if value is None else orjson.dumps(value), line["key"])
    assert len(world.malformed) == manifest["malformed_total"] > 0


def test_every_line_carries_the_contract_key_of_its_topic(small):
    world, _, _ = small
    for line in world.lines:
        v = line["value"]
        if not isinstance(v, dict):
            continue
        expected = {
            SENDS: lambda: v["number"],
            RECEIPTS: lambda: v["message_id"],
            BORROWERS: lambda: f"{v['sender_id']}|{v['number']}",
            TEMPLATES: lambda: v["template_id"],
            BINDINGS: lambda: f"{v['sender_id']}|{v['account_id']}",
        }[line["topic"]]()
        assert line["key"] == expected


@pytest.mark.skipif(not SCHEMAS.is_dir(), reason="topics/schemas/ not written yet")
def test_records_validate_against_the_topic_schemas(small):
    world, _, _ = small
    check_schemas(world.lines)


def check_schemas(lines):
    import jsonschema

    validators = {}
    for spec_path in SCHEMAS.parent.glob("sms.*.json"):
        spec = json.loads(spec_path.read_text())
        schema = json.loads((SCHEMAS.parent / spec["value"]["schema"]).read_text())
        validators[spec["name"]] = jsonschema.Draft202012Validator(schema)
    checked = Counter()
    for line in lines:
        value = line["value"]
        if not isinstance(value, dict):
            continue
        validator = validators.get(line["topic"])
        assert validator is not None, f"no schema for {line['topic']} in {SCHEMAS}"
        errors = list(validator.iter_errors(value))
        assert not errors, f"{line['topic']}: {errors[0].message}"
        checked[line["topic"]] += 1
    assert set(checked) == {SENDS, RECEIPTS, BORROWERS, TEMPLATES, BINDINGS}


def test_labels_are_exactly_the_contract_episode_lines(small):
    _, labels, _ = small
    assert labels
    for label in labels:
        assert set(label) == {"episode_id", "kind", "entities", "start", "end"}
        assert label["start"] <= label["end"]
        assert label["entities"]
        for entity in label["entities"]:
            assert set(entity) == {"entity_type", "entity_id"}
            assert entity["entity_type"] in ("sender", "template", "number", "account", "device", "carrier")
            if entity["entity_type"] == "number":
                assert entity["entity_id"].startswith("+")


# --- labels are true -----------------------------------------------------------------

def test_each_label_is_true_inside_its_window_and_not_outside(small):
    world, labels, manifest = small
    details = {e["episode_id"]: e for e in manifest["episodes"]}
    checked = Counter()
    for label in labels:
        ep = details[label["episode_id"]]
        reason, d = ep["reason"], ep["details"]
        within = lambda ts: inside(ts, label)  # noqa: E731
        # for rates, "outside" is away from every other episode that names the same sender
        others = [o for o in labels if o is not label
                  and {"entity_type": "sender", "entity_id": d.get("sender_id")} in o["entities"]]
        elsewhere = lambda ts: any(inside(ts, o) for o in others)  # noqa: E731
        if reason in ("purchased_list", "book_mixup"):
            nb = [s["ts"] for s in world.sends if s["sender_id"] == d["sender_id"] and s["non_borrower"]
                  and not elsewhere(s["ts"])]
            hours_in = max((label["end"] - label["start"]) / HOUR, 0.25)
            n_in = sum(1 for t in nb if within(t))
            n_out = len(nb) - n_in
            run_hours = manifest["days"] * 24
            assert n_in >= 10, (reason, n_in)
            assert n_in / hours_in > 5 * n_out / run_hours + 2, (reason, n_in, n_out)
        elif reason in ("url_injected", "callback_injected", "signature_changed"):
            marked = [s["ts"] for s in world.sends if s["template_id"] == d["template_id"] and d["marker"] in s["body"]]
            assert marked and all(within(t) for t in marked), reason
        elif reason == "foreign_sender":
            used = [s["ts"] for s in world.sends if s["template_id"] == d["template_id"] and s["sender_id"] == d["sender_id"]]
            assert len(used) == d["sends"] and all(within(t) for t in used)
            owners = {s["sender_id"] for s in world.sends if s["template_id"] == d["template_id"]} - {d["sender_id"]}
            registered = world.templates.get(d["template_id"])  # unregistered: the owner is learned from traffic
            assert owners <= {d["owner_sender_id"]} and d["owner_sender_id"] != d["sender_id"]
            assert registered is None or registered["sender_id"] == d["owner_sender_id"]
        elif reason == "new_source_burst":
            used = [s["ts"] for s in world.sends if (s["source"] or {}).get("api_key_id") == d["api_key_id"]]
            assert len(used) == d["sends"] and all(within(t) for t in used)
        elif reason == "mass_rebind":
            used = [b for b in world.bindings if b["device_id"] in d["devices"]]
            assert len(used) == d["rebinds"] and all(within(b["ts"]) for b in used)
            assert {b["sender_id"] for b in used} == {d["sender_id"]}
        elif reason == "number_fan_in":
            used = [b for b in world.bindings if b["new_number"] == d["number"] or b["old_number"] == d["number"]]
            assert len({b["sender_id"] for b in used}) >= 2 and all(within(b["ts"]) for b in used)
        elif reason == "device_fan_out":
            used = [b for b in world.bindings if b["device_id"] == d["device"]]
            assert len(used) >= 5 and all(within(b["ts"]) for b in used)
            assert len({(b["sender_id"], b["account_id"]) for b in used}) == len(used)
        elif reason in ("account_flapping", "account_flapping_slow"):
            used = [b for b in world.bindings if b["sender_id"] == d["sender_id"] and b["account_id"] == d["account_id"]]
            assert len(used) == d["flips"] and all(within(b["ts"]) for b in used)
            gaps = [(b2["ts"] - b1["ts"]) / 60_000 for b1, b2 in zip(used, used[1:])]
            assert all((90 < g < 150) if reason.endswith("slow") else (4 < g < 30) for g in gaps), gaps
        elif reason == "stale_binding_send":
            stale = [s["ts"] for s in world.sends if s["sender_id"] == d["sender_id"] and s["number"] in d["numbers"]
                     and s["non_borrower"]]
            assert stale and all(within(t) for t in stale)
            moved = {b["old_number"] for b in world.bindings if b["sender_id"] == d["sender_id"]}
            assert set(d["numbers"]) <= moved
        elif reason == "shared_list":
            # the list's sends draw their ids from the episode's own sequence
            worked = [x for x in world.sends if x["message_id"].startswith("a")]
            assert worked and all(within(x["ts"]) for x in worked)
            reached = defaultdict(set)
            for x in worked:
                reached[x["sender_id"]].add(x["number"])
            assert set(reached) == set(d["senders"]) and 3 <= len(reached) <= 5
            assert {e["entity_id"] for e in label["entities"] if e["entity_type"] == "sender"} == set(d["senders"])
            assert len(set().union(*reached.values())) <= d["list_size"]
            assert sum(x["non_borrower"] for x in worked) >= 0.9 * len(worked)
            by_several = Counter(n for numbers in reached.values() for n in numbers)
            assert sum(1 for c in by_several.values() if c >= 2) >= 3
        elif reason in ("carrier_blocking", "failure_rate_jump"):
            def failed(r):
                return r["status"] == "BLOCKED" if reason == "carrier_blocking" else r["status"] != "DELIVRD"
            ours = [r for r in world.receipts if r["status"] != "ACCEPTD"  # interim, not an outcome
                    and world.send_by_id.get(r["message_id"], {}).get("sender_id") == d["sender_id"]
                    and (reason == "failure_rate_jump" or r["carrier"] == d["carrier"])]
            rin = [r for r in ours if within(r["ts"])]
            rout = [r for r in ours if not within(r["ts"]) and not elsewhere(r["ts"])]
            share_in = sum(map(failed, rin)) / max(len(rin), 1)
            share_out = sum(map(failed, rout)) / max(len(rout), 1)
            assert sum(map(failed, rin)) >= 5 and share_in > 2.5 * share_out, (reason, share_in, share_out)
        else:
            pytest.fail(f"no truth check for {reason}")
        checked[reason] += 1
    assert len(checked) >= 12, checked


def test_numbers_left_behind_by_stale_bindings_are_reissued_to_new_borrowers_elsewhere():
    data, labels, manifest = run(days=2, senders=20, rate=0.1, seed=13, attacks=("stale_binding_send",))
    world = World(data)
    episodes = manifest["episodes"]
    assert episodes
    for episode in episodes:
        sender, old = episode["details"]["sender_id"], set(episode["details"]["numbers"])
        reissued = [b for b in world.bindings if b["new_number"] in old and b["old_number"] is None]
        assert all(b["sender_id"] != sender for b in reissued)
    assert any(b["new_number"] in set(e["details"]["numbers"]) and b["old_number"] is None
               for e in episodes for b in world.bindings)


def test_every_attack_kind_is_present_with_several_scenarios(small):
    _, labels, manifest = small
    kinds = Counter(label["kind"] for label in labels)
    assert set(kinds) == {"non_borrower_spike", "template_hijack", "rebind_anomaly", "delivery_failure_spike"}
    reasons = {e["reason"] for e in manifest["episodes"]}
    assert len(reasons) >= 12
    assert {e["intensity"] for e in manifest["episodes"]} == {"low", "medium", "high"}


# --- normal traffic looks like the world ------------------------------------------------

@pytest.fixture(scope="module")
def quiet_world():
    data, labels, manifest = run(days=2, senders=30, rate=0.1, seed=21, attacks=())
    return World(data), labels, manifest


def test_without_attacks_there_are_no_labels(quiet_world):
    _, labels, manifest = quiet_world
    assert labels == [] and manifest["episodes"] == []


def test_the_largest_world_the_cli_allows_gets_a_distinct_name_for_every_sender():
    world = WorldModel(random.Random(5), REGIONS["in"], 1000, 170_000, 0, 1)
    names = [s.sender_id for s in world.senders]
    assert len(names) == 1000 and len(set(names)) == 1000


def test_sender_volumes_span_four_orders_of_magnitude(quiet_world):
    _, _, manifest = quiet_world
    volumes = [s["daily_volume"] for s in manifest["senders"]]
    assert max(volumes) / min(volumes) > 10_000


def test_lenders_send_a_small_honest_share_of_loan_messages_to_non_borrowers(quiet_world):
    world, _, _ = quiet_world
    loan = Counter(s["sender_id"] for s in world.sends if s["category"] in LOAN_OBLIGATION)
    nb = Counter(s["sender_id"] for s in world.sends if s["non_borrower"])
    big = [sid for sid, n in loan.items() if n > 3000]
    assert big
    for sid in big:
        assert 0.002 < nb[sid] / loan[sid] < 0.035, (sid, nb[sid], loan[sid])
    marketing = [s for s in world.sends if s["category"] == "loan_marketing"]
    assert marketing


def test_reminders_come_in_sharp_campaigns_and_nights_are_quiet(quiet_world):
    world, _, manifest = quiet_world
    offset = 5.5 * HOUR  # region "in"
    top = max(manifest["senders"], key=lambda s: s["daily_volume"])
    per_hour = Counter(int(((s["ts"] + offset) // HOUR) % 24) for s in world.sends
                       if s["sender_id"] == top["sender_id"] and s["category"] == "repayment_reminder")
    hours = set(top["campaign_hours"])
    if top["extra_campaign"] and top["extra_campaign"][2] == "repayment_reminder":
        hours.add(top["extra_campaign"][1])
    campaign = sum(per_hour[h] for h in hours)
    assert campaign > 0.7 * sum(per_hour.values())
    all_hours = Counter(int(((s["ts"] + offset) // HOUR) % 24) for s in world.sends)
    assert all_hours[3] * 5 < max(all_hours.values())


def test_lenders_sometimes_blast_at_an_unusual_hour(quiet_world):
    world, _, manifest = quiet_world
    offset = 5.5 * HOUR
    blasts = [s for s in manifest["senders"] if s["extra_campaign"] and s["daily_volume"] > 100
              and s["extra_campaign"][0] < manifest["days"]]
    assert blasts
    for sender in blasts:
        day, hour, category = sender["extra_campaign"]
        per_slot = Counter(((s["ts"] - manifest["start"]) // (24 * HOUR), int(((s["ts"] + offset) // HOUR) % 24))
                           for s in world.sends if s["sender_id"] == sender["sender_id"] and s["category"] == category)
        other_days = [per_slot[(d, hour)] for d in range(manifest["days"]) if d != day]
        assert per_slot[(day, hour)] > 2 * max(other_days + [1])


def test_weekends_are_unlike_weekdays(quiet_world):
    world, _, manifest = quiet_world
    day0 = manifest["start"]
    per_day = Counter()
    for s in world.sends:
        if s["category"] in ("repayment_reminder", "collection"):
            per_day[(s["sender_id"], (s["ts"] - day0) // (24 * HOUR))] += 1
    relaxed = [s["sender_id"] for s in manifest["senders"]
               if s["weekend_factor"] < 0.6 and per_day[(s["sender_id"], 0)] > 300]
    assert relaxed
    for sid in relaxed:  # the default start is a Friday: day 1 is a Saturday
        assert per_day[(sid, 1)] < 0.8 * per_day[(sid, 0)], sid


def test_receipts_vary_by_carrier_some_arrive_before_their_send_and_some_never_come(quiet_world):
    world, _, _ = quiet_world
    statuses = Counter(r["status"] for r in world.receipts)
    assert {"DELIVRD", "UNDELIV", "EXPIRED", "BLOCKED", "ACCEPTD"} <= set(statuses)
    assert sum(n for status, n in statuses.items() if status != "ACCEPTD") < len(world.sends)
    delays = defaultdict(list)
    for r in world.receipts:
        send = world.send_by_id.get(r["message_id"])
        if send and r["status"] == "DELIVRD":
            delays[r["carrier"]].append(r["ts"] - send["ts"])
    medians = sorted(sorted(v)[len(v) // 2] for v in delays.values())
    assert medians[-1] > 2 * medians[0]
    first_seen: dict[str, str] = {}
    for line in world.lines:
        v = line["value"]
        if isinstance(v, dict) and line["topic"] in (SENDS, RECEIPTS):
            first_seen.setdefault(v["message_id"], line["topic"])
    assert Counter(first_seen.values())[RECEIPTS] > 0


def test_books_change_numbers_rebind_and_senders_appear_mid_run(quiet_world):
    world, _, manifest = quiet_world
    rebinds = [b for b in world.bindings if b["old_number"]]
    first = [b for b in world.bindings if not b["old_number"]]
    assert rebinds and first
    assert any(s["starts"] > manifest["start"] for s in manifest["senders"])
    assert any(s["growth_per_day"] > 0 for s in manifest["senders"])
    unregistered = {s["template_id"] for s in world.sends if s["template_id"]} - set(world.templates)
    assert unregistered


def test_some_senders_rotate_their_api_key_mid_run(quiet_world):
    world, _, manifest = quiet_world
    rotating = [s for s in manifest["senders"] if s["rotates_key_at"] and s["starts"] < s["rotates_key_at"]
                < manifest["end"] - 6 * HOUR and s["daily_volume"] > 200]
    assert rotating
    for sender in rotating:
        before = Counter(s["source"]["api_key_id"] for s in world.sends
                         if s["sender_id"] == sender["sender_id"] and s["ts"] < sender["rotates_key_at"])
        after = Counter(s["source"]["api_key_id"] for s in world.sends
                        if s["sender_id"] == sender["sender_id"] and s["ts"] >= sender["rotates_key_at"])
        main_after = after.most_common(1)[0][0]
        assert main_after not in before


def test_some_bodies_are_in_the_local_language(quiet_world):
    world, _, _ = quiet_world
    assert any(not s["body"].isascii() for s in world.sends)


def test_feed_has_duplicates_and_events_out_of_order_by_minutes(quiet_world):
    world, _, manifest = quiet_world
    assert sum(manifest["duplicates"].values()) > 0
    latest, worst = 0, 0
    for line in world.lines:
        v = line["value"]
        if isinstance(v, dict) and line["topic"] == SENDS:
            worst = max(worst, latest - v["ts"])
            latest = max(latest, v["ts"])
    assert 60_000 < worst <= 300_000


# --- command line -------------------------------------------------------------------

def test_command_writes_traffic_labels_and_manifest_beside_each_other(tmp_path, capsys):
    out = tmp_path / "run.jsonl"
    code = main(["simulate", "--out", str(out), "--days", "1", "--senders", "10", "--rate", "0.01", "-q",
                 "--attacks", "rebind_anomaly"])
    assert code == 0
    labels = [json.loads(l) for l in (tmp_path / "run.labels.jsonl").read_text().splitlines()]
    assert labels and {l["kind"] for l in labels} == {"rebind_anomaly"}
    manifest = json.loads((tmp_path / "run.manifest.json").read_text())
    assert manifest["days"] == 1 and manifest["records"] == len(out.read_bytes().splitlines())
    assert "records" in capsys.readouterr().err


def test_single_scenarios_can_be_chosen_by_name(tmp_path):
    out = tmp_path / "run.jsonl"
    assert main(["simulate", "-o", str(out), "--days", "2", "--senders", "12", "--rate", "0.02", "-q",
                 "--attacks", "account_flapping_slow,carrier_blocking"]) == 0
    manifest = json.loads((tmp_path / "run.manifest.json").read_text())
    assert {e["reason"] for e in manifest["episodes"]} == {"account_flapping_slow", "carrier_blocking"}


def test_a_list_worked_by_several_lenders_is_labelled_with_every_one_of_them():
    _, labels, manifest = run(days=3, senders=60, rate=0.2, seed=5, attacks=("shared_list",))
    episodes = manifest["episodes"]
    assert len(episodes) == 2 and {e["reason"] for e in episodes} == {"shared_list"}
    for label, episode in zip(labels, episodes):
        senders = {e["entity_id"] for e in label["entities"] if e["entity_type"] == "sender"}
        assert senders == set(episode["details"]["senders"]) and 3 <= len(senders) <= 5
        assert any(e["entity_type"] == "template" for e in label["entities"])


def test_adding_the_shared_list_scenario_leaves_every_other_record_of_a_seed_as_it_was():
    """It is planned last and draws from its own random stream: the other episodes and all normal traffic
    are the same records in the same order, with the list's records among them."""
    others = tuple(name for name in SCENARIO_NAMES if name != "shared_list")
    without, labels_without, _ = run(days=3, senders=60, rate=0.2, seed=5, attacks=others)
    with_it, labels_with, manifest = run(days=3, senders=60, rate=0.2, seed=5, attacks=(*others, "shared_list"))
    assert any(e["reason"] == "shared_list" for e in manifest["episodes"])
    before, after = without.splitlines(), with_it.splitlines()
    kept = set(before)
    assert [line for line in after if line in kept] == before
    assert all(b'"a0' in line for line in after if line not in kept)  # the list's sends, receipts and noise

    def strip(labels):
        return [{k: v for k, v in label.items() if k != "episode_id"} for label in labels]
    assert [label for label in strip(labels_with) if label in strip(labels_without)] == strip(labels_without)


def test_unknown_attack_kind_is_a_one_line_error_listing_the_kinds(tmp_path, capsys):
    assert main(["simulate", "--out", str(tmp_path / "x.jsonl"), "--attacks", "sms_pumping"]) == 1
    err = capsys.readouterr().err.strip()
    assert "sms_pumping" in err and "rebind_anomaly" in err and "\n" not in err


@pytest.mark.slow
def test_full_default_run_is_over_a_million_valid_records_in_three_days(tmp_path):
    """Every record goes through the parser; the JSON Schema check (160 us a record with jsonschema) takes
    every template and binding and every tenth record of the three big topics, to stay within CI time."""
    out = tmp_path / "default.jsonl"
    assert main(["simulate", "--out", str(out), "-q"]) == 0
    manifest = json.loads((tmp_path / "default.manifest.json").read_text())
    assert manifest["days"] >= 3 and manifest["records"] >= 1_000_000
    malformed = 0
    lines = []
    with out.open("rb") as f:
        for i, raw in enumerate(f):
            line = orjson.loads(raw)
            value = line["value"]
            if isinstance(value, str):
                malformed += 1
                with pytest.raises(RecordError):
                    decode(line["topic"], value, line["key"])
            else:
                decode(line["topic"], None if value is None else orjson.dumps(value), line["key"])
                if value is not None and (i % 10 == 0 or line["topic"] in (TEMPLATES, BINDINGS)):
                    lines.append(line)
    assert malformed == manifest["malformed_total"]
    if SCHEMAS.is_dir():
        check_schemas(lines)


class Capture:
    """A writer that keeps what it was given, to compare with what reached the broker."""

    def __init__(self):
        self.records = []

    def write(self, topic, key, value, ts):
        self.records.append((topic, key.encode(), value.encode() if isinstance(value, str) else value))

    def close(self):
        pass


@pytest.fixture
def bootstrap_of_its_own():
    """A broker of the session's kind that only this test writes to.

    The simulator writes to the contract topics themselves; on the shared
    session broker its traffic would reach the worker tests' input.
    """
    from brokers import running_broker

    with running_broker() as broker:
        yield broker.bootstrap


@pytest.mark.broker
def test_broker_output_is_the_same_records_keyed_as_the_contract_says(bootstrap_of_its_own):
    import asyncio

    from aiokafka import AIOKafkaConsumer

    from smsstream.simulate.output import BrokerWriter

    options = dict(days=1, senders=8, rate=0.01, seed=9)
    expected = Capture()
    simulate(Options(**options), expected)
    bootstrap = bootstrap_of_its_own
    writer = BrokerWriter({"bootstrap_servers": bootstrap}, None, 0)
    simulate(Options(**options), writer)
    writer.close()
    assert any(v is None for _, _, v in expected.records)  # tombstones travel as null values

    async def consume():
        wanted = Counter(expected.records)
        consumer = AIOKafkaConsumer(SENDS, RECEIPTS, BORROWERS, TEMPLATES, BINDINGS, bootstrap_servers=bootstrap,
                                    auto_offset_reset="earliest", enable_auto_commit=False)
        await consumer.start()
        try:
            for _ in range(60):
                batch = await consumer.getmany(timeout_ms=1000, max_records=20_000)
                for messages in batch.values():
                    for m in messages:
                        record = (m.topic, m.key, m.value)
                        if wanted[record] > 0:
                            wanted[record] -= 1
                if not +wanted:
                    return 0
            return sum((+wanted).values())
        finally:
            await consumer.stop()

    assert asyncio.run(consume()) == 0
