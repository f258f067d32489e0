"""The notifier's decisions without a broker or HTTP: what Alertmanager is told, when, and what is signed."""

from __future__ import annotations

import asyncio
import time
from datetime import datetime

import orjson
import pytest
from aiokafka import TopicPartition

from paging import alert_record, resolved
from smsstream.config import NotifySettings
from smsstream.notify import metrics as notify_metrics
from smsstream.notify.alert import AlertRecord, Unusable, read_alert
from smsstream.notify.alertmanager import AlertmanagerTarget, to_alertmanager
from smsstream.notify.delivery import FAILED, REJECTED, SENT, Backoff, Ledger
from smsstream.notify.webhook import SIGNATURE_HEADER, WebhookTarget, signature, verify

TP = TopicPartition("sms.alerts", 0)
NOW = 1_800_000_000.0


def alert(status: str = "firing", **fields) -> AlertRecord:
    return read_alert(orjson.dumps(alert_record(status, **fields)))


def epoch(text: str) -> float:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


class FakeCourier:
    """Records each request body; answers with the queued outcomes, then ``SENT``."""

    def __init__(self, *outcomes: str):
        self.outcomes = list(outcomes)
        self.bodies: list[list[dict]] = []
        self.url = "http://alertmanager.test/api/v2/alerts"

    async def deliver(self, body, headers):
        headers()
        self.bodies.append(orjson.loads(body))
        return self.outcomes.pop(0) if self.outcomes else SENT


class Clock:
    def __init__(self):
        self.wall, self.mono = NOW, 100.0

    def advance(self, seconds: float) -> None:
        self.wall += seconds
        self.mono += seconds


@pytest.fixture
def am():
    clock, courier, ledger = Clock(), FakeCourier(), Ledger()
    metrics = notify_metrics.create()
    settings = NotifySettings(refresh_s=60, firing_ttl_s=3600)
    target = AlertmanagerTarget(courier, settings, ledger, metrics, wall=lambda: clock.wall, mono=lambda: clock.mono)

    def offer(record: AlertRecord, offset: int):
        pending = ledger.add(TP, offset, clock.mono, [target.name])
        target.offer(pending, record)
        return pending

    def step() -> list[dict]:
        before = len(courier.bodies)
        asyncio.run(target.step())
        return courier.bodies[before] if len(courier.bodies) > before else []

    return type("AM", (), dict(target=target, courier=courier, ledger=ledger, clock=clock, metrics=metrics,
                               offer=staticmethod(offer), step=staticmethod(step)))


def firing_now(record: AlertRecord) -> AlertRecord:
    """The record as if just written (its detected_at is the fake clock's now)."""
    return read_alert(orjson.dumps(dict(record.fields, detected_at=int(NOW * 1000))))


def test_an_alert_record_becomes_an_alertmanager_alert_that_starts_when_its_episode_began():
    record = alert(kind="delivery_failure_spike", entity_type="carrier", entity_id="jio", reason="blocked_rate",
                   severity="critical", sender_id=None, first_seen=int(NOW * 1000) - 900_000)
    sent = to_alertmanager(record, NOW, NOW + 300, "https://rb.example/smsstream")
    assert sent["labels"] == {
        "alertname": "smsstream_delivery_failure_spike", "kind": "delivery_failure_spike",
        "reason": "blocked_rate", "severity": "critical", "entity_type": "carrier", "entity_id": "jio",
        "dedup_key": "delivery_failure_spike/carrier/jio",
    }
    assert sent["annotations"]["runbook_url"] == "https://rb.example/smsstream/delivery_failure_spike/blocked_rate.md"
    assert sent["annotations"]["summary"] == record["summary"]
    assert "observed 7 against expected 0.4 (score 12.5)" in sent["annotations"]["description"]
    assert epoch(sent["startsAt"]) == NOW - 900 and epoch(sent["endsAt"]) == NOW + 300


