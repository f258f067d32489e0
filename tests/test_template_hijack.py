"""template_hijack: tampered content, foreign senders and bursts from new sources, with their quiet twins."""

from __future__ import annotations

import json
import pickle
import random
from datetime import datetime, timezone

import pytest

from smsstream.detection.engine import Engine
from smsstream.detection.templates import TEMPLATE_PARTS, TemplateReader, TemplateWatch
from smsstream.detection.textshape import Markers, TemplateText
from smsstream.pseudonym import Pseudonymizer
from smsstream.records import SENDS, TEMPLATES, Send, Source, Template
from traffic import detector_parts, differences

KEY = "test-key"
PN = Pseudonymizer(KEY)
MIN = 60_000
HOUR = 60 * MIN
DAY = 24 * HOUR
T0 = int(datetime(2026, 11, 2, tzinfo=timezone.utc).timestamp() * 1000)  # a Monday, 00:00 UTC

TEXT = "【QuickLoan】Dear {name}, your repayment of {amount} is due on {date}. Pay in the app or call 400-820-1234."
NAMES = ["Li Ming", "Wang Fang", "Zhang Wei", "Chen Jie", "Liu Yang", "Zhao Lei"]


def body(rng: random.Random, text: str = TEXT) -> str:
    return (
        text.replace("{name}", rng.choice(NAMES))
        .replace("{amount}", f"CNY {rng.randint(100, 9000):,}.00")
        .replace("{date}", f"2026-11-{rng.randint(10, 28)}")
        .replace("{loan_id}", str(rng.randint(10**9, 10**10)))
    )


class Harness:
    """A template's readers and its TemplateWatch, driven by the engine."""

    def __init__(self, parts=(TemplateWatch, TemplateReader), **engine):
        self.engine = Engine(PN, parts=detector_parts(*parts), **engine)
        self.part = self.engine.parts[0]
        self.alerts: list[dict] = []
        self.n = 0

    def template(self, tid="T1", sender="lenderA", text=TEXT, ts=T0):
        t = Template(tid, sender, "repayment_reminder", text, ts)
        self.alerts.extend(self.engine.ingest(TEMPLATES, t))

    def send(self, ts, body, tid="T1", sender="lenderA", key="key-1", ip="10.0.0.5", number=None):
        self.n += 1
        number = number or f"+86138{self.n % 10**8:08d}"
        s = Send(f"m{self.n}", ts, sender, tid, number, "repayment_reminder", body,
                 f"acc{self.n}", Source(key, ip, "api"), "cmcc")
        self.alerts.extend(self.engine.ingest(SENDS, s))
        return s

    def flush(self):
        self.alerts.extend(self.engine.flush())
        return self.alerts

    def firing(self, reason=None):
        return [a for a in self.alerts if a["status"] == "firing" and (reason is None or a["reason"] == reason)]


def steady(h: Harness, rng, start, hours, per_hour=30, **kw):
    for i in range(int(hours * per_hour)):
        h.send(start + int(i * HOUR / per_hour), body(rng), **kw)


# --- body shapes -----------------------------------------------------------------

def test_a_rendered_body_fits_its_registered_text():
    t = TemplateText(TEXT)
    assert t.fit(body(random.Random(1))).ok


def test_an_injected_link_is_named_with_its_domain():
    t = TemplateText(TEXT)
    tampered = body(random.Random(1)).replace("Pay in the app", "Pay now at https://quick-loan.pay-fast.top/r/9")
    fit = t.fit(tampered)
    assert not fit.ok and fit.new_domains == ["quick-loan.pay-fast.top"]


def test_a_link_hidden_in_a_name_variable_is_injected():
    t = TemplateText(TEXT)
    tampered = body(random.Random(1)).replace("Dear ", "Dear Li visit loanhelp.cn ")
    fit = t.fit(tampered)
    assert not fit.ok and "loanhelp.cn" in fit.new_domains


def test_dates_amounts_and_short_codes_are_not_phone_numbers():
    m = Markers.of("Pay CNY 12,345.00 by 2026-11-25 10:30, ref 95588, see www.lender.com")
    assert m.phones == () and m.domains == ("lender.com",)


def test_a_template_id_variable_may_hold_long_digits():
    t = TemplateText("Loan {loan_id} is due on {date}. Call 400-820-1234.")
    assert t.fit("Loan 2026112300123 is due on 2026-11-30. Call 400-820-1234.").ok


# --- content_drift -------------------------------------------------------------

def test_a_link_injected_into_a_registered_template_raises_content_drift_within_minutes():
    rng = random.Random(2)
    h = Harness()
    h.template()
    steady(h, rng, T0 + 8 * HOUR, 3)
    attack = T0 + 11 * HOUR
    for i in range(5):
        h.send(attack + i * 30_000, body(rng).replace("Pay in the app", "Pay at http://qk-loan.xyz/p"))
    steady(h, rng, attack + 5 * MIN, 0.5)
    h.flush()
    fired = h.firing("content_drift")
    assert len(fired) == 1
    alert = fired[0]
    assert alert["severity"] == "critical"
    assert alert["evidence"]["urls"] == ["qk-loan.xyz"]
    assert alert["window_end"] - attack <= 5 * MIN
    assert alert["dedup_key"] == "template_hijack/template/T1"


def alarming_send(change: str, sender: str = "lenderA") -> tuple[list[dict], Send, Harness]:
    """A registered template with a few hours of fitting sends, then one send changed as ``change`` says.

    Returns the alert records written while that one send was taken in (before its bucket closed).
    """
    rng = random.Random(31)
    h = Harness()
    h.template()
    steady(h, rng, T0 + 8 * HOUR, 3)
    text = body(rng)
    if change == "link":
        text = text.replace("Pay in the app", "Pay at http://qk-loan.xyz/p")
    elif change == "registered link":
        text = text.replace("Pay in the app", "Pay in the app")
    before = len(h.alerts)
    send = h.send(T0 + 11 * HOUR + 25_000, text, sender=sender)
    return h.alerts[before:], send, h


