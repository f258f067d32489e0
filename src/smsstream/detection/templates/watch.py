"""``TemplateWatch``: per template, its readers' tallies merged and judged bucket by bucket.

Keyed by ``template_id``. It holds the registration (``sms.templates``) and
what the template's traffic taught it (``state.TemplateState``), merges the
tallies of the template's readers for each closed bucket and judges the
bucket three ways, all on the one alert ``template_hijack/template/<id>``:
its content (``content``), its sender (``owner``) and its volume by source
(``volume``). A send that is evidence on its own (``alarm``) fires the alert
the moment it is read, ahead of its bucket. It tells the sender's book the links a registration carries
and where a registered template's sends came from.
"""

from __future__ import annotations

from typing import Any, ClassVar, Iterable

from smsstream.detection.alerts import Finding, one_alert
from smsstream.detection.base import Part
from smsstream.detection.facts import OTHER, TemplateRead, TemplateTally
from smsstream.detection.templates.alarm import judge_alarm
from smsstream.detection.templates.allowances import template_controls
from smsstream.detection.templates.content import judge_markers
from smsstream.detection.templates.facts import (
    MAX_LINKS, TEMPLATE_ALARMS, TEMPLATE_LINKS, TEMPLATE_READS, TEMPLATE_SOURCES, SourceCount, TemplateLink,
    TemplateSources,
)
from smsstream.detection.templates.owner import judge_owner
from smsstream.detection.templates.sources import knows_its_sources
from smsstream.detection.templates.state import LEARN_MS, WINDOW_MS, TemplateState
from smsstream.detection.templates.volume import classify_sources, judge_burst, usual_hour
from smsstream.detection.textshape import TemplateText
from smsstream.records import TEMPLATES


def _template_id(record) -> str | None:
    return record.template_id


def _template_of(fact) -> str:
    return fact.template_id


class TemplateWatch(Part):
    """Per template: content, owner and sources against its registration and its own history."""

    name = "template_hijack"
    inputs: ClassVar = {TEMPLATES: _template_id, TEMPLATE_READS: _template_of, TEMPLATE_ALARMS: _template_of}
    emits = (TEMPLATE_LINKS, TEMPLATE_SOURCES)

    def idle_since(self, state: TemplateState) -> int:
        # A registration is reference data: kept while sms.templates holds it.
        return 1 << 62 if state.registered is not None else state.last_ts

    # --- input -----------------------------------------------------------------

    def process(self, topic: str, key: str, value: Any):
        if topic == TEMPLATE_ALARMS:
            alarm_state = self.entities.get(key)
            if alarm_state is not None:
                for finding in judge_alarm(self.ctx, alarm_state, value):
                    self.fire_now(finding, key)
            return None
        state = self.entities.get(key)
        if state is None or (state.last_ts and value.ts - state.last_ts > self.ctx.idle_ms):
            # New, or idle so long that its learned traffic says nothing any more.
            state = TemplateState(key, *(() if state is None else (state.registered, state.owner)))
        facts = None
        if topic == TEMPLATES:
            state.registered = TemplateText(value.text)
            state.owner = value.sender_id
            facts = self._links(state, state.registered.markers.domains, value.sender_id, value.ts, None)
            if facts is None:
                # No link in the text: still tells the link book when the sender began.
                facts = [(TEMPLATE_LINKS, TemplateLink(value.ts, value.sender_id, key, "", None))]
        else:
            facts = self._take(state, key, value)
        self.save(key, state)
        return facts

    def _links(self, state: TemplateState, found, sender_id: str, ts: int, message_id: str | None):
        """Tell the sender's link book about domains this template shows for the first time."""
        facts = None
        for domain in found:
            if domain in state.links or len(state.links) >= MAX_LINKS:
                continue
            state.links.append(domain)
            if facts is None:
                facts = []
            facts.append((TEMPLATE_LINKS, TemplateLink(ts, sender_id, state.template_id, domain, message_id)))
        return facts

    def _take(self, state: TemplateState, key: str, read: TemplateRead | TemplateTally) -> list | None:
        """A reader's tally (it replaces that reader's earlier one), or one read that came alone (adds up)."""
        first = read.first_ts if read.__class__ is TemplateTally else read.ts
        if not state.first_ts or first < state.first_ts:
            state.first_ts = first
            state.learned_until = first + LEARN_MS
        if read.ts > state.last_ts:
            state.last_ts = read.ts
        start = self.mark(key, first)
        reads = state.tallies.get(start)
        if reads is None:
            reads = state.tallies[start] = {}
        if isinstance(read, TemplateTally):
            before = reads.get(read.reader)
            if before is None or read.count > before.count:
                reads[read.reader] = read
                return self._tell_sources(state, start, read)
            return None
        alone = reads.get("")
        if alone is None:
            alone = reads[""] = TemplateTally(read.template_id, "")
        alone.add(read)
        return self._tell_sources(state, start, alone)

    @staticmethod
    def _tell_sources(state: TemplateState, start: int, tally: TemplateTally):
        """Tell the sender's source book where this reader's sends of the bucket came from.

        A template too young to know its own sources cannot call one new; its
        sender, which has seen the keys and networks of all its templates, can.
        """
        if not tally.sources or state.registered is None or state.owner is None:
            # an unregistered template's sources are not split by sender, so no one sender can be told them
            return None
        sources = {raw: SourceCount(row.sends, tuple(row.samples)) for raw, row in tally.sources.items() if raw != OTHER}
        return [(TEMPLATE_SOURCES, TemplateSources(start, state.owner, state.template_id, tally.reader, tally.count,
                                                   sources, bool(tally.senders)))]

    # --- judging ---------------------------------------------------------------

    def close(self, key: str, start: int, end: int) -> Iterable[Finding]:
        state = self.entities.get(key)
        if state is None:
            return ()
        reads = state.tallies.pop(start, None)
        if reads is None:
            return ()
        readers = sorted(reads)
        tally = reads[readers[0]]
        for reader in readers[1:]:
            tally.merge(reads[reader])
        learning = state.learning(end)
        sources_known = knows_its_sources(state.sends, state.first_ts, end)
        new = classify_sources(state, tally, start, sources_known)
        state.window.add(start, tally.count, new.sends, tally.words_drift)
        state.window.prune(end - WINDOW_MS)
        # Only a bucket with sends from a new source can make a burst; the usual hour is read before
        # this bucket updates the profile.
        burst_possible = sources_known and new.sends > 0
        expected_hour = usual_hour(state.profile, start, end) if burst_possible else None
        state.profile.update(start, tally.count)

        controls = template_controls(self.ctx, key, state.owner, end)
        drift = judge_markers(self.ctx, state, tally, start, end, learning, controls)
        foreign = judge_owner(state, tally, start, end, learning, controls)
        burst = judge_burst(state, tally, end, new, expected_hour, controls) if burst_possible else None
        state.sends += tally.count
        state.fitting += tally.fitting
        self.save(key, state)
        found = [f for f in (foreign, drift, burst) if f is not None]
        return one_alert(found)