def test_an_episode_that_began_in_the_future_of_this_clock_starts_now():
    record = alert(first_seen=int(NOW * 1000) + 60_000)
    assert epoch(to_alertmanager(record, NOW, NOW + 300, "rb")["startsAt"]) == NOW


def test_a_firing_alert_is_re_sent_before_alertmanager_would_time_it_out(am):
    record = firing_now(alert())
    pending = am.offer(record, 0)
    [first] = am.step()
    assert epoch(first["endsAt"]) == NOW + 5 * 60
    assert not pending.waiting and am.ledger.commit_points() == {TP: 1}
    am.clock.advance(30)
    assert am.step() == []  # not due yet
    am.clock.advance(30)
    [again] = am.step()
    assert again["labels"] == first["labels"] and epoch(again["endsAt"]) == NOW + 60 + 5 * 60
    assert am.metrics.refreshed.labels("alertmanager")._value.get() == 1


def test_a_resolved_record_ends_the_alert_now_and_the_key_is_let_go(am):
    record = firing_now(alert())
    am.offer(record, 0)
    am.step()
    am.clock.advance(10)
    am.offer(read_alert(orjson.dumps(resolved(record.fields, detected_at=int(am.clock.wall * 1000)))), 1)
    [ended] = am.step()
    assert epoch(ended["endsAt"]) == am.clock.wall and ended["labels"]["dedup_key"] == record.dedup_key
    am.step()
    assert am.target.tracked == {}


def test_while_alertmanager_is_down_the_newest_state_of_a_key_replaces_the_older_ones(am):
    am.courier.outcomes = [FAILED]
    record = firing_now(alert())
    first = am.offer(record, 0)
    am.step()  # refused: nothing settles
    assert first.waiting and am.ledger.commit_points() == {}
    second = am.offer(read_alert(orjson.dumps(resolved(record.fields, detected_at=int(NOW * 1000)))), 1)
    [ended] = am.step()
    assert epoch(ended["endsAt"]) == NOW  # one request carries the latest state only
    assert not first.waiting and not second.waiting and am.ledger.commit_points() == {TP: 2}
    assert am.metrics.sent.labels("alertmanager")._value.get() == 2


def test_a_rising_severity_ends_the_old_label_set_in_the_same_request(am):
    record = firing_now(alert(severity="warning"))
    am.offer(record, 0)
    am.step()
    am.offer(read_alert(orjson.dumps(dict(record.fields, severity="critical"))), 1)
    old, new = am.step()
    assert (old["labels"]["severity"], new["labels"]["severity"]) == ("warning", "critical")
    assert epoch(old["endsAt"]) == NOW and epoch(new["endsAt"]) > NOW


def test_shadow_alerts_are_settled_without_paging_and_the_same_alert_without_shadow_pages(am):
    record = firing_now(alert())
    shadowed = read_alert(orjson.dumps(dict(record.fields, shadow=True)))
    pending = am.offer(shadowed, 0)
    assert am.step() == [] and not pending.waiting
    assert am.metrics.skipped.labels("alertmanager", "shadow")._value.get() == 1
    am.offer(record, 1)
    assert [a["labels"]["dedup_key"] for a in am.step()] == [record.dedup_key]


def test_a_silenced_alert_pages_once_its_silence_lapses_and_not_before(am):
    record = firing_now(alert())
    silenced = read_alert(orjson.dumps(dict(record.fields, silenced_until=int((NOW + 120) * 1000))))
    pending = am.offer(silenced, 0)
    assert am.step() == [] and not pending.waiting
    am.clock.advance(119)
    assert am.step() == []
    am.clock.advance(2)
    assert [a["labels"]["dedup_key"] for a in am.step()] == [record.dedup_key]


def test_a_silence_that_already_lapsed_does_not_hold_an_alert_back(am):
    record = firing_now(alert())
    am.offer(read_alert(orjson.dumps(dict(record.fields, silenced_until=int((NOW - 1) * 1000)))), 0)
    assert len(am.step()) == 1


