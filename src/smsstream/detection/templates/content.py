"""``content_drift`` on a template: links, callback numbers, signatures or words its sends did not carry.

Markers are judged per message when the bucket closes. A marker that
differs from the *registered* text pages at once, even for a new template,
as long as some of its traffic fits its registration. What a registered
template's first sends carried against the registration before any send
fitted is *held*: it pages as soon as one send fits (the registration is
current, so the marker is tampering), or is learned if none fits while the
template learns (a stale registration). An unregistered template learns its
markers in its first hour; a new marker after that must repeat across
recipients, since loan ids and links vary per message. A marker still
carried after ``ABSORB_MS`` is the template's new normal. A word-only change
pages when most of a normally fitting template's recent sends carry it.
Sensitivity moves how often a new marker must repeat (``SUSPECT_REPEATS``)
and how many reworded sends page (``WORDS_LEVELS``); markers a ``links``
allowance lets through are neither known nor suspect.
"""

from __future__ import annotations

from smsstream.detection.alerts import MAX_EVIDENCE, Finding
from smsstream.detection.base import BUCKET_MS, PartContext
from smsstream.detection.controls import HIGH, LOW, NORMAL
from smsstream.detection.facts import TemplateTally, sample_ids
from smsstream.detection.templates.allowances import TemplateControls, allowed_marker, ids_for, level_of
from smsstream.detection.stats import poisson_tail_score
from smsstream.detection.templates.state import MAX_MARKERS, MAX_SUSPECTS, Suspect, TemplateState
from smsstream.vocabulary import CONTENT_DRIFT, CRITICAL, DAY_MS, HOUR_MS, MINUTE_MS, TEMPLATE, TEMPLATE_HIJACK, WARNING

#: A suspect marker still carried after this long is the template's new normal.
ABSORB_MS = DAY_MS
#: A suspect marker not seen again for this long is forgotten.
SUSPECT_TTL_MS = 6 * HOUR_MS
#: A signature its first this many sends carry is the template's, even before it has finished learning.
SIGNATURE_LEARN_N = 3
#: Word-only drift: fewest drifted sends in the trailing ``WORDS_WINDOW_MS``, and their least share of it.
WORDS_WINDOW_MS = 15 * MINUTE_MS
WORDS_MIN_SENDS = 3
WORDS_MIN_SHARE = 0.2
#: By sensitivity level: how many sends, to how many recipients, a new marker needs (unless it differs from
#: the registration, which pages at once) ...
SUSPECT_REPEATS = {LOW: (3, 2), NORMAL: (2, 2), HIGH: (1, 1)}
#: ... and the fewest reworded sends, and their least share, in ``WORDS_WINDOW_MS``.
WORDS_LEVELS = {LOW: (5, 0.3), NORMAL: (WORDS_MIN_SENDS, WORDS_MIN_SHARE), HIGH: (2, 0.1)}


def judge_markers(ctx: PartContext, state: TemplateState, tally: TemplateTally, start: int, end: int,
                  learning: bool, controls: TemplateControls | None = None) -> Finding | None:
    """``content_drift`` from the bucket's markers (links, numbers, signature) and reworded text, if any."""
    registered = state.registered
    fresh: list[tuple[str, Suspect]] = []
    links = controls.links if controls is not None else []
    allowed: list[str] = []
    min_sends, min_recipients = SUSPECT_REPEATS[level_of(controls, CONTENT_DRIFT)]
    fits = (state.fitting + tally.fitting) > 0
    if state.held:
        if fits:
            # Some sends fit the registration after all: what the first sends carried against it is tampering.
            for k, s in state.held.items():
                if k not in tally.markers:
                    state.suspects[k] = s
                    fresh.append((k, s))
                elif k not in state.suspects:
                    state.suspects[k] = s  # this bucket's sends are added below
            state.held = {}
        elif not learning:
            # Nothing ever fitted: the registration is stale and the first sends showed the template's normal.
            for k, s in state.held.items():
                if len(state.known) < MAX_MARKERS:
                    state.known[k] = s.sends
            state.held = {}
    for k, row in sorted(tally.markers.items()):
        count, samples, recipients = row.sends, sample_ids(row.samples), row.recipients
        if k in state.known:
            state.known[k] += count
            continue
        entry = allowed_marker(ctx, links, k)
        if entry is not None:
            allowed.append(entry.id)
            continue
        vs_registration = k in tally.unregistered_markers
        if learning and not (vs_registration and fits) and not (
            k.startswith("s:") and signed_otherwise(state, k)
        ):
            if vs_registration and registered is not None:
                # Unlike the registration before any send fitted it: hold it until the template shows
                # whether its registration is current (a send fits) or stale (none does while it learns).
                h = state.held.get(k)
                if h is None:
                    if len(state.held) >= MAX_SUSPECTS:
                        continue
                    h = state.held[k] = Suspect(start, tally.ts)
                h.add(tally.ts, count, recipients, samples)
                continue
            # A new template's first traffic defines its normal markers.
            if len(state.known) < MAX_MARKERS:
                state.known[k] = count
            continue
        s = state.suspects.get(k)
        if s is None:
            if len(state.suspects) >= MAX_SUSPECTS:
                _forget_suspects(state, end, force=True)
            s = state.suspects[k] = Suspect(start, tally.ts)
        s.add(tally.ts, count, recipients, samples)
        if s.last_ts - s.first_ts >= ABSORB_MS:
            # Carried for a day: the template changed for good; stop reporting it.
            del state.suspects[k]
            if len(state.known) < MAX_MARKERS:
                state.known[k] = s.sends
            continue
        if vs_registration or (s.sends >= min_sends and len(s.recipients) >= min_recipients):
            fresh.append((k, s))
    _forget_suspects(state, end)
    if links and fresh:
        # held markers that an allowance lets through by now
        kept = []
        for k, s in fresh:
            entry = allowed_marker(ctx, links, k)
            if entry is None:
                kept.append((k, s))
            else:
                allowed.append(entry.id)
        fresh = kept

    words = _words_drift(ctx, state, tally, start, end, controls)
    found = words if not fresh else _drift_finding(ctx, state, tally, start, end, fresh)
    if found is not None and controls is not None:
        found.controls = ids_for(controls, CONTENT_DRIFT, tuple(dict.fromkeys(allowed)))
    return found


