"""Which part takes which input record or fact, under which key: one answer for replay and the worker."""

from __future__ import annotations

from typing import Any, Sequence

from smsstream.detection.base import Part
from smsstream.records import INPUT_TOPICS


class Routes:
    """The wiring of a list of parts: who consumes each stream, and who reports each input topic's refusals.

    The *reporting* part of an input topic (its first consumer) gets every
    record of it, keyed by the record's id when it has no use for it (empty
    part key), so that its gate sees every duplicate and late record and
    dead-letters it once.
    """

    def __init__(self, parts: Sequence[type[Part]]):
        #: producers first: the order in which whoever runs several parts advances them
        self.parts = producers_first(parts)
        self.by_name = {p.name: p for p in self.parts}
        #: stream -> its consumers in the order given (the first of an input topic's reports it)
        self.consumers: dict[str, list[type[Part]]] = {}
        for p in parts:
            for stream in p.inputs:
                self.consumers.setdefault(stream, []).append(p)
        self.input_topics = [t for t in INPUT_TOPICS if t in self.consumers]
        self.reporter = {t: self.consumers[t][0].name for t in self.input_topics}
        self._reports = {p.name: frozenset(t for t, name in self.reporter.items() if name == p.name)
                         for p in self.parts}

    def reports(self, name: str) -> frozenset[str]:
        """The input topics whose refused records the part ``name`` dead-letters."""
        return self._reports[name]

    def route(self, topic: str, record: Any) -> list[tuple[str, str, str]]:
        """``(part name, part key, partitioning key)`` for each part that takes this input record."""
        out = []
        for p in self.consumers.get(topic, ()):
            key = p.inputs[topic](record)
            if key is None:
                if self.reporter.get(topic) != p.name:
                    continue
                out.append((p.name, "", record_id(record)))
            elif key.__class__ is str:
                out.append((p.name, key, key))
            else:
                out.extend((p.name, k, k) for k in key)
        return out

    def route_fact(self, stream: str, fact: Any) -> list[tuple[str, str]]:
        """``(part name, key)`` for each part that takes this fact (a fact has one key per part)."""
        out = []
        for q in self.consumers.get(stream, ()):
            key: Any = q.inputs[stream](fact)
            if key is not None:
                out.append((q.name, key))
        return out


def producers_first(parts: Sequence[type[Part]]) -> list[type[Part]]:
    """The parts in their given order, except that every part comes after the parts whose facts it reads.

    Closing a bucket is only right once every producer has handed over its
    counts for it, so whoever advances several parts advances them in this order.
    """
    left = list(parts)
    ordered: list[type[Part]] = []
    while left:
        emitted = {s for p in left for s in p.emits}
        ready = next((p for p in left if not emitted & p.inputs.keys()), None)
        if ready is None:
            raise ValueError(f"the facts of {', '.join(p.name for p in left)} go round in a circle")
        ordered.append(ready)
        left.remove(ready)
    return ordered


def record_id(record: Any) -> str:
    """A stable id for partitioning a record that has no part key (borrower pair, template id, ...)."""
    for attr in ("message_id", "event_id", "template_id"):
        value = getattr(record, attr, None)
        if value:
            return value
    return f"{getattr(record, 'sender_id', '')}|{getattr(record, 'number', '')}"