def test_a_link_injected_into_a_registered_template_fires_the_moment_the_send_is_read():
    written, send, _ = alarming_send("link")
    assert [(a["reason"], a["severity"]) for a in written] == [("content_drift", "critical")]
    alert = written[0]
    assert alert["sufficient_at"] == alert["last_seen"] == send.ts
    assert alert["window_end"] == send.ts + 1 and alert["evidence"]["message_ids"] == [send.message_id]
    assert alert["evidence"]["urls"] == ["qk-loan.xyz"]


def test_a_send_that_fits_its_registration_fires_nothing_when_it_is_read():
    written, _, h = alarming_send("registered link")
    h.flush()
    assert written == [] and h.firing() == []


def test_a_registered_template_sent_by_another_sender_fires_the_moment_the_send_is_read():
    written, send, _ = alarming_send("none", sender="shadyLoans")
    assert [(a["reason"], a["sender_id"], a["sufficient_at"]) for a in written] == [
        ("foreign_sender", "shadyLoans", send.ts)]


def test_the_first_sends_of_a_registration_never_seen_to_fit_wait_for_their_bucket():
    # the registration may be stale: whether a link unlike it is tampering is for the bucket's judgement
    rng = random.Random(32)
    h = Harness()
    h.template()
    before = len(h.alerts)
    h.send(T0 + HOUR, body(rng).replace("Pay in the app", "Pay at http://qk-loan.xyz/p"))
    assert h.alerts[before:] == []


def test_an_alert_fired_at_once_is_the_episode_its_bucket_then_keeps_going():
    _, send, h = alarming_send("link")
    steady(h, random.Random(33), send.ts + 10 * MIN, 1)
    h.flush()
    fired = h.firing("content_drift")
    assert len(fired) == 1 and fired[0]["sufficient_at"] == send.ts
    resolved = [a for a in h.alerts if a["status"] == "resolved"]
    assert [a["alert_id"] for a in resolved] == [fired[0]["alert_id"]]


def test_an_injected_callback_number_is_reported_only_as_a_pseudonym():
    rng = random.Random(3)
    h = Harness()
    h.template()
    steady(h, rng, T0 + 8 * HOUR, 2)
    attack = T0 + 10 * HOUR
    for i in range(3):
        h.send(attack + i * MIN, body(rng).replace("400-820-1234", "+8617012345678"))
    h.flush()
    fired = h.firing("content_drift")
    assert fired and PN.pseudonym("+8617012345678") in fired[0]["evidence"]["numbers"]
    text = json.dumps(h.alerts)
    assert "17012345678" not in text


def test_a_callback_number_hidden_in_a_signature_a_link_host_or_odd_grouping_never_shows_in_clear():
    rng = random.Random(3)
    h = Harness()
    h.template()
    steady(h, rng, T0 + 8 * HOUR, 2)
    attack = T0 + 10 * HOUR
    for i in range(3):
        tampered = (body(rng).replace("【QuickLoan】", "【Call 170.1234.5678】")
                    .replace("400-820-1234", "+86 (170) 1234-5679 or https://8617012345670.cn/pay"))
        h.send(attack + i * MIN, tampered)
    steady(h, rng, attack + 5 * MIN, 1)
    h.flush()
    drift = [a for a in h.alerts if a["reason"] == "content_drift"]
    # the first send fires at once on its link; the episode's last record shows the bucket's signatures too
    assert drift[0]["evidence"]["urls"] and drift[-1]["evidence"]["signatures"]["seen"]
    text = json.dumps(h.alerts)
    for clear in ("170.1234.5678", "1701234567", "(170) 1234-5679", "8617012345670"):
        assert clear not in text


def test_a_changed_signature_raises_content_drift():
    rng = random.Random(4)
    h = Harness()
    h.template()
    steady(h, rng, T0 + 8 * HOUR, 2)
    h.send(T0 + 10 * HOUR, body(rng).replace("【QuickLoan】", "【FastCashNow】"))
    h.flush()
    fired = h.firing("content_drift")
    assert fired and fired[0]["evidence"]["signatures"]["seen"] == ["FastCashNow"]
    assert "QuickLoan" in fired[0]["summary"]


def test_reworded_text_in_most_sends_raises_content_drift_with_the_words_changed():
    rng = random.Random(5)
    h = Harness()
    h.template()
    steady(h, rng, T0 + 8 * HOUR, 2)
    for i in range(6):
        h.send(T0 + 10 * HOUR + i * MIN, body(rng).replace("Pay in the app", "Your account is frozen, pay cash to our agent"))
    h.flush()
    fired = h.firing("content_drift")
    assert fired and "frozen" in fired[0]["summary"]


def thirty_ordinary_hours(injected_links: int) -> Harness:
    """A registered template's ordinary sends for 30 hours; the last few may carry an injected link."""
    rng = random.Random(6)
    h = Harness()
    h.template()
    steady(h, rng, T0, 30, per_hour=20)
    for i in range(injected_links):
        h.send(T0 + 30 * HOUR + i * MIN, body(rng).replace("Pay in the app", "Pay at http://qk-loan.xyz/p"))
    h.flush()
    return h


def test_ordinary_sends_of_a_registered_template_stay_quiet():
    assert thirty_ordinary_hours(injected_links=0).firing() == []


def test_three_of_them_with_an_injected_link_raise_content_drift():
    assert [a["reason"] for a in thirty_ordinary_hours(injected_links=3).firing()] == ["content_drift"]


CASHBEE = "[CashBee] Hi {name}, loan {loan_id} of {amount} is due {date}. Details: https://cashbee.ph/app"


def new_unregistered_template(relinked: int) -> Harness:
    """An unregistered template's first four hours of ordinary sends; the last few may link elsewhere."""
    rng = random.Random(7)
    h = Harness()
    steady_start = T0 + 9 * HOUR
    for i in range(120):
        h.send(steady_start + i * 2 * MIN, body(rng, CASHBEE), tid="U1", sender="cashbee", key="cb-key", ip="52.1.2.3")
    tampered = CASHBEE.replace("https://cashbee.ph/app", "https://cashbee-ph.help/verify")
    for i in range(relinked):
        h.send(steady_start + 4 * HOUR + i * MIN, body(rng, tampered), tid="U1", sender="cashbee", key="cb-key",
               ip="52.1.2.3")
    h.flush()
    return h


