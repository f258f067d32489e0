"""``volume_burst``: a template sending far beyond its usual hour, the excess from a source new to it.

Sends from a source (API key, or IP /24) the template has not used before,
on top of the template's usual volume for this hour of day. A burst from
known sources is a campaign, not a hijack, and is not reported; a new source
that merely replaces an old one (key rotation) adds no volume and is not
reported either. Nor is a new key from the template's own network (a key
rotated in place), or a source that took over from the template's main key
hours before the burst and has sent ever since while the main key (or
network) stayed silent (a rotation, seen on a template that sends too rarely
for the hour-by-hour check). Sensitivity moves the fewest sends and the
scores a burst needs (``BURST_LEVELS``).
"""

from __future__ import annotations

from typing import Iterable, NamedTuple

from smsstream.detection.alerts import Finding
from smsstream.detection.base import BUCKET_MS
from smsstream.detection.controls import HIGH, LOW, NORMAL
from smsstream.detection.facts import TemplateTally, sample_ids
from smsstream.detection.templates.allowances import TemplateControls, ids_for, level_of
from smsstream.detection.stats import DailyProfile, poisson_tail_score
from smsstream.detection.templates.sources import (
    NEW_SOURCE_MS, is_new_source, parts_of, show_source, source_order,
)
from smsstream.detection.templates.state import MAX_SOURCES, WINDOW_MS, BucketSources, SourceUse, TemplateState
from smsstream.vocabulary import CRITICAL, HOUR_MS, TEMPLATE, TEMPLATE_HIJACK, VOLUME_BURST, WARNING

#: A new source that has stood in for the silent main key this long before a burst is its successor.
SUCCESSOR_MS = 2 * HOUR_MS
#: Fewest new-source sends in the trailing window that can make a burst.
BURST_MIN_SENDS = 20
#: Tail score (-log10 p) the trailing hour must reach against the usual hour to be a burst.
BURST_MIN_SCORE = 4.0
#: ... and this score makes a burst clear whatever the template's busiest hour was.
BURST_CLEAR_SCORE = 30.0
#: By sensitivity level: (BURST_MIN_SENDS, BURST_MIN_SCORE, BURST_CLEAR_SCORE).
BURST_LEVELS = {LOW: (40, 6.0, 45.0), NORMAL: (BURST_MIN_SENDS, BURST_MIN_SCORE, BURST_CLEAR_SCORE),
                HIGH: (10, 3.0, 20.0)}


class NewSources(NamedTuple):
    """A bucket's sends from sources new to the template."""

    sends: int
    samples: list[str]
    #: the new sources, parts joined by ``|``
    sources: list[str]


def usual_hour(profile: DailyProfile, start: int, end: int) -> float | None:
    """The usual sends in the trailing hour ending at ``end``, None while neither hour of day is known.

    The trailing hour straddles two hours of day; a campaign in either is normal for it.
    """
    slots = [profile.expected(t) for t in (end - WINDOW_MS, start)]
    return max((x for x in slots if x is not None), default=None)


def _main_sources(state: TemplateState, now: int) -> dict[str, tuple[str, int]]:
    """The template's main established API key (``k:``) and network (``n:``) and when each last sent.

    The main one is the established source of that kind with the most sends (the first of equals).
    """
    top: dict[str, tuple[str, SourceUse]] = {}
    for p, row in state.sources.items():
        prefix = p[:2]
        if (prefix == "k:" or prefix == "n:") and not (row.first_seen and now - row.first_seen < NEW_SOURCE_MS):
            best = top.get(prefix)
            if best is None or row.sends > best[1].sends:
                top[prefix] = (p, row)
    return {prefix: (p, row.last_seen) for prefix, (p, row) in top.items()}


def _may_be_new(state: TemplateState, parts_lists: Iterable[tuple[str, ...]], start: int, established: bool) -> bool:
    """Could a send from these sources count as from a new source in bucket ``start``?

    Only then does it matter when the template's main key and network last sent: in most buckets
    every source is long known, and finding the main ones walks all the template's sources.
    """
    sources = state.sources
    for parts in parts_lists:
        for p in parts:
            row = sources.get(p)
            if row is None:
                if established:
                    return True
            elif row.first_seen and start - row.first_seen < NEW_SOURCE_MS:
                return True
    return False


