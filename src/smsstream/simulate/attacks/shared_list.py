"""``non_borrower_spike`` / ``shared_list``: one list of numbers worked by several small lenders.

A list of a few hundred numbers (a sample of one lender's book, leaked or
sold) is worked over a few business hours by three to five small or
mid-size lenders, none of which the numbers owe: each sends collection
notices and reminders to numbers picked from the list at random, at its own
pace. At low intensity each sends a few an hour, inside its own honest share
of non-borrower sends (only the overlap gives the list away); at medium and
high a tenth to a third of the list an hour. The label names every lender
involved and the templates they used.

The episode draws its sends from its own random stream (``Simulation.send``'s
``rng``) and is planned after every other scenario, so adding it leaves the
rest of a seed's traffic and episodes exactly as they were.
"""

from __future__ import annotations

import random

from smsstream.simulate.attacks.plan import Episode, Planner, spread
from smsstream.simulate.world import LOAN_CATEGORIES, Sender, Template
from smsstream.vocabulary import DAY_MS, HOUR_MS, MINUTE_MS, NON_BORROWER_SPIKE

#: Loan-obligation SMS a day of the lenders that take part: the small and mid-size ones.
LENDER_SIZE = (300, 8000)
#: At low intensity, lenders this size or more where there are enough: a few list SMS an hour stay
#: inside their own honest share of non-borrower sends, so only the overlap shows.
LOW_LENDER_MIN = 1500
#: Share of the list each lender reaches per hour at medium and high intensity.
LIST_PER_HOUR = {"medium": 0.12, "high": 0.35}
#: At low intensity each lender sends this many times its own honest non-borrower SMS an hour (at
#: least LOW_MIN_PER_HOUR, at most LOW_MAX_SHARE of the list an hour).
LOW_FACTOR, LOW_MIN_PER_HOUR, LOW_MAX_SHARE = 4.0, 3.0, 0.05
CATEGORIES = ("repayment_reminder", "overdue_notice", "collection")
CATEGORY_WEIGHTS = (0.3, 0.3, 0.4)


def shared_list(plan: Planner, intensity: str) -> Episode | None:
    """Three to five lenders send loan-obligation SMS to numbers of one list that owe none of them."""
    rng, sim = plan.rng, plan.sim
    hours = (4, 8) if intensity == "low" else (2, 6)
    duration = rng.randrange(hours[0] * 60, hours[1] * 60 + 1) * MINUTE_MS
    start = business_hours(plan, plan.window(duration), duration)
    end = start + duration
    candidates = [s for s in plan.senders(start, end, min_book=20)
                  if LENDER_SIZE[0] <= loan_daily(s) <= LENDER_SIZE[1] and templates_of(s, start)]
    count = rng.choice((3, 4, 5))
    if intensity == "low":
        larger = [s for s in candidates if loan_daily(s) >= LOW_LENDER_MIN]
        candidates = larger if len(larger) >= count else candidates
    victims = [s for s in plan.world.senders if s.lender and len(s.by_number) >= 400 and s not in candidates]
    if len(candidates) < count or not victims:
        return None
    lenders = rng.sample(candidates, count)
    victim = rng.choice(victims)
    size = rng.randrange(150, 401)
    listed = rng.sample(list(victim.by_number), size)
    own = random.Random(rng.getrandbits(64))
    episode = plan.new(NON_BORROWER_SPIKE, "shared_list", intensity, senders=[s.sender_id for s in lenders],
                       list_size=size, list_from=victim.sender_id)
    for lender in lenders:
        plan.claim(lender, start, end)
        episode.add("sender", lender.sender_id)
        if intensity == "low":
            honest = loan_daily(lender) * lender.nb_rate / 24
            per_hour = min(LOW_MAX_SHARE * size, max(LOW_MIN_PER_HOUR, LOW_FACTOR * honest))
        else:
            per_hour = LIST_PER_HOUR[intensity] * size
        begin = start + own.randrange(10 * MINUTE_MS)
        sends = min(size, max(3, round(per_hour * (end - begin) / HOUR_MS)))
        episode.details.setdefault("per_hour", {})[lender.sender_id] = round(per_hour, 1)
        sim.at(begin, _work, plan, episode, lender, own.sample(listed, sends), spread(own, begin, end, sends),
               templates_of(lender, start), random.Random(own.getrandbits(64)))
    return episode


def _work(ts: int, plan: Planner, episode: Episode, lender: Sender, numbers: list[str], times: list[int],
          templates: dict[str, list[Template]], own: random.Random) -> None:
    """One lender's sends to its picks from the list, each at its time."""
    for when, number in zip(times, numbers):
        category = own.choices(CATEGORIES, CATEGORY_WEIGHTS)[0]
        options = templates.get(category) or next(t for t in templates.values() if t)
        template = own.choice(options)
        episode.add("template", template.template_id)
        plan.sim.send(lender, when, template.category, template, number, f"LN{own.randrange(10 ** 7):07d}",
                      plan.due_dates(when), episode=episode, rng=own)


def loan_daily(sender: Sender) -> float:
    return sender.daily_volume * sum(sender.mix.get(c, 0) for c in LOAN_CATEGORIES)


def templates_of(sender: Sender, ts: int) -> dict[str, list[Template]]:
    """The sender's templates of the categories collectors use, registered by ``ts``; empty if it has none."""
    found = {c: [t for t in sender.templates.get(c, ()) if t.start_ts <= ts] for c in CATEGORIES}
    return found if any(found.values()) else {}


def business_hours(plan: Planner, start: int, duration: int) -> int:
    """``start`` moved to between 9:00 and 13:00 local time, when collectors work, if the run leaves room."""
    offset = plan.sim.region.utc_offset_ms
    day = (start + offset) // DAY_MS * DAY_MS - offset
    for moved in (day + 9 * HOUR_MS, day + DAY_MS + 9 * HOUR_MS, day - DAY_MS + 9 * HOUR_MS):
        moved += plan.rng.randrange(4 * HOUR_MS)
        if plan.earliest <= moved and moved + duration <= plan.sim.end_ts - 2 * HOUR_MS:
            return moved
    return start