def test_a_new_unregistered_template_with_ordinary_content_stays_quiet_in_its_first_hours():
    assert new_unregistered_template(relinked=0).firing() == []


def test_the_same_template_then_linking_elsewhere_raises_content_drift():
    fired = new_unregistered_template(relinked=4).firing()
    assert [a["reason"] for a in fired] == ["content_drift"] and fired[0]["evidence"]["urls"] == ["cashbee-ph.help"]


def test_a_new_domain_in_an_unregistered_template_is_caught_once_it_repeats():
    rng = random.Random(8)
    h = Harness()
    text = "[CashBee] Hi {name}, loan {loan_id} of {amount} is due {date}. Details: https://cashbee.ph/app"
    start = T0 + 8 * HOUR
    for i in range(90):
        h.send(start + i * 2 * MIN, body(rng, text), tid="U1", sender="cashbee")
    attack = start + 3 * HOUR
    tampered = text.replace("https://cashbee.ph/app", "https://cashbee-ph.help/verify")
    for i in range(4):
        h.send(attack + i * MIN, body(rng, tampered), tid="U1", sender="cashbee")
    h.flush()
    fired = h.firing("content_drift")
    assert fired and fired[0]["evidence"]["urls"] == ["cashbee-ph.help"]
    assert fired[0]["window_end"] - attack <= 5 * MIN


# --- foreign_sender ------------------------------------------------------------

def registered_template_sent(stranger: bool) -> Harness:
    """Five hours of a registered template's sends by its owner; maybe one by another sender among them."""
    rng = random.Random(9)
    h = Harness()
    h.template()
    steady(h, rng, T0 + 8 * HOUR, 2)
    if stranger:
        h.send(T0 + 10 * HOUR, body(random.Random(90)), sender="shadyLoans")
    steady(h, rng, T0 + 10 * HOUR + MIN, 3)
    h.flush()
    return h


def test_a_registered_template_sent_by_another_sender_raises_foreign_sender():
    fired = registered_template_sent(stranger=True).firing("foreign_sender")
    assert fired and fired[0]["sender_id"] == "shadyLoans" and fired[0]["severity"] == "critical"


def test_an_unregistered_template_learns_its_owner_and_flags_another_sender():
    rng = random.Random(10)
    h = Harness()
    text = "[CashBee] Hi {name}, loan {loan_id} of {amount} is due {date}."
    steady(h, rng, T0 + 8 * HOUR, 3, tid="U2", sender="cashbee")
    for i in range(3):
        h.send(T0 + 12 * HOUR + i * MIN, body(rng, text), tid="U2", sender="copycat")
    h.flush()
    fired = h.firing("foreign_sender")
    assert fired and "copycat" in fired[0]["summary"]


def test_the_owner_sending_its_own_template_is_not_foreign():
    assert registered_template_sent(stranger=False).firing() == []


# --- volume_burst ----------------------------------------------------------------

def campaign_days(h: Harness, rng, days, key="key-1", ip="10.0.0.5", first_day=0):
    """A reminder campaign every morning at nine, a trickle the rest of the day."""
    for d in range(first_day, first_day + days):
        day = T0 + d * DAY
        for i in range(400):
            h.send(day + 9 * HOUR + i * 600, body(rng), key=key, ip=ip)
        for hour in (11, 14, 17, 20):
            for i in range(5):
                h.send(day + hour * HOUR + i * 7 * MIN, body(rng), key=key, ip=ip)


def test_a_burst_from_a_new_api_key_at_three_in_the_morning_raises_volume_burst():
    rng = random.Random(12)
    h = Harness()
    h.template()
    campaign_days(h, rng, 2)
    attack = T0 + 2 * DAY + 3 * HOUR
    for i in range(300):
        h.send(attack + i * 2_000, body(rng), key="key-stolen", ip="185.220.101.7")
    h.flush()
    fired = h.firing("volume_burst")
    assert fired and fired[0]["severity"] in ("warning", "critical")
    assert "key-stolen" in fired[0]["summary"]
    assert fired[0]["window_end"] - attack <= 5 * MIN


def four_campaign_days(night_burst: bool) -> Harness:
    """Four days of the usual key's campaigns; maybe a burst from a stolen key on the fourth night."""
    rng = random.Random(13)
    h = Harness()
    h.template()
    campaign_days(h, rng, 3)
    if night_burst:
        for i in range(300):
            h.send(T0 + 3 * DAY + 3 * HOUR + i * 2_000, body(rng), key="key-stolen", ip="185.220.101.7")
    campaign_days(h, rng, 1, first_day=3)
    h.flush()
    return h


def test_the_morning_campaign_from_its_usual_key_does_not_page():
    assert four_campaign_days(night_burst=False).firing() == []


def test_a_night_burst_from_a_stolen_key_among_those_campaigns_raises_volume_burst():
    assert [a["reason"] for a in four_campaign_days(night_burst=True).firing()] == ["volume_burst"]


def big_night_campaign(key: str, ip: str) -> Harness:
    """Two days of campaigns, then 1,500 sends at three in the morning from the given key."""
    rng = random.Random(14)
    h = Harness()
    h.template()
    campaign_days(h, rng, 2)
    for i in range(1500):
        h.send(T0 + 2 * DAY + 3 * HOUR + i * 1_000, body(rng), key=key, ip=ip)
    h.flush()
    return h


def test_a_bigger_than_usual_campaign_from_the_usual_key_does_not_page():
    assert big_night_campaign("key-1", "10.0.0.5").firing() == []


def test_the_same_campaign_from_a_never_seen_key_raises_volume_burst():
    fired = big_night_campaign("key-stolen", "185.220.101.7").firing()
    assert [a["reason"] for a in fired] == ["volume_burst"] and "key-stolen" in fired[0]["summary"]


