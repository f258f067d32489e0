"""rebind_anomaly: mass rebinds, fan-in, fan-out, flapping and stale sends, each with its quiet twin."""

from __future__ import annotations

import json
import pickle
import random
from datetime import datetime, timezone

from smsstream.detection.engine import Engine
from smsstream.detection.rebind import REBIND_PARTS
from smsstream.pseudonym import Pseudonymizer
from smsstream.records import BINDINGS, SENDS, Binding, Send
from traffic import detector_parts, differences

PN = Pseudonymizer("test-key")
MIN = 60_000
HOUR = 60 * MIN
DAY = 24 * HOUR
T0 = int(datetime(2026, 11, 2, tzinfo=timezone.utc).timestamp() * 1000)


class World:
    """Events for the rebind parts, fed through the engine in event-time order."""

    def __init__(self):
        self.events: list[tuple[int, int, str, object]] = []
        self.n = 0

    def bind(self, ts, sender, account, old, new, channel="app", device=None, ip="100.64.0.1"):
        self.n += 1
        self.events.append((ts, self.n, BINDINGS, Binding(f"e{self.n}", ts, sender, account, old, new, channel,
                                                          device, ip)))

    def remind(self, ts, sender, number, account=None, category="repayment_reminder"):
        self.n += 1
        self.events.append((ts, self.n, SENDS, Send(f"m{self.n}", ts, sender, "T1", number, category,
                                                    "Your repayment is due.", account)))

    def run(self) -> list[dict]:
        engine = Engine(PN, parts=detector_parts(*REBIND_PARTS))
        self.engine = engine
        alerts = []
        for _, _, topic, record in sorted(self.events, key=lambda e: (e[0], e[1])):
            alerts.extend(engine.ingest(topic, record))
        alerts.extend(engine.flush())
        self.alerts = alerts
        return alerts

    def firing(self, reason=None):
        return [a for a in self.alerts if a["status"] == "firing" and (reason is None or a["reason"] == reason)]


def number(i: int) -> str:
    return f"+8613{i:09d}"


def handful_a_day(w: World, rng, sender, days, per_day=6, start=T0):
    """A large lender's ordinary rebinds: customers changing number, through every channel."""
    k = 0
    for d in range(days):
        for _ in range(per_day):
            k += 1
            ts = start + d * DAY + 8 * HOUR + rng.randrange(12 * HOUR)
            channel = rng.choice(["app", "app", "web", "branch"])
            device = f"staff-{sender}-1" if channel == "branch" else (f"phone-{sender}-{k}" if channel == "app" else None)
            w.bind(ts, sender, f"{sender}-acc{k}", number(10_000 + k), number(20_000 + k), channel, device)


# --- mass_rebind -------------------------------------------------------------------

def test_a_burst_of_rebinds_from_two_devices_raises_mass_rebind_naming_them():
    rng = random.Random(1)
    w = World()
    handful_a_day(w, rng, "bigLender", 3)
    attack = T0 + 3 * DAY + 2 * HOUR
    for i in range(20):
        w.bind(attack + i * 90_000, "bigLender", f"victim{i}", number(50_000 + i), number(60_000 + i % 3),
               "api", device=f"evil-{i % 2}", ip="203.0.113.9")
    w.run()
    fired = w.firing("mass_rebind")
    assert len(fired) == 1
    alert = fired[0]
    assert alert["entity_id"] == "bigLender" and alert["entity_type"] == "sender"
    assert set(alert["evidence"]["devices"]) == {"evil-0", "evil-1"}
    assert alert["window_end"] - attack <= 10 * MIN
    assert alert["observed"] > alert["expected"]


def lenders_ordinary_days(sender: str, days: int, per_day: int, takeover_at: int | None) -> World:
    """A lender's ordinary rebinds for ``days`` days; maybe 25 accounts taken over from one device at night."""
    w = World()
    handful_a_day(w, random.Random(2), sender, days, per_day=per_day)
    if takeover_at is not None:
        for i in range(25):
            w.bind(takeover_at + i * 40_000, sender, f"victim{i}", number(50_000 + i), number(60_000 + i % 3),
                   "api", device="evil-0", ip="203.0.113.9")
    w.run()
    return w