def _words_drift(ctx: PartContext, state: TemplateState, tally: TemplateTally, start: int, end: int,
                 controls: TemplateControls | None) -> Finding | None:
    if not tally.words_drift or state.registered is None:
        return None
    (total, _, drifted), = state.window.sums(end, (WORDS_WINDOW_MS,))
    normally_fits = state.fitting >= 10 and state.fitting >= 0.8 * state.sends
    min_sends, min_share = WORDS_LEVELS[level_of(controls, CONTENT_DRIFT)]
    if drifted < min_sends or drifted < min_share * total or not normally_fits:
        return None
    samples = [(mid, diff) for _, mid, diff in tally.words_samples]
    return Finding(
        kind=TEMPLATE_HIJACK,
        reason=CONTENT_DRIFT,
        severity=WARNING,
        entity_type=TEMPLATE,
        entity_id=state.template_id,
        window_start=end - WORDS_WINDOW_MS,
        window_end=end,
        observed=drifted,
        expected=0.0,
        score=poisson_tail_score(drifted, max(0.05 * total, 0.1)),
        summary=(
            f"template {state.template_id}: {int(drifted)} of {int(total)} sends in the last "
            f"{WORDS_WINDOW_MS // MINUTE_MS} min no longer match the registered text (words changed: {samples[0][1] if samples else '?'})"
        ),
        evidence={
            "message_ids": [m for m, _ in samples],
            "diff": [d for _, d in samples],
            "registered_text": ctx.pseudonymizer.redact(state.registered.text),
        },
        sender_id=state.owner,
        template_id=state.template_id,
        last_seen=tally.ts,
    )


def _drift_finding(ctx: PartContext, state: TemplateState, tally: TemplateTally, start: int, end: int,
                   fresh: list[tuple[str, Suspect]]) -> Finding:
    registration = state.registered
    urls: list[str] = []
    numbers: list[str] = []
    signatures: list[str] = []
    samples: list = []
    diffs: list = []
    sends = 0
    redact = ctx.pseudonymizer.redact  # link hosts and signatures are free text: a number may hide in them
    for k, s in fresh:
        kind, value = k[0], k[2:]
        if kind == "d":
            urls.append(redact(value))
        elif kind == "p":
            numbers.append(value)  # a pseudonym since intake
        else:
            signatures.append(redact(value))
        sends = max(sends, s.sends)
        samples.extend(m for m in s.samples if m not in samples)
        row = tally.markers.get(k)
        if row is not None and row.drift is not None:
            diffs.append(row.drift[1])
    usual_sigs = [redact(k[2:]) or "(none)" for k in state.known if k.startswith("s:")]
    if registration is not None and registration.markers.signature:
        usual_sigs = [redact(registration.markers.signature)]
    severity = CRITICAL if urls or numbers else WARNING
    what = []
    if urls:
        what.append("link to " + ", ".join(urls[:3]))
    if numbers:
        what.append("callback number " + ", ".join(numbers[:3]))
    if signatures:
        shown = [s or "(none)" for s in signatures[:3]]
        was = ", ".join(usual_sigs[:2]) or "none"
        what.append(f"signature {', '.join(shown)} (usually {was})")
    against = "its registered text" if registration is not None else "anything it sent before"
    evidence: dict = {"message_ids": samples[:MAX_EVIDENCE]}
    if urls:
        evidence["urls"] = urls
    if numbers:
        evidence["numbers"] = numbers
    if signatures:
        evidence["signatures"] = {"seen": signatures, "usual": usual_sigs}
    if diffs:
        evidence["diff"] = diffs
    return Finding(
        kind=TEMPLATE_HIJACK,
        reason=CONTENT_DRIFT,
        severity=severity,
        entity_type=TEMPLATE,
        entity_id=state.template_id,
        window_start=min(s.first_ts for _, s in fresh) // BUCKET_MS * BUCKET_MS,
        window_end=end,
        observed=sends,
        expected=0.0,
        score=min(10.0 + sends, 300.0) if severity == CRITICAL else min(5.0 + sends, 300.0),
        summary=(
            f"template {state.template_id}: {sends} send(s) carry {'; '.join(what)}, "
            f"unlike {against} (possible tampering)"
        ),
        evidence=evidence,
        sender_id=state.owner or tally.top_stranger(),
        template_id=state.template_id,
        last_seen=tally.ts,
    )


def _forget_suspects(state: TemplateState, now: int, force: bool = False) -> None:
    if not state.suspects:
        return
    old = [k for k, s in state.suspects.items() if s.last_ts < now - SUSPECT_TTL_MS]
    if force and not old and state.suspects:
        old = [min(state.suspects, key=lambda k: state.suspects[k].last_ts)]
    for k in old:
        del state.suspects[k]


def signed_otherwise(state: TemplateState, key: str) -> bool:
    """Has the template already settled on another signature (or on none)? Then even while it is
    still learning, a different one is a change, not part of its normal."""
    return any(k.startswith("s:") and k != key and n >= SIGNATURE_LEARN_N for k, n in state.known.items())