def _after_two_campaign_days(rng, day_three: list[tuple[int, str, str]]) -> Harness:
    """Two days of the usual key's campaigns, then sends as (time since day 3 began, key, ip)."""
    h = Harness()
    h.template()
    campaign_days(h, rng, 2)
    for at, key, ip in sorted(day_three):
        h.send(T0 + 2 * DAY + at, body(rng), key=key, ip=ip)
    h.flush()
    return h


def _campaign_day_from_a_new_key(rng, old_key_too: bool) -> Harness:
    """Day 3's campaign from a key and network never seen, with or without the usual key's."""
    sends = [(9 * HOUR + i * 600, "key-2", "172.16.4.9") for i in range(400)]
    if old_key_too:
        sends += [(9 * HOUR + i * 600 + 1, "key-1", "10.0.0.5") for i in range(400)]
    return _after_two_campaign_days(rng, sends)


def test_a_key_rotation_that_carries_the_usual_volume_does_not_page():
    assert _campaign_day_from_a_new_key(random.Random(15), old_key_too=False).firing() == []


def test_a_new_key_sending_a_second_campaign_beside_the_usual_key_raises_volume_burst():
    fired = _campaign_day_from_a_new_key(random.Random(15), old_key_too=True).firing("volume_burst")
    assert fired and "key-2" in fired[0]["summary"]


# --- state -----------------------------------------------------------------------

def test_template_state_survives_pickling_mid_stream():
    rng = random.Random(16)
    # five minutes of allowed lateness keep the last buckets' tallies open in the state
    h = Harness(lateness_ms=5 * MIN)
    h.template()
    steady(h, rng, T0 + 8 * HOUR, 2)
    state = h.part.entities["T1"]
    assert state.sources and state.tallies
    assert differences(pickle.loads(pickle.dumps(state)), state) == []


@pytest.mark.parametrize("n", [200])
def test_per_template_state_stays_bounded_under_ever_new_links_and_sources(n):
    rng = random.Random(17)
    h = Harness()
    text = "[CashBee] Hi {name}, loan {loan_id} of {amount} is due {date}."
    steady(h, rng, T0 + 8 * HOUR, 2, tid="U3", sender="cashbee")
    for i in range(n):
        h.send(T0 + 11 * HOUR + i * 20_000, body(rng, text) + f" https://x{i}.top/a call +86170{i:08d}",
               tid="U3", sender="cashbee", key=f"k{i}", ip=f"77.{i % 250}.{i // 250}.1")
    h.flush()
    state = h.part.entities["U3"]
    assert len(state.known) <= 32 and len(state.suspects) <= 32 and len(state.sources) <= 64


def test_a_new_domain_in_a_link_variable_is_caught_against_the_links_the_template_usually_carries():
    rng = random.Random(18)
    h = Harness()
    text = "[PeakBee] Dear {name}, loan {loan_id} is overdue. Outstanding {amount}. Pay: {link}"
    h.template(tid="T9", sender="peakbee", text=text)
    for i in range(60):
        h.send(T0 + 8 * HOUR + i * 2 * MIN, body(rng, text).replace("{link}", f"https://peakbee.in/p/{i:05x}"),
               tid="T9", sender="peakbee")
    attack = T0 + 11 * HOUR
    for i in range(3):
        h.send(attack + i * 20_000, body(rng, text).replace("{link}", f"https://peakbee.verify-kyc.xyz/{i:04x}"),
               tid="T9", sender="peakbee")
    h.flush()
    fired = h.firing("content_drift")
    assert fired and fired[0]["evidence"]["urls"] == ["peakbee.verify-kyc.xyz"]
    assert fired[0]["window_end"] - attack <= 3 * MIN


def links_varying_in_their_path(other_domain: int) -> Harness:
    """200 sends whose link variable varies only in its path; the last few may link to another domain."""
    rng = random.Random(19)
    h = Harness()
    text = "[PeakBee] Dear {name}, loan {loan_id} is overdue. Pay: {link}"
    h.template(tid="T9", sender="peakbee", text=text)
    for i in range(200):
        h.send(T0 + 8 * HOUR + i * MIN, body(rng, text).replace("{link}", f"https://peakbee.in/p/{rng.getrandbits(28):07x}"),
               tid="T9", sender="peakbee")
    for i in range(other_domain):
        h.send(T0 + 12 * HOUR + i * MIN, body(rng, text).replace("{link}", f"https://peakbee.verify-kyc.xyz/{i:04x}"),
               tid="T9", sender="peakbee")
    h.flush()
    return h


def test_links_that_vary_only_in_their_path_stay_quiet():
    assert links_varying_in_their_path(other_domain=0).firing() == []


def test_three_of_them_linking_to_another_domain_raise_content_drift():
    fired = links_varying_in_their_path(other_domain=3).firing()
    assert [a["reason"] for a in fired] == ["content_drift"] and fired[0]["evidence"]["urls"] == ["peakbee.verify-kyc.xyz"]


def test_loan_ids_with_a_dash_are_not_callback_numbers():
    assert Markers.of("Repay loan QUI015-0000856 today at https://quickpaisa.in/p/0a7b149").phones == ()


def _busy_afternoon_from_a_new_key(rng, old_key_too: bool) -> Harness:
    """Day 3: 60 sends at 14:00 (usually 5) from a new key; the usual key sends its day too, or has gone quiet."""
    sends = [(14 * HOUR + i * MIN, "key-rotated", "10.9.9.9") for i in range(60)]
    if old_key_too:
        sends += [(9 * HOUR + i * 600, "key-1", "10.0.0.5") for i in range(400)]
        sends += [(14 * HOUR + i * 7 * MIN + 1, "key-1", "10.0.0.5") for i in range(5)]
    return _after_two_campaign_days(rng, sends)


def test_a_key_rotation_on_a_busier_than_usual_afternoon_does_not_page():
    assert _busy_afternoon_from_a_new_key(random.Random(20), old_key_too=False).firing() == []


def test_a_busier_than_usual_afternoon_from_a_new_key_beside_the_usual_one_raises_volume_burst():
    fired = _busy_afternoon_from_a_new_key(random.Random(20), old_key_too=True).firing("volume_burst")
    assert fired and "key-rotated" in fired[0]["summary"]