def test_a_large_lenders_normal_daily_handful_of_rebinds_stays_quiet():
    assert lenders_ordinary_days("bigLender", 10, 8, takeover_at=None).firing() == []


def test_a_night_takeover_of_25_accounts_at_that_lender_raises_mass_rebind():
    attack = T0 + 9 * DAY + 2 * HOUR
    fired = lenders_ordinary_days("bigLender", 10, 8, takeover_at=attack).firing("mass_rebind")
    assert fired and fired[0]["entity_id"] == "bigLender" and fired[0]["window_end"] - attack <= 15 * MIN


def test_a_lender_rebinding_150_accounts_a_day_stays_quiet_from_its_first_day_on():
    assert lenders_ordinary_days("hugeLender", 7, 150, takeover_at=None).firing() == []


def test_a_mass_rebind_at_a_lender_used_to_150_a_day_still_fires():
    attack = T0 + 6 * DAY + 2 * HOUR  # at night, when the lender's own staff are not working
    fired = lenders_ordinary_days("hugeLender", 7, 150, takeover_at=attack).firing("mass_rebind")
    assert fired and fired[0]["entity_id"] == "hugeLender"
    assert fired[0]["window_end"] - attack <= 15 * MIN


def test_a_mass_rebinds_evidence_does_not_depend_on_the_order_events_arrive_in():
    rng = random.Random(4)
    w = World()
    handful_a_day(w, rng, "bigLender", 2)
    attack = T0 + 2 * DAY + 2 * HOUR
    for i in range(12):
        w.bind(attack + i * 50_000, "bigLender", f"victim{i}", number(50_000 + i), number(60_000 + i),
               "api", device="evil-0", ip="203.0.113.9")
    in_order = sorted(w.events, key=lambda e: (e[0], e[1]))
    # each attack binding swapped with the next: 50 s late, within an allowed lateness of two minutes
    shuffled = in_order[:-12] + [e for pair in zip(in_order[-11::2], in_order[-12::2]) for e in pair]

    def fired(events):
        engine = Engine(PN, parts=detector_parts(*REBIND_PARTS), lateness_ms=2 * MIN)
        alerts = [a for _, _, topic, record in events for a in engine.ingest(topic, record)] + engine.flush()
        return sorted((a["dedup_key"], a["window_end"], a["last_seen"], json.dumps(a["evidence"]))
                      for a in alerts if a["status"] == "firing")

    assert fired(in_order) and fired(shuffled) == fired(in_order)


# --- number_fan_in -------------------------------------------------------------------

def test_one_number_collecting_accounts_across_lenders_raises_number_fan_in():
    w = World()
    collector = number(999)
    start = T0 + 10 * HOUR
    for i, lender in enumerate(["lenderA", "lenderB", "lenderC", "lenderD"]):
        w.bind(start + i * 20 * MIN, lender, f"acc{i}", number(100 + i), collector, "web")
    w.run()
    fired = w.firing("number_fan_in")
    assert fired and fired[0]["entity_id"] == PN.pseudonym(collector)
    assert fired[0]["window_end"] - start <= 45 * MIN
    assert collector not in json.dumps(w.alerts)


def family_number(third_account: bool) -> World:
    """Mum and dad move their accounts at one lender to the phone they share; maybe a third account follows."""
    w = World()
    shared = number(777)
    w.bind(T0 + 9 * HOUR, "lenderA", "mum", number(1), shared)
    w.bind(T0 + 9 * HOUR + 30 * MIN, "lenderA", "dad", number(2), shared)
    if third_account:
        w.bind(T0 + 10 * HOUR, "lenderA", "stranger", number(3), shared)
    w.run()
    return w


def test_a_family_sharing_one_number_for_two_accounts_stays_quiet():
    assert family_number(third_account=False).firing() == []


def test_a_third_account_from_a_third_number_onto_the_family_phone_raises_number_fan_in():
    assert [a["reason"] for a in family_number(third_account=True).firing()] == ["number_fan_in"]


