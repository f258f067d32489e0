"""Paging on a real broker and the real Alertmanager: alerts written to sms.alerts reach on-call."""

from __future__ import annotations

import pytest

from paging import Alertmanager, NotifierProcess, PagingSetupError, Receiver, alert_record, notifier_env, resolved, wait_for, write
from smsstream.topics import apply_topics

SECRET = "test-webhook-secret"


@pytest.fixture(scope="module")
def paging(broker_url, bootstrap, tmp_path_factory):
    """One notifier paging a real Alertmanager and a signature-checking webhook receiver."""
    tmp = tmp_path_factory.mktemp("paging")
    apply_topics(broker_url)
    receiver = Receiver()
    try:
        am = Alertmanager(receiver).start()
    except PagingSetupError as exc:
        receiver.close()
        pytest.fail(str(exc), pytrace=False)
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
