"""``delivery_failure_spike`` scenarios: a carrier blocking a lender, a sender's messages failing."""

from __future__ import annotations

from smsstream.simulate.attacks.effects import ReceiptFailure
from smsstream.simulate.attacks.plan import LEVEL, Episode, Planner
from smsstream.simulate.world import REMINDER_CATEGORIES
from smsstream.vocabulary import DAY_MS, DELIVERY_FAILURE_SPIKE, HOUR_MS


def carrier_blocking(plan: Planner, intensity: str) -> Episode | None:
    """A carrier starts filtering one lender's reminders."""
    rng, sim = plan.rng, plan.sim
    after = plan.window(10 * HOUR_MS)
    sender = plan.pick(plan.senders(after, after + DAY_MS, min_daily=250, categories=REMINDER_CATEGORIES))
    if sender is None:
        return None
    campaign = plan.campaign_start(sender, after)
    if campaign is None:
        return None
    # reminders one campaign puts on each carrier, at the quieter weekend level to be safe
    reminders = sender.daily_volume * sum(sender.mix.get(c, 0) for c in REMINDER_CATEGORIES)
    per_campaign = reminders * 0.85 / len(sender.campaign_hours) * min(sender.weekend_factor, 1.0)
    carriers = [c for c in sim.region.carriers if per_campaign * c.share >= 20]
    if not carriers:
        return None
    carrier = rng.choices(carriers, [c.share for c in carriers])[0]
    # even "low" blocks a couple of dozen reminders in the campaign
    fraction = min(1.0, max((0.3, 0.7, 1.0)[LEVEL[intensity]], 20 / (per_campaign * carrier.share)))
    start = campaign - rng.randrange(0, 2 * HOUR_MS)
    end = campaign + rng.randrange(2, 8) * HOUR_MS
    if not plan.free(sender, start, end):
        return None
    plan.claim(sender, start, end)
    episode = plan.new(DELIVERY_FAILURE_SPIKE, "carrier_blocking", intensity, sender_id=sender.sender_id,
                       carrier=carrier.name, fraction=round(fraction, 3))
    episode.add("sender", sender.sender_id)
    episode.add("carrier", carrier.name)
    for category in REMINDER_CATEGORIES:
        for template in sender.templates.get(category, ()):
            episode.add("template", template.template_id)
    code = rng.choice(("SPAM_FILTER", "BLACKLIST", "1034", "DND", "FILTERED"))
    sim.receipt_effects.setdefault(sender.sender_id, []).append(
        ReceiptFailure(start, end, carrier.name, frozenset(REMINDER_CATEGORIES), fraction, [("BLOCKED", code)], [1.0], episode))
    return episode


def failure_rate_jump(plan: Planner, intensity: str) -> Episode | None:
    """A sender's messages start failing across carriers (bad route, bad list, suspended account)."""
    rng, sim = plan.rng, plan.sim
    duration = rng.randrange(1, 7) * HOUR_MS
    start = plan.window(duration)
    # Move the window into the sender's local daytime so there is traffic to fail.
    local_hour = ((start + sim.region.utc_offset_ms) // HOUR_MS) % 24
    if local_hour < 8 or local_hour > 18:
        moved = start + ((9 - local_hour) % 24) * HOUR_MS
        if moved + duration > sim.end_ts - HOUR_MS:
            moved -= DAY_MS
        if moved >= plan.earliest:
            start = moved
    sender = plan.pick(plan.senders(start, start + duration, lender=None, min_daily=300))
    if sender is None:
        return None
    plan.claim(sender, start, start + duration)
    expected = sender.daily_volume * duration / DAY_MS
    usual = sender.failure_factor * sum(c.share * sum(f[1] for f in c.failures) for c in sim.region.carriers)
    # even "low" adds four times the sender's usual failure share, with a few dozen failures to see
    fraction = max((0.08, 0.3, 0.7)[LEVEL[intensity]], (4, 6, 9)[LEVEL[intensity]] * usual)
    fraction = min(1.0, max(fraction, 30 / max(expected, 1)))
    episode = plan.new(DELIVERY_FAILURE_SPIKE, "failure_rate_jump", intensity, sender_id=sender.sender_id,
                       fraction=round(fraction, 3))
    episode.add("sender", sender.sender_id)
    for templates in sender.templates.values():
        for template in templates:
            episode.add("template", template.template_id)
    statuses = [("UNDELIV", "ROUTE_FAIL"), ("REJECTD", "ACCOUNT_SUSPENDED"), ("UNKNOWN", "NO_ROUTE")]
    sim.receipt_effects.setdefault(sender.sender_id, []).append(
        ReceiptFailure(start, start + duration, None, None, fraction, statuses, [0.6, 0.3, 0.1], episode))
    return episode
