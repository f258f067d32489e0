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
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar, Iterable

from smsstream.detection.alerts import MAX_EVIDENCE, Finding, one_alert
from smsstream.detection.base import Part
from smsstream.detection.facts import MAX_SAMPLES
from smsstream.detection.templates.facts import TEMPLATE_LINKS, TEMPLATE_SOURCES, TemplateLink, TemplateSources
from smsstream.detection.templates.sources import (
    NEW_SOURCE_MS, is_new_source, knows_its_sources, parts_of, show_source, source_order,
)
from smsstream.detection.templates.state import WINDOW_MS
from smsstream.detection.templates.volume import BURST_MIN_SENDS
from smsstream.vocabulary import CONTENT_DRIFT, CRITICAL, HOUR_MS, SENDER, TEMPLATE_HIJACK, VOLUME_BURST, WARNING

#: A sender's usual link domains are those of its registrations and of its first ``SENDER_LEARN_MS`` of traffic.
SENDER_LEARN_MS = 6 * HOUR_MS
MAX_SENDER_DOMAINS = 64
#: Sources (``k:``/``n:`` parts) and templates a sender's source book keeps.
MAX_SENDER_SOURCES = 256
MAX_SENDER_TEMPLATES = 512


def _link_sender(fact: TemplateLink | TemplateSources) -> str:
    return fact.sender_id


@dataclass(slots=True)
class SenderBookState:
    domains: dict = field(default_factory=dict)  # domain -> first seen
    first_ts: int = 0
    last_ts: int = 0
    #: bucket start -> [(domain, template_id, message_id, ts)] domains new to an established sender
    pending: dict = field(default_factory=dict)
    #: when the sender's first sources were told: sources are judged a day after
    sources_since: int = 0
    #: source part ("k:"/"n:") -> [first seen (0: one of the sender's first), sends, used on a template that
    #: knows its own sources]
    sources: dict = field(default_factory=dict)
    #: template -> [first seen, sends, when it came to know its own sources (0: not yet)]
    templates: dict = field(default_factory=dict)
    #: bucket start -> {(template, reader): TemplateSources}
    told: dict = field(default_factory=dict)
    #: the last hour's sends from new sources on templates too young to judge them:
    #: [bucket start, template, source parts, sends, samples]
    recent: list = field(default_factory=list)
    #: no source of the sender is new from this time on
    fresh_until: int = 0
    #: "template domain" of links told here but not learned as the sender's own (another lender's template,
    #: or the domain book full) -> first seen: reported once, however many readers the template is read on;
    #: the most recent ``MAX_SENDER_DOMAINS`` are kept
    strays: dict = field(default_factory=dict)


