"""What release 0.1 left behind, made like today's: its part-topic messages and its shard snapshots.

Release 0.1 kept phone numbers in clear on the part topics and in the
snapshots: in input records (and their raw bytes), in the number parts' keys,
in the ``p:<number>`` markers of the template parts. Today every number is a
pseudonym from intake on (``detection.intake``), so what 0.1 wrote is made
the same way before a shard takes it: records go through intake, sources lose
their raw bytes, markers and number keys become pseudonyms.

The parts keyed by a number (``REKEYED``) are partitioned by the pseudonym
now, no longer by the number, so an entity of 0.1's partition 2 may belong
to partition 0 today. Their shards are regrouped: a shard restoring from 0.1
takes, from every partition's 0.1 snapshot and from the 0.1 messages left
unread on every partition, the entities and items whose key is its own
(``regroup``). That needs every 0.1 worker stopped first (README, "Upgrading").
"""

from __future__ import annotations

import heapq
import re
from dataclasses import MISSING, fields, is_dataclass
from typing import Any, Iterable

from smsstream import records
from smsstream.detection.base import Part, partition_of
from smsstream.detection.driver import Item, Source
from smsstream.detection.intake import Intake
from smsstream.detection.rebind.facts import NumberBinding
from smsstream.detection.textshape import TemplateText

#: Parts whose keys hold a phone number (or an account id that may be one): their entities move partition.
REKEYED = frozenset({"borrower_book", "rebind_number", "rebind_account"})
#: ``p:`` marker of a callback number in clear (release 0.1) -- ``p:pn:...`` since.
_CLEAR_MARKER = re.compile(r"p:\+?\d{7,}\Z")
#: ``<sender_id>|<account or number>`` with a number in clear after the bar.
_BARRED_NUMBER = re.compile(r"(.*)\|(\+?[0-9]{7,15})\Z")

_RECORD_TOPIC = {records.Send: records.SENDS, records.Borrower: records.BORROWERS,
                 records.Binding: records.BINDINGS, records.Template: records.TEMPLATES}


