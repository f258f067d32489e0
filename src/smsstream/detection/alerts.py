"""The alert lifecycle: findings and clock advances in, CONTRACT.md alert records out.

One ``AlertBook`` per part owns the dedup keys of the entities that part is
keyed by, so no alert needs a further hop. Per dedup key (one *episode* at a
time):

- a firing finding with no open episode starts one and writes a ``firing``
  record at once;
- while it fires, further findings refresh its figures, and a ``firing``
  record repeats at most once per ``repeat_ms`` of event time;
- weaker findings (``firing=False``) keep an open episode alive but never
  open one: the release threshold sits below the firing threshold;
- an episode resolves, once, after ``quiet_ms`` of event time with no
  finding at all, so a figure hovering around the threshold does not flap.

Everything is decided on event time, so replay and the worker write the same
records; ``alert_id`` is derived from the dedup key and ``first_seen`` so a
redelivered or replayed episode keeps its id. ``detected_at`` is wall-clock
and belongs to whoever writes the record (``stamp``).
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass, field
from typing import Any, MutableMapping

from smsstream.vocabulary import FIRING, HOUR_MS, MINUTE_MS, RESOLVED, SEVERITIES

#: Quiet event time after the last finding before an episode resolves.
DEFAULT_QUIET_MS = 15 * MINUTE_MS
#: At most this many items per evidence list (CONTRACT.md).
MAX_EVIDENCE = 20

_RANK = {s: i for i, s in enumerate(SEVERITIES)}


@dataclass(slots=True)
class Finding:
    """One detector's verdict that an entity is abnormal over an event-time window.

    ``observed`` and ``expected`` are in the same unit (a count, a rate, a
    share); ``score`` is comparable across entities: larger is worse.
    ``firing=False`` marks a weaker finding, above the release threshold but
    below the firing one: it keeps an alert that is already firing alive
    (hysteresis) and never starts one.
    """

    kind: str
    reason: str
    severity: str
    entity_type: str
    entity_id: str
    window_start: int
    window_end: int
    observed: float
    expected: float
    score: float
    summary: str
    evidence: dict = field(default_factory=dict)
    sender_id: str | None = None
    template_id: str | None = None
    last_seen: int | None = None
    firing: bool = True
    #: event time at which the evidence became enough to fire; None: when its window ended (a closed bucket)
    sufficient_at: int | None = None
    #: ids of the operator controls (``controls``) that shaped this finding: its sensitivity, allowances
    controls: tuple[str, ...] = ()

    @property
    def dedup_key(self) -> str:
        return f"{self.kind}/{self.entity_type}/{self.entity_id}"


def one_alert(found: list[Finding]) -> list[Finding]:
    """One finding per entity and bucket: the strongest reason speaks, the others ride along in its evidence."""
    if not found:
        return []
    lead = max(found, key=lambda f: (_RANK[f.severity], f.score))
    for other in found:
        if other is not lead:
            lead.evidence.setdefault("also", []).append(f"{other.reason}: {other.summary}")
            if other.controls:
                lead.controls = tuple(dict.fromkeys(lead.controls + other.controls))
    return [lead]


def alert_id(dedup_key: str, first_seen: int) -> str:
    return hashlib.sha256(f"{dedup_key}|{first_seen}".encode()).hexdigest()[:24]


def bounded_evidence(evidence: dict) -> dict:
    """Evidence with every list cut to ``MAX_EVIDENCE`` items (nested dicts alike)."""
    out: dict[str, Any] = {}
    for name, value in evidence.items():
        if isinstance(value, (list, tuple)):
            out[name] = list(value[:MAX_EVIDENCE])
        elif isinstance(value, dict):
            out[name] = bounded_evidence(value)
        else:
            out[name] = value
    return out


def _num(x: float) -> float | int:
    """Figures rounded for stable, readable JSON."""
    if isinstance(x, int):
        return x
    r = round(float(x), 6)
    return int(r) if r.is_integer() and abs(r) < 2**53 else r


@dataclass(slots=True)
class Episode:
    """One firing episode of one dedup key; plain and picklable."""

    part_key: str
    first_seen: int
    #: window_end of the latest finding (firing or not): the quiet period runs from here
    last_hit: int
    #: window_end of the latest record written
    last_written: int
    latest: Finding
    severity: str


class AlertBook:
    """Turns one part's findings into alert records with dedup, repeat and hysteresis."""

    def __init__(self, repeat_ms: int = HOUR_MS, quiet_ms: int = DEFAULT_QUIET_MS):
        self.repeat_ms = repeat_ms
        self.quiet_ms = quiet_ms
        self.episodes: MutableMapping[str, Episode] = {}

    def is_firing(self, dedup_key: str) -> bool:
        return dedup_key in self.episodes

    def holds_entity(self, part_key: str) -> bool:
        return any(e.part_key == part_key for e in self.episodes.values())

    def offer(self, finding: Finding, part_key: str = "") -> list[dict]:
        """Take a finding for a closed bucket; returns the records it causes (zero or one)."""
        key = finding.dedup_key
        episode = self.episodes.get(key)
        if episode is None:
            if not finding.firing:
                return []
            episode = Episode(
                part_key=part_key,
                first_seen=finding.window_start,
                last_hit=finding.window_end,
                last_written=finding.window_end,
                latest=finding,
                severity=finding.severity,
            )
            self.episodes[key] = episode
            return [self._record(key, episode, FIRING)]
        episode.last_hit = max(episode.last_hit, finding.window_end)
        if finding.firing or _RANK[finding.severity] >= _RANK[episode.latest.severity]:
            episode.latest = finding
        if _RANK[finding.severity] > _RANK[episode.severity] and finding.firing:
            episode.severity = finding.severity
        out = []
        if finding.firing and finding.window_end - episode.last_written >= self.repeat_ms:
            episode.last_written = finding.window_end
            out.append(self._record(key, episode, FIRING))
        self.episodes[key] = episode
        return out

    def advance(self, watermark: int) -> list[dict]:
        """Resolve episodes quiet since before ``watermark - quiet_ms``."""
        if not self.episodes:
            return []
        out = []
        done = [k for k, e in self.episodes.items() if e.last_hit + self.quiet_ms <= watermark]
        for key in done:
            episode = self.episodes.pop(key)
            out.append(self._record(key, episode, RESOLVED))
        return out

    def _record(self, key: str, episode: Episode, status: str) -> dict:
        f = episode.latest
        # a finding pickled before it had ``controls`` (a snapshot of an older version) has none
        controls: tuple[str, ...] = getattr(f, "controls", ())
        if status == RESOLVED:
            quiet_min = self.quiet_ms // MINUTE_MS
            summary = f"RESOLVED after {quiet_min} min back within bounds. Last: {f.summary}"
            window_end = episode.last_hit + self.quiet_ms
            window_start = episode.first_seen
        else:
            summary = f.summary
            window_end = f.window_end
            window_start = f.window_start
        return {
            "alert_id": alert_id(key, episode.first_seen),
            "dedup_key": key,
            "kind": f.kind,
            "reason": f.reason,
            "severity": episode.severity,
            "status": status,
            "entity_type": f.entity_type,
            "entity_id": f.entity_id,
            "sender_id": f.sender_id,
            "template_id": f.template_id,
            "window_start": window_start,
            "window_end": window_end,
            "observed": _num(f.observed),
            "expected": _num(f.expected),
            "score": _num(f.score),
            "summary": summary,
            "evidence": bounded_evidence(f.evidence),
            "first_seen": episode.first_seen,
            "last_seen": f.last_seen if f.last_seen is not None else f.window_end,
            "sufficient_at": window_end if status == RESOLVED or f.sufficient_at is None else f.sufficient_at,
            "detected_at": None,
            # optional (CONTRACT.md): only where operator controls shaped the alert
            **({"controls": list(controls[:MAX_EVIDENCE])} if controls else {}),
        }


def stamp(record: dict, now_ms: int | None = None) -> dict:
    """Set ``detected_at`` (wall clock, ms) as the record is written."""
    record["detected_at"] = int(time.time() * 1000) if now_ms is None else now_ms
    return record
