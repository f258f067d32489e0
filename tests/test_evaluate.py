"""`smsstream evaluate` scores hand-made alerts against hand-made episodes as CONTRACT.md defines."""

from __future__ import annotations

import json

import pytest

from smsstream.cli import main
from smsstream.evaluate import Episode, pseudonymise_entities, render_table, score, score_until
from smsstream.pseudonym import Pseudonymizer

KEY = "test-key"
H = 3_600_000
T0 = 1_772_409_600_000  # 2026-03-02 00:00 UTC


def episode(eid, kind, entities, start, end):
    return Episode(eid, kind, frozenset(entities), start, end)


def alert(kind, etype, eid, window_end, status="firing"):
    return {
        "dedup_key": f"{kind}/{etype}/{eid}",
        "kind": kind,
        "status": status,
        "entity_type": etype,
        "entity_id": eid,
        "window_start": window_end - 60_000,
        "window_end": window_end,
    }


def test_alert_inside_the_window_detects_the_episode_with_its_delay():
    eps = [episode("e1", "non_borrower_spike", [("sender", "acme")], T0 + H, T0 + 2 * H)]
    result = score(eps, [alert("non_borrower_spike", "sender", "acme", T0 + H + 300_000)], days=1)
    assert result["overall"]["recall"] == 1.0
    assert result["overall"]["ttd_median_s"] == 300.0
    assert result["overall"]["false_alarms"] == 0


def test_alert_that_fires_before_the_episode_is_a_false_alarm_not_a_detection():
    eps = [episode("e1", "template_hijack", [("template", "t1")], T0 + 5 * H, T0 + 6 * H)]
    result = score(eps, [alert("template_hijack", "template", "t1", T0 + 4 * H)], days=2)
    assert result["kinds"]["template_hijack"]["detected"] == 0
    assert result["kinds"]["template_hijack"]["false_alarms"] == 1
    assert result["kinds"]["template_hijack"]["false_alarms_per_day"] == 0.5
    assert result["missed"] == ["e1"]


def test_alert_firing_twice_counts_once_and_the_earliest_sets_time_to_detect():
    eps = [episode("e1", "rebind_anomaly", [("device", "dev-9")], T0, T0 + H)]
    alerts = [
        alert("rebind_anomaly", "device", "dev-9", T0 + 1_200_000),
        alert("rebind_anomaly", "device", "dev-9", T0 + 600_000),
    ]
    result = score(eps, alerts, days=1)
    assert result["overall"]["detected"] == 1
    assert result["overall"]["ttd_worst_s"] == 600.0
    assert result["overall"]["false_alarms"] == 0


def test_alert_that_only_resolves_neither_detects_nor_counts_as_false_alarm():
    eps = [episode("e1", "delivery_failure_spike", [("carrier", "jio")], T0, T0 + H)]
    result = score(eps, [alert("delivery_failure_spike", "carrier", "jio", T0 + 600_000, status="resolved")], days=1)
    assert result["overall"]["detected"] == 0
    assert result["overall"]["false_alarms"] == 0


def test_late_alert_within_thirty_minutes_of_the_end_still_counts_but_not_after():
    eps = [
        episode("e1", "non_borrower_spike", [("sender", "a")], T0, T0 + H),
        episode("e2", "non_borrower_spike", [("sender", "b")], T0, T0 + H),
    ]
    alerts = [
        alert("non_borrower_spike", "sender", "a", T0 + H + 1_800_000),
        alert("non_borrower_spike", "sender", "b", T0 + H + 1_800_001),
    ]
    result = score(eps, alerts, days=1)
    assert result["missed"] == ["e2"]
    assert result["false_alarm_keys"] == ["non_borrower_spike/sender/b"]


def test_alert_of_another_kind_on_the_right_entity_does_not_detect():
    eps = [episode("e1", "non_borrower_spike", [("sender", "a")], T0, T0 + H)]
    result = score(eps, [alert("delivery_failure_spike", "sender", "a", T0 + 60_000)], days=1)
    assert result["overall"]["detected"] == 0
    assert result["kinds"]["delivery_failure_spike"]["false_alarms"] == 1