def customer_moves_all_loans(others_join: bool) -> World:
    """One customer moves four loans from their old number to a new one; maybe two accounts from other
    numbers are moved onto it too."""
    w = World()
    old, new = number(1), number(2)
    for i, lender in enumerate(["lenderA", "lenderB", "lenderC", "lenderD"]):
        w.bind(T0 + 9 * HOUR + i * 10 * MIN, lender, f"me@{lender}", old, new, "app", device="my-phone")
    if others_join:
        for i, lender in enumerate(["lenderE", "lenderF"]):
            w.bind(T0 + 10 * HOUR + i * 10 * MIN, lender, f"other{i}", number(3 + i), new, "web")
    w.run()
    return w


def test_a_customer_moving_all_their_loans_to_a_new_number_stays_quiet():
    assert customer_moves_all_loans(others_join=False).firing() == []


def test_accounts_from_two_more_numbers_joining_them_raise_number_fan_in():
    fired = customer_moves_all_loans(others_join=True).firing("number_fan_in")
    assert fired and fired[0]["entity_id"] == PN.pseudonym(number(2))


# --- device_fan_out -------------------------------------------------------------------

def test_one_device_rebinding_many_accounts_raises_device_fan_out():
    w = World()
    start = T0 + 14 * HOUR
    for i in range(6):
        w.bind(start + i * 15 * MIN, f"lender{i % 3}", f"acc{i}", number(300 + i), number(400 + i), "app",
               device="dev-x")
    w.run()
    fired = w.firing("device_fan_out")
    assert fired and fired[0]["entity_id"] == "dev-x"
    assert fired[0]["window_end"] - start <= 90 * MIN


def branch_device(night_burst: bool) -> World:
    """Five days of a branch device's dozen rebinds a day; maybe 30 accounts moved from it one night."""
    rng = random.Random(3)
    w = World()
    for d in range(5):
        for i in range(12):
            ts = T0 + d * DAY + 9 * HOUR + rng.randrange(8 * HOUR)
            w.bind(ts, "bank", f"c{d}-{i}", number(1000 + 20 * d + i), number(5000 + 20 * d + i), "branch",
                   device="branch-7")
    if night_burst:
        for i in range(30):
            w.bind(T0 + 4 * DAY + 2 * HOUR + i * MIN, "bank", f"n{i}", number(3000 + i), number(4000 + i), "branch",
                   device="branch-7")
    w.run()
    return w


def test_a_branch_device_doing_its_daily_work_stays_quiet():
    assert branch_device(night_burst=False).firing("device_fan_out") == []


def test_the_branch_device_moving_30_accounts_in_one_night_raises_device_fan_out():
    fired = branch_device(night_burst=True).firing("device_fan_out")
    assert fired and fired[0]["entity_id"] == "branch-7"


# --- account_flapping -------------------------------------------------------------------

def test_an_account_changing_number_every_two_hours_is_caught_at_its_second_change():
    w = World()
    a, b = number(11), number(12)
    start = T0 + 6 * HOUR
    w.bind(start - 30 * DAY, "lenderA", "acc1", None, a)
    for i in range(6):
        old, new = (a, b) if i % 2 == 0 else (b, a)
        w.bind(start + i * 2 * HOUR, "lenderA", "acc1", old, new, "web")
    w.run()
    fired = w.firing("account_flapping")
    assert fired and fired[0]["entity_type"] == "account" and fired[0]["entity_id"] == "lenderA|acc1"
    assert fired[0]["window_end"] - start <= 2 * HOUR + 2 * MIN
    assert a not in json.dumps(w.alerts)


def test_an_account_keyed_by_its_customers_mobile_number_is_shown_only_as_a_pseudonym():
    w = World()
    a, b = number(11), number(12)
    mobile = "13800138000"  # the lender's account id is the customer's original mobile number
    start = T0 + 6 * HOUR
    for i in range(4):
        old, new = (a, b) if i % 2 == 0 else (b, a)
        w.bind(start + i * 20 * MIN, "lenderA", mobile, old, new, "web", device="dev-1")
        w.remind(start + i * 20 * MIN + 5 * MIN, "lenderA", old, mobile)
        w.remind(start + i * 20 * MIN + 9 * MIN, "lenderA", old, mobile)
    w.run()
    fired = w.firing("account_flapping")
    assert fired and fired[0]["entity_id"] == f"lenderA|{PN.pseudonym(mobile)}"
    assert {"account_flapping", "stale_binding_send"} <= {a["reason"] for a in w.firing()}
    assert mobile not in json.dumps(w.alerts)