def campaigns_straddling_two_hours(second_campaign_from_new_source: bool) -> Harness:
    """Three days of a campaign from 9:30 to 10:00, a third of the last day's from a new key in the usual
    network; a key and network never seen may send twice as much again beside it."""
    rng, extra = random.Random(21), random.Random(121)
    h = Harness()
    h.template()
    for d in range(3):
        start = T0 + d * DAY + 9 * HOUR + 30 * MIN
        for i in range(300):
            h.send(start + i * 6_000, body(rng), key="key-1" if d < 2 or i % 3 else "key-new")
            if d == 2 and second_campaign_from_new_source:
                h.send(start + i * 6_000 + 1, body(extra), key="key-2", ip="172.16.4.9")
                h.send(start + i * 6_000 + 2, body(extra), key="key-2", ip="172.16.4.9")
    h.flush()
    return h


def test_a_campaign_straddling_two_hours_of_day_is_judged_against_both():
    assert campaigns_straddling_two_hours(second_campaign_from_new_source=False).firing() == []


def test_a_new_source_sending_a_second_campaign_beside_it_raises_volume_burst():
    fired = campaigns_straddling_two_hours(second_campaign_from_new_source=True).firing()
    assert [a["reason"] for a in fired] == ["volume_burst"] and "key-2" in fired[0]["summary"]


# --- the sender's link book --------------------------------------------------------

def _engine_run(events):
    engine = Engine(PN, parts=detector_parts(*TEMPLATE_PARTS))
    alerts = []
    for topic, record in sorted(events, key=lambda e: e[1].ts):
        alerts.extend(engine.ingest(topic, record))
    return alerts + engine.flush()


def _lender_day(rng, start, n=0):
    """A lender whose registered reminder links to its own domain, sending all morning."""
    text = "[CashBee] Hi {name}, {amount} is due {date}. Pay: https://cashbee.ph/pay"
    events = [(TEMPLATES, Template("R1", "cashbee", "repayment_reminder", text, start))]
    for i in range(120):
        ts = start + 8 * HOUR + i * 2 * MIN
        events.append((SENDS, Send(f"r{i}", ts, "cashbee", "R1", f"+6391700{i:05d}", "repayment_reminder",
                                   body(rng, text), None, Source("cb-key", "52.1.2.3", "api"))))
    return events


def lenders_new_template_linking_to(domain: str) -> list[dict]:
    """A lender's day on its registered template, then a new unregistered template's first 30 sends linking to
    ``domain``; the firing alerts."""
    rng = random.Random(22)
    events = _lender_day(rng, T0)
    text = "[CashBee] Hi {name}, your refund of {amount} is ready: {link}"
    for i in range(30):
        b = body(rng, text).replace("{link}", f"https://{domain}/{i:06x}")
        events.append((SENDS, Send(f"a{i}", T0 + 14 * HOUR + i * MIN, "cashbee", "U9", f"+6391800{i:05d}",
                                   "notification", b, None, Source("cb-key", "52.1.2.3", "api"))))
    return [a for a in _engine_run(events) if a["status"] == "firing"]


def test_a_template_whose_first_sends_link_to_a_domain_its_sender_never_used_raises_content_drift():
    by_sender = [a for a in lenders_new_template_linking_to("cashbee-refund.site") if a["entity_type"] == "sender"]
    assert by_sender and by_sender[0]["evidence"]["urls"] == ["cashbee-refund.site"]
    assert by_sender[0]["window_end"] - (T0 + 14 * HOUR) <= 2 * MIN


def test_a_new_template_linking_to_the_senders_usual_domain_stays_quiet():
    assert lenders_new_template_linking_to("cashbee.ph") == []


def sender_that_once_sent_another_lenders_template(later_new_link: bool) -> list[dict]:
    """A sender sends another lender's template (with its link) three times, then days later its own
    template linking to its own domain; maybe another template of its own a day after, linking elsewhere."""
    rng = random.Random(24)
    text = "[BlueCapital] Hi {name}, {amount} is due {date}. Pay: {link}"
    events = [(TEMPLATES, Template("R2", "bluecapital", "repayment_reminder", text, T0))]
    for i in range(3):
        tampered = body(rng, text).replace("{link}", f"https://bluecapital.in/p/{i:06x}")
        events.append((SENDS, Send(f"f{i}", T0 + 10 * HOUR + i * MIN, "primewallet", "R2", f"+6392000{i:05d}",
                                   "repayment_reminder", tampered, None, Source("pw-key", "61.2.3.4", "api"))))
    own = "[PrimeWallet] Hi {name}, {amount} is due {date}. Pay: https://primewallet.in/pay"
    for i in range(20):
        events.append((SENDS, Send(f"o{i}", T0 + 3 * DAY + i * MIN, "primewallet", "U20", f"+6392100{i:05d}",
                                   "repayment_reminder", body(rng, own), None, Source("pw-key", "61.2.3.4", "api"))))
    if later_new_link:
        other = own.replace("https://primewallet.in/pay", "https://primewallet-bonus.top/claim")
        for i in range(5):
            events.append((SENDS, Send(f"x{i}", T0 + 4 * DAY + i * MIN, "primewallet", "U21", f"+6392200{i:05d}",
                                       "notification", body(rng, other), None, Source("pw-key", "61.2.3.4", "api"))))
    return [a for a in _engine_run(events) if a["status"] == "firing"]


def test_a_sender_that_once_sent_another_lenders_template_does_not_take_its_link_for_its_own():
    # Seen on simulated traffic: the foreign sender's own first link, days later, was called new against the
    # other lender's domain it had carried.
    fired = sender_that_once_sent_another_lenders_template(later_new_link=False)
    assert [a["reason"] for a in fired if a["entity_id"] == "R2"] == ["foreign_sender"]
    assert [a for a in fired if a["entity_type"] == "sender"] == []


