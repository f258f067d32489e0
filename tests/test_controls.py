"""Each operator control changes exactly the alerts it names, in replay and in the partitioned worker alike.

Every test runs the same traffic with and without the control: the loud twin
shows the alert the control then silences, shadows, allows or moves.
"""

from __future__ import annotations

import random

import orjson
import pytest

from smsstream.detection.alerts import stamp
from smsstream.detection.controls import ControlBook
from smsstream.detection.engine import DETECTOR_PARTS
from smsstream.notify.alert import read_alert
from smsstream.pseudonym import Pseudonymizer
from smsstream.records import BINDINGS, CONTROLS, SENDS, TEMPLATES, Binding, Send, Source, Template
from smsstream.replay import replay_lines
from traffic import DAY, HOUR, KEY, MINUTE, T0, Sends, book, control, engine, firing, keys, numbers, run, under

NB = "non_borrower_spike"


def by_key(alerts: list[dict], key: str) -> list[dict]:
    return [a for a in alerts if a["dedup_key"] == key]


def paged(alert: dict):
    """The record as the notifier reads it off sms.alerts (written at T0, wall clock)."""
    return read_alert(orjson.dumps(stamp(dict(alert), T0)))


# --- the same attack on two senders ---------------------------------------------------

def two_senders_attacked(seed: int = 1):
    """Lenders A and B: six ordinary hours, then an hour of reminders to a bought list, each."""
    rng = random.Random(seed)
    events = []
    for sender in ("lender-a", "lender-b"):
        borrowers = numbers(rng, 1500)
        events += book(sender, borrowers)
        sends = Sends(rng, sender, f"tpl-{sender[-1]}", borrowers)
        events += sends.run(T0, 6 * 60, 20)
        events += sends.run(T0 + 6 * HOUR, 60, 20, stranger_share=0.4)
        events += sends.run(T0 + 7 * HOUR, 60, 20)
    return events


A_KEY, B_KEY = f"{NB}/sender/lender-a", f"{NB}/sender/lender-b"


def test_a_silenced_key_is_written_marked_and_held_back_while_the_same_attack_elsewhere_pages():
    events = two_senders_attacked()
    silence = control("mute-a", "silence", {"kind": NB, "entity_type": "sender", "entity_id": "lender-a"},
                      until=T0 + 12 * HOUR)
    loud, quiet = run(events), under(events, silence)
    assert firing(by_key(loud, A_KEY)) and not any("silenced_until" in a for a in loud)
    muted = by_key(quiet, A_KEY)
    assert firing(muted) and all(a["silenced_until"] == T0 + 12 * HOUR and a["controls"] == ["mute-a"] for a in muted)
    # the same records otherwise: a silence only marks
    strip = lambda alerts: [{k: v for k, v in a.items() if k not in ("silenced_until", "controls")} for a in alerts]
    assert strip(muted) == strip(by_key(loud, A_KEY))
    assert by_key(quiet, B_KEY) == by_key(loud, B_KEY) and firing(by_key(quiet, B_KEY))
    assert all(paged(a).hold_back(T0) == "silenced" for a in firing(muted))
    assert all(paged(a).hold_back(T0) is None for a in firing(by_key(quiet, B_KEY)))


def test_a_silence_acts_from_its_ts_on_and_not_before():
    events = two_senders_attacked()
    loud = firing(by_key(run(events), A_KEY))
    first = loud[0]["window_end"]
    silence = control("mute-a", "silence", {"sender_id": "lender-a"}, ts=first + 1, until=T0 + 12 * HOUR)
    quiet = firing(by_key(under(events, silence), A_KEY))
    assert "silenced_until" not in quiet[0]
    assert all("silenced_until" in a for a in quiet[1:]) and len(quiet) == len(loud) >= 2


def test_a_shadowed_reason_is_written_and_marked_never_paged():
    events = two_senders_attacked()
    shadow = control("try-a", "shadow", {"reason": "non_borrower_share", "sender_id": "lender-a"})
    alerts = under(events, shadow)
    tried = by_key(alerts, A_KEY)
    assert firing(tried) and all(a["shadow"] is True and a["controls"] == ["try-a"] for a in tried)
    assert all(paged(a).hold_back(T0) == "shadow" for a in tried)
    assert not any("shadow" in a for a in by_key(alerts, B_KEY)) and firing(by_key(alerts, B_KEY))


