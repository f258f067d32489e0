"""delivery_failure_spike: carriers blocking or failing a sender's traffic."""

import random

from smsstream.detection.delivery import JOIN_HORIZON_MS
from smsstream.records import RECEIPTS, SENDS, Receipt, Send
from traffic import DAY, HOUR, MINUTE, T0, Sends, book, engine, firing, keys, numbers, run

KIND = "delivery_failure_spike"


def senders(seed: int):
    rng = random.Random(seed)
    a, b = numbers(rng, 2000), numbers(rng, 2000)
    events = book("lender-a", a) + book("lender-b", b)
    return rng, Sends(rng, "lender-a", "tpl-a", a), Sends(rng, "lender-b", "tpl-b", b), events


def test_carrier_starting_to_block_one_senders_reminders_fires_for_that_sender():
    rng, a, b, events = senders(1)
    events += a.run(T0, 8 * 60, 20) + b.run(T0, 8 * 60, 20)
    start = T0 + 8 * HOUR
    events += a.run(start, 60, 20, statuses={"DELIVRD": 0.6, "BLOCKED": 0.4})
    events += b.run(start, 60, 20)
    alerts = firing(run(events), KIND)
    assert {f"{KIND}/sender/lender-a", f"{KIND}/template/tpl-a"} <= keys(alerts)
    assert not any(a["sender_id"] == "lender-b" for a in alerts)
    sender_alert = next(a for a in alerts if a["entity_type"] == "sender")
    assert sender_alert["reason"] == "blocked_rate"
    assert start < sender_alert["window_end"] <= start + 5 * MINUTE
    assert sender_alert["evidence"]["carriers"] == {"carrier-a": len(sender_alert["evidence"]["message_ids"])}
    assert len(sender_alert["evidence"]["message_ids"]) <= sender_alert["evidence"]["hits"]
    assert "BLOCKED" in sender_alert["summary"] and "usual" in sender_alert["summary"]


def carrier_blocking(blocked: str) -> list[dict]:
    """Three lenders on one carrier, eight ordinary hours, then an hour in which it blocks half the
    reminders of the lenders named in ``blocked``."""
    rng, a, b, events = senders(2)
    c_numbers = numbers(rng, 2000)
    events += book("lender-c", c_numbers)
    c = Sends(rng, "lender-c", "tpl-c", c_numbers)
    for name, lender in zip("abc", (a, b, c)):
        events += lender.run(T0, 8 * 60, 20)
        statuses = {"DELIVRD": 0.5, "BLOCKED": 0.5} if name in blocked else None
        events += lender.run(T0 + 8 * HOUR, 60, 20, statuses=statuses)
    return firing(run(events), KIND)


def test_a_carrier_blocking_only_one_sender_is_that_senders_alert_not_the_carriers():
    alerts = carrier_blocking("a")
    assert f"{KIND}/sender/lender-a" in keys(alerts)
    assert firing(alerts, KIND, "carrier") == []


def test_a_carrier_blocking_every_senders_reminders_raises_the_carriers_alert():
    alerts = carrier_blocking("abc")
    assert f"{KIND}/carrier/carrier-a" in keys(alerts)
    assert {f"{KIND}/sender/lender-{x}" for x in "abc"} <= keys(alerts)


def test_undelivered_surge_fires_failure_rate():
    rng, a, b, events = senders(3)
    events += a.run(T0, 8 * 60, 20)
    events += a.run(T0 + 8 * HOUR, 60, 20, statuses={"DELIVRD": 0.5, "UNDELIV": 0.5})
    alerts = firing(run(events), KIND, "sender")
    assert alerts and alerts[0]["reason"] == "failure_rate"


def slow_carrier(prompt_failures: bool) -> list[dict]:
    """Four hours in which a carrier reports receipts 30 min to 3 h late; maybe with half an hour of sends
    in the middle that it reports undelivered at once."""
    rng, a, b, events = senders(4)
    events += a.run(T0, 8 * 60, 20)
    events += a.run(T0 + 8 * HOUR, 4 * 60, 20, receipt_delay_ms=lambda: rng.randrange(30 * MINUTE, 3 * HOUR))
    events += a.run(T0 + 12 * HOUR, 4 * 60, 20)
    if prompt_failures:
        events += a.run(T0 + 10 * HOUR, 30, 20, statuses={"UNDELIV": 1.0})
    return firing(run(events), KIND)


def test_slow_carrier_does_not_fire():
    assert slow_carrier(prompt_failures=False) == []


def test_prompt_failures_while_the_carrier_is_slow_fire():
    alerts = slow_carrier(prompt_failures=True)
    assert f"{KIND}/sender/lender-a" in keys(alerts) and {a["reason"] for a in alerts} == {"failure_rate"}


