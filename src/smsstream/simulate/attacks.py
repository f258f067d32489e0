"""Attack scenarios, one function each, every one a labelled episode at a random time and intensity.

Intensities run from ``low`` (barely visible, still far outside what the
target's own baseline explains: a few dozen non-borrower sends in an hour at a
sender whose base rate is ~1 %) to ``high`` (blatant). An episode's label spans
the first to the last record carrying the attack, so time to detect is
measured from the first evidence; its entities are every entity a correct
detector of that kind might name.

Entity ids: sender -> ``sender_id``, template -> ``template_id``, number -> the
E.164 number in clear, device -> ``device_id``, carrier -> carrier name,
account -> ``<sender_id>|<account_id>`` (the ``sms.bindings`` key).
"""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Callable

from smsstream.simulate.traffic import Simulation, customer_ip
from smsstream.simulate.world import LOAN_CATEGORIES, REMINDER_CATEGORIES, Account, Sender, Template
from smsstream.vocabulary import (
    DAY_MS, DELIVERY_FAILURE_SPIKE, HOUR_MS, MINUTE_MS, NON_BORROWER_SPIKE, REBIND_ANOMALY, TEMPLATE_HIJACK,
)

INTENSITIES = ("low", "medium", "high")
LEVEL = {"low": 0, "medium": 1, "high": 2}


@dataclass
class Episode:
    kind: str
    reason: str
    intensity: str
    entities: list[tuple[str, str]] = field(default_factory=list)
    first: int | None = None
    last: int | None = None
    records: int = 0
    details: dict = field(default_factory=dict)
    episode_id: str = ""

    def add(self, entity_type: str, entity_id: str) -> None:
        if (entity_type, entity_id) not in self.entities:
            self.entities.append((entity_type, entity_id))

    def touch(self, ts: int) -> None:
        self.records += 1
        if self.first is None or ts < self.first:
            self.first = ts
        if self.last is None or ts > self.last:
            self.last = ts

    def label(self) -> dict:
        return {
            "episode_id": self.episode_id,
            "kind": self.kind,
            "entities": [{"entity_type": t, "entity_id": i} for t, i in self.entities],
            "start": self.first,
            "end": self.last,
        }


# --- effects on normal traffic -------------------------------------------------

@dataclass
class BodyTamper:
    """Sends of one template in the window carry altered text."""

    start: int
    end: int
    template_id: str
    fraction: float
    transform: Callable[[random.Random, str], str]
    episode: Episode

    def apply(self, rng, ts, template_id, category, number, account_id, body):
        if template_id == self.template_id and rng.random() < self.fraction:
            body = self.transform(rng, body)
            self.episode.touch(ts)
        return number, account_id, body


@dataclass
class RecipientSwap:
    """Reminders in the window go to numbers from someone else's book."""

    start: int
    end: int
    categories: frozenset[str]
    fraction: float
    recipients: list[tuple[str, str]]
    episode: Episode

    def apply(self, rng, ts, template_id, category, number, account_id, body):
        if category in self.categories and rng.random() < self.fraction:
            number, account_id = self.recipients[int(rng.random() * len(self.recipients))]
            self.episode.touch(ts)
        return number, account_id, body


@dataclass
class StaleWatch:
    """Marks loan sends that still reach numbers after their accounts moved away (old number -> move time)."""

    start: int
    end: int
    moved: dict[str, int]
    episode: Episode

    def apply(self, rng, ts, template_id, category, number, account_id, body):
        moved = self.moved.get(number)
        if moved is not None and ts >= moved and category in LOAN_CATEGORIES:
            self.episode.touch(ts)
        return number, account_id, body


@dataclass
class ReceiptFailure:
    """Receipts for the sender's sends in the window fail (optionally on one carrier, for some categories)."""

    start: int
    end: int
    carrier: str | None
    categories: frozenset[str] | None
    fraction: float
    statuses: list[tuple[str, str]]
    weights: list[float]
    episode: Episode

    def outcome(self, rng, carrier, category):
        if self.carrier is not None and carrier != self.carrier:
            return None
        if self.categories is not None and category not in self.categories:
            return None
        if rng.random() >= self.fraction:
            return None
        return rng.choices(self.statuses, self.weights)[0]


# --- planning --------------------------------------------------------------------

