"""A registered template's send that is evidence on its own: it fires when it is read, not when its bucket closes.

A link or callback number that the registration does not carry, on a
template whose sends are known to fit their registration (so it is current:
what differs is tampering), is ``content_drift``; a sender that does not own
the template is ``foreign_sender``. The bucket's judgement (``content``,
``owner``) then finds the same and keeps the episode going. The finding uses
only the one send and what closed buckets taught the template, so replay and
the worker write the same record. Partners allowed on the template, and
links or callback numbers allowed for its sender (``allowances``), raise no
alarm.
"""

from __future__ import annotations

from smsstream.detection.alerts import Finding, one_alert
from smsstream.detection.base import BUCKET_MS, PartContext
from smsstream.detection.templates.allowances import template_controls, without_allowed
from smsstream.detection.templates.facts import TemplateAlarm
from smsstream.detection.templates.state import TemplateState
from smsstream.vocabulary import CONTENT_DRIFT, CRITICAL, FOREIGN_SENDER, TEMPLATE, TEMPLATE_HIJACK


def judge_alarm(ctx: PartContext, state: TemplateState, alarm: TemplateAlarm) -> list[Finding]:
    """The finding one alarming send makes of its template, or none."""
    if state.registered is None or state.owner is None:
        return []
    controls = template_controls(ctx, state.template_id, state.owner, alarm.ts)
    found = []
    if alarm.foreign and alarm.sender_id != state.owner and (controls is None
                                                             or alarm.sender_id not in controls.partners):
        found.append(_foreign(state, alarm))
    # before any send fitted, a marker unlike the registration may mean a stale registration (``content``)
    injected = [k for k in alarm.markers if k not in state.known] if state.fitting else []
    if injected and controls is not None:
        injected, allowed = without_allowed(ctx, controls.links, injected)
        if injected:
            found.append(_injected(ctx, state, alarm, injected))
            found[-1].controls = allowed
    elif injected:
        found.append(_injected(ctx, state, alarm, injected))
    return one_alert(found)


def _finding(alarm: TemplateAlarm, state: TemplateState, reason: str, score: float, summary: str,
             evidence: dict, sender_id: str | None) -> Finding:
    return Finding(
        kind=TEMPLATE_HIJACK,
        reason=reason,
        severity=CRITICAL,
        entity_type=TEMPLATE,
        entity_id=state.template_id,
        window_start=alarm.ts - alarm.ts % BUCKET_MS,
        window_end=alarm.ts + 1,
        observed=1,
        expected=0.0,
        score=score,
        summary=summary,
        evidence=evidence,
        sender_id=sender_id,
        template_id=state.template_id,
        last_seen=alarm.ts,
        sufficient_at=alarm.ts,
    )


def _foreign(state: TemplateState, alarm: TemplateAlarm) -> Finding:
    return _finding(
        alarm, state, FOREIGN_SENDER, 21.0,
        f"template {state.template_id} (registered to {state.owner}) was sent by {alarm.sender_id}",
        {"message_ids": [alarm.message_id], "senders": [alarm.sender_id], "owner": state.owner},
        alarm.sender_id,
    )


def _injected(ctx: PartContext, state: TemplateState, alarm: TemplateAlarm, injected: list[str]) -> Finding:
    redact = ctx.pseudonymizer.redact  # link hosts are free text: a number may hide in them
    urls = [redact(k[2:]) for k in injected if k[0] == "d"]
    numbers = [k[2:] for k in injected if k[0] == "p"]  # pseudonyms since intake
    what = []
    if urls:
        what.append("link to " + ", ".join(urls[:3]))
    if numbers:
        what.append("callback number " + ", ".join(numbers[:3]))
    evidence: dict = {"message_ids": [alarm.message_id]}
    if urls:
        evidence["urls"] = urls
    if numbers:
        evidence["numbers"] = numbers
    return _finding(
        alarm, state, CONTENT_DRIFT, 11.0,
        f"template {state.template_id}: a send carries {'; '.join(what)}, unlike its registered text "
        "(possible tampering)",
        evidence, state.owner,
    )