def campaigns_and_a_new_sender(blocked_in_second_campaign: bool) -> list[dict]:
    """Two days of a lender's nine o'clock campaign and another lender's first hours; the second campaign
    may have a fifth of its receipts BLOCKED."""
    rng, a, b, events = senders(5)
    for day in range(2):
        base = T0 + day * DAY
        events += a.run(base, 9 * 60, 1) + a.run(base + 9 * HOUR, 20, 300) + a.run(base + 9 * HOUR + 20 * MINUTE, 60, 1)
    events += b.run(T0 + DAY, 6 * 60, 30)
    if blocked_in_second_campaign:
        events += a.run(T0 + DAY + 9 * HOUR, 20, 60, statuses={"BLOCKED": 1.0})
    return firing(run(events), KIND)


def test_morning_campaign_and_new_sender_do_not_fire():
    assert campaigns_and_a_new_sender(blocked_in_second_campaign=False) == []


def test_a_campaign_with_a_fifth_of_it_blocked_fires():
    alerts = campaigns_and_a_new_sender(blocked_in_second_campaign=True)
    assert f"{KIND}/sender/lender-a" in keys(alerts) and "blocked_rate" in {a["reason"] for a in alerts}


def test_receipt_before_its_send_still_joins():
    eng = engine()
    rng = random.Random(6)
    a = Sends(rng, "lender-a", "tpl-a", numbers(rng, 100))
    events = a.run(T0, 30, 10)
    # receipts first: arrival order reversed within each message
    reordered = []
    for i in range(0, len(events), 2):
        send, receipt = events[i], events[i + 1]
        receipt[1].ts = send[1].ts
        reordered += [receipt, send]
    for topic, record in reordered:
        eng.ingest(topic, record)
    eng.flush()
    counters = eng.counters()
    assert counters["joined_outcomes"] == len(events) // 2
    assert counters["unmatched_receipts_at_end"] == 0


def test_receipts_that_never_match_are_counted_and_forgotten_after_the_horizon():
    eng = engine()
    for i in range(5):
        eng.ingest(RECEIPTS, Receipt(f"ghost-{i}", T0 + i, "DELIVRD"))
    later = T0 + JOIN_HORIZON_MS + 3 * HOUR
    for i in range(3):
        eng.ingest(SENDS, Send(f"m-{i}", later + i * HOUR, "lender-a", None, "+8613800000000", "otp", "code 1"))
    assert eng.counters()["unmatched_receipts"] == 5


def test_receipt_hours_late_on_arrival_is_counted_not_dead_lettered():
    eng = engine()
    eng.ingest(SENDS, Send("m-1", T0, "lender-a", None, "+8613800000000", "otp", "code 1"))
    eng.ingest(SENDS, Send("m-2", T0 + 5 * HOUR, "lender-a", None, "+8613800000001", "otp", "code 2"))
    eng.ingest(RECEIPTS, Receipt("m-1", T0 + 10_000, "DELIVRD"))
    assert eng.counters()["joined_outcomes"] == 1


def test_a_carrier_failing_for_every_sender_fires_for_the_carrier():
    rng = random.Random(7)
    events = []
    senders_ = [Sends(rng, f"lender-{i}", f"tpl-{i}", numbers(rng, 300)) for i in range(6)]
    for s in senders_:
        events += s.run(T0, 6 * 60, 5)
    for s in senders_:
        events += s.run(T0 + 6 * HOUR, 40, 5, statuses={"DELIVRD": 0.6, "UNDELIV": 0.4})
    alerts = firing(run(events), KIND, "carrier")
    assert keys(alerts) == {f"{KIND}/carrier/carrier-a"}
    assert alerts[0]["reason"] == "failure_rate"
    assert alerts[0]["sender_id"] is None and len(alerts[0]["evidence"]["senders"]) > 1


def _small_sender_on_a_second_carrier(seed: int, blocked_after: list[bool]):
    """A sender with a few reminders an hour on carrier-b; then three more, each blocked or not."""
    rng, a, b, events = senders(seed)
    events += a.run(T0, 8 * 60, 5)
    events += a.run(T0, 8 * 60, 0.2, carrier="carrier-b", statuses={"DELIVRD": 0.995, "BLOCKED": 0.005})
    start = T0 + 8 * HOUR
    events += a.run(start, 60, 5)
    for i, blocked in enumerate(blocked_after):
        events += a.run(start + 5 * i * MINUTE, 1, 1, carrier="carrier-b",
                        statuses={"BLOCKED": 1.0} if blocked else {"DELIVRD": 1.0})
    return start, firing(run(events), KIND)


def test_three_of_three_reminders_blocked_on_one_carrier_fire_within_minutes():
    start, alerts = _small_sender_on_a_second_carrier(11, [True, True, True])
    sender_alert = next(a for a in alerts if a["entity_type"] == "sender")
    assert sender_alert["reason"] == "blocked_rate"
    assert sender_alert["evidence"]["carrier"] == "carrier-b"
    assert sender_alert["window_end"] <= start + 15 * MINUTE


def test_one_blocked_reminder_among_three_on_a_small_carrier_does_not_fire():
    _, alerts = _small_sender_on_a_second_carrier(11, [True, False, False])
    assert alerts == []
