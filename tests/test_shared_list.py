"""non_borrower_spike / shared_list: one list of numbers worked by several lenders that none of them is owed by."""

import random

import orjson

from smsstream.config import Settings
from smsstream.detection.facts import LOAN_SENDS, LoanSend
from smsstream.detection.shared_list import MAX_LENDERS, NumberLenders
from smsstream.detection.base import PartContext
from smsstream.pseudonym import Pseudonymizer
from smsstream.records import BORROWERS, SENDS, Borrower, Send, Source
from traffic import DAY, HOUR, KEY, MINUTE, T0, Sends, book, control, engine, firing, numbers, run, under

KIND = "non_borrower_spike"
LENDERS = ("lender-a", "lender-b", "lender-c")


def lenders(rng: random.Random, names=LENDERS, hours: int = 10, per_minute: float = 4, stranger_share=0.01,
            strangers: list[str] | None = None, size: int = 2000) -> list:
    """Each lender's own book and reminders, with its honest share of strays (spread over the number space,
    or drawn from ``strangers``)."""
    events: list = []
    for i, name in enumerate(names):
        borrowers = numbers(rng, size, prefix=f"+8613{i}")
        events += book(name, borrowers)
        events += Sends(rng, name, f"tpl-{name}", borrowers).run(T0, hours * 60, per_minute, stranger_share,
                                                                 strangers=strangers)
    return events


def work(rng: random.Random, sender: str, targets: list[str], start: int, hours: float, per_hour: float,
         category: str = "collection") -> list:
    """``sender`` messaging numbers picked from ``targets`` at random, ``per_hour`` an hour."""
    out = []
    span = int(hours * HOUR)
    for _ in range(round(hours * per_hour)):
        Sends.counter += 1
        ts = start + rng.randrange(span)
        out.append((SENDS, Send(f"{sender}-l{Sends.counter}", ts, sender, f"tpl-{sender}", rng.choice(targets),
                                category, "FINAL NOTICE: settle your loan today.", None,
                                Source("key-1", "10.0.0.1", "api"), "carrier-a")))
    return out


def listed(alerts: list[dict]) -> list[dict]:
    return [a for a in firing(alerts, KIND) if a["reason"] == "shared_list"
            or "shared_list" in a["evidence"]]


def senders(alerts: list[dict]) -> set[str]:
    return {a["entity_id"] for a in alerts if a["entity_type"] == "sender"}


def three_lenders_working(one_list: bool) -> list[dict]:
    """Three lenders of ~6,000 reminders a day add 5 non-borrower collection notices an hour each for six
    hours, inside their own honest 1 % (no share alert): to numbers from one list of 40, or each to numbers
    of its own spread over the number space."""
    rng = random.Random(1)
    events = lenders(rng)
    shared = numbers(rng, 40, prefix="+86150")
    for name in LENDERS:
        targets = shared if one_list else numbers(rng, 40, prefix="+86150")
        events += work(rng, name, targets, T0 + 3 * HOUR, 6, 5)
    return run(events)


def test_three_lenders_whose_extra_strays_are_each_their_own_stay_quiet():
    assert firing(three_lenders_working(one_list=False), KIND) == []


def test_three_lenders_working_one_list_fire_shared_list_each_naming_the_others():
    alerts = three_lenders_working(one_list=True)
    hits = firing(alerts, KIND)
    assert senders(hits) == set(LENDERS)
    assert {a["reason"] for a in hits} == {"shared_list"}, "each lender's own share stays within its usual"
    for alert in hits:
        others = set(alert["evidence"]["other_senders"])
        assert others == set(LENDERS) - {alert["entity_id"]}
        assert alert["observed"] >= 3 and alert["observed"] > 10 * alert["expected"]
        assert all(n.startswith("pn:") for n in alert["evidence"]["numbers"])
    first = {s: min(a["window_end"] for a in hits if a["entity_id"] == s) for s in LENDERS}
    assert all(T0 + 3 * HOUR < t <= T0 + 8 * HOUR for t in first.values()), first
    # the related alerts show the same numbers: the pseudonyms one lender shows, another shows too
    shown = [set(a["evidence"]["numbers"]) for a in hits]
    assert all(s & set().union(*(t for t in shown if t is not s)) for s in shown)
    assert b"+8615" not in orjson.dumps(alerts)