# --- sensitivity ------------------------------------------------------------------------

def small_leak(seed: int = 4):
    """A lender's reminders with a slow leak to strangers: 6 % for two hours against its honest 1 %."""
    rng = random.Random(seed)
    borrowers = numbers(rng, 3000)
    events = book("lender-a", borrowers)
    sends = Sends(rng, "lender-a", "tpl-a", borrowers)
    events += sends.run(T0, 10 * 60, 20)
    events += sends.run(T0 + 10 * HOUR, 120, 20, stranger_share=0.06)
    return events


def first_page(alerts: list[dict]) -> int | None:
    fired = firing(alerts, NB, "sender")
    return min(a["window_end"] for a in fired) if fired else None


def test_high_sensitivity_pages_sooner_than_normal_and_low_later_or_not_at_all():
    events = small_leak()
    normal = first_page(run(events))
    high_alerts = under(events, control("strict", "sensitivity", {"kind": NB}, level="high"))
    high = first_page(high_alerts)
    low = first_page(under(events, control("lax", "sensitivity", {"sender_id": "lender-a"}, level="low")))
    assert high is not None and normal is not None and high < normal
    assert low is None or low > normal
    assert firing(high_alerts, NB, "sender")[0]["controls"] == ["strict"]


# --- allow lists -----------------------------------------------------------------------

def marketing_like(share: float):
    """A lender whose 'loan status' offers go to prospects: a fifth of them to non-borrowers all day."""
    rng = random.Random(5)
    borrowers = numbers(rng, 3000)
    events = book("lender-a", borrowers)
    sends = Sends(rng, "lender-a", "tpl-a", borrowers)
    events += sends.run(T0, 6 * 60, 20, stranger_share=0.01)
    events += sends.run(T0 + 6 * HOUR, 4 * 60, 20, stranger_share=share, category="loan_status")
    return events


CEILING = control("prospects", "allow", {"sender_id": "lender-a"}, allow="non_borrower_sends", ceiling=0.3)


def test_non_borrower_sends_under_an_allowed_ceiling_stay_quiet():
    events = marketing_like(0.2)
    assert firing(run(events), NB)
    assert firing(under(events, CEILING), NB, "sender") == []


def test_non_borrower_sends_far_above_the_allowed_ceiling_still_fire_and_name_the_allowance():
    fired = firing(under(marketing_like(0.7), CEILING), NB, "sender")
    assert fired and fired[0]["controls"] == ["prospects"] and fired[0]["evidence"]["allowed_share"] == 0.3


TEXT = "[QuickLoan] Dear {name}, your repayment of {amount} is due. Pay in the app or call 400-820-1234."


def template_traffic(partner_on: tuple[str, ...] = (), injected: str | None = None):
    """Owner lenderA registers T1 and T2 and sends both for a day; then partner P sends both (or lenderA's T1
    sends carry ``injected``)."""
    rng = random.Random(6)
    events = [(TEMPLATES, Template(t, "lenderA", "repayment_reminder", TEXT, T0 - HOUR)) for t in ("T1", "T2")]
    n = 0

    def send(ts, template, sender="lenderA", text=TEXT):
        nonlocal n
        n += 1
        body = text.replace("{name}", rng.choice(["Li", "Wang", "Zhao"])).replace("{amount}", f"{rng.randint(1, 9)}00")
        events.append((SENDS, Send(f"m{n}", ts, sender, template, f"+86138{n:08d}", "repayment_reminder", body,
                                   None, Source("key-1", "10.0.0.5", "api"), "cmcc")))

    for i in range(24 * 30):
        send(T0 + i * 2 * MINUTE, "T1" if i % 2 else "T2")
    later = T0 + 24 * HOUR
    for i in range(10):
        for template in partner_on:
            send(later + i * MINUTE, template, sender="P")
        if injected:
            send(later + i * MINUTE, "T1", text=TEXT.replace("Pay in the app", injected))
    return events