def single_number_change(and_back: bool) -> World:
    """A customer opens an account and changes its number once; maybe it is moved back later that day."""
    w = World()
    w.bind(T0 + HOUR, "lenderA", "acc1", None, number(11))
    w.bind(T0 + 5 * HOUR, "lenderA", "acc1", number(11), number(12), "app", device="phone-1")
    if and_back:
        w.bind(T0 + 7 * HOUR, "lenderA", "acc1", number(12), number(11), "web")
    w.run()
    return w


def test_a_customers_single_number_change_does_not_flap():
    assert single_number_change(and_back=False).firing() == []


def test_the_account_moved_back_to_the_number_it_left_raises_account_flapping():
    assert [a["reason"] for a in single_number_change(and_back=True).firing()] == ["account_flapping"]


# --- stale_binding_send -------------------------------------------------------------------

def test_reminders_still_going_to_the_number_an_account_left_raise_stale_binding_send():
    w = World()
    old, new = number(21), number(22)
    moved = T0 + 10 * HOUR
    w.bind(moved, "lenderA", "acc1", old, new, "app", device="phone-1")
    first_stale = moved + 20 * HOUR
    for d in range(3):
        w.remind(first_stale + d * DAY, "lenderA", old, "acc1")
    w.run()
    fired = w.firing("stale_binding_send")
    assert fired and fired[0]["entity_id"] == PN.pseudonym(old)
    assert fired[0]["window_end"] - first_stale <= 2 * MIN
    assert "acc1" in fired[0]["summary"]


def legitimate_change(reminder_to_old_number: bool) -> World:
    """An account moves; one stray reminder at the change, then daily reminders to the new number, and
    maybe one to the old number two days on."""
    w = World()
    old, new = number(21), number(22)
    moved = T0 + 10 * HOUR
    w.bind(moved, "lenderA", "acc1", old, new, "app", device="phone-1")
    w.remind(moved + 2 * MIN, "lenderA", old, "acc1")  # one stray message right at the change
    for d in range(1, 4):
        w.remind(moved + d * DAY, "lenderA", new, "acc1")
    if reminder_to_old_number:
        w.remind(moved + 2 * DAY + HOUR, "lenderA", old, "acc1")
    w.run()
    return w


def test_reminders_to_the_new_number_after_a_legitimate_change_stay_quiet():
    assert legitimate_change(reminder_to_old_number=False).firing() == []


def test_a_reminder_to_the_number_the_account_left_two_days_on_raises_stale_binding_send():
    assert [a["reason"] for a in legitimate_change(reminder_to_old_number=True).firing()] == ["stale_binding_send"]


def sends_to_an_old_number(addressed_reminder: bool) -> World:
    """A day after an account moved, marketing about it and an unaddressed send go to its old number;
    maybe a reminder about the account too."""
    w = World()
    old, new = number(21), number(22)
    moved = T0 + 10 * HOUR
    w.bind(moved, "lenderA", "acc1", old, new)
    w.remind(moved + DAY, "lenderA", old, "acc1", category="loan_marketing")
    w.remind(moved + DAY, "lenderA", old, None)
    if addressed_reminder:
        w.remind(moved + DAY, "lenderA", old, "acc1")
    w.run()
    return w


def test_marketing_and_unaddressed_sends_to_an_old_number_are_not_stale_binding_sends():
    assert sends_to_an_old_number(addressed_reminder=False).firing() == []


def test_a_reminder_about_the_account_beside_them_is_a_stale_binding_send():
    assert [a["reason"] for a in sends_to_an_old_number(addressed_reminder=True).firing()] == ["stale_binding_send"]


def recycled_number(new_customer_at: str) -> World:
    """An account at lenderA leaves a number, which a new customer of ``new_customer_at`` gets a day later;
    a reminder about the old account reaches it after that."""
    w = World()
    old, new = number(21), number(22)
    w.bind(T0 + HOUR, "lenderA", "acc1", old, new)
    w.bind(T0 + DAY, new_customer_at, "acc2", None, old)
    w.remind(T0 + 2 * DAY, "lenderA", old, "acc1")
    w.run()
    return w