class Release01:
    """Makes release 0.1's items and snapshot states like today's, under the worker's pseudonym key."""

    def __init__(self, parts: dict[str, type[Part]], intake: Intake):
        #: part name -> the part class as run (``Topology.by_name``): its key functions re-key items
        self.parts = parts
        self.intake = intake
        self._done: set[int] = set()

    # --- messages ----------------------------------------------------------------

    def items(self, name: str, items: Iterable[Item]) -> list[Item]:
        """Items of part ``name``'s topic written by 0.1, made like today's (re-keyed for ``REKEYED`` parts)."""
        inputs = self.parts[name].inputs
        out = []
        for item in items:
            value = self.value(item.value)
            key = item.key
            if name in REKEYED and key:
                fresh = inputs[item.stream](value) if item.stream in inputs else None
                key = fresh if fresh.__class__ is str else self.key(name, key)
            source = item.source
            if source is not None:
                source = Source(source.topic, source.partition, source.offset, None, None)
            out.append(Item(item.stream, key, value, item.ts, item.origin, source, item.seq))
        return out

    def key(self, name: str, key: str) -> str:
        """A 0.1 part key of part ``name`` as today's (number keys as pseudonyms)."""
        if name not in REKEYED or not key or key.startswith("pn:"):
            return key
        if name == "rebind_account":
            sender, bar, account = key.rpartition("|")
            return f"{sender}{bar}{self.intake.account(account)}"
        return self.intake.pseudonym(key)

    def value(self, value: Any) -> Any:
        """A record, a fact or any piece of state with every number in clear made a pseudonym."""
        self._done = set()
        return self._walk(value)

    def _walk(self, obj: Any) -> Any:
        cls = obj.__class__
        if cls is str:
            return self._text(obj)
        if cls in (int, float, bool, bytes) or obj is None:
            return obj
        if cls in _RECORD_TOPIC:
            return self.intake(_RECORD_TOPIC[cls], obj)
        if cls is TemplateText:
            return TemplateText(self.intake.text(obj.text))
        if cls is Source:
            return Source(obj.topic, obj.partition, obj.offset, None, None)
        if cls is dict:
            return {self._walk(k): self._walk(v) for k, v in obj.items()}
        if cls is list:
            obj[:] = [self._walk(v) for v in obj]
            return obj
        if isinstance(obj, tuple):
            walked = [self._walk(v) for v in obj]
            return cls._make(walked) if hasattr(cls, "_make") else cls(walked)
        if cls in (set, frozenset):
            return cls(self._walk(v) for v in obj)
        if not cls.__module__.startswith("smsstream.") or id(obj) in self._done:
            return obj
        self._done.add(id(obj))
        if cls is NumberBinding and not obj.number.startswith("pn:"):
            obj.number = self.intake.pseudonym(obj.number)
        if is_dataclass(obj):
            _fill_defaults(obj)
        for attr in _attributes(obj):
            try:
                setattr(obj, attr, self._walk(getattr(obj, attr)))
            except AttributeError:
                continue  # an unset slot, or a read-only one
        return obj

    def _text(self, text: str) -> str:
        if text.startswith("p:") and _CLEAR_MARKER.match(text):
            return "p:" + self.intake.pseudonym(text[2:])
        if "|" in text:
            barred = _BARRED_NUMBER.match(text)
            if barred is not None:
                return f"{barred.group(1)}|{self.intake.pseudonym(barred.group(2))}"
        return text

    # --- snapshots ---------------------------------------------------------------

    def state(self, name: str, data: dict) -> dict:
        """A 0.1 snapshot (``Shard.snapshot``'s dict) of part ``name`` made like today's, in place."""
        driver = data["driver"]
        part = driver["part"]
        rekey = name in REKEYED
        state_class = getattr(self.parts[name], "state_class", None)
        for attr, value in list(part.items()):
            if attr == "entities":
                part[attr] = {self.key(name, k) if rekey else self.value(k): _as_class(self.value(v), state_class)
                              for k, v in value.items()}
            elif attr == "_due" and rekey:
                part[attr] = {start: {self.key(name, k): None for k in keys} for start, keys in value.items()}
            else:
                part[attr] = self.value(value)
        if rekey:
            for episode in part["book"].episodes.values():
                episode.part_key = self.key(name, episode.part_key)
        driver["tally"] = self.value(driver["tally"])
        merge = data["merge"]
        queued = [entry[-1] for entry in merge._heap]
        merge._heap = []
        for item in self.items(name, queued):
            merge._seq += 1
            heapq.heappush(merge._heap, (item.ts, item.origin, item.seq, merge._seq, item))
        return data

    def regroup(self, name: str, partition: int, partitions: int, states: dict[int, dict],
                unread: dict[int, list[Item]]) -> dict:
        """Partition ``partition``'s state of a ``REKEYED`` part from every partition's upgraded 0.1 state.

        ``states`` maps each 0.1 partition to its upgraded snapshot state
        (``state``), this partition's included; ``unread`` maps each to the
        upgraded items 0.1 left unread on it. What follows a partition (its
        clock, counters, fact numbers, routine tally, snapshot position)
        comes from its own state; what follows a key (entities, open buckets,
        episodes, queued items) from whichever state held the key. Items
        without a key (kept only to be gated) stay on their partition.
        """
        mine = states[partition]

        def ours(key: str, where: int) -> bool:
            return where == partition if not key else partition_of(key, partitions) == partition

        part = dict(mine["driver"]["part"])
        entities: dict = {}
        due: dict = {}
        episodes: dict = {}
        for q, state in states.items():
            theirs = state["driver"]["part"]
            entities.update((k, v) for k, v in theirs["entities"].items() if ours(k, q))
            for start, keys in theirs["_due"].items():
                due.setdefault(start, {}).update((k, None) for k in keys if ours(k, q))
            episodes.update((k, e) for k, e in theirs["book"].episodes.items() if ours(e.part_key, q))
            part["clock"].max_ts = max(part["clock"].max_ts, theirs["clock"].max_ts)
        part["entities"] = entities
        part["_due"] = {start: keys for start, keys in sorted(due.items()) if keys}
        part["book"].episodes = episodes
        gate = mine["driver"]["gate"]
        for state in states.values():
            other = state["driver"]["gate"]
            if other is not gate:
                gate.seen.update(other.seen)
                for start, ids in other._by_bucket.items():
                    gate._by_bucket.setdefault(start, []).extend(ids)
                gate.max_ts = max(gate.max_ts, other.max_ts)
        merge = mine["merge"]
        queued = [(q, entry[-1]) for q, state in states.items() for entry in state["merge"]._heap]
        queued += [(q, item) for q, items in unread.items() for item in items]
        for state in states.values():
            for origin, theirs in state["merge"].origins.items():
                own = merge._origin(origin)
                own.seq = max(own.seq, theirs.seq)
                own.watermark = max(own.watermark, theirs.watermark)
                own.seen = own.seen or theirs.seen
        merge._heap = []
        for q, item in queued:
            if item.seq >= 0:
                # whichever shard it went to, an item 0.1 queued was routed: a copy sent again is dropped
                origin = merge._origin(item.origin)
                origin.seq = max(origin.seq, item.seq)
                origin.watermark = max(origin.watermark, item.ts)
                origin.seen = True
            if ours(item.key, q):
                merge._seq += 1
                heapq.heappush(merge._heap, (item.ts, item.origin, item.seq, merge._seq, item))
        return {**mine, "driver": {**mine["driver"], "part": part, "gate": gate}, "merge": merge}


def _fill_defaults(obj: Any) -> None:
    """Give a state object the fields its class gained since 0.1 pickled it, at their defaults."""
    for f in fields(obj):
        if not hasattr(obj, f.name):
            if f.default is not MISSING:
                setattr(obj, f.name, f.default)
            elif f.default_factory is not MISSING:
                setattr(obj, f.name, f.default_factory())


def _as_class(state: Any, cls: type | None) -> Any:
    """An entity's state as the part's state class, where that class now extends the one 0.1 pickled."""
    if cls is None or state.__class__ is cls or not issubclass(cls, state.__class__):
        return state
    promoted = cls.__new__(cls)
    for f in fields(cls):
        if hasattr(state, f.name):
            setattr(promoted, f.name, getattr(state, f.name))
    _fill_defaults(promoted)
    return promoted


def _attributes(obj: Any) -> list[str]:
    if is_dataclass(obj):
        return [f.name for f in fields(obj)]
    names = [n for c in type(obj).__mro__ for n in getattr(c, "__slots__", ())]
    return names + list(getattr(obj, "__dict__", {}))
