"""One simulation run from options to records, labels and manifest; the CLI and tests both call ``simulate``."""

from __future__ import annotations

import random
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone

from smsstream.simulate.attacks import KINDS, plan_attacks
from smsstream.simulate.output import Noise, Progress, Stream, Writer
from smsstream.simulate.traffic import Simulation
from smsstream.simulate.world import REGIONS, World
from smsstream.vocabulary import DAY_MS, HOUR_MS

#: Sends per day across all senders at ``rate`` 1: with receipts and books, >1M records in 3 days.
DAILY_SENDS = 170_000


@dataclass
class Options:
    days: int = 3
    senders: int = 60
    rate: float = 1.0
    seed: int = 1
    attacks: tuple[str, ...] = KINDS  # kinds and/or scenario names (attacks.SCENARIO_NAMES)
    region: str = "in"
    start: str = "2026-03-06"  # a Friday, so the default run holds a weekday and a weekend; starts at local midnight
    noise: bool = True


@dataclass
class Result:
    labels: list[dict]
    manifest: dict
    episodes: list = field(default_factory=list)


def start_ts(options: Options) -> int:
    day = datetime.strptime(options.start, "%Y-%m-%d").replace(tzinfo=timezone.utc)
    return int(day.timestamp() * 1000) - REGIONS[options.region].utc_offset_ms


def simulate(options: Options, writer: Writer, progress: Progress | None = None) -> Result:
    """Generate the run hour by hour into ``writer``; return the labels and the manifest."""
    seed = options.seed
    region = REGIONS[options.region]
    start = start_ts(options)
    end = start + options.days * DAY_MS
    world = World(random.Random(f"{seed}/world"), region, options.senders, DAILY_SENDS * options.rate,
                  start, options.days)
    noise = Noise() if options.noise else Noise(0, 0, 0, 0)
    stream = Stream(writer, random.Random(f"{seed}/noise"), noise)
    sim = Simulation(world, stream, random.Random(f"{seed}/traffic"), end)
    plan = plan_attacks(sim, seed, options.attacks, options.days)
    hours = options.days * 24
    written = 0
    for h in range(hours):
        t0 = start + h * HOUR_MS
        sim.run_hour(t0)
        # nothing still to come can arrive before the end of this hour (bar a few seconds of clock skew)
        written += stream.release(t0 + HOUR_MS - 5_000)
        if progress:
            progress.update(h + 1, written, f"day {h // 24 + 1}/{options.days}")
    written += stream.release_all()
    if progress:
        progress.update(hours, written, "done")
        progress.finish()

    episodes = sorted((e for e in plan.episodes if e.records), key=lambda e: (e.first, e.kind, e.reason))
    for i, episode in enumerate(episodes, 1):
        episode.episode_id = f"ep{i:03d}-{episode.reason}"
    labels = [e.label() for e in episodes]
    manifest = {
        "seed": seed,
        "options": {**asdict(options), "attacks": list(options.attacks)},
        "start": start,
        "end": end,
        "days": options.days,
        "region": region.code,
        "records": sum(stream.counts.values()) + sum(stream.duplicates.values()) + sum(stream.malformed.values()),
        "counts": dict(sorted(stream.counts.items())),
        "duplicates": dict(sorted(stream.duplicates.items())),
        "malformed": dict(sorted(stream.malformed.items())),
        "malformed_total": sum(stream.malformed.values()),
        "max_out_of_order_ms": noise.max_reorder_ms,
        "episodes_per_kind": {k: n for k in KINDS if (n := sum(1 for e in episodes if e.kind == k))},
        "episodes": [
            {"episode_id": e.episode_id, "kind": e.kind, "reason": e.reason, "intensity": e.intensity,
             "start": e.first, "end": e.last, "attack_records": e.records, "details": e.details}
            for e in episodes
        ],
        "dropped_episodes": sum(1 for e in plan.episodes if not e.records),
        "senders": [
            {"sender_id": s.sender_id, "lender": s.lender, "daily_volume": round(s.daily_volume, 1),
             "book": len(s.accounts), "starts": s.start_ts, "growth_per_day": round(s.growth_per_day, 3),
             "rotates_key_at": s.rotates_key_at, "extra_campaign": s.extra_campaign,
             "campaign_hours": list(s.campaign_hours), "weekend_factor": round(s.weekend_factor, 3),
             "non_borrower_rate": round(s.nb_rate, 4)}
            for s in world.senders
        ],
    }
    return Result(labels, manifest, episodes)
