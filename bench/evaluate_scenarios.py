"""Detection quality over several simulated scenarios: simulate -> replay -> evaluate, one table.

This is the command behind the README's evaluation table. Besides CONTRACT.md's
scores it counts the episodes detected later than issue 4 allows
(max(30 min, a quarter of the episode's duration)). ``--by-scenario`` adds a
table per scenario and intensity, with the time to the first alert that gives
the scenario's own reason (its name, for scenarios named after one; an
alert carries a reason that rode along in its evidence under its name).

    python bench/evaluate_scenarios.py --seeds 11 12 13 [--days 3] [--workdir DIR] [--by-scenario] [-- extra simulate args]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from smsstream.evaluate import GRACE_MS, pseudonymise_entities, read_alerts, read_episodes, score, simulated_days
from smsstream.pseudonym import Pseudonymizer
from smsstream.vocabulary import FIRING, KINDS, REASONS

KEY = "bench-evaluate-key"


def run_scenario(seed: int, days: int, workdir: Path, extra: list[str]) -> tuple[dict, list, list]:
    events = workdir / f"s{seed}.jsonl"
    alerts = workdir / f"s{seed}.alerts.jsonl"
    env = {**os.environ, "SMSSTREAM_PSEUDONYM_KEY": KEY}
    smsstream = [sys.executable, "-m", "smsstream"]
    subprocess.run([*smsstream, "simulate", "-o", str(events), "--seed", str(seed), "--days", str(days), "-q", *extra],
                   check=True, env=env)
    subprocess.run([*smsstream, "replay", str(events), "-o", str(alerts), "--quiet"], check=True, env=env)
    labels = workdir / f"s{seed}.labels.jsonl"
    episodes = read_episodes(labels)
    pseudonymise_entities(episodes, Pseudonymizer(KEY))
    alert_records = read_alerts(alerts)
    span, _ = simulated_days(labels, episodes, alert_records)
    return score(episodes, alert_records, span), episodes, alert_records


def by_own_reason(episode, reason: str, alerts: list) -> int | None:
    """``window_end`` of the first firing alert of the episode's kind naming one of its entities with
    ``reason``, as its own or in its evidence; None if there is none within the episode (and grace)."""
    found = [a["window_end"] for a in alerts
             if a["status"] == FIRING and a["kind"] == episode.kind
             and (a["entity_type"], a["entity_id"]) in episode.entities
             and (a["reason"] == reason or reason in a.get("evidence", {}))
             and episode.start <= a["window_end"] <= episode.end + GRACE_MS]
    return min(found) if found else None


def scenario_rows(seed: int, workdir: Path, episodes: list, alerts: list, rows: dict) -> None:
    """Add the seed's episodes to ``rows``: (scenario, intensity) -> [episodes, detected, ttds, own-reason ttds]."""
    manifest = json.loads((workdir / f"s{seed}.manifest.json").read_text())
    about = {e["episode_id"]: (e["reason"], e["intensity"]) for e in manifest["episodes"]}
    reasons = {r for rs in REASONS.values() for r in rs}
    for e in episodes:
        scenario, intensity = about[e.episode_id]
        row = rows.setdefault((scenario, intensity), [0, 0, [], []])
        row[0] += 1
        if e.detected_at is not None:
            row[1] += 1
            row[2].append(e.time_to_detect_ms)
        if scenario in reasons:
            own = by_own_reason(e, scenario, alerts)
            if own is not None:
                row[3].append(own - e.start)


def print_scenarios(rows: dict) -> None:
    print("\n| scenario | intensity | episodes | detected | median TTD | worst TTD | by its own reason |")
    print("|---|---|---|---|---|---|---|")
    order = {"low": 0, "medium": 1, "high": 2}
    for (scenario, intensity), (n, detected, ttd, own) in sorted(rows.items(), key=lambda r: (r[0][0], order[r[0][1]])):
        med = statistics.median(ttd) if ttd else None
        mine = f"{len(own)}, median {fmt(statistics.median(own))}, worst {fmt(max(own))}" if own else "-"
        print(f"| {scenario} | {intensity} | {n} | {detected} | {fmt(med)} | {fmt(max(ttd) if ttd else None)} | {mine} |")


def late(episode) -> bool:
    limit = max(1_800_000, (episode.end - episode.start) / 4)
    return episode.detected_at is not None and episode.time_to_detect_ms > limit


def fmt(ms: float | None) -> str:
    if ms is None:
        return "-"
    s = int(ms / 1000)
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, nargs="+", default=[11, 12, 13])
    ap.add_argument("--days", type=int, default=3)
    ap.add_argument("--workdir", type=Path)
    ap.add_argument("--by-scenario", action="store_true", help="also a table per scenario and intensity")
    ap.add_argument("extra", nargs="*", help="extra `smsstream simulate` arguments (after --)")
    args = ap.parse_args()
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="smsstream-eval-"))
    workdir.mkdir(parents=True, exist_ok=True)

    totals = {k: {"episodes": 0, "detected": 0, "false_alarms": 0, "late": 0, "ttd": []} for k in (*KINDS, "overall")}
    days = 0.0
    scenarios: dict = {}
    for seed in args.seeds:
        print(f"seed {seed}: simulate, replay, evaluate ...", file=sys.stderr, flush=True)
        result, episodes, alerts = run_scenario(seed, args.days, workdir, args.extra)
        if args.by_scenario:
            scenario_rows(seed, workdir, episodes, alerts, scenarios)
        days += result["days"]
        for kind in (*KINDS, "overall"):
            src = result["overall"] if kind == "overall" else result["kinds"][kind]
            t = totals[kind]
            t["episodes"] += src["episodes"]
            t["detected"] += src["detected"]
            t["false_alarms"] += src["false_alarms"]
        for e in episodes:
            for kind in (e.kind, "overall"):
                if e.detected_at is not None:
                    totals[kind]["ttd"].append(e.time_to_detect_ms)
                if late(e):
                    totals[kind]["late"] += 1
        if result["missed"] or result["false_alarm_keys"]:
            print(f"  missed: {result['missed']}\n  false alarms: {result['false_alarm_keys']}", file=sys.stderr)

    print(f"seeds {' '.join(map(str, args.seeds))}, {days:.0f} simulated days\n")
    print("| kind | episodes | recall | false alarms / day | median TTD | worst TTD | late |")
    print("|---|---|---|---|---|---|---|")
    for kind, t in totals.items():
        recall = f"{100 * t['detected'] / t['episodes']:.1f} %" if t["episodes"] else "-"
        med = statistics.median(t["ttd"]) if t["ttd"] else None
        worst = max(t["ttd"]) if t["ttd"] else None
        print(f"| {kind} | {t['episodes']} | {recall} | {t['false_alarms'] / days:.2f} | {fmt(med)} | {fmt(worst)} | {t['late']} |")
    if args.by_scenario:
        print_scenarios(scenarios)
    return 0


if __name__ == "__main__":
    sys.exit(main())
