"""Reading each send against its template's registration, on one reader per partition.

A template sending millions a day would be one hot key; so each template has
one reader key per partition (``SpreadReaders``; ``replay`` uses one), a send
goes to the reader its message id's hash picks and a registration to all of
them. A reader turns a send into a ``TemplateRead``: whether it fits the
registered text, the link domains, callback numbers and signature it carries
(and which of them differ from the registration), who sent it and from where.
Reads are added up per bucket into a ``TemplateTally`` on the way to the
template's watch; link domains the template shows for the first time go to
the sender's book.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass, field
from typing import Any, ClassVar

from smsstream.detection.base import Part, partition_of
from smsstream.detection.facts import TemplateRead, rank_of
from smsstream.detection.templates.facts import (
    MAX_LINKS, TEMPLATE_ALARMS, TEMPLATE_LINKS, TEMPLATE_READS, TemplateAlarm, TemplateLink,
)
from smsstream.detection.textshape import Markers, TemplateText, diff_words, signature
from smsstream.records import SENDS, TEMPLATES


def _reader_of(send) -> str | None:
    """The reader of a send when a template has one reader (``replay``)."""
    tid = send.template_id
    return None if tid is None else tid + "#0"


def _readers_of(template) -> tuple[str, ...]:
    return (template.template_id + "#0",)


class SpreadReaders:
    """A template's reader keys on ``partitions`` partitions, one landing on each; a send goes to the
    one its message id's hash picks, a registration to all of them."""

    #: templates whose keys are remembered (each costs ``partitions`` short strings)
    MAX_KNOWN = 65_536

    def __init__(self, partitions: int):
        self.partitions = partitions
        self.known: dict[str, tuple[str, ...]] = {}

    def keys(self, template_id: str) -> tuple[str, ...]:
        keys = self.known.get(template_id)
        if keys is None:
            found: dict[int, str] = {}
            n = 0
            while len(found) < self.partitions:
                key = f"{template_id}#{n}"
                found.setdefault(partition_of(key, self.partitions), key)
                n += 1
            keys = tuple(found[i] for i in range(self.partitions))
            if len(self.known) >= self.MAX_KNOWN:
                self.known.clear()
            self.known[template_id] = keys
        return keys

    def of_send(self, send) -> str | None:
        tid = send.template_id
        if tid is None:
            return None
        return self.keys(tid)[zlib.crc32(send.message_id.encode()) % self.partitions]

    def of_template(self, template) -> tuple[str, ...]:
        return self.keys(template.template_id)


#: markers -> ``marker_keys`` of them; a template's sends carry the same few markers over and over
_KEYS_OF: dict[Markers, tuple[str, ...]] = {}
MAX_KEYS_OF = 4096


def marker_keys(m: Markers) -> tuple[str, ...]:
    """The keys a tally counts markers by: ``d:<domain>``, ``p:<number>``, ``s:<signature>``."""
    keys = _KEYS_OF.get(m)
    if keys is None:
        found = ["d:" + d for d in m.domains] + ["p:" + p for p in m.phones]
        if m.signature is not None:
            found.append("s:" + m.signature)
        keys = tuple(found)
        if len(_KEYS_OF) < MAX_KEYS_OF:
            _KEYS_OF[m] = keys
    return keys


#: What a reader raises an alarm for at most once per alert repeat interval, and how many it remembers.
MAX_ALARMED = 32


@dataclass(slots=True)
class ReaderState:
    registered: TemplateText | None = None
    owner: str | None = None
    last_ts: int = 0
    links: list = field(default_factory=list)  # domains already told to the sender's link book
    #: marker key or ``"sender:<id>"`` -> when this reader last raised an alarm for it
    alarmed: dict = field(default_factory=dict)


