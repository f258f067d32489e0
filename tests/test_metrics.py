"""Worker metrics: fixed, low-cardinality labels; never a number or a sender."""

from prometheus_client import CollectorRegistry, generate_latest

from smsstream import metrics
from smsstream.errors import DEAD_LETTER_REASONS, RecordError
from smsstream.records import decode
from smsstream.detection.engine import Engine
from smsstream.pseudonym import Pseudonymizer
from smsstream.records import SENDS, Send


def _error(raw: bytes) -> RecordError:
    try:
        decode("sms.sends", raw)
    except RecordError as exc:
        return exc
    raise AssertionError("record was accepted")


def test_each_worker_metric_counts_in_its_own_registry():
    registry = CollectorRegistry()
    m = metrics.create(registry)
    m.events_in.labels("sms.sends").inc(3)
    m.dead_letters.labels("sms.sends", "invalid_json").inc()
    m.alerts.labels("non_borrower_spike", "firing").inc()
    assert registry.get_sample_value("smsstream_events_in_total", {"topic": "sms.sends"}) == 3
    assert registry.get_sample_value(
        "smsstream_dead_letters_total", {"topic": "sms.sends", "reason": "invalid_json"}) == 1
    assert registry.get_sample_value(
        "smsstream_alerts_total", {"kind": "non_borrower_spike", "status": "firing"}) == 1
    other = CollectorRegistry()
    metrics.create(other).events_in.labels("sms.sends").inc()
    assert other.get_sample_value("smsstream_events_in_total", {"topic": "sms.sends"}) == 1
    assert registry.get_sample_value("smsstream_events_in_total", {"topic": "sms.sends"}) == 3


def test_every_refused_record_has_a_reason_from_the_fixed_set():
    cases = {
        b"{oops": "invalid_json",
        b"\xff\xfe not utf-8": "invalid_json",
        b"x" * (70 * 1024): "too_large",
        b'{"message_id": 5}': "invalid_record",
    }
    assert {raw: _error(raw).reason for raw in cases} == cases
    engine = Engine(Pseudonymizer("k"))
    send = Send("m1", 1_772_409_600_000, "lender-a", None, "+8613800000000", "otp", "code")
    engine.ingest(SENDS, send)
    refused = []
    for again in (send, Send("m0", send.ts - 3_600_000, "lender-a", None, "+8613800000000", "otp", "code")):
        try:
            engine.ingest(SENDS, again)
        except RecordError as exc:
            refused.append(exc.reason)
    assert refused == ["duplicate", "late"]
    assert set(cases.values()) | set(refused) <= set(DEAD_LETTER_REASONS)


def test_exposition_never_carries_a_phone_number():
    registry = CollectorRegistry()
    m = metrics.create(registry)
    error = _error(b'{"message_id":"m","ts":1700000000000,"sender_id":"s","number":"+8613800138000",'
                   b'"category":"nope","body":"x"}')
    m.dead_letters.labels("sms.sends", error.reason).inc()
    careless = RecordError("field 'number' +8613800138000 is not allowed here")  # an error text that did echo one
    m.dead_letters.labels("sms.sends", careless.reason).inc()
    exposition = generate_latest(registry)
    assert b'reason="invalid_record"' in exposition
    assert b"8613800138000" not in exposition