def test_an_alert_silenced_while_firing_is_ended_in_alertmanager(am):
    record = firing_now(alert())
    am.offer(record, 0)
    am.step()
    am.offer(read_alert(orjson.dumps(dict(record.fields, silenced_until=int((NOW + 600) * 1000)))), 1)
    [ended] = am.step()
    assert epoch(ended["endsAt"]) == NOW


def test_a_firing_alert_with_no_record_for_the_ttl_is_no_longer_kept_alive(am):
    record = firing_now(alert())
    am.offer(record, 0)
    am.step()
    am.clock.advance(3601)
    [ended] = am.step()
    assert epoch(ended["endsAt"]) == am.clock.wall
    am.step()
    assert am.target.tracked == {}


def test_history_restores_firing_alerts_without_anything_to_settle(am):
    record = firing_now(alert())
    gone = firing_now(alert())
    am.target.restore(TP, record)
    am.target.restore(TP, gone)
    am.target.restore(TP, read_alert(orjson.dumps(resolved(gone.fields))))
    sent = am.step()
    assert [a["labels"]["dedup_key"] for a in sent] == [record.dedup_key]
    assert len(am.ledger) == 0


def test_records_no_target_has_settled_hold_the_commit_back():
    ledger = Ledger()
    first, second, third = (ledger.add(TP, offset, 0.0, ["alertmanager", "webhook"]) for offset in (5, 6, 7))
    for target in ("alertmanager", "webhook"):
        ledger.settle(second, target)
    ledger.settle(first, "alertmanager")
    assert ledger.commit_points() == {}
    assert ledger.owed("webhook") == (2, 0.0) and ledger.owed("alertmanager") == (1, 0.0)
    ledger.settle(first, "webhook")
    assert ledger.commit_points() == {TP: 7}  # the third still waits
    assert len(ledger) == 1


def test_backoff_doubles_with_jitter_up_to_its_ceiling():
    low = Backoff(0.5, 8, rng=lambda: 0.0)
    high = Backoff(0.5, 8, rng=lambda: 0.999999)
    lows = [low.next_delay() for _ in range(7)]
    highs = [high.next_delay() for _ in range(7)]
    assert lows == [0.25, 0.5, 1, 2, 4, 4, 4]
    assert [round(h, 3) for h in highs] == [0.5, 1, 2, 4, 8, 8, 8]
    low.reset()
    assert low.next_delay() == 0.25


def test_a_receiver_accepts_the_notifiers_signature_and_refuses_a_forged_or_replayed_one():
    body = orjson.dumps(alert_record())
    header = signature("s3cret", body, int(NOW))
    assert verify("s3cret", header, body, now=NOW + 10)
    assert not verify("guessed", header, body, now=NOW)
    assert not verify("s3cret", header, body.replace(b"firing", b"resolved"), now=NOW)
    assert not verify("s3cret", header, body, now=NOW + 301)  # replayed too late
    assert not verify("s3cret", header.replace(f"t={int(NOW)}", f"t={int(NOW) + 5}"), body, now=NOW)
    assert not verify("s3cret", None, body) and not verify("s3cret", "v1=abc", body)


def test_the_webhook_posts_records_that_may_page_and_holds_back_shadow_and_silenced_ones():
    ledger, metrics = Ledger(), notify_metrics.create()
    courier = FakeCourier()
    hook = WebhookTarget(courier, "s3cret", ledger, metrics, wall=lambda: NOW)
    now_ms = int(NOW * 1000)
    cases = {
        "plain": alert_record(),
        "shadow": alert_record(shadow=True),
        "silenced": alert_record(silenced_until=now_ms + 60_000),
        "lapsed": alert_record(silenced_until=now_ms - 1),
        "resolved under silence": resolved(alert_record(), silenced_until=now_ms + 60_000),
    }
    for offset, record in enumerate(cases.values()):
        hook.offer(ledger.add(TP, offset, 0.0, [hook.name]), read_alert(orjson.dumps(record)))

    async def drain():
        task = asyncio.create_task(hook.run())
        while ledger.owed(hook.name)[0]:
            await asyncio.sleep(0.01)
        task.cancel()

    asyncio.run(drain())
    posted = [tuple(b.values()) for b in courier.bodies]
    assert posted == [tuple(orjson.loads(orjson.dumps(cases[k])).values())
                      for k in ("plain", "lapsed", "resolved under silence")]
    assert metrics.skipped.labels("webhook", "shadow")._value.get() == 1
    assert metrics.skipped.labels("webhook", "silenced")._value.get() == 1


