"""`smsstream evaluate`: score alerts against labelled attack episodes, exactly as CONTRACT.md says.

An episode is detected when a ``firing`` alert of its kind names one of its
entities (numbers compared as pseudonyms) with ``window_end`` in
``[start, end + 30 min]``; time to detect is that ``window_end`` minus
``start``. A false alarm is a distinct ``dedup_key`` that fired and matched no
episode. Rates are per simulated day.

The alerts come from a file (``--alerts``, e.g. ``replay -o`` or a dump of
``sms.alerts``), or evaluate replays the events itself (``--events``) under
the operator controls ``--config FILE`` or ``--config-topic`` name, as
``replay`` takes them: a change is backtested before it goes live.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import textwrap
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

from smsstream.config import Settings
from smsstream.errors import ConfigError, SmsstreamError
from smsstream.pseudonym import Pseudonymizer
from smsstream.vocabulary import DAY_MS, FIRING, KINDS, MINUTE_MS, NUMBER

#: An alert may confirm an episode up to this long after the episode ends.
GRACE_MS = 30 * MINUTE_MS


class EvaluateError(SmsstreamError):
    """A labels or alerts file cannot be scored."""


@dataclass(slots=True)
class Episode:
    episode_id: str
    kind: str
    entities: frozenset[tuple[str, str]]
    start: int
    end: int
    detected_at: int | None = None  # window_end of the earliest matching firing alert

    @property
    def time_to_detect_ms(self) -> int | None:
        return None if self.detected_at is None else self.detected_at - self.start


@dataclass(slots=True)
class KindScore:
    episodes: int = 0
    detected: int = 0
    false_alarms: int = 0
    ttd_ms: list[int] = field(default_factory=list)

    def as_dict(self, days: float) -> dict:
        return {
            "episodes": self.episodes,
            "detected": self.detected,
            "recall": round(self.detected / self.episodes, 4) if self.episodes else None,
            "false_alarms": self.false_alarms,
            "false_alarms_per_day": round(self.false_alarms / days, 4),
            "ttd_median_s": round(statistics.median(self.ttd_ms) / 1000, 1) if self.ttd_ms else None,
            "ttd_worst_s": round(max(self.ttd_ms) / 1000, 1) if self.ttd_ms else None,
        }


# --- reading -------------------------------------------------------------------

def _json_lines(path: Path, what: str, fix: str) -> Iterable[tuple[int, dict]]:
    try:
        handle = path.open("rb")
    except OSError as exc:
        raise EvaluateError(f"cannot read {what} file {path}: {exc.strerror or exc}; {fix}") from None
    with handle:
        for lineno, line in enumerate(handle, 1):
            if not line.strip():
                continue
            try:
                value = json.loads(line)
            except ValueError:
                raise EvaluateError(f"{path}:{lineno}: not a JSON line; {fix}") from None
            if not isinstance(value, dict):
                raise EvaluateError(f"{path}:{lineno}: expected a JSON object; {fix}")
            yield lineno, value


def read_episodes(path: Path) -> list[Episode]:
    fix = "pass the labels file written by `smsstream simulate` (OUT.labels.jsonl)"
    episodes = []
    for lineno, d in _json_lines(path, "labels", fix):
        try:
            entities = frozenset((str(e["entity_type"]), str(e["entity_id"])) for e in d["entities"])
            episodes.append(
                Episode(str(d["episode_id"]), str(d["kind"]), entities, int(d["start"]), int(d["end"]))
            )
        except (KeyError, TypeError, ValueError):
            raise EvaluateError(
                f"{path}:{lineno}: a label needs episode_id, kind, entities[{{entity_type, entity_id}}], "
                f"start and end; {fix}"
            ) from None
    return episodes


def read_alerts(path: Path) -> list[dict]:
    fix = "pass the alert records written by `smsstream replay -o` or read from sms.alerts"
    alerts = []
    for lineno, d in _json_lines(path, "alerts", fix):
        missing = [f for f in ("dedup_key", "kind", "status", "entity_type", "entity_id", "window_end") if f not in d]
        if missing:
            raise EvaluateError(f"{path}:{lineno}: alert lacks {', '.join(missing)}; {fix}")
        alerts.append(d)
    return alerts


def pseudonymise_entities(episodes: list[Episode], pseudonymizer: Pseudonymizer | None) -> None:
    """Labels name numbers in clear; alerts name them as ``pn:`` pseudonyms."""
    for episode in episodes:
        if any(etype == NUMBER for etype, _ in episode.entities):
            if pseudonymizer is None:
                raise ConfigError(
                    "SMSSTREAM_PSEUDONYM_KEY is not set but the labels name phone numbers; "
                    "set it to the key the detectors used"
                )
            episode.entities = frozenset(
                (etype, pseudonymizer.pseudonym(eid) if etype == NUMBER else eid)
                for etype, eid in episode.entities
            )


# --- scoring -------------------------------------------------------------------

def score(episodes: list[Episode], alerts: list[dict], days: float) -> dict:
    """Recall, false alarms per day and time to detect, per kind and overall (numbers already pseudonymised)."""
    by_entity: dict[tuple[str, str, str], list[Episode]] = {}
    for episode in episodes:
        episode.detected_at = None
        for etype, eid in episode.entities:
            by_entity.setdefault((episode.kind, etype, eid), []).append(episode)

    fired: dict[str, str] = {}  # dedup_key -> kind
    matched: set[str] = set()
    for alert in alerts:
        if alert.get("status") != FIRING:
            continue
        key, kind = str(alert["dedup_key"]), str(alert["kind"])
        fired.setdefault(key, kind)
        window_end = int(alert["window_end"])
        for episode in by_entity.get((kind, str(alert["entity_type"]), str(alert["entity_id"])), ()):
            if episode.start <= window_end <= episode.end + GRACE_MS:
                matched.add(key)
                if episode.detected_at is None or window_end < episode.detected_at:
                    episode.detected_at = window_end

    kinds = {kind: KindScore() for kind in KINDS}
    overall = KindScore()
    for episode in episodes:
        for bucket in (kinds.setdefault(episode.kind, KindScore()), overall):
            bucket.episodes += 1
            if episode.detected_at is not None:
                bucket.detected += 1
                bucket.ttd_ms.append(episode.time_to_detect_ms)  # type: ignore[arg-type]
    false_alarms = sorted(key for key in fired if key not in matched)
    for key in false_alarms:
        kinds.setdefault(fired[key], KindScore()).false_alarms += 1
        overall.false_alarms += 1
    return {
        "days": round(days, 4),
        "overall": overall.as_dict(days),
        "kinds": {kind: s.as_dict(days) for kind, s in kinds.items()},
        "missed": sorted(e.episode_id for e in episodes if e.detected_at is None),
        "false_alarm_keys": false_alarms,
    }


def simulated_days(labels_path: Path, episodes: list[Episode], alerts: list[dict]) -> tuple[float, str]:
    """The run's length: the simulator's manifest if present, else the span the files cover."""
    name = labels_path.name
    stem = name[: -len(".labels.jsonl")] if name.endswith(".labels.jsonl") else labels_path.stem
    manifest = labels_path.with_name(stem + ".manifest.json")
    try:
        days = float(json.loads(manifest.read_text())["days"])
        if days > 0:
            return days, f"manifest {manifest.name}"
    except (OSError, ValueError, KeyError, TypeError):
        pass
    times = [t for e in episodes for t in (e.start, e.end)]
    times += [int(a[f]) for a in alerts for f in ("window_start", "window_end") if isinstance(a.get(f), int)]
    if len(times) < 2:
        return 1.0, "default (no manifest, no time span); pass --days"
    return max((max(times) - min(times)) / DAY_MS, 1 / 24), "span of labels and alerts; pass --days to fix"


# --- output --------------------------------------------------------------------

def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    seconds = int(round(seconds))
    sign = "-" if seconds < 0 else ""
    seconds = abs(seconds)
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{sign}{h}h{m:02d}m" if h else f"{sign}{m}m{s:02d}s"


def render_table(result: dict, days_source: str) -> str:
    """The scores as a table that fits 80 columns (a terminal, a log, an issue)."""
    head = (f"{'':<22} {'episodes':>8} {'detected':>8} {'recall':>6} {'false alarms':>16} {'time to detect':>15}\n"
            f"{'kind':<22} {'':>8} {'':>8} {'':>6} {'count':>7} {'per day':>8} {'median':>7} {'worst':>7}")
    rule = "-" * 80
    lines = [head, rule]
    rows = list(result["kinds"].items()) + [("overall", result["overall"])]
    for name, s in rows:
        if name == "overall":
            lines.append(rule)
        recall = "-" if s["recall"] is None else f"{s['recall']:.0%}"
        lines.append(
            f"{name:<22} {s['episodes']:>8} {s['detected']:>8} {recall:>6} {s['false_alarms']:>7} "
            f"{s['false_alarms_per_day']:>8.2f} {_duration(s['ttd_median_s']):>7} {_duration(s['ttd_worst_s']):>7}"
        )
    lines.append(f"simulated days: {result['days']:g} ({days_source})")
    if result["missed"]:
        shown = ", ".join(result["missed"][:10]) + (" ..." if len(result["missed"]) > 10 else "")
        lines.append(textwrap.fill(f"missed episodes: {shown}", width=80, subsequent_indent="  ",
                                   break_long_words=False, break_on_hyphens=False))
    return "\n".join(lines)


def key_mismatch(episodes: list[Episode], alerts: list[dict]) -> str | None:
    """A warning when the alerts name numbers but none of the labels' numbers (pseudonymised with our key).

    Only alerts of kinds whose episodes name numbers are looked at, entity and
    evidence alike: with the detectors' key some of them name a labelled
    number; with another key none can.
    """
    labelled = {eid for e in episodes for etype, eid in e.entities if etype == "number"}
    kinds = {e.kind for e in episodes if any(etype == "number" for etype, _ in e.entities)}
    named: set[str] = set()
    for alert in alerts:
        if alert.get("kind") not in kinds:
            continue
        if alert.get("entity_type") == "number":
            named.add(str(alert["entity_id"]))
        evidence = alert.get("evidence")
        if isinstance(evidence, dict) and isinstance(evidence.get("numbers"), list):
            named.update(str(n) for n in evidence["numbers"])
    if not labelled or not named or named & labelled:
        return None
    return (
        f"none of the {len(named)} numbers the alerts name matches a number of the labels: the alerts were "
        "probably made with another SMSSTREAM_PSEUDONYM_KEY, so episodes named by a number cannot be matched; "
        "set SMSSTREAM_PSEUDONYM_KEY to the key the worker or replay ran with"
    )


def score_until(episodes: list[Episode], alerts: list[dict], start: int, until: int) -> tuple[dict, list[Episode]]:
    """The scores of a run stopped at event time ``until`` (the demo): an episode counts once it is
    detected or once its time to be detected (its end plus the grace) is over; the others are still
    open and returned apart."""
    score(episodes, alerts, 1)
    closed = [e for e in episodes if e.detected_at is not None or e.end + GRACE_MS <= until]
    still_open = [e for e in episodes if e.detected_at is None and e.end + GRACE_MS > until]
    return score(closed, alerts, max(until - start, 3_600_000) / DAY_MS), still_open


# --- command -------------------------------------------------------------------

def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--labels", required=True, type=Path, help="episode labels written by `smsstream simulate`")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--alerts", type=Path, help="alert records (JSONL), e.g. from `smsstream replay -o`")
    source.add_argument("--events", type=Path,
                        help="replay these events (JSONL, as `smsstream replay` reads them) and score their alerts")
    parser.add_argument("--json", action="store_true", help="print the scores as one JSON object")
    parser.add_argument("--days", type=float, help="simulated days for false alarms per day (default: from the manifest)")
    from smsstream.replay import add_config_options

    add_config_options(parser)


def replayed_alerts(args: argparse.Namespace) -> list[dict]:
    """The alert records ``replay`` writes for ``--events`` under the ``--config`` / ``--config-topic`` controls."""
    from smsstream.detection.engine import Engine
    from smsstream.replay import controls_from_args, replay_lines

    settings = Settings.from_env()
    engine = Engine.from_settings(settings, controls_from_args(args, settings))
    alerts: list[dict] = []
    try:
        with open(args.events, "rb") as lines:
            replay_lines(lines, engine, alerts.append, None, lambda r: print(
                f"evaluate: replayed {r.lines:,} lines, {r.alerts} alert records", file=sys.stderr, flush=True))
    except OSError as exc:
        raise ConfigError(f"cannot read events file {args.events}: {exc.strerror or exc}") from None
    return alerts


def run(args: argparse.Namespace) -> int:
    if args.days is not None and args.days <= 0:
        raise ConfigError(f"--days {args.days} must be positive")
    if args.alerts is not None and (args.config or args.config_topic):
        raise ConfigError("--config and --config-topic apply when evaluate replays the events: give --events "
                          "EVENTS.jsonl instead of --alerts (alert records were already judged under theirs)")
    episodes = read_episodes(args.labels)
    alerts = read_alerts(args.alerts) if args.alerts is not None else replayed_alerts(args)
    key = Settings.from_env().pseudonym_key
    pseudonymise_entities(episodes, Pseudonymizer(key) if key else None)
    if args.days is not None:
        days, source = float(args.days), "--days"
    else:
        days, source = simulated_days(args.labels, episodes, alerts)
    warning = key_mismatch(episodes, alerts)
    result = score(episodes, alerts, days)
    if args.json:
        print(json.dumps({**result, "days_source": source, "warnings": [warning] if warning else []}, indent=2))
    else:
        print(render_table(result, source))
    if warning:
        sys.stdout.flush()
        print(f"smsstream evaluate: warning: {warning}", file=sys.stderr)
    return 0