def test_that_senders_next_template_linking_to_a_domain_it_never_used_raises_content_drift_on_it():
    fired = sender_that_once_sent_another_lenders_template(later_new_link=True)
    by_sender = [a for a in fired if a["entity_type"] == "sender"]
    assert [(a["entity_id"], a["reason"]) for a in by_sender] == [("primewallet", "content_drift")]
    assert by_sender[0]["evidence"]["urls"] == ["primewallet-bonus.top"]


KYC = "[BlueLend] Your KYC documents have been received and are under review."


def test_a_new_templates_signature_replaced_after_its_first_few_sends_raises_content_drift():
    # Seen on simulated traffic: an unregistered template, three honest sends, then its signature swapped.
    h = Harness()
    start = T0 + 8 * HOUR
    for i in range(3):
        h.send(start + i * 30 * MIN, KYC, tid="U9", sender="bluelend")
    attack = start + 3 * HOUR
    for i in range(5):
        h.send(attack + i * 3 * MIN, KYC.replace("[BlueLend]", "[Legal Cell]"), tid="U9", sender="bluelend")
    h.flush()
    fired = h.firing("content_drift")
    assert fired and fired[0]["severity"] == "warning"
    assert fired[0]["evidence"]["signatures"] == {"seen": ["Legal Cell"], "usual": ["BlueLend"]}
    assert fired[0]["window_end"] - attack <= 15 * MIN


def test_a_learned_signature_dropped_from_an_established_template_raises_content_drift():
    h = Harness()
    start = T0 + 8 * HOUR
    for i in range(30):
        h.send(start + i * 4 * MIN, KYC, tid="U9", sender="bluelend")
    attack = start + 4 * HOUR
    for i in range(3):
        h.send(attack + i * MIN, KYC.replace("[BlueLend] ", ""), tid="U9", sender="bluelend")
    h.flush()
    fired = h.firing("content_drift")
    assert fired and fired[0]["evidence"]["signatures"]["seen"] == [""]
    assert "(none)" in fired[0]["summary"] and "BlueLend" in fired[0]["summary"]


def signed_and_unsigned_templates(signed_one_drops_its_signature: bool) -> Harness:
    """Four hours of a template that always signs and one that never does; maybe the signed one then stops."""
    h = Harness()
    start = T0 + 8 * HOUR
    for i in range(60):
        h.send(start + i * 4 * MIN, KYC, tid="U9", sender="bluelend")
        h.send(start + i * 4 * MIN + 1, KYC.replace("[BlueLend] ", ""), tid="U8", sender="bluelend")
    if signed_one_drops_its_signature:
        for i in range(3):
            h.send(start + 4 * HOUR + i * MIN, KYC.replace("[BlueLend] ", ""), tid="U9", sender="bluelend")
    h.flush()
    return h


def test_a_new_template_that_keeps_its_signature_or_never_signs_stays_quiet():
    assert signed_and_unsigned_templates(signed_one_drops_its_signature=False).firing() == []


def test_the_signed_one_dropping_its_signature_raises_content_drift_on_it():
    fired = signed_and_unsigned_templates(signed_one_drops_its_signature=True).firing()
    assert [(a["entity_id"], a["reason"]) for a in fired] == [("U9", "content_drift")]


def _three_am_campaign_from_key_2(rng, rotated_the_day_before: bool) -> Harness:
    """Day 4, 03:00: a campaign from key-2, which carried all of day 3's traffic or was never seen."""
    sends = [(DAY + 3 * HOUR + i * 6_000, "key-2", "172.16.4.9") for i in range(300)]
    if rotated_the_day_before:
        sends += [(hour * HOUR + i * 2 * MIN, "key-2", "172.16.4.9") for hour in (9, 11, 14, 17, 20) for i in range(30)]
    return _after_two_campaign_days(rng, sends)


def test_an_unusual_hour_campaign_from_a_key_that_replaced_the_usual_one_the_day_before_does_not_page():
    assert _three_am_campaign_from_key_2(random.Random(21), rotated_the_day_before=True).firing() == []


def test_an_unusual_hour_campaign_from_a_never_seen_key_raises_volume_burst():
    fired = _three_am_campaign_from_key_2(random.Random(21), rotated_the_day_before=False).firing("volume_burst")
    assert fired and fired[0]["severity"] == "critical"


def sparse_days(h: Harness, rng, start, days, key, ip):
    for i in range(int(days * 12)):
        h.send(start + i * 2 * HOUR + rng.randint(0, 50) * MIN, body(rng), key=key, ip=ip)


def rarely_used_template_after_a_rotation(blast_key: str, blast_ip: str) -> Harness:
    """A template sent every two hours from key-1, then from key-2 (a rotation), then blasted from the given key."""
    rng = random.Random(22)
    h = Harness()
    h.template()
    sparse_days(h, rng, T0, 40 / 24, key="key-1", ip="10.0.0.5")
    sparse_days(h, rng, T0 + 40 * HOUR, 0.75, key="key-2", ip="172.16.4.9")
    blast = T0 + 2 * DAY + 13 * HOUR
    for i in range(25):
        h.send(blast + i * 2 * MIN, body(rng), key=blast_key, ip=blast_ip)
    h.flush()
    return h


def test_a_rarely_used_template_blasted_from_the_key_and_network_that_replaced_its_old_ones_does_not_page():
    assert rarely_used_template_after_a_rotation("key-2", "172.16.4.9").firing() == []


def test_the_same_template_blasted_after_the_rotation_from_a_never_seen_key_raises_volume_burst():
    fired = rarely_used_template_after_a_rotation("key-stolen", "185.220.101.7").firing()
    assert [a["reason"] for a in fired] == ["volume_burst"] and "key-stolen" in fired[0]["summary"]


def test_a_rarely_used_template_blasted_from_a_never_seen_key_raises_volume_burst():
    rng = random.Random(22)
    h = Harness()
    h.template()
    sparse_days(h, rng, T0, 2, key="key-1", ip="10.0.0.5")
    blast = T0 + 2 * DAY + 13 * HOUR
    for i in range(30):
        h.send(blast + i * MIN, body(rng), key="key-stolen", ip="185.220.101.7")
    h.flush()
    assert [a for a in h.firing("volume_burst") if "key-stolen" in a["summary"]]