def test_signed_headers_carry_a_fresh_timestamp():
    ledger = Ledger()
    hook = WebhookTarget(FakeCourier(), "s3cret", ledger, notify_metrics.create(), wall=time.time)
    headers = hook._headers(b"{}")
    assert verify("s3cret", headers[SIGNATURE_HEADER], b"{}")


@pytest.mark.parametrize("raw,reason,names", [
    (b"{not json +8613800138000", "invalid_json", "not valid JSON"),
    (None, "invalid_record", "null"),
    (b"[1, 2]", "invalid_record", "JSON list"),
    (orjson.dumps(dict(alert_record(), status="open")), "invalid_record", "'status'"),
    (orjson.dumps({k: v for k, v in alert_record().items() if k != "detected_at"}), "invalid_record", "'detected_at'"),
    (orjson.dumps(dict(alert_record(), observed="many")), "invalid_record", "'observed'"),
], ids=["not-json", "null", "list", "bad-status", "no-detected_at", "observed-not-a-number"])
def test_an_unusable_record_is_refused_naming_the_field_never_its_content(raw, reason, names):
    with pytest.raises(Unusable) as refused:
        read_alert(raw)
    assert refused.value.reason == reason and names in str(refused.value)
    assert "8613800138000" not in str(refused.value)


def test_a_phone_number_in_clear_is_masked_before_anything_is_sent():
    record = alert_record(summary="reminders to +8613800138000 and +91 98765-43210; +25% (+3 of 12), 1e+20")
    read = read_alert(orjson.dumps(record))
    assert read.masked == 2 and b"8613800138000" not in read.body
    assert read["summary"] == "reminders to <number> and <number>; +25% (+3 of 12), 1e+20"
    clean = read_alert(orjson.dumps(alert_record()))
    assert clean.masked == 0 and clean.body == orjson.dumps(clean.fields)


def test_a_refused_batch_is_sent_again_one_alert_at_a_time_and_only_the_refused_alert_is_dropped(am):
    good, bad = firing_now(alert()), firing_now(alert())
    first, second = am.offer(good, 0), am.offer(bad, 1)
    am.courier.outcomes = [REJECTED, SENT, REJECTED]
    assert len(am.step()) == 2  # refused as a whole
    assert first.waiting and second.waiting
    assert [a["labels"]["dedup_key"] for a in am.step()] == [good.dedup_key]
    assert [a["labels"]["dedup_key"] for a in am.step()] == [bad.dedup_key]
    assert not first.waiting and not second.waiting
    assert am.metrics.dropped.labels("alertmanager", "rejected")._value.get() == 1
    assert am.metrics.sent.labels("alertmanager")._value.get() == 1
    assert set(am.target.tracked) == {good.dedup_key}  # the refused one is not refreshed into more refusals


