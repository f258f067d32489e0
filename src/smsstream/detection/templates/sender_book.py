"""``SenderBook``: per sender, the link domains and the sources (API keys, networks) of all its templates.

Keyed by sender, it hears every template's new link domains and every
registered template's sources per bucket, and judges what one template's
history cannot, on ``template_hijack/sender/<id>``:

- ``content_drift``: a domain none of the sender's SMS carried before, on a
  template whose very first sends are already tampered, or on a dormant
  registered template woken up by someone else with a new link. The
  sender's usual domains are those of its registrations and of its first
  ``SENDER_LEARN_MS`` of traffic.
- ``volume_burst``: a burst on a template with next to no history from an
  API key and network none of the sender's SMS ever came from (a stolen key
  driving a template the sender barely uses). A new source that also
  carries the sender's established templates is the sender's own (a key
  rotation or a new host) and is left to those templates to judge.

Operator controls: a domain a ``links`` allowance names for the sender (or
the template) is not new; sensitivity moves the fewest sends of a burst
(``volume.BURST_LEVELS``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar, Iterable, NamedTuple

from smsstream.detection.alerts import MAX_EVIDENCE, Finding, one_alert
from smsstream.detection.base import Part
from smsstream.detection.controls import LINKS, NORMAL, Subject
from smsstream.detection.facts import MAX_SAMPLES, SendsRow
from smsstream.detection.templates.facts import TEMPLATE_LINKS, TEMPLATE_SOURCES, TemplateLink, TemplateSources
from smsstream.detection.templates.sources import (
    NEW_SOURCE_MS, is_new_source, knows_its_sources, parts_of, show_source, source_order,
)
from smsstream.detection.templates.state import WINDOW_MS
from smsstream.detection.templates.volume import BURST_LEVELS
from smsstream.vocabulary import CONTENT_DRIFT, CRITICAL, HOUR_MS, SENDER, TEMPLATE_HIJACK, VOLUME_BURST, WARNING

#: A sender's usual link domains are those of its registrations and of its first ``SENDER_LEARN_MS`` of traffic.
SENDER_LEARN_MS = 6 * HOUR_MS
MAX_SENDER_DOMAINS = 64
#: Sources (``k:``/``n:`` parts) and templates a sender's source book keeps.
MAX_SENDER_SOURCES = 256
MAX_SENDER_TEMPLATES = 512


def _link_sender(fact: TemplateLink | TemplateSources) -> str:
    return fact.sender_id


class NewLink(NamedTuple):
    """A link domain new to an established sender, carried by one of its templates."""

    domain: str
    template_id: str
    message_id: str
    ts: int


@dataclass(slots=True)
class SenderSource:
    """A source part (``k:``/``n:``) of the sender's SMS."""

    #: bucket it was first used in; 0: one of the sender's first sources
    first_seen: int
    sends: int = 0
    #: it carried a template that knew its own sources before it came: the sender's own
    own: bool = False

    def fresh(self, start: int) -> bool:
        """Is it still new to the sender in bucket ``start``?"""
        return bool(self.first_seen) and start - self.first_seen < NEW_SOURCE_MS and not self.own


@dataclass(slots=True)
class SenderTemplate:
    """One of the sender's registered templates, as its source book knows it."""

    first_seen: int
    sends: int = 0
    #: bucket it came to know its own sources in; 0: not yet
    knows_sources_since: int = 0


class NewSourceSends(NamedTuple):
    """One bucket's sends of a template too young to judge its sources, from a source new to the sender."""

    start: int
    template_id: str
    parts: tuple
    sends: int
    #: ``(rank, message id)``, the lowest-ranked few
    samples: tuple


