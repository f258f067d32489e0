"""The alert lifecycle: fire once, repeat at most once per interval, resolve once, never flap."""

import pytest

from smsstream.detection.alerts import MAX_EVIDENCE, AlertBook, alert_id, stamp
from smsstream.detection.base import Finding

MIN = 60_000
T0 = 1_772_409_600_000
CONTRACT_FIELDS = {
    "alert_id", "dedup_key", "kind", "reason", "severity", "status", "entity_type", "entity_id",
    "sender_id", "template_id", "window_start", "window_end", "observed", "expected", "score",
    "summary", "evidence", "first_seen", "last_seen", "detected_at",
}


def finding(minute: int, score: float = 10.0, firing: bool = True, **kw) -> Finding:
    end = T0 + (minute + 1) * MIN
    return Finding(
        kind="delivery_failure_spike", reason="blocked_rate", severity=kw.pop("severity", "warning"),
        entity_type="sender", entity_id="lender-a", window_start=end - 5 * MIN, window_end=end,
        observed=0.4, expected=0.01, score=score, summary="sender lender-a: 40% blocked, usual 1%",
        sender_id="lender-a", firing=firing, **kw,
    )


def drive(book: AlertBook, minutes: dict[int, Finding | None], until: int) -> list[dict]:
    out = []
    for m in range(until):
        f = minutes.get(m)
        if f is not None:
            out += book.offer(f, "lender-a")
        out += book.advance(T0 + (m + 1) * MIN)
    return out


def test_sustained_anomaly_fires_once_then_repeats_at_most_hourly_then_resolves_once():
    book = AlertBook(repeat_ms=60 * MIN, quiet_ms=15 * MIN)
    records = drive(book, {m: finding(m) for m in range(10, 190)}, 300)
    statuses = [r["status"] for r in records]
    assert statuses == ["firing", "firing", "firing", "resolved"]
    ends = [r["window_end"] for r in records if r["status"] == "firing"]
    assert all(b - a >= 60 * MIN for a, b in zip(ends, ends[1:]))
    assert len({r["alert_id"] for r in records}) == 1
    assert records[-1]["window_end"] == T0 + 190 * MIN + 15 * MIN


def test_score_hovering_around_the_threshold_does_not_flap():
    book = AlertBook(repeat_ms=60 * MIN, quiet_ms=15 * MIN)
    minutes = {m: finding(m, firing=(m % 2 == 0)) for m in range(10, 120)}
    records = drive(book, minutes, 200)
    assert [r["status"] for r in records].count("firing") <= 3
    assert [r["status"] for r in records].count("resolved") == 1


def weak_findings(one_firing_at: int | None = None) -> dict[int, Finding]:
    """Fifty minutes of findings below the firing threshold; maybe one at firing strength among them."""
    minutes = {m: finding(m, score=4, firing=False) for m in range(50)}
    if one_firing_at is not None:
        minutes[one_firing_at] = finding(one_firing_at)
    return minutes


def test_weak_findings_alone_never_open_an_alert():
    assert drive(AlertBook(), weak_findings(), 100) == []


def test_one_firing_finding_among_them_opens_the_alert_and_the_weak_ones_keep_it_open():
    records = drive(AlertBook(quiet_ms=15 * MIN), weak_findings(one_firing_at=10), 100)
    assert [r["status"] for r in records] == ["firing", "resolved"]
    assert records[1]["window_end"] == T0 + 50 * MIN + 15 * MIN


def test_a_new_episode_after_resolution_gets_a_new_id():
    book = AlertBook(quiet_ms=15 * MIN)
    records = drive(book, {**{m: finding(m) for m in range(10, 20)}, **{m: finding(m) for m in range(100, 110)}}, 200)
    firing = [r for r in records if r["status"] == "firing"]
    assert len(firing) == 2 and firing[0]["alert_id"] != firing[1]["alert_id"]


#: An episode's id must not change across versions: downstream services deduplicate on it.
PINNED_ALERT_ID = "fd589a8fc33a4fcc82b6e4ef"


def test_same_findings_give_the_same_alert_ids():
    runs = [drive(AlertBook(), {m: finding(m) for m in range(10, 30)}, 60) for _ in range(2)]
    assert [r["alert_id"] for r in runs[0]] == [r["alert_id"] for r in runs[1]]
    assert runs[0][0]["alert_id"] == alert_id("delivery_failure_spike/sender/lender-a", runs[0][0]["first_seen"])
    assert alert_id("delivery_failure_spike/sender/lender-a", 600_000) == PINNED_ALERT_ID


def test_record_has_every_contract_field_and_bounded_evidence():
    evidence = {"message_ids": [f"m{i}" for i in range(50)], "carriers": {"a": 3}}
    record = stamp(AlertBook().offer(finding(0, evidence=evidence))[0], now_ms=123)
    # every contract field, and of the optional ones only when the evidence became sufficient
    assert set(record) == CONTRACT_FIELDS | {"sufficient_at"}
    assert record["sufficient_at"] == record["window_end"]
    assert record["detected_at"] == 123
    assert record["dedup_key"] == "delivery_failure_spike/sender/lender-a"
    assert len(record["evidence"]["message_ids"]) == MAX_EVIDENCE
    assert record["status"] == "firing" and record["severity"] == "warning"


def test_severity_escalates_within_an_episode_without_extra_records():
    book = AlertBook(repeat_ms=60 * MIN)
    first = book.offer(finding(0), "lender-a")
    assert book.offer(finding(1, severity="critical"), "lender-a") == []
    later = book.offer(finding(61, severity="critical"), "lender-a")
    assert first[0]["severity"] == "warning" and later[0]["severity"] == "critical"


@pytest.mark.parametrize("quiet", [5, 30])
def test_resolution_waits_for_the_whole_quiet_period(quiet):
    book = AlertBook(quiet_ms=quiet * MIN)
    records = drive(book, {5: finding(5)}, 5 + quiet)
    assert [r["status"] for r in records] == ["firing"]
    assert book.advance(T0 + (6 + quiet) * MIN)[0]["status"] == "resolved"