PLAIN = "[QuickLoan] Dear {name}, your repayment of {amount} is overdue. Reply PAY to settle today."


def lender_with_a_barely_used_template(rng) -> Harness:
    """Two days of a lender's reminders on T1 from its one key, and five sends of T2 through the same key."""
    h = Harness(parts=TEMPLATE_PARTS)
    h.template()
    h.template("T2", text=PLAIN)
    for i in range(5):
        h.send(T0 + (2 + i) * HOUR, body(rng, PLAIN), tid="T2")
    for day in range(2):
        steady(h, rng, T0 + day * DAY + 9 * HOUR, 8, per_hour=20)
    return h


def test_a_stolen_key_blasting_a_template_its_lender_barely_used_without_any_link_raises_volume_burst():
    # No link, no new number: the template is too young to know its own sources, the lender is not
    rng = random.Random(40)
    h = lender_with_a_barely_used_template(rng)
    blast = T0 + 2 * DAY + 3 * HOUR
    for i in range(60):
        h.send(blast + i * 30_000, body(rng, PLAIN), tid="T2", key="key-stolen", ip="185.220.101.7")
    h.flush()
    fired = h.firing("volume_burst")
    assert fired and fired[0]["entity_type"] == "sender" and fired[0]["entity_id"] == "lenderA"
    assert fired[0]["template_id"] == "T2" and "key-stolen" in fired[0]["summary"]
    assert fired[0]["evidence"]["new_sources"] == ["api key key-stolen / ip 185.220.101.*"]
    assert fired[0]["window_end"] - blast <= 15 * MIN
    assert h.firing("content_drift") == []


def test_a_template_beyond_the_senders_book_is_left_to_its_own_judgement(monkeypatch):
    # the book holds T1 and T2 only: the stolen key's burst on T2 is the book's, the larger one on T3 is not
    monkeypatch.setattr("smsstream.detection.templates.sender_book.MAX_SENDER_TEMPLATES", 2)
    rng = random.Random(43)
    h = lender_with_a_barely_used_template(rng)
    h.template("T3", text=PLAIN)
    blast = T0 + 2 * DAY + 3 * HOUR
    for i in range(60):
        if i % 2:
            h.send(blast + i * 30_000, body(rng, PLAIN), tid="T2", key="key-stolen", ip="185.220.101.7")
        h.send(blast + i * 30_000 + 1, body(rng, PLAIN), tid="T3", key="key-stolen", ip="185.220.101.7")
    h.flush()
    assert {a["template_id"] for a in h.firing("volume_burst")} == {"T2"}


def night_campaign_on_the_barely_used_template(key: str, ip: str) -> Harness:
    """The lender's two days and five sends of T2, then 300 sends of T2 one night from the given key."""
    rng = random.Random(41)
    h = lender_with_a_barely_used_template(rng)
    for i in range(300):
        h.send(T0 + 2 * DAY + 3 * HOUR + i * 6_000, body(rng, PLAIN), tid="T2", key=key, ip=ip)
    h.flush()
    return h


@pytest.mark.parametrize("key, ip", [("key-1", "10.0.0.5"), ("key-9", "10.0.0.77")],
                         ids=["its usual key", "a new key from its own network"])
def test_a_campaign_on_a_barely_used_template_through_the_lenders_own_network_stays_quiet(key, ip):
    assert night_campaign_on_the_barely_used_template(key, ip).firing() == []


def test_the_same_campaign_from_a_key_and_network_the_lender_never_used_raises_volume_burst():
    fired = night_campaign_on_the_barely_used_template("key-stolen", "185.220.101.7").firing()
    assert [(a["entity_id"], a["reason"]) for a in fired] == [("lenderA", "volume_burst")]


def campaign_after_a_rotation_to_a_new_host(campaign_key: str, campaign_ip: str) -> Harness:
    """The lender's two days, then two hours of its everyday template from key-2 on a new host; three hours
    later a campaign on the barely used T2 from the given key."""
    rng = random.Random(42)
    h = lender_with_a_barely_used_template(rng)
    rotated = T0 + 2 * DAY + 9 * HOUR
    steady(h, rng, rotated, 2, per_hour=20, key="key-2", ip="172.16.4.9")
    for i in range(300):
        h.send(rotated + 3 * HOUR + i * 6_000, body(rng, PLAIN), tid="T2", key=campaign_key, ip=campaign_ip)
    h.flush()
    return h


def test_a_key_rotation_to_a_new_host_then_a_campaign_on_a_barely_used_template_stays_quiet():
    # The new key and host carry the lender's everyday template first: they are the lender's own
    assert campaign_after_a_rotation_to_a_new_host("key-2", "172.16.4.9").firing() == []


def test_the_same_campaign_from_a_third_key_and_host_that_carried_nothing_else_raises_volume_burst():
    fired = campaign_after_a_rotation_to_a_new_host("key-3", "192.168.7.9").firing()
    assert [(a["entity_id"], a["reason"]) for a in fired] == [("lenderA", "volume_burst")]


