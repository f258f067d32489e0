"""How an attack shows in the simulated traffic: effects on the normal sends and receipts of one sender.

Each effect is active between ``start`` and ``end`` and touches its
episode for every record it changes or marks, so the episode's label spans
the records that carry the attack.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Callable

from smsstream.simulate.attacks.plan import Episode
from smsstream.simulate.world import LOAN_CATEGORIES


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