def a_lone_number(more_numbers: int, level: str | None = None) -> list[dict]:
    """Old data at three lenders points at one number (a recycled one, say); maybe at more, the same three.

    ``level``: an operator's sensitivity entry for the kind (none: the default, normal)."""
    rng = random.Random(2)
    events = lenders(rng, hours=6)
    targets = numbers(rng, 1 + more_numbers, prefix="+86151")
    for name in LENDERS:
        for i, number in enumerate(targets):
            events += [(SENDS, Send(f"{name}-old-{i}", T0 + 2 * HOUR + i * MINUTE, name, f"tpl-{name}", number,
                                    "repayment_reminder", "Your EMI is due.", None))]
    if level is None:
        return run(events)
    return under(events, control("level-nb", "sensitivity", {"kind": KIND}, level=level))


def test_one_number_hit_by_three_lenders_is_a_stray_not_a_list():
    assert firing(a_lone_number(more_numbers=0), KIND) == []


def test_five_numbers_hit_by_the_same_three_lenders_are_a_list():
    assert senders(listed(a_lone_number(more_numbers=4))) == set(LENDERS)


def test_three_numbers_hit_by_the_same_three_lenders_page_only_at_high_sensitivity():
    assert listed(a_lone_number(more_numbers=2)) == []
    strict = listed(a_lone_number(more_numbers=2, level="high"))
    assert senders(strict) == set(LENDERS)
    assert all(a["reason"] == "shared_list" and a["controls"] == ["level-nb"] for a in strict)


def test_the_five_numbers_that_page_at_normal_sensitivity_stay_quiet_at_low():
    assert listed(a_lone_number(more_numbers=4, level="low")) == []


def families(owe_both: bool) -> list[dict]:
    """Thirty families each share one phone that borrows from two lenders, and both lenders remind every phone."""
    rng = random.Random(3)
    names = LENDERS[:2]
    events = lenders(rng, names, hours=6)
    phones = numbers(rng, 30, prefix="+86152")
    if owe_both:
        events += book("lender-a", phones) + book("lender-b", phones)
    for name in names:
        events += work(rng, name, phones, T0 + 2 * HOUR, 2, 30, category="repayment_reminder")
    return run(events)


def test_a_family_phone_owing_two_lenders_hears_from_both_without_an_alert():
    assert firing(families(owe_both=True), KIND) == []


def test_the_same_reminders_to_phones_that_owe_neither_lender_fire():
    assert senders(listed(families(owe_both=False))) == {"lender-a", "lender-b"}


def recycled_numbers(were_borrowers: bool) -> list[dict]:
    """Two lenders keep reminding 30 numbers whose owner borrowed from both and moved to a new number
    (both books removed the pair an hour earlier: stale data, ``stale_binding_send``'s business)."""
    rng = random.Random(4)
    names = LENDERS[:2]
    events = lenders(rng, names, hours=6)
    old = numbers(rng, 30, prefix="+86153")
    if were_borrowers:
        for name in names:
            events += book(name, old, ts=T0 - 10 * DAY)
            events += [(BORROWERS, Borrower(name, n, None, "closed", T0 + HOUR, removed=True)) for n in old]
    for name in names:
        events += work(rng, name, old, T0 + 2 * HOUR, 2, 20, category="repayment_reminder")
    return run(events)


def test_reminders_still_chasing_numbers_that_left_both_books_are_stale_data_not_a_list():
    assert firing(recycled_numbers(were_borrowers=True), KIND) == []


def test_the_same_reminders_to_numbers_neither_lender_ever_had_fire():
    assert senders(listed(recycled_numbers(were_borrowers=False))) == {"lender-a", "lender-b"}