def test_number_entity_is_matched_through_its_pseudonym():
    eps = [episode("e1", "rebind_anomaly", [("number", "+919812345678"), ("account", "acme|A1")], T0, T0 + H)]
    pseudonymise_entities(eps, Pseudonymizer(KEY))
    pn = Pseudonymizer(KEY).pseudonym("+919812345678")
    result = score(eps, [alert("rebind_anomaly", "number", pn, T0 + 60_000)], days=1)
    assert result["overall"]["detected"] == 1
    clear = score(eps, [alert("rebind_anomaly", "number", "+919812345678", T0 + 60_000)], days=1)
    assert clear["overall"]["detected"] == 0


def test_account_ids_are_not_pseudonymised():
    eps = [episode("e1", "rebind_anomaly", [("account", "acme|A1")], T0, T0 + H)]
    pseudonymise_entities(eps, Pseudonymizer(KEY))
    result = score(eps, [alert("rebind_anomaly", "account", "acme|A1", T0 + 60_000)], days=1)
    assert result["overall"]["detected"] == 1


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_command_prints_json_scores_with_days_from_the_manifest(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("SMSSTREAM_PSEUDONYM_KEY", KEY)
    labels = tmp_path / "run.labels.jsonl"
    write_jsonl(labels, [
        {"episode_id": "e1", "kind": "rebind_anomaly",
         "entities": [{"entity_type": "number", "entity_id": "+919812345678"}], "start": T0, "end": T0 + H},
        {"episode_id": "e2", "kind": "non_borrower_spike",
         "entities": [{"entity_type": "sender", "entity_id": "acme"}], "start": T0, "end": T0 + H},
    ])
    (tmp_path / "run.manifest.json").write_text(json.dumps({"days": 4}))
    alerts = tmp_path / "alerts.jsonl"
    pn = Pseudonymizer(KEY).pseudonym("+919812345678")
    write_jsonl(alerts, [
        alert("rebind_anomaly", "number", pn, T0 + 120_000),
        alert("template_hijack", "template", "t9", T0 + 120_000),
    ])
    assert main(["evaluate", "--labels", str(labels), "--alerts", str(alerts), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["days"] == 4
    assert out["overall"]["recall"] == 0.5
    assert out["overall"]["false_alarms_per_day"] == 0.25
    assert out["kinds"]["rebind_anomaly"]["ttd_median_s"] == 120.0


def test_command_prints_a_readable_table(tmp_path, capsys):
    labels = tmp_path / "x.labels.jsonl"
    write_jsonl(labels, [{"episode_id": "e1", "kind": "template_hijack",
                          "entities": [{"entity_type": "template", "entity_id": "t1"}], "start": T0, "end": T0 + H}])
    alerts = tmp_path / "a.jsonl"
    write_jsonl(alerts, [alert("template_hijack", "template", "t1", T0 + 90_000)])
    assert main(["evaluate", "--labels", str(labels), "--alerts", str(alerts), "--days", "1"]) == 0
    out = capsys.readouterr().out
    assert "template_hijack" in out and "100%" in out and "1m30s" in out


def test_missing_key_with_number_labels_is_a_one_line_error_naming_the_variable(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("SMSSTREAM_PSEUDONYM_KEY", raising=False)
    labels = tmp_path / "x.labels.jsonl"
    write_jsonl(labels, [{"episode_id": "e1", "kind": "rebind_anomaly",
                          "entities": [{"entity_type": "number", "entity_id": "+919812345678"}],
                          "start": T0, "end": T0 + H}])
    alerts = tmp_path / "a.jsonl"
    alerts.write_text("")
    assert main(["evaluate", "--labels", str(labels), "--alerts", str(alerts)]) == 1
    err = capsys.readouterr().err.strip()
    assert "SMSSTREAM_PSEUDONYM_KEY" in err and "\n" not in err
    assert "+919812345678" not in err


@pytest.mark.parametrize("which", ["labels", "alerts"])
def test_unreadable_file_is_a_one_line_error_naming_the_file(tmp_path, capsys, which):
    good = tmp_path / "good.jsonl"
    good.write_text("")
    paths = {"labels": good, "alerts": good, which: tmp_path / "missing.jsonl"}
    assert main(["evaluate", "--labels", str(paths["labels"]), "--alerts", str(paths["alerts"])]) == 1
    err = capsys.readouterr().err.strip()
    assert "missing.jsonl" in err and which in err and "\n" not in err


def test_garbage_line_in_alerts_names_the_line(tmp_path, capsys):
    labels = tmp_path / "l.jsonl"
    labels.write_text("")
    alerts = tmp_path / "a.jsonl"
    alerts.write_text(json.dumps(alert("template_hijack", "template", "t", T0)) + "\n{oops\n")
    assert main(["evaluate", "--labels", str(labels), "--alerts", str(alerts), "--days", "1"]) == 1
    assert "a.jsonl:2" in capsys.readouterr().err


def rebind_run(tmp_path, alert_number: str):
    """Labels naming a number, and alerts naming ``alert_number`` (a pseudonym under some key)."""
    labels = tmp_path / "run.labels.jsonl"
    write_jsonl(labels, [{"episode_id": "e1", "kind": "rebind_anomaly",
                          "entities": [{"entity_type": "number", "entity_id": "+919812345678"},
                                       {"entity_type": "account", "entity_id": "acme|A1"}],
                          "start": T0, "end": T0 + H}])
    alerts = tmp_path / "alerts.jsonl"
    flapping = {**alert("rebind_anomaly", "account", "acme|A1", T0 + 60_000), "evidence": {"numbers": [alert_number]}}
    write_jsonl(alerts, [alert("rebind_anomaly", "number", alert_number, T0 + 120_000), flapping])
    return ["evaluate", "--labels", str(labels), "--alerts", str(alerts), "--days", "1"]


def test_alerts_pseudonymised_under_another_key_are_flagged_with_the_fix(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("SMSSTREAM_PSEUDONYM_KEY", KEY)
    args = rebind_run(tmp_path, Pseudonymizer("the worker's other key").pseudonym("+919812345678"))
    assert main(args) == 0
    captured = capsys.readouterr()
    assert "warning" in captured.err and "SMSSTREAM_PSEUDONYM_KEY" in captured.err and "\n" not in captured.err.strip()
    assert "+919812345678" not in captured.err
    assert main(args + ["--json"]) == 0
    assert "SMSSTREAM_PSEUDONYM_KEY" in json.loads(capsys.readouterr().out)["warnings"][0]


def test_alerts_pseudonymised_under_the_same_key_raise_no_warning(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("SMSSTREAM_PSEUDONYM_KEY", KEY)
    assert main(rebind_run(tmp_path, Pseudonymizer(KEY).pseudonym("+919812345678"))) == 0
    captured = capsys.readouterr()
    assert captured.err == "" and "100%" in captured.out


def test_the_table_fits_80_columns_missed_episodes_included():
    eps = [episode("e1", "delivery_failure_spike", [("carrier", "jio")], T0, T0 + H)]
    eps += [episode(f"ep{i:03d}-account_flapping_slow", "rebind_anomaly", [("device", "d")], T0, T0 + H)
            for i in range(8)]
    alerts = [alert("delivery_failure_spike", "carrier", "jio", T0 + 5_000_000),
              alert("non_borrower_spike", "sender", "x", T0 + 60_000)]
    table = render_table(score(eps, alerts, days=1), "--days")
    assert "1h23m" in table and "delivery_failure_spike" in table
    assert all(f"ep{i:03d}-account_flapping_slow" in table for i in range(8))
    assert max(len(line) for line in table.splitlines()) <= 80


def test_a_run_stopped_early_scores_only_episodes_detected_or_past_their_grace():
    eps = [
        episode("found", "template_hijack", [("template", "t1")], T0, T0 + 10 * H),
        episode("over", "template_hijack", [("template", "t2")], T0, T0 + H),
        episode("open", "template_hijack", [("template", "t3")], T0 + 2 * H, T0 + 3 * H),
        episode("later", "template_hijack", [("template", "t4")], T0 + 9 * H, T0 + 10 * H),
    ]
    alerts = [alert("template_hijack", "template", "t1", T0 + 60_000)]
    # stopped 3 h in: "over" had its whole window, "open" (ends at 3 h, 30 min grace) and "later" had not
    result, still_open = score_until(eps, alerts, start=T0, until=T0 + 3 * H)
    assert [e.episode_id for e in still_open] == ["open", "later"]
    assert result["overall"]["episodes"] == 2 and result["overall"]["detected"] == 1
    assert result["missed"] == ["over"]
    assert result["days"] == 0.125