@dataclass(slots=True)
class SenderBookState:
    domains: dict = field(default_factory=dict)  # domain -> first seen
    first_ts: int = 0
    last_ts: int = 0
    #: bucket start -> [NewLink]: domains new to an established sender
    pending: dict = field(default_factory=dict)
    #: when the sender's first sources were told: sources are judged a day after
    sources_since: int = 0
    #: source part ("k:"/"n:") -> SenderSource
    sources: dict = field(default_factory=dict)
    #: template -> SenderTemplate
    templates: dict = field(default_factory=dict)
    #: bucket start -> {(template, reader): TemplateSources}
    told: dict = field(default_factory=dict)
    #: the last hour's sends from new sources on templates too young to judge them (NewSourceSends)
    recent: list = field(default_factory=list)
    #: no source of the sender is new from this time on
    fresh_until: int = 0
    #: "template domain" of links told here but not learned as the sender's own (another lender's template,
    #: or the domain book full) -> first seen: reported once, however many readers the template is read on;
    #: the most recent ``MAX_SENDER_DOMAINS`` are kept
    strays: dict = field(default_factory=dict)


class SenderBook(Part):
    """Per sender: the link domains and the sources (API keys, networks) all its templates used.

    Catches what one template's own history cannot: a template whose very
    first sends are already tampered, or a dormant registered template woken
    up by someone else with a new link (``content_drift``); and a burst on a
    template with next to no history from an API key and network none of the
    sender's SMS ever came from (``volume_burst``: a stolen key driving a
    template the sender barely uses). A new source that also carries the
    sender's established templates is the sender's own (a key rotation or a
    new host) and is left to those templates to judge.
    """

    name = "template_hijack_sender"
    inputs: ClassVar = {TEMPLATE_LINKS: _link_sender, TEMPLATE_SOURCES: _link_sender}

    def process(self, topic: str, key: str, fact: TemplateLink | TemplateSources):
        state = self.entities.get(key) or SenderBookState()
        if not state.first_ts or fact.ts < state.first_ts:
            state.first_ts = fact.ts
        state.last_ts = max(state.last_ts, fact.ts)
        if isinstance(fact, TemplateSources):
            if not state.sources_since or fact.ts < state.sources_since:
                state.sources_since = fact.ts
            start = self.mark(key, fact.ts)
            told = state.told.get(start)
            if told is None:
                told = state.told[start] = {}
            group = (fact.template_id, fact.reader)
            before = told.get(group)
            if before is None or fact.count > before.count:
                told[group] = fact
            self.save(key, state)
            return None
        if not fact.domain or fact.domain in state.domains:
            self.save(key, state)
            return None
        # Another lender's template teaches nothing about this sender's own links (foreign_sender covers it).
        learn = not fact.foreign and len(state.domains) < MAX_SENDER_DOMAINS
        if not learn:
            strays = state.strays
            stray = f"{fact.template_id} {fact.domain}"
            if stray in strays:
                self.save(key, state)
                return None
            if len(strays) >= MAX_SENDER_DOMAINS:
                # the oldest goes, so the newest is still told once however many readers tell it
                del strays[min(strays, key=lambda told: (strays[told], told))]
            strays[stray] = fact.ts
        established = fact.ts - state.first_ts >= SENDER_LEARN_MS
        if fact.message_id is not None and established and state.domains:
            start = self.mark(key, fact.ts)
            state.pending.setdefault(start, []).append(NewLink(fact.domain, fact.template_id, fact.message_id, fact.ts))
        if learn:
            state.domains[fact.domain] = fact.ts
        self.save(key, state)
        return None

    def close(self, key: str, start: int, end: int) -> Iterable[Finding]:
        state = self.entities.get(key)
        if state is None:
            return ()
        found = []
        domains = state.pending.pop(start, None)
        allowed: tuple[str, ...] = ()
        if domains and LINKS in self.ctx.controls.present:
            domains, allowed = self._not_allowed(key, domains, end)
        if domains:
            found.append(self._new_domains(key, state, domains, start, end))
            found[-1].controls = allowed
        told = state.told.pop(start, None)
        if told:
            burst = self._judge_sources(key, state, told, start, end)
            if burst is not None:
                found.append(burst)
        self.save(key, state)
        return one_alert(found)

    def _not_allowed(self, key: str, found: list[NewLink], t: int) -> tuple[list[NewLink], tuple[str, ...]]:
        """The new links no ``links`` allowance of the sender (or of their template) lets through, and the
        ids of those that let some through."""
        book = self.ctx.controls
        kept, used = [], []
        for link in found:
            subject = Subject(TEMPLATE_HIJACK, CONTENT_DRIFT, key, link.template_id, SENDER, key)
            entry = next((e for e in book.allowances(LINKS, subject, t) if e.allows_domain(link.domain)), None)
            if entry is None:
                kept.append(link)
            else:
                used.append(entry.id)
        return kept, tuple(dict.fromkeys(used))

    def _new_domains(self, key: str, state: SenderBookState, found: list[NewLink], start: int, end: int) -> Finding:
        redact = self.ctx.pseudonymizer.redact
        new_domains = sorted({link.domain for link in found})
        templates = sorted({link.template_id for link in found})
        usual = [redact(d) for d in sorted(d for d in state.domains if d not in new_domains)[:5]]
        new_domains = [redact(d) for d in new_domains]
        return Finding(
            kind=TEMPLATE_HIJACK,
            reason=CONTENT_DRIFT,
            severity=WARNING,
            entity_type=SENDER,
            entity_id=key,
            window_start=start,
            window_end=end,
            observed=len(new_domains),
            expected=0.0,
            score=10.0 + len(new_domains),
            summary=(
                f"{key}: template {', '.join(templates[:3])} links to {', '.join(new_domains[:3])}, a domain none "
                f"of its SMS carried before (usually {', '.join(usual[:3]) or 'none'})"
            ),
            evidence={"urls": new_domains, "templates": templates, "message_ids": [link.message_id for link in found],
                      "usual_domains": usual},
            sender_id=key,
            template_id=templates[0],
            last_seen=max(link.ts for link in found),
        )

    def _judge_sources(self, key: str, state: SenderBookState, told: dict, start: int, end: int) -> Finding | None:
        """Learn the bucket's sources; a burst from a new one on a template too young to judge it is found."""
        by_template = _sources_by_template(told)
        self._learn_sources(state, by_template, start, end)
        if start >= state.fresh_until:
            state.recent.clear()
            return None  # every source the sender has is a day old at least
        for template_id, (count, rows) in sorted(by_template.items()):
            if template_id not in state.templates:
                continue  # untracked (book full): left to the template's own judgement
            for raw, row in sorted(rows.items(), key=source_order):
                parts = parts_of(raw)
                if _new_to_sender(state, parts, start):
                    # the bucket's lowest-ranked few, as one tally of all its sends would keep
                    samples = tuple(sorted(set(row.samples))[:MAX_SAMPLES])
                    state.recent.append(NewSourceSends(start, template_id, parts, row.sends, samples))
        while state.recent and state.recent[0].start < end - WINDOW_MS:
            del state.recent[0]
        now = {entry.template_id for entry in state.recent if entry.start == start}
        burst: dict[str, list[NewSourceSends]] = {}
        for entry in state.recent:
            # still new: not since seen carrying a template that knew its sources
            if entry.template_id in now and _new_to_sender(state, entry.parts, start):
                burst.setdefault(entry.template_id, []).append(entry)
        best = None
        level: str = NORMAL
        ids: tuple[str, ...] = ()
        if self.ctx.controls.active:
            level, ids = self.ctx.controls.level(Subject(TEMPLATE_HIJACK, VOLUME_BURST, key, None, SENDER, key), end)
        least = BURST_LEVELS[level][0]
        for template_id, entries in sorted(burst.items()):
            total = sum(e.sends for e in entries)
            if total >= least and (best is None or total > best[0]):
                best = (total, template_id, entries)
        if best is None:
            return None
        finding = self._burst_finding(key, state, *best, start, end)
        finding.controls = ids
        return finding

    @staticmethod
    def _learn_sources(state: SenderBookState, by_template: dict, start: int, end: int) -> None:
        """Count the bucket's sends per template and source; a source first seen a day on is new for a day."""
        established = start - state.sources_since >= NEW_SOURCE_MS
        for template_id, (count, rows) in sorted(by_template.items()):
            history = state.templates.get(template_id)
            if history is None:
                if len(state.templates) >= MAX_SENDER_TEMPLATES:
                    continue  # untracked (book full): left to the template's own judgement
                history = state.templates[template_id] = SenderTemplate(start)
            if not history.knows_sources_since and knows_its_sources(history.sends, history.first_seen, end):
                history.knows_sources_since = start
            history.sends += count
            for raw, sent in rows.items():
                for p in parts_of(raw):
                    row = state.sources.get(p)
                    if row is None:
                        if len(state.sources) >= MAX_SENDER_SOURCES:
                            continue
                        row = state.sources[p] = SenderSource(start if established else 0)
                        if row.first_seen:
                            state.fresh_until = max(state.fresh_until, row.first_seen + NEW_SOURCE_MS)
                    row.sends += sent.sends
                    if history.knows_sources_since and history.knows_sources_since <= row.first_seen:
                        row.own = True  # it carries a template that knew its sources before it came

    def _burst_finding(self, key: str, state: SenderBookState, total: int, template_id: str,
                       entries: list[NewSourceSends], start: int, end: int) -> Finding:
        shown = sorted({show_source("|".join(e.parts)) for e in entries})
        samples = sorted((s for e in entries for s in e.samples))[:MAX_EVIDENCE]
        sends_before = state.templates[template_id].sends - sum(e.sends for e in entries)
        usual = sorted((p for p, row in state.sources.items() if p.startswith("k:") and not row.fresh(start)),
                       key=lambda p: (-state.sources[p].sends, p))[:3]
        return Finding(
            kind=TEMPLATE_HIJACK,
            reason=VOLUME_BURST,
            severity=CRITICAL if total >= 100 else WARNING,
            entity_type=SENDER,
            entity_id=key,
            window_start=end - WINDOW_MS,
            window_end=end,
            observed=float(total),
            expected=0.0,
            score=float(total),
            summary=(
                f"{key}: template {template_id} sent {total} SMS in the last hour from {', '.join(shown[:2])}, "
                f"an API key and network none of the sender's SMS came from before; the template had "
                f"{max(sends_before, 0)} sends before, too few to know its own sources. A stolen key, or a new "
                f"integration nobody announced"
            ),
            evidence={"message_ids": [s[1] for s in samples], "new_sources": shown, "template": template_id,
                      "usual_keys": [show_source(p) for p in usual]},
            sender_id=key,
            template_id=template_id,
            last_seen=min(state.last_ts, end),
        )


def _sources_by_template(told: dict) -> dict[str, tuple[int, dict[tuple, SendsRow]]]:
    """The bucket's sends per template, and per source of each, from all its readers (owners' sends only)."""
    foreign = {template_id for (template_id, _), fact in told.items() if fact.foreign}
    by_template: dict[str, tuple[int, dict[tuple, SendsRow]]] = {}
    for (template_id, _reader), fact in sorted(told.items()):
        if template_id in foreign:
            continue  # another sender's sources mixed in: left to foreign_sender
        count, rows = by_template.get(template_id, (0, {}))
        for raw, (n, samples) in fact.sources.items():
            row = rows.get(raw)
            if row is None:
                rows[raw] = SendsRow(n, samples)
            else:
                row.sends += n
                row.samples += samples
        by_template[template_id] = (count + fact.count, rows)
    return by_template


def _new_to_sender(state: SenderBookState, parts: tuple, start: int) -> bool:
    """A source none of the sender's SMS came from before."""
    sources = state.sources
    return is_new_source({p: sources[p].fresh(start) for p in parts if p in sources})
