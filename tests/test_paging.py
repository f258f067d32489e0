"""Paging on a real broker and the real Alertmanager: alerts written to sms.alerts reach on-call.

Each test writes its own alert records to ``sms.alerts`` (no worker involved) and
runs ``smsstream notify`` in a fresh consumer group that starts at the end of the
topic, so records of other tests are history to it.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import shutil
import subprocess
import threading
import time
from pathlib import Path

import orjson
import pytest

from paging import (
    Alertmanager, NotifierProcess, PagingSetupError, Receiver, alert_record, committed_and_end, notifier_env,
    resolved, wait_for, write,
)
from brokers import only_on
from smsstream.broker import free_port
from smsstream.topics import apply_topics

SECRET = "test-webhook-secret"
#: A phone number in clear, as the scans look for it: E.164, or the digits of the numbers the tests use.
CLEAR = re.compile(r"\+\d{7,15}|8613800138000|919876543210")


def receiver_verifies(secret: str, headers: dict[str, str], body: bytes, tolerance_s: int = 300) -> bool:
    """A receiver's check, written from docs/paging.md alone (not with smsstream's own helper)."""
    fields = dict(part.split("=", 1) for part in headers.get("x-smsstream-signature", "").split(",") if "=" in part)
    if not fields.get("t", "").isdigit() or abs(time.time() - int(fields["t"])) > tolerance_s:
        return False
    expected = hmac.new(secret.encode(), fields["t"].encode() + b"." + body, hashlib.sha256).hexdigest()
    return hmac.compare_digest(expected, fields.get("v1", ""))


def start_alertmanager(receiver: Receiver) -> Alertmanager:
    try:
        return Alertmanager(receiver).start()
    except PagingSetupError as exc:
        pytest.fail(str(exc), pytrace=False)


@pytest.fixture(scope="module")
def paging(broker_url, bootstrap, tmp_path_factory):
    """One notifier paging a real Alertmanager and a webhook receiver that checks signatures."""
    tmp = tmp_path_factory.mktemp("paging")
    apply_topics(broker_url)
    receiver = Receiver(answer=lambda path, headers, body: (
        200 if path != "/webhook" or receiver_verifies(SECRET, headers, body) else 401))
    am = start_alertmanager(receiver)
    env = notifier_env(broker_url, tmp, SMSSTREAM_ALERTMANAGER_URL=am.url,
                       SMSSTREAM_WEBHOOK_URL=receiver.url("/webhook"), SMSSTREAM_WEBHOOK_SECRET=SECRET)
    notifier = NotifierProcess(env, tmp / "notify.log").start()
    try:
        notifier.wait_ready()
        yield {"am": am, "receiver": receiver, "notifier": notifier, "bootstrap": bootstrap}
    finally:
        notifier.stop()
        am.close()
        receiver.close()


def all_committed(bootstrap: str, group: str) -> bool:
    committed, end = committed_and_end(bootstrap, group)
    return committed == end


def webhook_records(receiver: Receiver) -> dict[str, list[dict]]:
    """Records the webhook receiver accepted, by dedup key."""
    out: dict[str, list[dict]] = {}
    for body in receiver.bodies("/webhook"):
        record = orjson.loads(body)
        out.setdefault(record["dedup_key"], []).append(record)
    return out


@pytest.mark.broker
def test_a_firing_alert_reaches_alertmanager_and_later_pages_as_resolved(paging):
    am, bootstrap = paging["am"], paging["bootstrap"]
    firing = alert_record(kind="template_hijack", entity_type="template", entity_id="T00042",
                          reason="content_drift", severity="critical", template_id="T00042")
    write(bootstrap, firing)
    held = wait_for(lambda: am.alert(firing["dedup_key"]), 20, "the alert in Alertmanager")
    assert held["labels"] == {
        "alertname": "smsstream_template_hijack", "kind": "template_hijack", "reason": "content_drift",
        "severity": "critical", "entity_type": "template", "entity_id": "T00042",
        "dedup_key": firing["dedup_key"], "sender_id": "rupeepay",
    }
    notes = held["annotations"]
    assert notes["summary"] == firing["summary"]
    assert notes["runbook_url"] == "https://runbooks.example/smsstream/template_hijack/content_drift.md"
    assert (notes["observed"], notes["expected"]) == ("7", "0.4") and "against expected 0.4" in notes["description"]
    assert held["status"]["state"] == "active"
    wait_for(lambda: am.notifications(firing["dedup_key"]) == ["firing"], 20, "Alertmanager to page it")

    write(bootstrap, resolved(firing))
    wait_for(lambda: am.alert(firing["dedup_key"]) is None, 20, "the alert to leave Alertmanager's active list")
    wait_for(lambda: am.notifications(firing["dedup_key"]) == ["firing", "resolved"], 20,
             "Alertmanager to page the resolution")


@pytest.mark.broker
def test_a_firing_alert_stays_firing_long_after_alertmanager_would_have_timed_it_out(paging):
    am, bootstrap = paging["am"], paging["bootstrap"]
    firing = alert_record()
    write(bootstrap, firing)
    first = wait_for(lambda: am.alert(firing["dedup_key"]), 20, "the alert in Alertmanager")
    time.sleep(7)  # Alertmanager holds it 5 refreshes (5 s here) unless it is sent again
    later = am.alert(firing["dedup_key"])
    assert later is not None and later["endsAt"] > first["endsAt"]
    assert am.notifications(firing["dedup_key"]) == ["firing"]  # paged once, never flapped


@pytest.mark.broker
def test_shadow_and_silenced_alerts_are_never_paged_while_a_lapsed_silence_pages(paging):
    am, receiver, notifier, bootstrap = paging["am"], paging["receiver"], paging["notifier"], paging["bootstrap"]
    now_ms = int(time.time() * 1000)
    shadow = alert_record(shadow=True, controls=["shadow-rebinds"])
    silenced = alert_record(silenced_until=now_ms + 600_000, controls=["silence-1"])
    lapsed = alert_record(silenced_until=now_ms - 60_000, controls=["silence-0"])
    def skipped():
        return {(t, r): notifier.metric("smsstream_notify_skipped_total", target=t, reason=r)
                for t in ("alertmanager", "webhook") for r in ("shadow", "silenced")}

    before = skipped()
    write(bootstrap, shadow, silenced, lapsed)
    wait_for(lambda: am.alert(lapsed["dedup_key"]), 20, "the alert whose silence lapsed in Alertmanager")
    wait_for(lambda: lapsed["dedup_key"] in webhook_records(receiver), 20, "it at the webhook")
    wait_for(lambda: all(n == before[k] + 1 for k, n in skipped().items()), 20,
             "both targets to skip the shadow and the silenced record")
    held = {a["labels"]["dedup_key"] for a in am.alerts()}
    assert shadow["dedup_key"] not in held and silenced["dedup_key"] not in held
    assert not {shadow["dedup_key"], silenced["dedup_key"]} & set(webhook_records(receiver))


@pytest.mark.broker
def test_the_webhook_receives_every_record_signed_and_its_receiver_refuses_forgeries(paging):
    receiver, bootstrap = paging["receiver"], paging["bootstrap"]
    firing = alert_record()
    write(bootstrap, firing, resolved(firing))
    got = wait_for(lambda: webhook_records(receiver).get(firing["dedup_key"], [])[1:] and
                   webhook_records(receiver)[firing["dedup_key"]], 20, "both records at the webhook")
    assert [r["status"] for r in got] == ["firing", "resolved"]
    assert got[0] == firing  # the record as written, every field
    posted = [r for r in receiver.received if r.path == "/webhook" and firing["dedup_key"].encode() in r.body]
    assert all(r.status == 200 and r.headers["content-type"] == "application/json" for r in posted)

    import urllib.error
    import urllib.request

    def post(body: bytes, header: str) -> int:
        request = urllib.request.Request(receiver.url("/webhook"), data=body, method="POST",
                                         headers={"X-Smsstream-Signature": header})
        try:
            return urllib.request.urlopen(request, timeout=5).status
        except urllib.error.HTTPError as exc:
            return exc.code

    genuine = posted[0]
    now = int(time.time())
    forged = hmac.new(b"guessed-secret", f"{now}.".encode() + genuine.body, hashlib.sha256).hexdigest()
    assert post(genuine.body, f"t={now},v1={forged}") == 401
    tampered = genuine.body.replace(b'"firing"', b'"resolved"')
    assert post(tampered, genuine.headers["x-smsstream-signature"]) == 401
    stale = int(time.time()) - 600
    old = hmac.new(SECRET.encode(), f"{stale}.".encode() + genuine.body, hashlib.sha256).hexdigest()
    assert post(genuine.body, f"t={stale},v1={old}") == 401  # a replay, too late
    assert post(genuine.body, genuine.headers["x-smsstream-signature"]) == 200  # the loud twin


@pytest.mark.broker
def test_nothing_the_notifier_sends_logs_or_exposes_holds_a_phone_number_in_clear(paging):
    am, receiver, notifier, bootstrap = paging["am"], paging["receiver"], paging["notifier"], paging["bootstrap"]
    # a writer's bug: a number in clear in the summary; then records the notifier cannot read
    leaky = alert_record(summary="reminders sent to +8613800138000 although no loan exists")
    unreadable = [(b"bad-json", b'{"dedup_key": "x", "summary": "call +919876543210'),
                  (b"bad-field", orjson.dumps({"dedup_key": "rebind_anomaly/number/+919876543210", "status": 1}))]
    written = [orjson.dumps(leaky)] + [value for _, value in unreadable]
    assert all(CLEAR.search(value.decode()) for value in written)  # the scan does find them where they are
    dropped_before = notifier.metric("smsstream_notify_dropped_total", target="webhook", reason="invalid_record")
    write(bootstrap, leaky, *unreadable)
    wait_for(lambda: am.alert(leaky["dedup_key"]), 20, "the leaky alert in Alertmanager")
    wait_for(lambda: leaky["dedup_key"] in webhook_records(receiver), 20, "the leaky alert at the webhook")
    wait_for(lambda: notifier.metric("smsstream_notify_dropped_total", target="webhook", reason="invalid_record")
             > dropped_before, 20, "the unreadable records to be dropped and counted")
    assert notifier.metric("smsstream_notify_dropped_total", target="alertmanager", reason="invalid_json") >= 1
    assert notifier.metric("smsstream_notify_masked_numbers_total") >= 1
    assert am.alert(leaky["dedup_key"])["annotations"]["summary"] == (
        "reminders sent to <number> although no loan exists")

    seen = {
        "webhook posts": b"\n".join(r.body for r in receiver.received if r.path == "/webhook"),
        "Alertmanager's alerts": json.dumps(am.alerts()).encode(),
        "Alertmanager's pages": b"\n".join(receiver.bodies("/alertmanager")),
        "the notifier's log": notifier.log().encode(),
        "/metrics": notifier.get("/metrics") or b"",
        "/health": notifier.get("/health") or b"",
    }
    assert "offset" in notifier.log() and "not valid JSON" in notifier.log()  # it did log the drops
    for where, text in seen.items():
        assert not CLEAR.search(text.decode(errors="replace")), f"a phone number in clear in {where}"


@pytest.mark.broker
def test_with_alertmanager_stopped_for_a_while_nothing_is_lost_once_it_is_back(broker_url, bootstrap, tmp_path):
    apply_topics(broker_url)
    receiver = Receiver()
    am = start_alertmanager(receiver)
    env = notifier_env(broker_url, tmp_path, SMSSTREAM_ALERTMANAGER_URL=am.url)
    group = env["SMSSTREAM_NOTIFY_GROUP"]
    notifier = NotifierProcess(env, tmp_path / "notify.log").start()
    try:
        notifier.wait_ready()
        before = alert_record()
        write(bootstrap, before)
        wait_for(lambda: am.alert(before["dedup_key"]), 20, "the first alert in Alertmanager")

        am.stop()
        during = [alert_record() for _ in range(3)]
        short = alert_record()
        write(bootstrap, *during, resolved(before), short, resolved(short))
        wait_for(lambda: notifier.metric("smsstream_notify_queued", target="alertmanager") == 6 and
                 notifier.metric("smsstream_notify_retried_total", target="alertmanager") >= 2, 20,
                 "the six records queued and retried against the stopped Alertmanager")
        assert notifier.metric("smsstream_notify_queue_age_seconds", target="alertmanager") > 0
        assert notifier.metric("smsstream_notify_sent_total", target="alertmanager") == 1
        assert notifier.stop() == 0  # and restarted while Alertmanager is still away
        committed, end = committed_and_end(bootstrap, group)
        assert sum(committed.values()) == sum(end.values()) - 6  # nothing undelivered was committed

        am.start()  # a fresh Alertmanager: it kept nothing
        notifier = NotifierProcess(env, tmp_path / "notify.log").start()
        notifier.wait_ready()
        wait_for(lambda: {a["labels"]["dedup_key"] for a in am.alerts()} >= {r["dedup_key"] for r in during}, 20,
                 "every alert written during the outage in Alertmanager")
        held = {a["labels"]["dedup_key"] for a in am.alerts()}
        assert before["dedup_key"] not in held and short["dedup_key"] not in held
        wait_for(lambda: all_committed(bootstrap, group), 20, "the group to commit everything once delivered")
        assert notifier.metric("smsstream_notify_sent_total", target="alertmanager") == 6
    finally:
        notifier.stop()
        am.close()
        receiver.close()


@pytest.mark.broker
@only_on("tansu", "the notifier's bound is its own; the outage test before it runs on both brokers")
def test_an_alertmanager_outage_longer_than_the_notifier_may_hold_pauses_reading_and_loses_nothing(
        broker_url, bootstrap, tmp_path):
    apply_topics(broker_url)
    receiver = Receiver()
    am = start_alertmanager(receiver)
    env = notifier_env(broker_url, tmp_path, SMSSTREAM_ALERTMANAGER_URL=am.url, SMSSTREAM_NOTIFY_MAX_INFLIGHT="5")
    group = env["SMSSTREAM_NOTIFY_GROUP"]
    notifier = NotifierProcess(env, tmp_path / "notify.log").start()
    try:
        notifier.wait_ready()
        am.stop()
        _, before = committed_and_end(bootstrap, group)
        outage = [alert_record() for _ in range(30)]  # six times what it may hold
        write(bootstrap, *outage)
        most_queued = 0

        def held_back() -> bool:
            nonlocal most_queued
            health = notifier.health() or {"targets": {}, "paused": False}
            most_queued = max(most_queued, health["targets"].get("alertmanager", {}).get("queued", 0))
            return health["paused"] and notifier.metric("smsstream_notify_retried_total", target="alertmanager") >= 2

        wait_for(held_back, 30, "the notifier to pause reading and retry the stopped Alertmanager", every=0.1)
        time.sleep(2)
        held_back()
        assert 0 < most_queued <= 5
        committed, _ = committed_and_end(bootstrap, group)
        assert all((committed[p] if committed[p] is not None else before[p]) <= before[p] for p in before), \
            "a record not delivered was committed"

        am.start()
        keys = {r["dedup_key"] for r in outage}
        wait_for(lambda: keys <= {a["labels"]["dedup_key"] for a in am.alerts()}, 60,
                 "every alert of the outage in Alertmanager once it is back")
        wait_for(lambda: all_committed(bootstrap, group), 20, "the group to commit everything once delivered")
        assert notifier.metric("smsstream_notify_read_pauses_total") >= 1
        assert sum(notifier.metric("smsstream_notify_dropped_total", target="alertmanager", reason=reason)
                   for reason in ("invalid_json", "invalid_record", "rejected", "gave_up", "too_many_firing")) == 0
    finally:
        notifier.stop()
        am.close()
        receiver.close()


@pytest.mark.broker
@only_on("kafka", "sharing the partitions is the group coordinator's work: Apache Kafka's is the production one")
def test_two_notifiers_share_the_partitions_and_one_leaving_keeps_its_alerts_firing(broker_url, bootstrap, tmp_path):
    apply_topics(broker_url)
    receiver = Receiver()
    am = start_alertmanager(receiver)
    # Alertmanager holds an alert 10 s unless it is re-sent: longer than the group takes to notice one leaving
    env = notifier_env(broker_url, tmp_path, SMSSTREAM_ALERTMANAGER_URL=am.url, SMSSTREAM_NOTIFY_REFRESH_S="2")
    first = NotifierProcess(env, tmp_path / "first.log").start()
    second = NotifierProcess(dict(env, SMSSTREAM_NOTIFY_METRICS_PORT=str(free_port())), tmp_path / "second.log")
    try:
        first.wait_ready()
        second.start()
        wait_for(lambda: [(n.health() or {}).get("assigned_partitions") for n in (first, second)] == [2, 2], 90,
                 "the two notifiers of one group to share the four partitions")
        alerts = [alert_record() for _ in range(4)]
        write(bootstrap, *alerts, spread=True)  # one alert on each partition
        keys = {a["dedup_key"] for a in alerts}
        wait_for(lambda: keys <= {a["labels"]["dedup_key"] for a in am.alerts()}, 20, "the four alerts in Alertmanager")
        assert [n.metric("smsstream_notify_sent_total", target="alertmanager") for n in (first, second)] == [2, 2]

        assert second.stop() == 0
        left = time.monotonic()
        wait_for(lambda: (first.health() or {}).get("assigned_partitions") == 4, 90,
                 "the remaining notifier to take over every partition")
        time.sleep(max(0.0, left + 12 - time.monotonic()))  # past the hold of the alerts the second one sent
        assert keys <= {a["labels"]["dedup_key"] for a in am.alerts()}
        assert all(am.notifications(key) == ["firing"] for key in keys)  # none flapped to resolved
    finally:
        second.stop()
        first.stop()
        am.close()
        receiver.close()


@pytest.mark.broker
@only_on("tansu", "retries, backoff and the in-flight bound are the notifier's own, whatever the broker")
def test_a_failing_or_slow_target_is_retried_with_bounded_memory_and_drops_are_counted(broker_url, bootstrap, tmp_path):
    apply_topics(broker_url)
    records = [alert_record() for _ in range(7)] + [alert_record(summary="a poison pill for the webhook")]
    keys = {r["dedup_key"].encode() for r in records}
    calls = {"alertmanager": 0}
    lock = threading.Lock()

    def answer(path: str, headers: dict, body: bytes) -> int:
        if path == "/webhook":
            return 500 if b"poison" in body else 200
        if not any(key in body for key in keys):
            return 200  # firing alerts of earlier tests, restored from history
        with lock:
            calls["alertmanager"] += 1
            n = calls["alertmanager"]
        if n <= 2:
            return 500
        if n == 3:
            time.sleep(2.5)  # past SMSSTREAM_NOTIFY_TIMEOUT_S: the notifier gives up waiting and retries
        return 200

    target = Receiver(answer=answer)
    env = notifier_env(broker_url, tmp_path, SMSSTREAM_ALERTMANAGER_URL=target.url("/am"),
                       SMSSTREAM_WEBHOOK_URL=target.url("/webhook"), SMSSTREAM_WEBHOOK_SECRET=SECRET,
                       SMSSTREAM_NOTIFY_TIMEOUT_S="1", SMSSTREAM_NOTIFY_MAX_ATTEMPTS="4",
                       SMSSTREAM_NOTIFY_MAX_INFLIGHT="3")
    notifier = NotifierProcess(env, tmp_path / "notify.log").start()
    try:
        notifier.wait_ready()
        write(bootstrap, *records, (b"bad-json", b"{oops"))  # last on its partition: the commit must pass it
        most_queued = 0

        def delivered():
            nonlocal most_queued
            health = notifier.health() or {"targets": {}}
            most_queued = max([most_queued] + [t["queued"] for t in health["targets"].values()])
            at_am = {a["labels"]["dedup_key"] for body in target.bodies("/am/api/v2/alerts") for a in orjson.loads(body)}
            at_hook = {orjson.loads(body)["dedup_key"] for body in target.bodies("/webhook")}
            gave_up = notifier.metric("smsstream_notify_dropped_total", target="webhook", reason="gave_up")
            # the bad record may sit behind a paused partition until the queue drains
            bad_read = notifier.metric("smsstream_notify_dropped_total", target="webhook", reason="invalid_json")
            wanted = {r["dedup_key"] for r in records}
            return wanted <= at_am and wanted - at_hook == {records[-1]["dedup_key"]} and gave_up and bad_read

        wait_for(delivered, 30, "every record at Alertmanager, and at the webhook all but the poison one, "
                 "given up, and the bad record read", every=0.05)
        assert 0 < most_queued <= 3
        assert notifier.metric("smsstream_notify_read_pauses_total") >= 1  # bounded by pausing, not buffering
        assert notifier.metric("smsstream_notify_failed_total", target="alertmanager") == 3
        assert notifier.metric("smsstream_notify_retried_total", target="alertmanager") == 3
        assert notifier.metric("smsstream_notify_failed_total", target="webhook") == 4
        assert notifier.metric("smsstream_notify_retried_total", target="webhook") == 3
        assert notifier.metric("smsstream_notify_dropped_total", target="webhook", reason="gave_up") == 1
        for name in ("alertmanager", "webhook"):
            assert notifier.metric("smsstream_notify_dropped_total", target=name, reason="invalid_json") == 1
        assert notifier.metric("smsstream_notify_sent_total", target="webhook") == 7
        wait_for(lambda: all_committed(bootstrap, env["SMSSTREAM_NOTIFY_GROUP"]), 20,
                 "the group to commit past the dropped records")
        log = notifier.log()
        assert "retrying in" in log and "giving up a delivery after 4 failed attempts" in log
    finally:
        notifier.stop()
        target.close()


EXAMPLE = Path(__file__).resolve().parents[1] / "deploy" / "alertmanager" / "alertmanager.yml"


def amtool(*args: str) -> subprocess.CompletedProcess:
    if shutil.which("amtool") is None:
        pytest.fail("no `amtool` on PATH; it comes with Debian's prometheus-alertmanager (apt-get install "
                    "prometheus-alertmanager, or run `bash .ci/run`)", pytrace=False)
    return subprocess.run(["amtool", *args], capture_output=True, text=True, timeout=30)


def test_the_example_alertmanager_configuration_is_valid():
    checked = amtool("check-config", str(EXAMPLE))
    assert checked.returncode == 0, checked.stdout + checked.stderr


@pytest.mark.parametrize("labels,receiver", [
    ({"alertname": "smsstream_template_hijack", "severity": "critical"}, "smsstream-page"),
    ({"alertname": "smsstream_rebind_anomaly", "severity": "warning"}, "smsstream-chat"),
    ({"alertname": "smsstream_delivery_failure_spike", "severity": "info"}, "smsstream-none"),
    ({"alertname": "NodeDown", "severity": "critical"}, "default"),  # other alerts are not captured
])
def test_the_example_routes_smsstream_alerts_by_severity(labels, receiver):
    routed = amtool("config", "routes", "test", f"--config.file={EXAMPLE}", *(f"{k}={v}" for k, v in labels.items()),
                    "dedup_key=template_hijack/template/T00042")
    assert routed.stdout.split() == [receiver], routed.stdout + routed.stderr
