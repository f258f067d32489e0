"""Hand-made traffic for detector tests: small, seeded, readable.

Events are ``(topic, record)`` pairs; ``run`` sorts them by event time (the
order a clean feed would deliver) and drives an ``Engine``.
"""

from __future__ import annotations

import random
from typing import Any, Callable, Iterable

from smsstream.detection.base import Part
from smsstream.detection.controls import ControlBook, Entry, parse_entry
from smsstream.detection.engine import DETECTOR_PARTS, Engine
from smsstream.pseudonym import Pseudonymizer
from smsstream.records import BORROWERS, RECEIPTS, SENDS, Borrower, Receipt, Send, Source

KEY = "test-key"
MINUTE = 60_000
HOUR = 60 * MINUTE
DAY = 24 * HOUR
#: Monday 2 March 2026, 00:00 UTC
T0 = 1_772_409_600_000

Event = tuple[str, object]


def engine(**kwargs) -> Engine:
    return Engine(Pseudonymizer(KEY), **kwargs)


def detector_parts(*wanted: type[Part]) -> list[type[Part]]:
    """Those of ``wanted`` that are in ``DETECTOR_PARTS``, in its order.

    Tests that run only some parts pick them through this, so a part taken off
    the detector list (``tests/part_removal.py``) is gone from their engines too.
    """
    return [part for part in DETECTOR_PARTS if part in wanted]


def numbers(rng: random.Random, count: int, prefix: str = "+86138") -> list[str]:
    return [f"{prefix}{rng.randrange(10**8):08d}" for _ in range(count)]


def book(sender: str, borrowers: Iterable[str], ts: int = T0 - DAY) -> list[Event]:
    return [(BORROWERS, Borrower(sender, n, f"acct-{n[-6:]}", "active", ts)) for n in borrowers]


class Sends:
    """One sender/template's sends over a span, with receipts; counters make message ids unique."""

    counter = 0

    def __init__(self, rng: random.Random, sender: str, template: str | None, borrowers: list[str]):
        self.rng = rng
        self.sender = sender
        self.template = template
        self.borrowers = borrowers

    def run(
        self,
        start: int,
        minutes: int,
        per_minute: float | Callable[[int], float],
        stranger_share: float = 0.01,
        strangers: list[str] | None = None,
        category: str = "repayment_reminder",
        carrier: str = "carrier-a",
        statuses: dict[str, float] | None = None,
        receipt_delay_ms: int | Callable[[], int] = 5_000,
        api_key: str = "key-1",
        ip: str = "10.0.0.1",
        body: str = "Dear customer, your repayment of 500 is due on 3 May.",
    ) -> list[Event]:
        """Poisson-ish sends per minute; ``stranger_share`` of them to numbers outside the book."""
        rng = self.rng
        statuses = statuses or {"DELIVRD": 0.96, "UNDELIV": 0.03, "BLOCKED": 0.01}
        names, weights = list(statuses), list(statuses.values())
        out: list[Event] = []
        for m in range(minutes):
            rate = per_minute(m) if callable(per_minute) else per_minute
            count = int(rate) + (1 if rng.random() < rate - int(rate) else 0)
            for _ in range(count):
                Sends.counter += 1
                ts = start + m * MINUTE + rng.randrange(MINUTE)
                if rng.random() < stranger_share:
                    number = rng.choice(strangers) if strangers else f"+86139{rng.randrange(10**8):08d}"
                else:
                    number = rng.choice(self.borrowers)
                mid = f"{self.sender}-m{Sends.counter}"
                out.append((SENDS, Send(mid, ts, self.sender, self.template, number, category, body,
                                        None, Source(api_key, ip, "api"), carrier)))
                delay = receipt_delay_ms() if callable(receipt_delay_ms) else receipt_delay_ms
                status = rng.choices(names, weights)[0]
                out.append((RECEIPTS, Receipt(mid, ts + delay, status, None, carrier)))
        return out


def differences(a: Any, b: Any, path: str = "state") -> list[str]:
    """Where two states differ, field by field: dataclasses, slotted and plain objects, dicts, lists, tuples.

    For checking that a state survives pickling: unlike comparing the two
    pickles, it says which field was lost or changed, and it needs no
    ``__eq__`` on the state's classes.
    """
    if type(a) is not type(b):
        return [f"{path}: {type(a).__name__} != {type(b).__name__}"]
    if isinstance(a, dict):
        if list(a) != list(b):
            return [f"{path}: keys {list(a)[:5]}... != {list(b)[:5]}..."]
        return [d for k in a for d in differences(a[k], b[k], f"{path}[{k!r}]")]
    if isinstance(a, (list, tuple)):
        if len(a) != len(b):
            return [f"{path}: {len(a)} items != {len(b)}"]
        return [d for i, (x, y) in enumerate(zip(a, b)) for d in differences(x, y, f"{path}[{i}]")]
    names = [n for cls in type(a).__mro__ for n in getattr(cls, "__slots__", ())]
    names += list(getattr(a, "__dict__", {}))
    if names:
        return [d for n in names if hasattr(a, n) or hasattr(b, n)
                for d in differences(getattr(a, n, None), getattr(b, n, None), f"{path}.{n}")]
    return [] if a == b else [f"{path}: {a!r} != {b!r}"]


def run(events: list[Event], eng: Engine | None = None, sort: bool = True) -> list[dict]:
    eng = eng or engine()
    if sort:
        events = sorted(events, key=lambda e: e[1].ts)
    alerts: list[dict] = []
    for topic, record in events:
        alerts.extend(eng.ingest(topic, record))
    alerts.extend(eng.flush())
    return alerts



def control(entry_id: str, control_: str, scope: dict, ts: int = T0, **fields) -> Entry:
    """One operator control entry, as `smsstream config set` would write it."""
    parsed = parse_entry(entry_id, {"control": control_, "scope": scope, "set_by": "oncall", "why": "test", "ts": ts,
                                    **fields})
    assert parsed is not None
    return parsed


def under(events: list[Event], *entries: Entry) -> list[dict]:
    """``run`` with these control entries in force."""
    return run(events, engine(controls=ControlBook(entries)))

def firing(alerts: list[dict], kind: str | None = None, entity_type: str | None = None) -> list[dict]:
    return [
        a for a in alerts
        if a["status"] == "firing"
        and (kind is None or a["kind"] == kind)
        and (entity_type is None or a["entity_type"] == entity_type)
    ]


def keys(alerts: list[dict]) -> set[str]:
    return {a["dedup_key"] for a in alerts}
