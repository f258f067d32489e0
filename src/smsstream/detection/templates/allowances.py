"""What the operator controls (``detection.controls``) change in a template's judgement.

- sensitivity per reason (``content_drift``, ``foreign_sender``,
  ``volume_burst``): each judging module keeps its thresholds by level next
  to its normal ones;
- ``partner_senders``: senders allowed to send a template besides its owner
  (a partner, a subsidiary): their sends are not ``foreign_sender``, on that
  template only;
- ``links``: link domains and callback numbers a sender's (or a template's)
  SMS may carry: they are neither tampering on the template nor a new domain
  for the sender.

Looked up once per judgement, at its event time, and only when some entry
exists at all.
"""

from __future__ import annotations

from typing import NamedTuple

from smsstream.detection.base import PartContext
from smsstream.detection.controls import LINKS, NORMAL, PARTNER_SENDERS, Entry, Subject, ids_of
from smsstream.vocabulary import CONTENT_DRIFT, FOREIGN_SENDER, REASONS, TEMPLATE, TEMPLATE_HIJACK


class TemplateControls(NamedTuple):
    """The controls in force for one template's judgement."""

    #: reason -> (sensitivity level, id of the entry that set it)
    levels: dict[str, tuple[str, tuple[str, ...]]]
    #: senders allowed to send the template besides its owner, and the ids of those allowances
    partners: frozenset[str]
    partner_ids: tuple[str, ...]
    #: ``links`` allowances of the template and its owner
    links: list[Entry]

    def level(self, reason: str) -> str:
        return self.levels[reason][0]

    def ids(self, reason: str, *more: tuple[str, ...]) -> tuple[str, ...]:
        """The ids to name on a finding of ``reason``: its sensitivity entry and the allowances it used."""
        out = self.levels[reason][1]
        for ids in more:
            out += ids
        return tuple(dict.fromkeys(out))


def template_controls(ctx: PartContext, template_id: str, owner: str | None, t: int) -> TemplateControls | None:
    """The controls in force at ``t`` for a template (``owner``: its registered or learned sender); None: none."""
    book = ctx.controls
    if not book.active:
        return None
    levels = {reason: book.level(Subject(TEMPLATE_HIJACK, reason, owner, template_id, TEMPLATE, template_id), t)
              for reason in REASONS[TEMPLATE_HIJACK]}
    partners: frozenset[str] = frozenset()
    partner_ids: tuple[str, ...] = ()
    if PARTNER_SENDERS in book.present:
        found = book.allowances(PARTNER_SENDERS,
                                Subject(TEMPLATE_HIJACK, FOREIGN_SENDER, owner, template_id, TEMPLATE, template_id), t)
        partners = frozenset(s for e in found for s in e.senders)
        partner_ids = ids_of(found)
    links: list[Entry] = []
    if LINKS in book.present:
        links = book.allowances(LINKS, Subject(TEMPLATE_HIJACK, CONTENT_DRIFT, owner, template_id, TEMPLATE,
                                               template_id), t)
    return TemplateControls(levels, partners, partner_ids, links)


def allowed_marker(ctx: PartContext, links: list[Entry], key: str) -> Entry | None:
    """The ``links`` allowance that lets a marker (``d:<domain>``, ``p:<pseudonym>``) through, if any."""
    if not links:
        return None
    kind, value = key[0], key[2:]
    if kind == "d":
        return next((e for e in links if e.allows_domain(value)), None)
    if kind == "p":  # numbers in bodies are pseudonyms since intake
        return next((e for e in links if value in e.callback_numbers), None)
    return None


def without_allowed(ctx: PartContext, links: list[Entry], keys: list[str]) -> tuple[list[str], tuple[str, ...]]:
    """``keys`` less the markers an allowance lets through, and the ids of those allowances."""
    if not links:
        return keys, ()
    kept, used = [], []
    for key in keys:
        entry = allowed_marker(ctx, links, key)
        if entry is None:
            kept.append(key)
        else:
            used.append(entry.id)
    return kept, tuple(dict.fromkeys(used))


def level_of(controls: TemplateControls | None, reason: str) -> str:
    return NORMAL if controls is None else controls.level(reason)


def ids_for(controls: TemplateControls | None, reason: str, *more: tuple[str, ...]) -> tuple[str, ...]:
    return () if controls is None else controls.ids(reason, *more)