def classify_sources(state: TemplateState, tally: TemplateTally, start: int, established: bool) -> NewSources:
    """Learn the bucket's sources; what of it came from sources new to the template."""
    new_sends = 0
    new_samples: list[str] = []
    new_sources: list[str] = []
    used: dict[str, int] = {}
    parts_by_raw = {raw: parts_of(raw) if raw != "other" else ("other",) for raw in tally.sources}
    main_last: dict[str, int | None] = {"k:": None, "n:": None}
    maybe_new = _may_be_new(state, parts_by_raw.values(), start, established)
    if maybe_new:
        # When the template's main key and main network last sent, counting this bucket.
        now_used = {p for raw, parts in parts_by_raw.items() if raw != "other" for p in parts}
        for prefix, (main, main_at) in _main_sources(state, start).items():
            main_last[prefix] = start if main in now_used else main_at
    for raw, sent in sorted(tally.sources.items(), key=source_order):
        count = sent.sends
        parts = parts_by_raw[raw]
        fresh: dict[str, bool] = {}
        for p in parts:
            row = state.sources.get(p)
            if row is None:
                if len(state.sources) >= MAX_SOURCES:
                    later = [k for k, v in state.sources.items() if v.first_seen]
                    if not later:
                        continue
                    del state.sources[min(later, key=lambda k: state.sources[k].first_seen)]
                # Sources of a template's first sends are its own (0); later ones are new for a day.
                row = state.sources[p] = SourceUse(start if established else 0, 0, start)
            row.sends += count
            row.last_seen = max(row.last_seen, start)
            used[p] = used.get(p, 0) + count
            if not maybe_new:
                continue
            fresh[p] = bool(row.first_seen) and start - row.first_seen < NEW_SOURCE_MS
            last = main_last.get(p[:2])
            if fresh[p] and last is not None:
                # Sending since before the main one's last send, or not yet for long: not its successor.
                fresh[p] = row.first_seen <= last or start - row.first_seen < SUCCESSOR_MS
        if is_new_source(fresh):
            new_sends += count
            new_samples.extend(sample_ids(sent.samples))
            new_sources.append("|".join(parts))
    state.recent_sources.append(BucketSources(start, used))
    while state.recent_sources and state.recent_sources[0].start < start + BUCKET_MS - WINDOW_MS:
        del state.recent_sources[0]
    return NewSources(new_sends, new_samples, new_sources)


def _main_source_silent(state: TemplateState, expected: float, now: int) -> bool:
    """Did the template's main known source (API key, else IP range) stop as the new one started?

    A key rotation replaces the main key, so the new key stands in for it:
    the main key goes quiet while it usually sends, or the other known
    sources keep their usual proportion to the new one. A stolen key sends
    beside the main one (or at an hour it has nothing to send).
    """
    for prefix in ("k:", "n:"):
        rows = {p: row for p, row in state.sources.items() if p.startswith(prefix)}
        fresh_rows = {p: row for p, row in rows.items() if row.first_seen and now - row.first_seen < NEW_SOURCE_MS}
        known = {p: row.sends for p, row in rows.items() if p not in fresh_rows}
        fresh = [row.first_seen for row in fresh_rows.values()]
        if not known or not fresh:
            continue
        since = min(fresh)
        main = max(known, key=known.__getitem__)
        history = sum(known.values())
        share = known[main] / max(history, 1)
        window = [used for start, used in state.recent_sources if start >= since]
        if sum(used.get(main, 0) for used in window) > 0:
            return False
        if share * expected >= 2.0:
            return True
        others = sum(n for used in window for p, n in used.items() if p in known)
        new = sum(n for used in window for p, n in used.items() if p in fresh_rows)
        return others > 0 and share < 1.0 and new <= 3.0 * share / (1.0 - share) * others
    return False


def judge_burst(state: TemplateState, tally: TemplateTally, end: int, new: NewSources,
                expected_hour: float | None, controls: TemplateControls | None = None) -> Finding | None:
    """``volume_burst`` when this bucket's sends from new sources make the trailing hour a burst."""
    new_sends, new_samples, new_sources = new
    if not new_sends:
        return None
    (total, new_total, _), = state.window.sums(end, (WINDOW_MS,))
    hour_known = expected_hour is not None
    if expected_hour is None:
        known = [m for i, m in enumerate(state.profile.means) if state.profile.seen >> i & 1]
        expected_hour = max(known) if known else 0.0
    expected = max(expected_hour, 1.0)
    if hour_known and expected >= 4.0 and total - new_total < 0.5 * expected:
        # The usual sources fell silent while a new one sends: a key rotation, not a second sender.
        return None
    if _main_source_silent(state, expected, end):
        return None
    excess = total - expected
    score = poisson_tail_score(total, expected)
    # The new source must add to the usual volume (not replace it: key rotation) and carry the bulk of the
    # excess (not ride along a campaign at an hour the template has not learned yet).
    # Half as much from the new source in an hour as the template ever sent in its busiest hour (the
    # three-in-the-morning burst the size of the nine-o'clock campaign), or far beyond this hour's usual.
    busiest = max(state.profile.maxes)
    min_sends, min_score, clear_score = BURST_LEVELS[level_of(controls, VOLUME_BURST)]
    if new_total < min_sends or score < min_score:
        return None
    if new_total < 0.5 * busiest and score < clear_score:
        return None
    if excess < 0.5 * new_total or new_total < 0.5 * excess:
        return None
    shown = [show_source(s) for s in new_sources]
    severity = CRITICAL if new_total >= 100 or score >= 20 else WARNING
    return Finding(
        kind=TEMPLATE_HIJACK,
        reason=VOLUME_BURST,
        severity=severity,
        entity_type=TEMPLATE,
        entity_id=state.template_id,
        window_start=end - WINDOW_MS,
        window_end=end,
        observed=total,
        expected=round(expected, 3),
        score=score,
        summary=(
            f"template {state.template_id}: {int(total)} sends in the last hour against about "
            f"{expected:.0f} usual at this hour, {int(new_total)} of them from a new source "
            f"({', '.join(shown[:2])})"
        ),
        evidence={"message_ids": new_samples, "new_sources": shown},
        sender_id=state.owner or tally.top_stranger(),
        template_id=state.template_id,
        last_seen=tally.ts,
        controls=ids_for(controls, VOLUME_BURST),
    )