def test_a_recycled_number_rebound_to_a_new_customer_of_the_same_lender_is_theirs_again():
    assert recycled_number(new_customer_at="lenderA").firing() == []


def test_a_recycled_number_now_another_lenders_customers_still_gets_the_stale_reminder_flagged():
    assert [a["reason"] for a in recycled_number(new_customer_at="lenderB").firing()] == ["stale_binding_send"]


# --- state -----------------------------------------------------------------------

def test_rebind_state_survives_pickling_and_stays_bounded():
    rng = random.Random(4)
    w = World()
    handful_a_day(w, rng, "bigLender", 2)
    collector = number(999)
    for i in range(100):
        w.bind(T0 + 2 * DAY + i * MIN, f"l{i % 7}", f"a{i}", number(7000 + i), collector, "api", device="dev-y")
    w.run()
    for part in w.engine.parts:
        for state in part.entities.values():
            assert differences(pickle.loads(pickle.dumps(state)), state) == []
    numbers = next(p for p in w.engine.parts if p.name == "rebind_number")
    assert len(numbers.entities[w.engine.ctx.pseudonym(collector)].arrivals) <= 32
    device = next(p for p in w.engine.parts if p.name == "rebind_device")
    assert len(device.entities["dev-y"].rows) <= 64


def test_one_stray_reminder_soon_after_the_move_is_not_yet_a_pattern_but_two_are():
    quiet, loud = World(), World()
    old, new = number(21), number(22)
    moved = T0 + 10 * HOUR
    for w in (quiet, loud):
        w.bind(moved, "lenderA", "acc1", old, new)
        w.remind(moved + 20 * MIN, "lenderA", old, "acc1")
    loud.remind(moved + 35 * MIN, "lenderA", old, "acc1")
    quiet.run()
    loud.run()
    assert quiet.firing() == []
    assert [a["reason"] for a in loud.firing()] == ["stale_binding_send"]


def test_a_family_sharing_a_number_across_two_lenders_is_at_most_info():
    w = World()
    shared = number(777)
    w.bind(T0 + 9 * HOUR, "lenderA", "mum", number(1), shared)
    w.bind(T0 + 11 * HOUR, "lenderB", "dad", number(2), shared)
    w.run()
    assert [(a["reason"], a["severity"]) for a in w.firing()] == [("number_fan_in", "info")]


def rebinds_every_five_minutes(accounts: int) -> World:
    """Two ordinary days at a lender, then 24 rebinds in two hours: one account flapping, or as many accounts."""
    w = World()
    handful_a_day(w, random.Random(5), "lenderA", 2)
    start = T0 + 2 * DAY + 6 * HOUR
    for i in range(24):
        if accounts == 1:
            old, new = (number(11), number(12)) if i % 2 == 0 else (number(12), number(11))
        else:
            old, new = number(100 + i), number(200 + i)
        w.bind(start + i * 5 * MIN, "lenderA", f"acc{i % accounts}", old, new, "app", device=f"dev-{i % 2}")
    w.run()
    return w


def test_one_account_flapping_is_not_a_mass_rebind_at_its_lender():
    assert {a["reason"] for a in rebinds_every_five_minutes(accounts=1).firing()} == {"account_flapping"}


def test_as_many_rebinds_of_different_accounts_raise_mass_rebind():
    assert "mass_rebind" in {a["reason"] for a in rebinds_every_five_minutes(accounts=24).firing()}


def test_one_phone_moving_two_peoples_accounts_at_two_lenders_is_at_most_info():
    w = World()
    w.bind(T0 + 9 * HOUR, "lenderA", "sister", number(1), number(3), "app", device="family-phone")
    w.bind(T0 + 9 * HOUR + 20 * MIN, "lenderB", "brother", number(2), number(4), "app", device="family-phone")
    w.run()
    assert [(a["reason"], a["severity"]) for a in w.firing()] == [("device_fan_out", "info")]
