"""non_borrower_spike: loan-obligation SMS to numbers that owe the sender nothing."""

import random

import orjson

from smsstream.records import BORROWERS, SENDS, Borrower, Send
from traffic import DAY, HOUR, MINUTE, T0, Sends, book, engine, firing, keys, numbers, run

KIND = "non_borrower_spike"


def world(seed: int = 1, size: int = 3000):
    rng = random.Random(seed)
    borrowers = numbers(rng, size)
    return rng, borrowers, book("lender-a", borrowers)


def test_purchased_list_fires_within_minutes_for_sender_and_template():
    rng, borrowers, events = world()
    sends = Sends(rng, "lender-a", "tpl-remind", borrowers)
    events += sends.run(T0, 10 * HOUR // MINUTE, 30)
    attack_start = T0 + 10 * HOUR
    events += sends.run(attack_start, 60, 30, stranger_share=0.3)
    events += sends.run(attack_start + HOUR, 3 * 60, 30)
    alerts = firing(run(events), KIND)
    assert keys(alerts) == {f"{KIND}/sender/lender-a", f"{KIND}/template/tpl-remind"}
    first = min(a["window_end"] for a in alerts)
    assert attack_start < first <= attack_start + 5 * MINUTE
    alert = alerts[0]
    assert alert["reason"] == "non_borrower_share"
    assert alert["observed"] > 3 * alert["expected"]
    assert "lender-a" in alert["summary"] and "not its borrowers" in alert["summary"]


def test_reminders_pointed_at_another_lenders_book_fire():
    rng, borrowers, events = world()
    others = numbers(rng, 2000, prefix="+86137")
    events += book("lender-b", others)
    sends = Sends(rng, "lender-a", "tpl-remind", borrowers)
    events += sends.run(T0, 8 * 60, 20)
    events += sends.run(T0 + 8 * HOUR, 45, 20, stranger_share=0.5, strangers=others)
    alerts = firing(run(events), KIND, "sender")
    assert len(alerts) >= 1
    assert alerts[0]["window_end"] <= T0 + 8 * HOUR + 5 * MINUTE


def test_evidence_names_numbers_only_by_pseudonym():
    rng, borrowers, events = world()
    sends = Sends(rng, "lender-a", "tpl-remind", borrowers)
    events += sends.run(T0, 6 * 60, 20)
    events += sends.run(T0 + 6 * HOUR, 30, 20, stranger_share=0.5)
    alerts = firing(run(events), KIND)
    assert alerts
    evidence = alerts[0]["evidence"]
    assert evidence["numbers"] and all(n.startswith("pn:") for n in evidence["numbers"])
    assert len(evidence["message_ids"]) <= 20
    assert b"+86" not in orjson.dumps(alerts)


def two_days_of_reminders(purchased_list: bool) -> list[dict]:
    """Two days of reminders with the honest 1 % of stale numbers; with, or without, an hour to a bought list."""
    rng, borrowers, events = world(seed=2)
    sends = Sends(rng, "lender-a", "tpl-remind", borrowers)
    events += sends.run(T0, 2 * 24 * 60, 40, stranger_share=0.01)
    if purchased_list:
        events += sends.run(T0 + DAY + 10 * HOUR, 60, 10, stranger_share=1.0)
    return firing(run(events), KIND)


def test_honest_one_percent_stale_rate_does_not_fire_over_two_days():
    assert two_days_of_reminders(purchased_list=False) == []


def test_an_hour_of_reminders_to_a_bought_list_in_those_two_days_fires():
    assert {f"{KIND}/sender/lender-a", f"{KIND}/template/tpl-remind"} <= keys(two_days_of_reminders(purchased_list=True))


def test_a_small_lenders_first_reminders_to_a_purchased_list_page_within_half_an_hour():
    rng, borrowers, events = world(seed=6, size=300)
    lender = Sends(rng, "lender-a", "tpl-remind", borrowers)
    events += lender.run(T0, 2 * 24 * 60, 200 / (24 * 60), stranger_share=0.015)
    attack = T0 + 2 * DAY + 10 * HOUR
    events += lender.run(attack, 60, 0.15, stranger_share=0.0)
    events += lender.run(attack, 60, 0.25, stranger_share=1.0)
    alerts = firing(run(events), KIND, "sender")
    assert alerts and alerts[0]["window_end"] - attack <= 30 * MINUTE


def small_sender(strangers_on_top: int) -> list[dict]:
    """A day of a sender's 30 reminders, then an hour of 30 with about 3 to strangers, and more on top."""
    rng, borrowers, events = world(seed=3, size=200)
    sends = Sends(rng, "lender-a", "tpl-remind", borrowers)
    events += sends.run(T0, 24 * 60, 30 / (24 * 60), stranger_share=0.01)
    events += sends.run(T0 + DAY, 60, 0.5, stranger_share=0.1)
    events += sends.run(T0 + DAY, strangers_on_top, 1, stranger_share=1.0)
    return firing(run(events), KIND)


def test_small_sender_three_of_thirty_is_noise():
    assert small_sender(strangers_on_top=0) == []


def test_small_sender_with_thirty_more_to_strangers_in_that_hour_fires():
    assert f"{KIND}/sender/lender-a" in keys(small_sender(strangers_on_top=30))


def morning_campaigns(list_in_second_campaign: bool) -> list[dict]:
    """Two days of a big lender's nine o'clock campaign at the usual 1.2 % stale rate; the second one may
    carry an extra tenth of its volume to a bought list."""
    rng, borrowers, events = world(seed=4, size=20000)
    sends = Sends(rng, "lender-a", "tpl-remind", borrowers)
    for day in range(2):
        base = T0 + day * DAY
        events += sends.run(base, 9 * 60, 2, stranger_share=0.012)
        events += sends.run(base + 9 * HOUR, 30, 400, stranger_share=0.012)
        events += sends.run(base + 9 * HOUR + 30 * MINUTE, 14 * 60 + 30, 2, stranger_share=0.012)
    if list_in_second_campaign:
        events += sends.run(T0 + DAY + 9 * HOUR, 30, 40, stranger_share=1.0)
    return firing(run(events), KIND)


def test_morning_campaign_burst_with_the_usual_stale_rate_does_not_fire():
    assert morning_campaigns(list_in_second_campaign=False) == []


def test_a_tenth_of_a_morning_campaign_to_a_bought_list_fires():
    assert f"{KIND}/sender/lender-a" in keys(morning_campaigns(list_in_second_campaign=True))


def growing_new_sender(purchased_list: bool) -> list[dict]:
    """A new sender's first day, its volume growing all day, 1.5 % stale; maybe half an hour to a bought list."""
    rng, borrowers, events = world(seed=5)
    sends = Sends(rng, "lender-a", "tpl-remind", borrowers)
    events += sends.run(T0, 24 * 60, lambda m: 1 + m / 60, stranger_share=0.015)
    if purchased_list:
        events += sends.run(T0 + 20 * HOUR, 30, 10, stranger_share=1.0)
    return firing(run(events), KIND)


def test_new_sender_and_steady_growth_do_not_fire():
    assert growing_new_sender(purchased_list=False) == []


def test_a_growing_new_sender_messaging_a_bought_list_fires():
    assert f"{KIND}/sender/lender-a" in keys(growing_new_sender(purchased_list=True))


def blast_to_strangers(category: str) -> list[dict]:
    """Six hours of reminders, then an hour's blast mostly to strangers in ``category``."""
    rng, borrowers, events = world(seed=6)
    sends = Sends(rng, "lender-a", "tpl-promo", borrowers)
    events += sends.run(T0, 6 * 60, 20, stranger_share=0.01, category="repayment_reminder")
    events += sends.run(T0 + 6 * HOUR, 60, 200, stranger_share=0.95, category=category)
    return firing(run(events), KIND)


def test_marketing_to_non_borrowers_is_not_a_loan_obligation():
    assert blast_to_strangers("loan_marketing") == []


def test_the_same_blast_as_overdue_notices_fires():
    assert f"{KIND}/sender/lender-a" in keys(blast_to_strangers("overdue_notice"))


def reminders_after_half_the_book_left(also_to_strangers: bool):
    """Half of a lender's borrowers leave its book; its reminders keep going to them for half an hour,
    and maybe as many to numbers that never were in it."""
    rng, borrowers, events = world(seed=7, size=500)
    sends = Sends(rng, "lender-a", "tpl-remind", borrowers)
    events += sends.run(T0, 6 * 60, 10)
    removed = borrowers[:250]
    events += [(BORROWERS, Borrower("lender-a", n, None, "closed", T0 + 6 * HOUR, removed=True))
               for n in removed]
    events += Sends(rng, "lender-a", "tpl-remind", removed).run(T0 + 6 * HOUR + MINUTE, 30, 10, stranger_share=0)
    if also_to_strangers:
        events += sends.run(T0 + 6 * HOUR + MINUTE, 30, 10, stranger_share=1.0)
    eng = engine()
    return firing(run(events, eng), KIND), eng.counters()["loan_sends_to_former_borrowers"]


def test_reminders_to_numbers_that_just_left_the_book_are_stale_data_not_a_non_borrower_spike():
    alerts, former = reminders_after_half_the_book_left(also_to_strangers=False)
    assert alerts == [] and former > 200


def test_as_many_reminders_to_numbers_never_in_the_book_beside_them_fire():
    alerts, former = reminders_after_half_the_book_left(also_to_strangers=True)
    assert f"{KIND}/sender/lender-a" in keys(alerts) and former > 200


def test_a_number_removed_long_ago_counts_as_a_non_borrower_again():
    eng = engine()
    number = "+8613800000001"
    eng.ingest(BORROWERS, Borrower("lender-a", number, None, "active", T0))
    eng.ingest(BORROWERS, Borrower("lender-a", number, None, "closed", 0, removed=True))
    book = next(p for p in eng.parts if p.name == "borrower_book")
    sends = []
    for day in (1, 40):
        send = Send(f"m{day}", T0 + day * DAY, "lender-a", None, number, "repayment_reminder", "pay")
        sends += book.process(SENDS, eng.ctx.pseudonym(number), eng.intake(SENDS, send))
    assert [fact.non_borrower for _, fact in sends] == [False, True]


def test_alert_resolves_once_after_the_list_stops():
    rng, borrowers, events = world(seed=8)
    sends = Sends(rng, "lender-a", "tpl-remind", borrowers)
    events += sends.run(T0, 6 * 60, 30)
    events += sends.run(T0 + 6 * HOUR, 30, 30, stranger_share=0.4)
    events += sends.run(T0 + 6 * HOUR + 30 * MINUTE, 5 * 60, 30)
    alerts = [a for a in run(events) if a["dedup_key"] == f"{KIND}/sender/lender-a"]
    statuses = [a["status"] for a in alerts]
    assert statuses[0] == "firing" and statuses.count("resolved") == 1
    assert statuses[-1] == "resolved"
    assert len({a["alert_id"] for a in alerts}) == 1


def test_unusual_share_held_for_hours_becomes_the_new_normal():
    """A lender whose book feed lags for good stops paging within hours, not weeks."""
    rng, borrowers, events = world(seed=9)
    sends = Sends(rng, "lender-a", "tpl-remind", borrowers)
    events += sends.run(T0, 12 * 60, 20)
    events += sends.run(T0 + 12 * HOUR, 3 * 24 * 60, 20, stranger_share=0.08)
    alerts = [a for a in run(events) if a["dedup_key"] == f"{KIND}/sender/lender-a"]
    assert alerts, "the shift itself should page once"
    episodes = {a["alert_id"] for a in alerts}
    assert len(episodes) <= 2
    assert max(a["window_end"] for a in alerts) < T0 + 2 * DAY


def test_a_number_owing_two_lenders_is_a_borrower_of_both_and_of_no_third():
    eng = engine()
    number = "+8613800000002"
    for lender in ("lender-a", "lender-b"):
        eng.ingest(BORROWERS, Borrower(lender, number, None, "active", T0))
    book = next(p for p in eng.parts if p.name == "borrower_book")
    facts = [book.process(SENDS, eng.ctx.pseudonym(number),
                          eng.intake(SENDS, Send(f"m-{s}", T0 + 1, s, None, number, "collection", "pay")))[0][1]
             for s in ("lender-a", "lender-b", "lender-c")]
    assert [f.non_borrower for f in facts] == [False, False, True]


def six_percent_for_two_hours(history: bool) -> list[dict]:
    """Two hours of a sender's reminders with 6 % to strangers, after six hours at 1 % or as its first ones."""
    rng, borrowers, events = world(seed=10)
    lender = Sends(rng, "lender-a", "tpl-remind", borrowers)
    events += lender.run(T0 + 6 * HOUR, 2 * 60, 10, stranger_share=0.06)
    if history:
        events += lender.run(T0, 6 * 60, 10, stranger_share=0.01)
    return firing(run(events), KIND)


def test_new_sender_with_a_somewhat_high_share_is_watched_not_paged_in_its_first_hours():
    assert six_percent_for_two_hours(history=False) == []


def test_the_same_share_pages_a_sender_whose_own_history_is_far_lower():
    assert f"{KIND}/sender/lender-a" in keys(six_percent_for_two_hours(history=True))


def test_new_sender_messaging_a_list_of_strangers_is_unambiguous_and_pages_at_once():
    rng, borrowers, events = world(seed=11)
    events += Sends(rng, "lender-a", "tpl-remind", borrowers).run(T0, 30, 10, stranger_share=0.9)
    alerts = firing(run(events), KIND, "sender")
    assert alerts and alerts[0]["window_end"] <= T0 + 10 * MINUTE
    assert "new sender" in alerts[0]["summary"]
