"""``rebind_anomaly`` scenarios: mass rebinds, fan-in, fan-out, flapping accounts and stale bindings."""

from __future__ import annotations

from collections import Counter

from smsstream.simulate.attacks.effects import StaleWatch
from smsstream.simulate.attacks.plan import LEVEL, Episode, Planner, spread
from smsstream.simulate.traffic import customer_ip
from smsstream.simulate.world import REMINDER_CATEGORIES, Account, Sender
from smsstream.vocabulary import HOUR_MS, MINUTE_MS, REBIND_ANOMALY


def _rebind_step(plan: Planner, episode: Episode, sender: Sender, account: Account, new: str, channel: str,
                 device: str | None, ip: str | None):
    def step(ts):
        plan.sim.rebind(ts, sender, account, new, channel, device, ip)
        episode.touch(ts)
    return step


def mass_rebind(plan: Planner, intensity: str) -> Episode | None:
    """Many accounts of one lender move to new numbers within minutes, from a few devices or IPs."""
    rng, sim = plan.rng, plan.sim
    duration = (rng.randrange(60, 121), rng.randrange(30, 91), rng.randrange(20, 41))[LEVEL[intensity]] * MINUTE_MS
    start = plan.window(duration)
    sender = plan.pick(plan.senders(start, start + duration, min_book=60))
    if sender is None:
        return None
    plan.claim(sender, start, start + duration)
    count = (rng.randint(12, 20), rng.randint(60, 100), rng.randint(300, 600))[LEVEL[intensity]]
    accounts = plan.accounts(sender, min(count, len(sender.by_number) // 3))
    devices = [plan.world.new_device() for _ in range(rng.randint(1, 3))]
    ips = [customer_ip(rng) for _ in range(rng.randint(1, 2))]
    channel = rng.choice(("app", "api"))
    episode = plan.new(REBIND_ANOMALY, "mass_rebind", intensity, sender_id=sender.sender_id, devices=devices,
                       rebinds=len(accounts))
    episode.add("sender", sender.sender_id)
    for device in devices:
        episode.add("device", device)
    for when, account in zip(spread(rng, start, start + duration, len(accounts)), accounts):
        sim.at(when, _rebind_step(plan, episode, sender, account, plan.fresh_number(), channel,
                                  rng.choice(devices), rng.choice(ips)))
    return episode


def number_fan_in(plan: Planner, intensity: str) -> Episode | None:
    """One number collects accounts at several lenders."""
    rng, sim = plan.rng, plan.sim
    duration = (rng.randrange(240, 481), rng.randrange(60, 181), rng.randrange(20, 61))[LEVEL[intensity]] * MINUTE_MS
    start = plan.window(duration)
    lenders = [s for s in plan.world.senders if s.lender and s.start_ts < start and len(s.by_number) > 10]
    want = (3, 6, 12)[LEVEL[intensity]]
    if len(lenders) < 2:
        return None
    pairs = []
    for lender in rng.sample(lenders, min(want, len(lenders))):
        pairs += [(lender, account) for account in plan.accounts(lender, 1)]
    if len(pairs) < 2:
        plan.release(pairs)
        return None
    number = plan.fresh_number()
    shared_device = plan.world.new_device() if rng.random() < 0.5 else None
    episode = plan.new(REBIND_ANOMALY, "number_fan_in", intensity, number=number, lenders=len(pairs))
    episode.add("number", number)
    if shared_device:
        episode.add("device", shared_device)
    for when, (lender, account) in zip(spread(rng, start, start + duration, len(pairs)), pairs):
        device = shared_device or account.device_id
        sim.at(when, _rebind_step(plan, episode, lender, account, number, rng.choice(("app", "web")),
                                  device, customer_ip(rng)))
    return episode


def device_fan_out(plan: Planner, intensity: str) -> Episode | None:
    """One device rebinds many accounts, at one lender or several."""
    rng, sim = plan.rng, plan.sim
    duration = (rng.randrange(120, 241), rng.randrange(60, 121), rng.randrange(20, 61))[LEVEL[intensity]] * MINUTE_MS
    start = plan.window(duration)
    lenders = [s for s in plan.world.senders if s.lender and s.start_ts < start and len(s.by_number) > 30]
    if not lenders:
        return None
    count = (rng.randint(5, 8), rng.randint(20, 30), rng.randint(80, 120))[LEVEL[intensity]]
    chosen = rng.sample(lenders, min(len(lenders), rng.randint(1, 4)))
    wanted = Counter(rng.choice(chosen).sender_id for _ in range(count))
    pairs = [(lender, account) for lender in chosen for account in plan.accounts(lender, wanted[lender.sender_id])]
    if len(pairs) < 5:
        plan.release(pairs)
        return None
    rng.shuffle(pairs)
    device = plan.world.new_device()
    ip = customer_ip(rng)
    episode = plan.new(REBIND_ANOMALY, "device_fan_out", intensity, device=device, rebinds=len(pairs))
    episode.add("device", device)
    for when, (lender, account) in zip(spread(rng, start, start + duration, len(pairs)), pairs):
        sim.at(when, _rebind_step(plan, episode, lender, account, plan.fresh_number(), "app", device, ip))
    for sender_id, n in Counter(lender.sender_id for lender, _ in pairs).items():
        if n >= 5:
            episode.add("sender", sender_id)
    return episode


def _flapping(plan: Planner, intensity: str, slow: bool) -> Episode | None:
    rng, sim = plan.rng, plan.sim
    flips = ((4, 6, 9) if slow else (4, 8, 20))[LEVEL[intensity]]
    gaps = [int((rng.uniform(100, 140) if slow else rng.uniform(5, 25)) * MINUTE_MS) for _ in range(flips)]
    duration = sum(gaps)
    start = plan.window(duration)
    lenders = [s for s in plan.world.senders if s.lender and s.start_ts < start and len(s.by_number) > 5]
    if not lenders:
        return None
    sender = rng.choice(lenders)
    accounts = plan.accounts(sender, 1)
    if not accounts:
        return None
    account = accounts[0]
    account.quiet_until = start + duration + HOUR_MS
    owner_number, other = account.number, plan.fresh_number()
    sim.protected_numbers.add(owner_number)
    attacker_device = plan.world.new_device()
    episode = plan.new(REBIND_ANOMALY, "account_flapping_slow" if slow else "account_flapping", intensity,
                       sender_id=sender.sender_id, account_id=account.account_id, flips=flips)
    episode.add("account", f"{sender.sender_id}|{account.account_id}")
    episode.add("number", other)
    episode.add("number", owner_number)
    when = start
    for i, gap in enumerate(gaps):
        to_attacker = i % 2 == 0
        new = other if to_attacker else owner_number
        device = attacker_device if to_attacker else account.device_id
        sim.at(when, _rebind_step(plan, episode, sender, account, new, "app" if to_attacker else rng.choice(("app", "call_center")),
                                  device, customer_ip(rng)))
        when += gap
    return episode


def account_flapping(plan, intensity):
    """An account's number switches back and forth every few minutes."""
    return _flapping(plan, intensity, slow=False)


def account_flapping_slow(plan, intensity):
    """An account's number switches back and forth about every two hours."""
    return _flapping(plan, intensity, slow=True)


def stale_binding_send(plan: Planner, intensity: str) -> Episode | None:
    """Accounts move to new numbers but the lender keeps sending reminders to the old, recycled ones."""
    rng, sim = plan.rng, plan.sim
    duration = rng.randrange(6, 21) * HOUR_MS
    start = plan.window(duration)
    sender = plan.pick(plan.senders(start, start + duration, min_book=30, min_daily=30, categories=REMINDER_CATEGORIES))
    if sender is None:
        return None
    plan.claim(sender, start, start + duration)
    count = (3, 10, 30)[LEVEL[intensity]]
    accounts = plan.accounts(sender, count, statuses=("active", "overdue"))
    end = start + duration
    old_numbers = [a.number for a in accounts]
    sim.protected_numbers.update(old_numbers)
    episode = plan.new(REBIND_ANOMALY, "stale_binding_send", intensity, sender_id=sender.sender_id,
                       numbers=old_numbers)
    episode.add("sender", sender.sender_id)
    for account in accounts:
        episode.add("number", account.number)
        episode.add("account", f"{sender.sender_id}|{account.account_id}")
    watch = StaleWatch(start, end, {}, episode)
    sim.send_effects.setdefault(sender.sender_id, []).append(watch)
    reminders = [t for t in sender.templates.get("repayment_reminder", ()) if t.start_ts <= start] or \
        [t for c in REMINDER_CATEGORIES for t in sender.templates.get(c, ())]
    per_account = (2, 2, 3)[LEVEL[intensity]]
    for account in accounts:
        moved = start + int(rng.random() * duration * 0.3)
        watch.moved[account.number] = moved

        def move(ts, account=account):
            sim.rebind(ts, sender, account, sim.world.numbers.fresh(), rng.choice(("app", "web")),
                       account.device_id, customer_ip(rng), stale_until=end)

        def remind(ts, account=account):
            template = rng.choice(reminders)
            sim.send(sender, ts, template.category, template, account.send_number(ts), account.account_id,
                     plan.due_dates(ts))

        def reissue(ts, number=account.number):
            """The carrier gives the old number to someone new, who borrows elsewhere."""
            others = [s for s in plan.world.senders if s.lender and s is not sender and s.start_ts <= ts
                      and number not in s.by_number]
            if others:
                sim.open_loan(ts, rng.choice(others), number)

        sim.at(moved, move)
        if rng.random() < 0.6 and moved + 4 * HOUR_MS < end:
            sim.at(moved + rng.randrange(30 * MINUTE_MS, 4 * HOUR_MS), reissue)
        for when in spread(rng, moved + 10 * MINUTE_MS, end, per_account):
            sim.at(when, remind)
    return episode