class TemplateReader(Part):
    """Per template and slot: each send read against the registration; what it shows is added up per bucket."""

    name = "template_hijack_reader"
    inputs: ClassVar = {SENDS: _reader_of, TEMPLATES: _readers_of}
    emits = (TEMPLATE_READS, TEMPLATE_LINKS, TEMPLATE_ALARMS)
    reads_body = True

    @classmethod
    def spread_over(cls, partitions: int) -> type[Part]:
        """One reader per partition for each template: a template sending millions a day spreads
        over all of them. (``replay`` reads with one: the merged tallies are the same.)"""
        if partitions <= 1:
            return cls
        readers = SpreadReaders(partitions)
        inputs = {SENDS: readers.of_send, TEMPLATES: readers.of_template}
        return type(cls.__name__, (cls,), {"inputs": inputs, "__module__": __name__})

    def __init__(self, ctx):
        super().__init__(ctx)
        self.counters = {"template_sends_judged": 0, "template_bodies_drifted": 0}
        #: the last registration parsed: its readers all get the same record in a row
        self._parsed: TemplateText | None = None

    def idle_since(self, state: ReaderState) -> int:
        return 1 << 62 if state.registered is not None else state.last_ts

    def process(self, topic: str, key: str, value: Any):
        state = self.entities.get(key)
        if state is None or (state.last_ts and value.ts - state.last_ts > self.ctx.idle_ms):
            state = ReaderState(*(() if state is None else (state.registered, state.owner)))
            if state.registered is not None:
                state.links = list(state.registered.markers.domains[:MAX_LINKS])
        if value.ts > state.last_ts:
            state.last_ts = value.ts
        if topic == TEMPLATES:
            parsed = self._parsed
            if parsed is None or parsed.text != value.text:
                parsed = self._parsed = TemplateText(value.text)
            state.registered = parsed
            state.owner = value.sender_id
            # The registration's own domains are told to the link book by TemplateWatch.
            state.links = list(parsed.markers.domains[:MAX_LINKS])
            self.save(key, state)
            return None
        read, found = self._read(state, key, value)
        self.save(key, state)
        facts: list[tuple[str, Any]] = [(TEMPLATE_READS, read)]
        alarm = self._alarm(state, value, read)
        if alarm is not None:
            facts.append((TEMPLATE_ALARMS, alarm))
        for domain in found:
            # Told once per sender: another sender carrying the template's link is news for its own book.
            told = domain if value.sender_id == state.owner else f"{value.sender_id} {domain}"
            if told in state.links or len(state.links) >= MAX_LINKS:
                continue
            state.links.append(told)
            foreign = state.owner is not None and value.sender_id != state.owner
            facts.append((TEMPLATE_LINKS, TemplateLink(value.ts, value.sender_id, value.template_id, domain,
                                                       value.message_id, foreign)))
        return facts

    def _alarm(self, state: ReaderState, send, read: TemplateRead) -> TemplateAlarm | None:
        """A send of a registered template with an injected link or callback number, or from a sender that
        does not own it: evidence on its own, for the template's watch at once (once per repeat interval)."""
        if state.registered is None or state.owner is None:
            return None
        markers = tuple(k for k in read.unregistered if k[0] in "dp")
        foreign = send.sender_id != state.owner
        if not markers and not foreign:
            return None
        keys = markers + ((f"sender:{send.sender_id}",) if foreign else ())
        alarmed = state.alarmed
        repeat = self.ctx.alert_repeat_ms
        if all(send.ts - alarmed.get(k, send.ts - repeat) < repeat for k in keys):
            return None
        for k in keys:
            alarmed[k] = send.ts
        while len(alarmed) > MAX_ALARMED:
            del alarmed[min(alarmed, key=alarmed.__getitem__)]
        return TemplateAlarm(send.ts, send.template_id, send.message_id, send.sender_id, markers, foreign)

    def _read(self, state: ReaderState, key: str, send) -> tuple[TemplateRead, tuple]:
        """The send as its template's tally counts it, and the link domains it carries."""
        self.counters["template_sends_judged"] += 1
        registered = state.registered
        stranger = send.sender_id if send.sender_id != state.owner or registered is None else None
        src = send.source
        source = None
        if src is not None and (src.api_key_id or src.source_ip):
            source = (src.api_key_id, src.source_ip)
        body = send.body
        read = TemplateRead(send.ts, send.template_id, key, send.message_id, rank_of(send.message_id),
                            0, stranger, source, (), (), False)
        if registered is None:
            marks = Markers.of(body)
            if marks.signature is None:
                # An unsigned body is a signature too (""): a template that always signed and stops has changed.
                marks = marks._replace(signature="")
            read.markers = marker_keys(marks)
            read.recipient = rank_of(send.number)
            return read, marks.domains
        fit = registered.fit(body)
        markers: tuple = ()
        domains: tuple = ()
        if fit.var_markers is not None:
            markers = marker_keys(fit.var_markers)
            domains = fit.var_markers.domains
        if not fit.ok:
            self.counters["template_bodies_drifted"] += 1
            marks = Markers(tuple(fit.new_domains), tuple(fit.new_phones), fit.signature)
            read.unregistered = marker_keys(marks)
            markers += read.unregistered
            domains += marks.domains
            read.diff = self.ctx.pseudonymizer.redact(diff_words(fit))
        else:
            read.fitting = True
        if not registered.has_signature:
            sig = signature(body)
            if sig is not None:
                markers += marker_keys(Markers(signature=sig))
        if markers:
            read.markers = markers
            read.recipient = rank_of(send.number)
        return read, domains