def test_an_allowed_partner_stops_foreign_sender_on_that_template_only():
    events = template_traffic(partner_on=("T1", "T2"))
    loud = firing(run(events), "template_hijack")
    assert {a["dedup_key"] for a in loud if a["reason"] == "foreign_sender"} == {
        "template_hijack/template/T1", "template_hijack/template/T2"}
    partner = control("partner-p", "allow", {"template_id": "T1"}, allow="partner_senders", senders=["P"])
    quiet = firing(under(events, partner), "template_hijack")
    assert {a["dedup_key"] for a in quiet if a["reason"] == "foreign_sender"} == {"template_hijack/template/T2"}


def test_links_and_callback_numbers_allowed_for_a_sender_are_not_tampering():
    injected = "Pay at https://pay.acme-partner.com/r or call +8613912345678"
    events = template_traffic(injected=injected)
    loud = firing(run(events), "template_hijack")
    assert "template_hijack/template/T1" in keys(loud)
    pn = Pseudonymizer(KEY).pseudonym("+8613912345678")
    links = control("acme-links", "allow", {"sender_id": "lenderA"}, allow="links", domains=["acme-partner.com"],
                    callback_numbers=[pn])
    assert firing(under(events, links), "template_hijack") == []
    only_domain = control("acme-links", "allow", {"sender_id": "lenderA"}, allow="links", domains=["acme-partner.com"])
    still = firing(under(events, only_domain), "template_hijack")
    assert still and all(pn in a["evidence"].get("numbers", []) for a in still if a["entity_type"] == "template")
    assert "acme-links" in still[0]["controls"]


def rebinds_from_branch():
    """Three days of a lender's handful of rebinds from customers' phones, then 20 accounts moved off 20 numbers
    in 40 minutes from one device on the branch network."""
    rng = random.Random(3)
    events = []
    n = 0
    for day in range(3):
        for _ in range(6):
            n += 1
            ts = T0 + day * DAY + 8 * HOUR + rng.randrange(10 * HOUR)
            events.append((BINDINGS, Binding(f"e{n}", ts, "bank", f"c{n}", f"+8613{n:09d}", f"+8614{n:09d}", "app",
                                             f"phone-{n}", f"100.64.{n}.1")))
    for i in range(20):
        n += 1
        events.append((BINDINGS, Binding(f"e{n}", T0 + 3 * DAY + 10 * HOUR + i * 2 * MINUTE, "bank", f"acc{i}",
                                         f"+8615{i:09d}", f"+8616{i:09d}", "app", "branch-7", "10.20.30.40")))
    return events


def test_devices_and_networks_allowed_to_rebind_in_bulk_stay_quiet():
    events = rebinds_from_branch()
    loud = firing(run(events), "rebind_anomaly")
    assert {"rebind_anomaly/device/branch-7", "rebind_anomaly/sender/bank"} <= keys(loud)
    device = control("branch", "allow", {"sender_id": "bank"}, allow="bulk_rebinds", devices=["branch-7"])
    assert firing(under(events, device), "rebind_anomaly") == []
    network = control("branch-net", "allow", {}, allow="bulk_rebinds", networks=["10.20.30.0/24"])
    assert keys(firing(under(events, network), "rebind_anomaly")) == {"rebind_anomaly/device/branch-7"}


def carrier_blocking():
    rng = random.Random(7)
    borrowers = numbers(rng, 2000)
    events = book("lender-a", borrowers)
    sends = Sends(rng, "lender-a", "tpl-a", borrowers)
    events += sends.run(T0, 8 * 60, 20)
    events += sends.run(T0 + 8 * HOUR, 60, 20, statuses={"DELIVRD": 0.5, "BLOCKED": 0.5}, carrier="carrier-x")
    return events


def test_failures_on_an_ignored_carrier_are_not_counted():
    events = carrier_blocking()
    assert firing(run(events), "delivery_failure_spike")
    ignored = control("flaky-x", "allow", {}, allow="carrier_failures", carriers=["carrier-x"])
    assert firing(under(events, ignored), "delivery_failure_spike") == []
    other = control("flaky-y", "allow", {}, allow="carrier_failures", carriers=["carrier-y"])
    assert firing(under(events, other), "delivery_failure_spike")


# --- replay and the worker agree under a configuration ------------------------------------