def marketing(category: str) -> list[dict]:
    """Three lenders send one list of 40 strangers 8 SMS an hour each for three hours."""
    rng = random.Random(5)
    events = lenders(rng, hours=6)
    strangers = numbers(rng, 40, prefix="+86154")
    for name in LENDERS:
        events += work(rng, name, strangers, T0 + 2 * HOUR, 3, 8, category=category)
    return run(events)


def test_loan_marketing_to_one_list_never_counts():
    assert firing(marketing("loan_marketing"), KIND) == []


def test_the_same_list_sent_collection_notices_fires():
    assert senders(listed(marketing("collection"))) == set(LENDERS)


def shared_customers(strays_to_one_list: bool) -> list[dict]:
    """Two lenders with 500 customers in common, each with its borrower record, remind them all day; each
    has its honest 1 % of strays, spread over the number space or all to one list of 30 numbers."""
    rng = random.Random(6)
    names = LENDERS[:2]
    common = numbers(rng, 500, prefix="+86155")
    strangers = numbers(rng, 30, prefix="+86156") if strays_to_one_list else None
    events = lenders(rng, names, hours=10, stranger_share=0.0)
    for name in names:
        events += book(name, common)
        events += Sends(rng, name, f"tpl-{name}", common).run(T0, 10 * 60, 1, stranger_share=0.03,
                                                               strangers=strangers)
    return run(events)


def test_two_lenders_sharing_customers_each_with_the_borrower_record_stay_quiet():
    assert firing(shared_customers(strays_to_one_list=False), KIND) == []


def test_the_same_two_lenders_whose_strays_all_go_to_one_list_fire():
    assert senders(listed(shared_customers(strays_to_one_list=True))) == {"lender-a", "lender-b"}


def big_lenders(with_list: bool) -> list[dict]:
    """Two big lenders' honest strays (1.5 % of 14,400 a day each) land on a pool of 60,000 numbers, so a
    few meet by chance; maybe a third lender works 40 of the pool's numbers with them."""
    rng = random.Random(7)
    pool = numbers(rng, 60_000, prefix="+86157")
    names = LENDERS[:2]
    events = lenders(rng, names, hours=24, per_minute=10, stranger_share=0.015, strangers=pool)
    if with_list:
        for name in LENDERS:
            events += work(rng, name, pool[:40], T0 + 12 * HOUR, 3, 12)
    return run(events)


def test_big_lenders_whose_honest_strays_meet_by_chance_stay_quiet():
    assert firing(big_lenders(with_list=False), KIND) == []


def test_a_list_worked_beside_those_big_lenders_strays_fires_for_all_three():
    assert senders(listed(big_lenders(with_list=True))) == set(LENDERS)


def a_day_apart(hours_between: int) -> list[dict]:
    """Two lenders send the same 20 numbers collection notices, ``hours_between`` apart."""
    rng = random.Random(8)
    events = lenders(rng, LENDERS[:2], hours=48, per_minute=1)
    targets = numbers(rng, 20, prefix="+86158")
    events += work(rng, "lender-a", targets, T0 + 2 * HOUR, 1, 30)
    events += work(rng, "lender-b", targets, T0 + (2 + hours_between) * HOUR, 1, 30)
    return run(events)


def test_the_same_numbers_hit_by_two_lenders_more_than_a_day_apart_do_not_meet():
    assert listed(a_day_apart(hours_between=26)) == []


def test_the_same_numbers_hit_by_two_lenders_within_the_day_do():
    assert senders(listed(a_day_apart(hours_between=12))) == {"lender-a", "lender-b"}


def test_a_shorter_window_setting_keeps_them_apart():
    rng = random.Random(8)
    events = lenders(rng, LENDERS[:2], hours=48, per_minute=1)
    targets = numbers(rng, 20, prefix="+86158")
    events += work(rng, "lender-a", targets, T0 + 2 * HOUR, 1, 30)
    events += work(rng, "lender-b", targets, T0 + 14 * HOUR, 1, 30)
    settings = Settings.from_env({"SMSSTREAM_PSEUDONYM_KEY": KEY, "SMSSTREAM_SHARED_LIST_WINDOW_S": "21600"})
    assert settings.shared_list_window_s == 6 * 3600
    eng = engine(shared_list_window_ms=settings.shared_list_window_s * 1000)
    assert listed(run(events, eng)) == []