def _strays(state: SenderBookState) -> dict:
    """The state's stray links; a state restored from a snapshot written before they were kept has none yet."""
    try:
        return state.strays
    except AttributeError:
        state.strays = {}
        return state.strays


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
            strays = _strays(state)
            stray = f"{fact.template_id} {fact.domain}"
            if stray in strays:
                self.save(key, state)
                return None
            if len(strays) >= MAX_SENDER_DOMAINS:
                # the oldest goes, so the newest is still told once however many readers tell it
                del strays[min(strays, key=lambda told: (strays[told], told))]
            strays[stray] = fact.ts
        established = fact.message_id is not None and fact.ts - state.first_ts >= SENDER_LEARN_MS
        if established and state.domains:
            start = self.mark(key, fact.ts)
            state.pending.setdefault(start, []).append((fact.domain, fact.template_id, fact.message_id, fact.ts))
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
        if domains:
            found.append(self._new_domains(key, state, domains, start, end))
        told = state.told.pop(start, None)
        if told:
            burst = self._judge_sources(key, state, told, start, end)
            if burst is not None:
                found.append(burst)
        self.save(key, state)
        return one_alert(found)

    def _new_domains(self, key: str, state: SenderBookState, found: list, start: int, end: int) -> Finding:
        redact = self.ctx.pseudonymizer.redact
        new_domains = sorted({d for d, *_ in found})
        templates = sorted({t for _, t, _, _ in found})
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
            evidence={"urls": new_domains, "templates": templates, "message_ids": [m for _, _, m, _ in found],
                      "usual_domains": usual},
            sender_id=key,
            template_id=templates[0],
            last_seen=max(t for *_, t in found),
        )

    def _judge_sources(self, key: str, state: SenderBookState, told: dict, start: int, end: int) -> Finding | None:
        """Learn the bucket's sources; a burst from a new one on a template too young to judge it is found."""
        foreign = {template_id for (template_id, _), fact in told.items() if fact.foreign}
        by_template: dict[str, tuple[int, dict]] = {}
        for (template_id, _reader), fact in sorted(told.items()):
            if template_id in foreign:
                continue  # another sender's sources mixed in: left to foreign_sender
            count, rows = by_template.get(template_id, (0, {}))
            for raw, (n, samples) in fact.sources.items():
                row = rows.get(raw)
                if row is None:
                    rows[raw] = [n, samples]
                else:
                    row[0] += n
                    row[1] += samples
            by_template[template_id] = (count + fact.count, rows)
        established = start - state.sources_since >= NEW_SOURCE_MS
        for template_id, (count, rows) in sorted(by_template.items()):
            history = state.templates.get(template_id)
            if history is None:
                if len(state.templates) >= MAX_SENDER_TEMPLATES:
                    continue  # untracked (book full): left to the template's own judgement
                history = state.templates[template_id] = [start, 0, 0]
            if not history[2] and knows_its_sources(history[1], history[0], end):
                history[2] = start
            history[1] += count
            for raw, (n, _) in rows.items():
                for p in parts_of(raw):
                    row = state.sources.get(p)
                    if row is None:
                        if len(state.sources) >= MAX_SENDER_SOURCES:
                            continue
                        row = state.sources[p] = [start if established else 0, 0, False]
                        if row[0]:
                            state.fresh_until = max(state.fresh_until, row[0] + NEW_SOURCE_MS)
                    row[1] += n
                    if history[2] and history[2] <= row[0]:
                        row[2] = True  # it carries a template that knew its sources before it came: the sender's own
        if start >= state.fresh_until:
            state.recent.clear()
            return None  # every source the sender has is a day old at least
        for template_id, (count, rows) in sorted(by_template.items()):
            if template_id not in state.templates:
                continue  # untracked (book full): left to the template's own judgement
            for raw, (n, samples) in sorted(rows.items(), key=source_order):
                parts = parts_of(raw)
                if self._new_to_sender(state, parts, start):
                    # the bucket's lowest-ranked few, as one tally of all its sends would keep
                    state.recent.append([start, template_id, parts, n, tuple(sorted(set(samples))[:MAX_SAMPLES])])
        while state.recent and state.recent[0][0] < end - WINDOW_MS:
            del state.recent[0]
        now = {entry[1] for entry in state.recent if entry[0] == start}
        burst: dict[str, list] = {}
        for entry in state.recent:
            # still new: not since seen carrying a template that knew its sources
            if entry[1] in now and self._new_to_sender(state, entry[2], start):
                burst.setdefault(entry[1], []).append(entry)
        best = None
        for template_id, entries in sorted(burst.items()):
            total = sum(e[3] for e in entries)
            if total >= BURST_MIN_SENDS and (best is None or total > best[0]):
                best = (total, template_id, entries)
        if best is None:
            return None
        total, template_id, entries = best
        shown = sorted({show_source("|".join(e[2])) for e in entries})
        samples = sorted((s for e in entries for s in e[4]))[:MAX_EVIDENCE]
        sends_before = state.templates[template_id][1] - sum(e[3] for e in entries)
        usual = sorted((p for p, row in state.sources.items() if p.startswith("k:") and not self._fresh(row, start)),
                       key=lambda p: (-state.sources[p][1], p))[:3]
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

    @staticmethod
    def _fresh(row: list, start: int) -> bool:
        return bool(row[0]) and start - row[0] < NEW_SOURCE_MS and not row[2]

    def _new_to_sender(self, state: SenderBookState, parts: tuple, start: int) -> bool:
        """A source none of the sender's SMS came from before."""
        sources = state.sources
        return is_new_source({p: self._fresh(sources[p], start) for p in parts if p in sources})