def lines_of(events) -> list[bytes]:
    out = []
    for topic, record in sorted(events, key=lambda e: e[1].ts):
        out.append(orjson.dumps({"topic": topic, "value": record}))
    return out


def test_control_lines_in_replays_input_act_as_the_same_entries_given_beside_it():
    events = two_senders_attacked()
    silence = control("mute-a", "silence", {"sender_id": "lender-a"}, until=T0 + 12 * HOUR)
    given: list[dict] = []
    replay_lines(lines_of(events), engine(controls=ControlBook([silence])), given.append)
    inline: list[dict] = []
    dead: list[dict] = []
    control_lines = [orjson.dumps({"topic": CONTROLS, "key": "mute-a", "value": silence.value()}),
                     orjson.dumps({"topic": CONTROLS, "key": "bad", "value": {"control": "silence"}})]
    replay_lines(control_lines + lines_of(events), engine(), inline.append, dead.append)
    assert inline == given and any("silenced_until" in a for a in inline)
    assert [d["topic"] for d in dead] == [CONTROLS] and "'scope'" in dead[0]["error"]


def test_the_partitioned_worker_writes_replays_alerts_under_the_same_controls():
    from test_worker_flow import LocalDataflow

    events = sorted(two_senders_attacked() + carrier_blocking(), key=lambda e: e[1].ts)
    entries = [control("mute-a", "silence", {"sender_id": "lender-a"}, ts=T0 + 6 * HOUR + 20 * MINUTE,
                       until=T0 + 12 * HOUR),
               control("strict", "sensitivity", {"kind": NB}, level="high"),
               control("try", "shadow", {"kind": "delivery_failure_spike"})]
    eng = engine(controls=ControlBook(entries))
    # what replay writes before its end-of-input flush: a live worker never reaches the end of its input
    expected = [a for topic, record in events for a in eng.ingest(topic, record)]
    assert {"silenced_until", "shadow"} <= {k for a in expected for k in a}
    flow = LocalDataflow(seed=2)
    flow.ctx.controls = ControlBook(entries)
    flow.produce(events)
    # the skewed partitions make some records late for the worker: they may move a last_seen or a
    # baseline's last digits (docs/detection.md, "Late records"), never which episodes alert or how marked
    assert marked(flow.run()) == marked(expected)


def marked(alerts: list[dict]) -> list[tuple]:
    """Which episodes alert, and the controls' marks on each of their records."""
    return sorted((a["dedup_key"], a["alert_id"], a["status"], a["reason"], a["severity"], a["window_start"],
                   a["window_end"], a.get("shadow"), a.get("silenced_until"), tuple(a.get("controls", ())))
                  for a in alerts)


# --- backtesting: evaluate replays under a configuration -------------------------------------

def test_evaluate_backtests_a_sensitivity_change_from_a_file_of_entries(tmp_path, monkeypatch, capsys):
    from smsstream.cli import main
    from smsstream.controls.store import entry_line

    monkeypatch.setenv("SMSSTREAM_PSEUDONYM_KEY", KEY)
    events, labels, config = tmp_path / "leak.jsonl", tmp_path / "leak.labels.jsonl", tmp_path / "strict.jsonl"
    events.write_bytes(b"\n".join(lines_of(small_leak())) + b"\n")
    labels.write_bytes(orjson.dumps({"episode_id": "leak", "kind": NB, "start": T0 + 10 * HOUR,
                                     "end": T0 + 12 * HOUR,
                                     "entities": [{"entity_type": "sender", "entity_id": "lender-a"}]}) + b"\n")
    config.write_bytes(entry_line(control("strict", "sensitivity", {"kind": NB}, level="high")) + b"\n")

    def ttd(*config_args: str) -> float:
        assert main(["evaluate", "--labels", str(labels), "--events", str(events), "--json", *config_args]) == 0
        overall = orjson.loads(capsys.readouterr().out)["overall"]
        assert overall["recall"] == 1.0
        return overall["ttd_median_s"]

    assert ttd("--config", str(config)) < ttd()
    # alerts already written were judged under their own configuration: a --config beside them is refused
    assert main(["evaluate", "--labels", str(labels), "--alerts", str(events), "--config", str(config)]) != 0
    assert "--events" in capsys.readouterr().err