def test_lenders_whose_list_work_also_trips_their_share_name_each_other_within_the_hour():
    """Sixty list SMS an hour beside sixty reminders: each lender's share pages within minutes, before
    the overlap is beyond chance; its next record, an hour on, carries the overlap too."""
    rng = random.Random(9)
    events = lenders(rng, hours=8, per_minute=1)
    shared = numbers(rng, 60, prefix="+86159")
    for name in LENDERS:
        events += work(rng, name, shared, T0 + 4 * HOUR, 2, 60)
    alerts = firing(run(events), KIND, "sender")
    for name in LENDERS:
        records = sorted((a for a in alerts if a["entity_id"] == name), key=lambda a: a["window_end"])
        assert records[0]["reason"] == "non_borrower_share" and records[0]["window_end"] <= T0 + 4 * HOUR + 10 * MINUTE
        told = [a for a in records if a["window_end"] <= T0 + 5 * HOUR + 10 * MINUTE and (
            a["reason"] == "shared_list" or "shared_list" in a["evidence"])]
        assert told, records
        evidence = told[0]["evidence"].get("shared_list", told[0]["evidence"])
        assert set(evidence["other_senders"]) == set(LENDERS) - {name}


# --- the number part -----------------------------------------------------------------------------------


def stray(sender: str, pn: str, ts: int, mid: str = "") -> LoanSend:
    return LoanSend(ts, sender, "tpl", mid or f"{sender}-{ts}", True, pn)


def test_the_number_part_tells_both_lenders_when_a_second_one_reaches_a_number():
    part = NumberLenders(PartContext(Pseudonymizer(KEY)))
    assert part.process(LOAN_SENDS, "pn:1", stray("lender-a", "pn:1", T0)) is None
    assert part.process(LOAN_SENDS, "pn:1", stray("lender-a", "pn:1", T0 + HOUR)) is None
    made = part.process(LOAN_SENDS, "pn:1", stray("lender-b", "pn:1", T0 + 2 * HOUR, "m-b"))
    assert sorted((f.sender_id, f.other_id, f.message_id) for _, f in made) == [
        ("lender-a", "lender-b", None), ("lender-b", "lender-a", "m-b")]
    # nothing new when either sends again
    assert part.process(LOAN_SENDS, "pn:1", stray("lender-b", "pn:1", T0 + 3 * HOUR)) is None


def test_the_number_part_keeps_a_few_lenders_per_number_and_forgets_numbers_after_the_window():
    part = NumberLenders(PartContext(Pseudonymizer(KEY)))
    for i in range(MAX_LENDERS + 4):
        part.process(LOAN_SENDS, "pn:1", stray(f"lender-{i}", "pn:1", T0 + i * MINUTE))
    assert len(part.entities["pn:1"]) == MAX_LENDERS
    part.process(LOAN_SENDS, "pn:2", stray("lender-a", "pn:2", T0 + 20 * HOUR))
    assert part.expire(T0 + DAY + HOUR) == 1
    assert set(part.entities) == {"pn:2"}
    assert part.expire(T0 + 2 * DAY) == 1 and not part.entities


def test_only_non_borrower_sends_reach_the_number_part_and_only_by_pseudonym():
    eng = engine()
    events = [(BORROWERS, Borrower("lender-a", "+8613900000001", None, "active", T0))]
    events += [(SENDS, Send(f"m{i}", T0 + i, s, None, "+8613900000001", "collection", "pay"))
               for i, s in enumerate(("lender-a", "lender-b"))]
    run(events, eng)
    part = next(p for p in eng.parts if p.name == "non_borrower_number")
    assert list(part.entities) == [Pseudonymizer(KEY).pseudonym("+8613900000001")]
    assert part.entities[list(part.entities)[0]][0] == "lender-b"