def test_credentials_in_a_target_url_are_sent_as_basic_auth_and_never_logged(caplog):
    import base64

    from paging import Receiver
    from smsstream.notify.delivery import Courier

    answers = iter([503, 200])
    receiver = Receiver(answer=lambda path, headers, body: next(answers))
    settings = NotifySettings(retry_min_s=0.01, retry_max_s=0.02)
    courier = Courier("alertmanager", f"http://pager:s3cr%40t@127.0.0.1:{receiver.port}/api/v2/alerts", settings,
                      notify_metrics.create())

    async def deliver_twice():
        try:
            return [await courier.deliver(b"[]", dict), await courier.deliver(b"[]", dict)]
        finally:
            await courier.close()

    try:
        with caplog.at_level("INFO", logger="smsstream.notify"):
            assert asyncio.run(deliver_twice()) == [FAILED, SENT]
    finally:
        receiver.close()
    sent = receiver.received[-1].headers
    assert base64.b64decode(sent["authorization"].split()[1]) == b"pager:s3cr@t"
    assert sent["user-agent"].startswith("smsstream-notify/")
    assert "HTTP 503" in caplog.text and f"127.0.0.1:{receiver.port}" in caplog.text
    assert "s3cr" not in caplog.text and "pager" not in caplog.text


def test_during_a_rebalance_alerts_stay_refreshed_until_their_partition_is_known_to_be_elsewhere(am):
    mine, theirs = TopicPartition("sms.alerts", 0), TopicPartition("sms.alerts", 1)
    kept, moved = firing_now(alert()), firing_now(alert())
    am.target.offer(am.ledger.add(mine, 0, 0.0, ["alertmanager"]), kept)
    am.target.offer(am.ledger.add(theirs, 0, 0.0, ["alertmanager"]), moved)
    am.step()
    am.target.revoke({mine, theirs})  # eager rebalance: everything revoked first
    am.clock.advance(60)
    assert {a["labels"]["dedup_key"] for a in am.step()} == {kept.dedup_key, moved.dedup_key}
    am.target.keep_only({mine})
    am.clock.advance(60)
    assert [a["labels"]["dedup_key"] for a in am.step()] == [kept.dedup_key]


def test_a_record_read_while_its_key_was_being_sent_waits_for_a_request_that_carries_it(am):
    record = firing_now(alert())
    am.offer(record, 0)
    [change] = am.target.plan()
    # while that request is out, a rebalance takes the partition away and gives it back
    am.target.revoke({TP})
    am.ledger.forget({TP})
    later = am.offer(read_alert(orjson.dumps(dict(record.fields, severity="critical"))), 0)
    am.target.apply(change, SENT)  # the request that carried the first state only
    assert later.waiting
    assert [a["labels"]["severity"] for a in am.step()] == ["warning", "critical"]  # old label set ended
    assert not later.waiting


@pytest.mark.parametrize("env,names", [
    ({}, ["SMSSTREAM_ALERTMANAGER_URL", "SMSSTREAM_WEBHOOK_URL"]),
    ({"SMSSTREAM_WEBHOOK_URL": "https://hooks.example/x"}, ["SMSSTREAM_WEBHOOK_SECRET"]),
    ({"SMSSTREAM_ALERTMANAGER_URL": "alertmanager:9093"}, ["SMSSTREAM_ALERTMANAGER_URL", "http://"]),
    ({"SMSSTREAM_WEBHOOK_URL": "ftp://u:pw@host/x", "SMSSTREAM_WEBHOOK_SECRET": "s"}, ["SMSSTREAM_WEBHOOK_URL"]),
])
def test_the_notifier_refuses_to_start_without_a_usable_target_and_names_the_setting(env, names):
    from smsstream.config import Settings
    from smsstream.errors import ConfigError
    from smsstream.notify.service import build_targets

    with pytest.raises(ConfigError) as refused:
        build_targets(Settings.from_env(env), Ledger(), notify_metrics.create())
    assert all(name in str(refused.value) for name in names) and "pw" not in str(refused.value)


def test_the_alertmanager_url_may_be_its_base_or_its_alerts_endpoint():
    from smsstream.notify.alertmanager import api_url

    assert api_url("http://am:9093") == api_url("http://am:9093/") == "http://am:9093/api/v2/alerts"
    assert api_url("https://am.example/prefix/api/v2/alerts") == "https://am.example/prefix/api/v2/alerts"