def campaign_on_a_template_with_history(history_sends: int) -> Harness:
    """A registered template sent ``history_sends`` times from key-1 over its first day (while key-1 keeps
    sending), then a campaign from key-7 on a network it never used."""
    rng = random.Random(31)
    h = Harness()
    h.template()
    for i in range(history_sends):
        h.send(T0 + 10 * HOUR + i * (15 * HOUR // history_sends), body(rng), key="key-1", ip="10.0.0.5")
    campaign = T0 + 2 * DAY + 10 * HOUR
    for i in range(300):
        h.send(campaign + i * 10_000, body(rng), key="key-7", ip="10.9.0.5")
        if history_sends > 5 and i % 20 == 0:
            h.send(campaign + i * 10_000 + 1, body(random.Random(i)), key="key-1", ip="10.0.0.5")
    h.flush()
    return h


def test_a_template_sent_only_a_handful_of_times_has_no_sources_to_call_a_campaigns_key_new():
    # A lender's campaign on a template it had barely used, through another of its own keys: the
    # template's five sends say nothing about which keys are the lender's.
    assert campaign_on_a_template_with_history(5).firing() == []


def test_the_same_campaign_on_a_template_with_a_days_history_from_its_key_raises_volume_burst():
    fired = campaign_on_a_template_with_history(300).firing()
    assert [a["reason"] for a in fired] == ["volume_burst"] and "key-7" in fired[0]["summary"]


KASH = "[KashRide] Your KYC documents have been received and are under review."


def test_a_never_used_registered_template_whose_first_sends_already_carry_a_link_raises_content_drift():
    # Seen on simulated traffic (seed 14): a stolen key's very first sends of a dormant registered template all
    # carried the injected link, which the template then "learned"; its plain sends minutes later fit the
    # registration, so the registration is current and the link is tampering.
    h = Harness()
    h.template(tid="T7", sender="kashride", text=KASH)
    attack = T0 + 30 * HOUR
    rng = random.Random(24)
    for i in range(30):
        link = rng.random() < 0.7 or i < 4
        b = f"{KASH} https://kashride-refund.site/2b93d589" if link else KASH
        h.send(attack + i * MIN, b, tid="T7", sender="kashride", key="ak-stolen", ip="42.67.221.216")
    h.flush()
    fired = h.firing("content_drift")
    assert fired and fired[0]["evidence"]["urls"] == ["kashride-refund.site"]
    assert fired[0]["severity"] == "critical"
    assert fired[0]["window_end"] - attack <= 10 * MIN


def kyc_notices_with_a_link(plain_ones: bool) -> Harness:
    """Six hours of a registered template's sends carrying a link its text lacks; maybe every tenth one in
    its first hour as registered, without the link."""
    h = Harness()
    h.template(tid="T7", sender="kashride", text=KASH)
    start = T0 + 30 * HOUR
    for i in range(120):
        plain = plain_ones and i < 20 and i % 10 == 9
        h.send(start + i * 3 * MIN, KASH if plain else f"{KASH} https://kashride.in/kyc", tid="T7", sender="kashride")
    h.flush()
    return h


def test_a_registered_template_whose_every_send_carries_a_link_its_stale_registration_lacks_stays_quiet():
    # The sender added its link to the text and never re-registered: nothing ever fits, the link is its normal.
    assert kyc_notices_with_a_link(plain_ones=False).firing() == []


def test_sends_that_fit_the_registration_among_them_make_the_link_tampering():
    fired = kyc_notices_with_a_link(plain_ones=True).firing()
    assert {a["reason"] for a in fired} == {"content_drift"} and fired[0]["evidence"]["urls"] == ["kashride.in"]


# --- reading spread over several readers ---------------------------------------------

def _reads(rng, n=600):
    from smsstream.detection.facts import TemplateRead, rank_of

    out = []
    for i in range(n):
        mid = f"m{i}"
        # more senders, sources and markers than one tally names, so its caps decide what is named
        unregistered = (f"d:x{rng.randrange(50)}.top",) if rng.random() < 0.5 else ()
        markers = unregistered + ((f"p:+8617{rng.randrange(40):04d}",) if rng.random() < 0.5 else ())
        out.append(TemplateRead(T0 + i * 50, "T1", "T1#0", mid, rank_of(mid), rank_of(f"+8613{rng.randrange(99)}"),
                                f"s{rng.randrange(30)}" if rng.random() < 0.3 else None,
                                (f"k{rng.randrange(60)}", f"10.0.{rng.randrange(9)}.1"),
                                markers, unregistered, not markers, "changed" if rng.random() < 0.4 else None))
    return out


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_a_templates_tally_is_the_same_however_its_sends_were_split_among_readers(seed):
    from smsstream.detection.facts import TemplateTally

    rng = random.Random(seed)
    reads = _reads(rng)
    whole = TemplateTally("T1", "T1#0")
    for r in reads:
        whole.add(r)
    parts = [TemplateTally("T1", f"T1#{i}") for i in range(5)]
    for r in rng.sample(reads, len(reads)):
        parts[rng.randrange(5)].add(r)
    merged = parts[0]
    for p in rng.sample(parts[1:], 4):
        merged.merge(p)
    assert len(whole.sources) == 33 and len(whole.senders) == 17 and len(whole.markers) == 32
    for field in ("count", "first_ts", "ts", "fitting", "words_drift", "words_samples", "unregistered_markers",
                  "markers", "senders", "sources"):
        assert getattr(merged, field) == getattr(whole, field), field


def _sender_book_with_its_own_link():
    from smsstream.detection.base import PartContext
    from smsstream.detection.templates import SenderBook, TemplateLink

    book = SenderBook(PartContext(Pseudonymizer("k")))
    book.process("fact.template-links", "lender-b", TemplateLink(T0, "lender-b", "tpl-b", "lender-b.example", None))
    return book


def _reported_when_two_readers_tell(book, template_id: str, domain: str) -> list:
    """The message ids a sender's book reports when two readers of a template tell it the same foreign link."""
    from smsstream.detection.templates import TemplateLink

    later = T0 + 8 * 3_600_000
    for message_id in ("m1", "m2"):
        book.process("fact.template-links", "lender-b",
                     TemplateLink(later, "lender-b", template_id, domain, message_id, foreign=True))
    found = book.close("lender-b", later - later % 60_000, later - later % 60_000 + 60_000)
    return [f.evidence["message_ids"] for f in found]


def test_a_sender_that_carried_many_other_lenders_links_still_reports_a_new_one_once():
    from smsstream.detection.templates import TemplateLink
    from smsstream.detection.templates.sender_book import MAX_SENDER_DOMAINS

    book = _sender_book_with_its_own_link()
    for i in range(MAX_SENDER_DOMAINS + 5):  # more foreign links over the weeks than the book keeps
        book.process("fact.template-links", "lender-b",
                     TemplateLink(T0 + i * 60_000, "lender-b", f"tpl-{i}", f"lender-{i}.example", None, foreign=True))
    assert _reported_when_two_readers_tell(book, "tpl-z", "pay.lender-z.example") == [["m1"]]
    assert len(book.entities["lender-b"].strays) == MAX_SENDER_DOMAINS
