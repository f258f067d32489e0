"""``--dry-run EVENTS``: what a change of the controls would do to the alerts of a replay file.

The file is replayed twice, under the entries in force now and under them
with the change, exactly as ``smsstream replay`` would; the alerting keys
are then compared: which appear, which disappear, which change severity, and
which become (or stop being) silenced or shadowed.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from smsstream.config import Settings
from smsstream.detection.controls import ControlBook
from smsstream.detection.engine import Engine
from smsstream.errors import ConfigError
from smsstream.replay import ReplayReport, replay_lines
from smsstream.vocabulary import FIRING, SEVERITIES

_RANK = {s: i for i, s in enumerate(SEVERITIES)}


@dataclass
class KeySummary:
    """What one dedup key's firing records say over a replay."""

    severity: str
    episodes: set = field(default_factory=set)
    silenced: bool = False
    shadow: bool = False


def summarise(alerts: list[dict]) -> dict[str, KeySummary]:
    out: dict[str, KeySummary] = {}
    for a in alerts:
        if a["status"] != FIRING:
            continue
        key = a["dedup_key"]
        s = out.get(key)
        if s is None:
            s = out[key] = KeySummary(a["severity"])
        elif _RANK[a["severity"]] > _RANK[s.severity]:
            s.severity = a["severity"]
        s.episodes.add(a["alert_id"])
        s.silenced = s.silenced or "silenced_until" in a
        s.shadow = s.shadow or bool(a.get("shadow"))
    return out


@dataclass
class Effect:
    appear: list[tuple[str, KeySummary]]
    disappear: list[tuple[str, KeySummary]]
    severity: list[tuple[str, str, str]]
    marks: list[tuple[str, str]]
    unchanged: int

    @property
    def none(self) -> bool:
        return not (self.appear or self.disappear or self.severity or self.marks)


def compare(before: list[dict], after: list[dict]) -> Effect:
    b, a = summarise(before), summarise(after)
    severity, marks = [], []
    unchanged = 0
    for key in sorted(set(a) & set(b)):
        x, y = b[key], a[key]
        changed = False
        if x.severity != y.severity:
            severity.append((key, x.severity, y.severity))
            changed = True
        for word, was, now in (("silenced", x.silenced, y.silenced), ("shadow", x.shadow, y.shadow)):
            if was != now:
                marks.append((key, f"now {word}" if now else f"no longer {word}"))
                changed = True
        unchanged += not changed
    return Effect(sorted((k, a[k]) for k in set(a) - set(b)), sorted((k, b[k]) for k in set(b) - set(a)),
                  severity, marks, unchanged)


def replay_under(path: Path, settings: Settings, book: ControlBook,
                 progress: Callable[[ReplayReport], None] | None = None) -> list[dict]:
    """The alert records ``smsstream replay`` writes for ``path`` under ``book``."""
    alerts: list[dict] = []
    try:
        with path.open("rb") as source:
            replay_lines(source, Engine.from_settings(settings, book), alerts.append, None, progress)
    except OSError as exc:
        raise ConfigError(f"cannot read the events file {path}: {exc.strerror or exc}") from None
    return alerts


def dry_run(path: Path, settings: Settings, now: ControlBook, changed: ControlBook, quiet: bool = False) -> Effect:
    def progress(r: ReplayReport) -> None:
        print(f"dry run: {r.lines:,} lines, {r.rate:,.0f} lines/s", file=sys.stderr, flush=True)

    shown = None if quiet else progress
    if not quiet:
        print(f"dry run: replaying {path} under the entries in force now ...", file=sys.stderr, flush=True)
    before = replay_under(path, settings, now, shown)
    if not quiet:
        print(f"dry run: ... and with the change", file=sys.stderr, flush=True)
    after = replay_under(path, settings, changed, shown)
    return compare(before, after)


def describe(effect: Effect) -> str:
    """The effect as lines a person reads."""
    if effect.none:
        return f"no alert would change ({effect.unchanged} alerting key(s) as before)"
    lines = []
    for key, s in effect.appear:
        lines.append(f"  appear     {key} ({s.severity}, {len(s.episodes)} episode(s))")
    for key, s in effect.disappear:
        lines.append(f"  disappear  {key} ({s.severity}, {len(s.episodes)} episode(s))")
    for key, was, now in effect.severity:
        lines.append(f"  severity   {key}: {was} -> {now}")
    for key, what in effect.marks:
        lines.append(f"  marked     {key}: {what}")
    lines.append(f"  unchanged  {effect.unchanged} alerting key(s)")
    return "\n".join(lines)