class Planner:
    """Places episodes at random times on suitable targets, keeping each sender to one episode at a time."""

    def __init__(self, sim: Simulation, rng: random.Random):
        self.sim = sim
        self.rng = rng
        self.world = sim.world
        run = sim.end_ts - sim.start_ts
        self.earliest = sim.start_ts + min(DAY_MS // 2, int(run * 0.3))
        self.busy: dict[str, list[tuple[int, int]]] = {}
        self.episodes: list[Episode] = []

    # -- helpers -----------------------------------------------------------------

    def window(self, duration: int) -> int:
        latest = self.sim.end_ts - duration - 2 * HOUR_MS
        return self.rng.randrange(self.earliest, max(self.earliest + 1, latest))

    def free(self, sender: Sender, start: int, end: int) -> bool:
        margin = 2 * HOUR_MS
        return all(e + margin < start or end + margin < s for s, e in self.busy.get(sender.sender_id, ()))

    def claim(self, sender: Sender, start: int, end: int) -> None:
        self.busy.setdefault(sender.sender_id, []).append((start, end))

    def senders(self, start: int, end: int, lender: bool | None = True, min_daily: float = 0,
                min_book: int = 0, categories: tuple[str, ...] = ()) -> list[Sender]:
        out = []
        for s in self.world.senders:
            if lender is not None and s.lender != lender:
                continue
            if s.start_ts > start - HOUR_MS * 6 or not self.free(s, start, end):
                continue
            if s.daily_volume * sum(s.mix.get(c, 0) for c in categories or s.mix) < min_daily:
                continue
            if len(s.by_number) < min_book:
                continue
            out.append(s)
        return out

    def pick(self, candidates: list[Sender], prefer_small: bool = False) -> Sender | None:
        if not candidates:
            return None
        if prefer_small:
            return self.rng.choice(candidates)
        return self.rng.choices(candidates, [s.daily_volume ** 0.3 for s in candidates])[0]

    def campaign_start(self, sender: Sender, after: int) -> int | None:
        """UTC start of the sender's next reminder campaign at or after ``after`` that leaves room in the run."""
        offset = self.sim.region.utc_offset_ms
        day0 = (after + offset) // DAY_MS * DAY_MS - offset
        options = []
        for d in range(0, 8):
            for h in sender.campaign_hours:
                ts = day0 + d * DAY_MS + h * HOUR_MS
                if after <= ts < min(self.sim.end_ts - 4 * HOUR_MS, after + DAY_MS):
                    options.append(ts)
        return self.rng.choice(options[:4]) if options else None

    def accounts(self, sender: Sender, count: int, statuses=("active", "overdue")) -> list[Account]:
        rng = self.rng
        pool = [a for a in sender.accounts if a.status in statuses and not a.protected]
        chosen = rng.sample(pool, min(count, len(pool)))
        for account in chosen:
            account.protected = True
        return chosen

    def release(self, pairs: list[tuple[Sender, Account]]) -> None:
        """Give back accounts taken for a scenario that could not be placed."""
        for _, account in pairs:
            account.protected = False

    def template(self, sender: Sender, categories: tuple[str, ...], registered: bool | None = None) -> Template | None:
        options = [t for c in categories for t in sender.templates.get(c, ()) if t.start_ts <= sender.start_ts]
        if registered is not None:
            preferred = [t for t in options if t.registered == registered]
            options = preferred or options
        return self.rng.choice(options) if options else None

    def fresh_number(self) -> str:
        number = self.world.numbers.fresh()
        self.sim.protected_numbers.add(number)
        return number

    def due_dates(self, ts: int) -> list[str]:
        local = datetime.fromtimestamp((ts + self.sim.region.utc_offset_ms) / 1000, tz=timezone.utc)
        return [(local + timedelta(days=d)).strftime("%d-%b-%Y") for d in (1, 3, 7)]

    def new(self, kind: str, reason: str, intensity: str, **details) -> Episode:
        episode = Episode(kind, reason, intensity, details=details)
        self.episodes.append(episode)
        return episode


def _spread(rng: random.Random, start: int, end: int, count: int) -> list[int]:
    return sorted(start + int(rng.random() * (end - start)) for _ in range(count))


def _loan_recipient(plan: Planner, sender: Sender, category: str) -> tuple[str, str | None]:
    """Someone the sender may legitimately write to about this category."""
    rng = plan.rng
    if sender.accounts and (category in LOAN_CATEGORIES or (sender.lender and rng.random() < 0.7)):
        for _ in range(50):
            account = sender.accounts[int(rng.random() * len(sender.accounts))]
            if account.status in ("active", "overdue") and not account.protected:
                return account.number, account.account_id
    return plan.sim.prospect(), None


# --- non_borrower_spike -------------------------------------------------------------

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
        for when, number in zip(_spread(rng, start, start + duration, len(numbers)), numbers):
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


# --- template_hijack ----------------------------------------------------------------

def _malicious_url(rng: random.Random, sender: Sender) -> str:
    base = sender.sender_id
    host = rng.choice((f"{base}-pay.top", f"{base}.verify-kyc.xyz", "bit.ly", f"{base}-refund.site", "tinyurl.com"))
    return f"https://{host}/{rng.getrandbits(30):08x}"


def _tamper(plan: Planner, intensity: str, reason: str) -> Episode | None:
    rng, sim = plan.rng, plan.sim
    duration = rng.randrange(45, 241) * MINUTE_MS
    start = plan.window(duration)
    sender = plan.pick(plan.senders(start, start + duration, lender=None, min_daily=100))
    if sender is None:
        return None
    template = plan.template(sender, ("repayment_reminder", "overdue_notice", "loan_marketing", "notification", "otp"),
                             registered=rng.random() < 0.8)
    if template is None:
        return None
    plan.claim(sender, start, start + duration)
    if reason == "url_injected":
        url = _malicious_url(rng, sender)
        marker = url  # one link per episode: shared hosts (bit.ly) would blur episodes together

        def transform(r, body, url=url, domain=sender.domain):
            if domain in body:
                head, _, tail = body.partition(f"https://{domain}/")
                rest = tail.split(" ", 1)
                return head + url + (" " + rest[1] if len(rest) > 1 else "")
            return f"{body} Verify now: {url}"
    elif reason == "callback_injected":
        marker = plan.fresh_number()
        callback = marker

        def transform(r, body, callback=callback, hotline=sender.hotline):
            if hotline in body:
                return body.replace(hotline, callback)
            return f"{body} Call {callback} immediately to avoid legal action."
    else:
        marker = rng.choice((f"[{sender.brand} Support]", "[RBI-Recovery]", "[Legal Cell]", f"[{sender.brand[:-1]}]"))

        def transform(r, body, old=sender.signature, new=marker):
            return body.replace(old, new, 1)

    fraction = (0.05, 0.3, 1.0)[LEVEL[intensity]]
    extra = (15, 60, 300)[LEVEL[intensity]]
    episode = plan.new(TEMPLATE_HIJACK, reason, intensity, sender_id=sender.sender_id,
                       template_id=template.template_id, marker=marker, fraction=fraction)
    episode.add("template", template.template_id)
    episode.add("sender", sender.sender_id)
    sim.send_effects.setdefault(sender.sender_id, []).append(
        BodyTamper(start, start + duration, template.template_id, fraction, transform, episode))

    def inject(ts):
        dates = plan.due_dates(ts)
        for when in _spread(rng, start, start + duration, extra):
            number, account_id = _loan_recipient(plan, sender, template.category)
            body = transform(rng, sim.render(sender, template, dates, account_id))
            sim.send(sender, when, template.category, template, number, account_id, dates, body=body, episode=episode)

    sim.at(start, inject)
    return episode


def url_injected(plan, intensity):
    """Reminders of a template now carry a link to a look-alike domain."""
    return _tamper(plan, intensity, "url_injected")


def callback_injected(plan, intensity):
    """A template's hotline is replaced by (or joined by) a mobile number to call."""
    return _tamper(plan, intensity, "callback_injected")


def signature_changed(plan, intensity):
    """The sender's signature in a template is changed to another name."""
    return _tamper(plan, intensity, "signature_changed")


def foreign_sender(plan: Planner, intensity: str) -> Episode | None:
    """A sender uses a registered template that belongs to another sender."""
    rng, sim = plan.rng, plan.sim
    duration = rng.randrange(20, 121) * MINUTE_MS
    start = plan.window(duration)
    owners = [s for s in plan.world.senders if s.start_ts <= start - 6 * HOUR_MS]
    intruders = plan.senders(start, start + duration, lender=None)
    if not owners or len(intruders) < 2:
        return None
    intruder = plan.pick(intruders, prefer_small=True)
    owner = rng.choice([s for s in owners if s is not intruder])
    categories = ("repayment_reminder", "loan_marketing", "notification", "otp") if intruder.lender else ("loan_marketing", "notification", "otp")
    template = plan.template(owner, categories, registered=True)
    if template is None:
        return None
    plan.claim(intruder, start, start + duration)
    count = (15, 80, 600)[LEVEL[intensity]]
    episode = plan.new(TEMPLATE_HIJACK, "foreign_sender", intensity, sender_id=intruder.sender_id,
                       owner_sender_id=owner.sender_id, template_id=template.template_id, sends=count)
    episode.add("template", template.template_id)
    episode.add("sender", intruder.sender_id)

    def inject(ts):
        dates = plan.due_dates(ts)
        for when in _spread(rng, start, start + duration, count):
            number, account_id = _loan_recipient(plan, intruder, template.category)
            body = sim.render(owner, template, dates, account_id)
            sim.send(intruder, when, template.category, template, number, account_id, dates, body=body, episode=episode)

    sim.at(start, inject)
    return episode


def new_source_burst(plan: Planner, intensity: str) -> Episode | None:
    """A stolen API key: one template bursts from a key and IP the sender never used, mostly with a bad link."""
    rng, sim = plan.rng, plan.sim
    duration = (rng.randrange(20, 41), rng.randrange(20, 61), rng.randrange(30, 91))[LEVEL[intensity]] * MINUTE_MS
    start = plan.window(duration)
    sender = plan.pick(plan.senders(start, start + duration, lender=None), prefer_small=True)
    if sender is None:
        return None
    template = plan.template(sender, ("repayment_reminder", "loan_marketing", "notification", "overdue_notice"))
    if template is None:
        return None
    plan.claim(sender, start, start + duration)
    count = (30, 300, 3000)[LEVEL[intensity]]
    source = {"api_key_id": f"ak_{rng.getrandbits(40):010x}", "source_ip": customer_ip(rng), "channel": "http"}
    url = _malicious_url(rng, sender)
    episode = plan.new(TEMPLATE_HIJACK, "new_source_burst", intensity, sender_id=sender.sender_id,
                       template_id=template.template_id, api_key_id=source["api_key_id"], sends=count)
    episode.add("template", template.template_id)
    episode.add("sender", sender.sender_id)

    def inject(ts):
        dates = plan.due_dates(ts)
        for when in _spread(rng, start, start + duration, count):
            number, account_id = _loan_recipient(plan, sender, template.category)
            body = sim.render(sender, template, dates, account_id)
            if rng.random() < 0.7:
                body = body.replace(f"https://{sender.domain}/", url + "?r=", 1) if sender.domain in body else f"{body} {url}"
            sim.send(sender, when, template.category, template, number, account_id, dates, body=body,
                     source=source, episode=episode)

    sim.at(start, inject)
    return episode


# --- rebind_anomaly ---------------------------------------------------------------

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
    for when, account in zip(_spread(rng, start, start + duration, len(accounts)), accounts):
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
    for when, (lender, account) in zip(_spread(rng, start, start + duration, len(pairs)), pairs):
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
    for when, (lender, account) in zip(_spread(rng, start, start + duration, len(pairs)), pairs):
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
        for when in _spread(rng, moved + 10 * MINUTE_MS, end, per_account):
            sim.at(when, remind)
    return episode


# --- delivery_failure_spike ---------------------------------------------------------

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


SCENARIOS: dict[str, tuple[Callable[[Planner, str], Episode | None], ...]] = {
    NON_BORROWER_SPIKE: (purchased_list, book_mixup),
    TEMPLATE_HIJACK: (url_injected, callback_injected, signature_changed, foreign_sender, new_source_burst),
    REBIND_ANOMALY: (mass_rebind, number_fan_in, device_fan_out, account_flapping, account_flapping_slow,
                       stale_binding_send),
    DELIVERY_FAILURE_SPIKE: (carrier_blocking, failure_rate_jump),
}
KINDS = tuple(SCENARIOS)
#: scenario name (the manifest's ``reason``) -> (kind, scenario)
SCENARIO_NAMES = {f.__name__: (kind, f) for kind, fs in SCENARIOS.items() for f in fs}


def scenarios_for(names: tuple[str, ...]) -> list[Callable[[Planner, str], Episode | None]]:
    """Kinds stand for all their scenarios; scenario names for themselves. Order and repeats are dropped."""
    chosen: list = []
    for name in names:
        for scenario in SCENARIOS[name] if name in SCENARIOS else (SCENARIO_NAMES[name][1],):
            if scenario not in chosen:
                chosen.append(scenario)
    return chosen


def plan_attacks(sim: Simulation, rng: random.Random, names: tuple[str, ...], days: float) -> Planner:
    """Every chosen scenario about once per 1.5 simulated days, intensities rotating."""
    plan = Planner(sim, rng)
    repeats = max(1, round(days / 1.5))
    for scenario in scenarios_for(names):
        levels = list(INTENSITIES)
        rng.shuffle(levels)
        for i in range(repeats):
            for _ in range(5):  # a few tries to find a free, suitable target
                if scenario(plan, levels[i % 3]) is not None:
                    break
    return plan
