"""Detection quality over several simulated scenarios: simulate -> replay -> evaluate, one table.

This is the command behind the README's evaluation table. Besides CONTRACT.md's
scores it counts the episodes detected later than issue 4 allows
(max(30 min, a quarter of the episode's duration)).

    python bench/evaluate_scenarios.py --seeds 11 12 13 [--days 3] [--workdir DIR] [-- extra simulate args]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from smsstream.evaluate import pseudonymise_entities, read_alerts, read_episodes, score, simulated_days
from smsstream.pseudonym import Pseudonymizer
from smsstream.vocabulary import KINDS

KEY = "bench-evaluate-key"


def run_scenario(seed: int, days: int, workdir: Path, extra: list[str]) -> tuple[dict, list]:
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
    return score(episodes, alert_records, span), episodes


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
    ap.add_argument("extra", nargs="*", help="extra `smsstream simulate` arguments (after --)")
    args = ap.parse_args()
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="smsstream-eval-"))
    workdir.mkdir(parents=True, exist_ok=True)

    totals = {k: {"episodes": 0, "detected": 0, "false_alarms": 0, "late": 0, "ttd": []} for k in (*KINDS, "overall")}
    days = 0.0
    for seed in args.seeds:
        print(f"seed {seed}: simulate, replay, evaluate ...", file=sys.stderr, flush=True)
        result, episodes = run_scenario(seed, args.days, workdir, args.extra)
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
    return 0


if __name__ == "__main__":
    sys.exit(main())
