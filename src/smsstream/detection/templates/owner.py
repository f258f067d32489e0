"""``foreign_sender``: a template sent by a sender other than its owner.

A registered template's owner is the sender of its registration; only
strangers' sends reach this judgement then, and any one of them pages. An
unregistered template's owner is learned from its traffic: the sender that
sent at least ``OWNER_MIN_SENDS`` and ``OWNER_MIN_SHARE`` of it. A stranger
to an unregistered template pages once it has sent twice within the trailing
window, and never while the template learns (``STRANGER_MIN_SENDS`` by
sensitivity level). Senders a ``partner_senders`` allowance names for the
template are not strangers to it.
"""

from __future__ import annotations

from smsstream.detection.alerts import Finding
from smsstream.detection.controls import HIGH, LOW, NORMAL
from smsstream.detection.facts import TemplateTally, sample_ids
from smsstream.detection.templates.allowances import TemplateControls, ids_for, level_of
from smsstream.detection.templates.state import WINDOW_MS, StrangerSends, TemplateState
from smsstream.vocabulary import CRITICAL, FOREIGN_SENDER, TEMPLATE, TEMPLATE_HIJACK

#: An unregistered template's owner is learned once one sender sent this many and this share of it.
OWNER_MIN_SENDS = 20
OWNER_MIN_SHARE = 0.95
#: By sensitivity level: a stranger's sends of an unregistered template within the window that page.
STRANGER_MIN_SENDS = {LOW: 5, NORMAL: 2, HIGH: 1}


def judge_owner(state: TemplateState, tally: TemplateTally, start: int, end: int, learning: bool,
                controls: TemplateControls | None = None) -> Finding | None:
    """``foreign_sender`` when strangers sent the template this bucket; learns an unregistered one's owner."""
    owner = state.owner
    partners = controls.partners if controls is not None else frozenset()
    registered = owner is not None
    if registered and not tally.senders:
        return None  # only strangers' sends to a registered template are tallied
    if owner is None:
        total = sum(state.senders.values())
        if total:
            top = max(state.senders, key=state.senders.__getitem__)
            if state.senders[top] >= OWNER_MIN_SENDS and state.senders[top] >= OWNER_MIN_SHARE * total:
                owner = top
    senders_seen = sorted(tally.senders.items())
    foreign = {s: row for s, row in senders_seen if owner is not None and s != owner and s not in partners}
    if not registered:
        for s, row in senders_seen:
            if s in state.senders or len(state.senders) < 8:
                if s == owner or owner is None or learning:
                    state.senders[s] = state.senders.get(s, 0) + row.sends
    if not registered:
        for s in [s for s, seen in state.strangers.items() if seen.last_seen < end - WINDOW_MS]:
            del state.strangers[s]
        for s, row in foreign.items():
            seen = state.strangers.get(s)
            if seen is None and len(state.strangers) >= 8:
                continue
            state.strangers[s] = StrangerSends((seen.sends if seen else 0) + row.sends, end)
    if not foreign:
        return None
    sends = sum(row.sends for row in foreign.values())
    least = STRANGER_MIN_SENDS[level_of(controls, FOREIGN_SENDER)]
    if not registered and (learning or sum(state.strangers[s].sends for s in foreign if s in state.strangers) < least):
        return None
    samples = [m for row in foreign.values() for m in sample_ids(row.samples)]
    senders = sorted(foreign, key=lambda s: (-foreign[s].sends, s))
    how = "registered to" if registered else "normally sent only by"
    return Finding(
        kind=TEMPLATE_HIJACK,
        reason=FOREIGN_SENDER,
        severity=CRITICAL,
        entity_type=TEMPLATE,
        entity_id=state.template_id,
        window_start=start,
        window_end=end,
        observed=sends,
        expected=0.0,
        score=min(20.0 + sends, 300.0),
        summary=(
            f"template {state.template_id} ({how} {owner}) was sent {sends} time(s) by "
            f"{', '.join(senders[:3])}"
        ),
        evidence={"message_ids": samples, "senders": senders, "owner": owner},
        sender_id=senders[0],
        template_id=state.template_id,
        last_seen=tally.ts,
        controls=ids_for(controls, FOREIGN_SENDER),
    )
