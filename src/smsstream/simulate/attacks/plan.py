"""Placing attack episodes: when, on whom, at what intensity, and the label each one leaves.

Intensities run from ``low`` (barely visible, still far outside what the
target's own baseline explains) to ``high`` (blatant). An episode's label
spans the first to the last record carrying the attack, so time to detect is
measured from the first evidence; its entities are every entity a correct
detector of that kind might name.
"""

from __future__ import annotations

import copy
import random
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone

from smsstream.simulate.traffic import Simulation
from smsstream.simulate.world import LOAN_CATEGORIES, Account, Sender, Template
from smsstream.vocabulary import DAY_MS, HOUR_MS


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

    def fork(self, rng: random.Random) -> "Planner":
        """This planner drawing from ``rng``: same run, episodes and claims, its own random stream.

        Earlier scenarios keep drawing from the first planner's stream while the
        run goes on (their steps pick at run time), so a scenario planned after
        them must not draw from it.
        """
        twin = copy.copy(self)
        twin.rng = rng
        return twin

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


def spread(rng: random.Random, start: int, end: int, count: int) -> list[int]:
    return sorted(start + int(rng.random() * (end - start)) for _ in range(count))


def loan_recipient(plan: Planner, sender: Sender, category: str) -> tuple[str, str | None]:
    """Someone the sender may legitimately write to about this category."""
    rng = plan.rng
    if sender.accounts and (category in LOAN_CATEGORIES or (sender.lender and rng.random() < 0.7)):
        for _ in range(50):
            account = sender.accounts[int(rng.random() * len(sender.accounts))]
            if account.status in ("active", "overdue") and not account.protected:
                return account.number, account.account_id
    return plan.sim.prospect(), None
