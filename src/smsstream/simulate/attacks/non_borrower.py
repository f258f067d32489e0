"""``non_borrower_spike`` scenarios: loan reminders to numbers that owe the sender nothing."""

from __future__ import annotations

from smsstream.simulate.attacks.effects import RecipientSwap
from smsstream.simulate.attacks.plan import LEVEL, Episode, Planner, spread
from smsstream.simulate.world import LOAN_CATEGORIES, REMINDER_CATEGORIES
from smsstream.vocabulary import DAY_MS, HOUR_MS, MINUTE_MS, NON_BORROWER_SPIKE


def purchased_list(plan: Planner, intensity: str) -> Episode | None:
    """A lender sends loan reminders to a bought list of numbers that never borrowed from it."""
    rng, sim = plan.rng, plan.sim
    duration = rng.randrange(30, 181) * MINUTE_MS
    start = plan.window(duration)
    sender = plan.pick(plan.senders(start, start + duration, min_book=20), prefer_small=True)
    if sender is None:
        return None
    plan.claim(sender, start, start + duration)
    loan_hourly = sender.daily_volume * sum(sender.mix.get(c, 0) for c in LOAN_CATEGORIES) / 24
    per_hour = (max(24, 0.05 * loan_hourly), max(80, 0.2 * loan_hourly), max(400, loan_hourly))[LEVEL[intensity]]
    count = max(20, int(per_hour * duration / HOUR_MS))
    numbers = plan.world.numbers.block(count) if rng.random() < 0.5 else [plan.world.numbers.fresh() for _ in range(count)]
    episode = plan.new(NON_BORROWER_SPIKE, "purchased_list", intensity, sender_id=sender.sender_id, sends=len(numbers))
    episode.add("sender", sender.sender_id)
    categories = ("repayment_reminder", "repayment_reminder", "overdue_notice", "collection")
    templates = {c: [t for t in sender.templates.get(c, ()) if t.start_ts <= start] for c in categories}

    def blast(ts, sender=sender, numbers=numbers):
        dates = plan.due_dates(ts)
        for when, number in zip(spread(rng, start, start + duration, len(numbers)), numbers):
            category = rng.choice(categories)
            options = templates[category] or templates["repayment_reminder"]
            if not options:
                continue
            template = rng.choice(options)
            episode.add("template", template.template_id)
            sim.send(sender, when, template.category, template, number, f"LN{rng.randrange(10**7):07d}", dates,
                     episode=episode)

    sim.at(start, blast)
    return episode


def book_mixup(plan: Planner, intensity: str) -> Episode | None:
    """A data mix-up points one lender's reminder campaign at another lender's book."""
    rng, sim = plan.rng, plan.sim
    after = plan.window(6 * HOUR_MS)
    candidates = [s for s in plan.senders(after, after + DAY_MS, min_daily=150, categories=REMINDER_CATEGORIES, min_book=50)]
    sender = plan.pick(candidates)
    if sender is None:
        return None
    start = plan.campaign_start(sender, after)
    if start is None:
        return None
    others = [s for s in plan.world.borrowers_elsewhere(sender) if s.start_ts < start]
    if not others:
        return None
    other = rng.choice(others)
    duration = rng.randrange(60, 121) * MINUTE_MS
    if not plan.free(sender, start, start + duration):
        return None
    plan.claim(sender, start, start + duration)
    campaign = sender.daily_volume * (sender.mix["repayment_reminder"] + sender.mix["overdue_notice"]) * 0.85 / len(sender.campaign_hours)
    fraction = (0.08, 0.35, 1.0)[LEVEL[intensity]]
    fraction = min(1.0, max(fraction, 25 / max(campaign * sender.weekend_factor, 1)))
    pool = [n for n in rng.sample(list(other.by_number), min(len(other.by_number), 5000)) if n not in sender.by_number]
    recipients = [(n, other.by_number[n].account_id) for n in pool]
    episode = plan.new(NON_BORROWER_SPIKE, "book_mixup", intensity, sender_id=sender.sender_id,
                       other_sender_id=other.sender_id, fraction=round(fraction, 3))
    episode.add("sender", sender.sender_id)
    for category in ("repayment_reminder", "overdue_notice"):
        for template in sender.templates.get(category, ()):
            episode.add("template", template.template_id)
    effect = RecipientSwap(start, start + duration, frozenset(("repayment_reminder", "overdue_notice")), fraction,
                           recipients, episode)
    sim.send_effects.setdefault(sender.sender_id, []).append(effect)
    return episode
