"""`smsstream simulate`: labelled synthetic traffic to a JSONL file (the replay format) or to Kafka."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from smsstream.errors import ConfigError
from smsstream.simulate.attacks import KINDS, SCENARIO_NAMES
from smsstream.simulate.output import BrokerWriter, JsonlWriter, Progress
from smsstream.simulate.run import Options, simulate
from smsstream.simulate.world import REGIONS


def configure(parser: argparse.ArgumentParser) -> None:
    out = parser.add_mutually_exclusive_group(required=True)
    out.add_argument("--out", "-o", type=Path, help="write the replay format (JSONL) to this file ('-' for stdout)")
    out.add_argument("--broker", nargs="?", const="", metavar="URL",
                     help="produce to Kafka (default URL: SMSSTREAM_BROKER)")
    parser.add_argument("--labels", type=Path, help="episode labels (default: beside --out as NAME.labels.jsonl)")
    parser.add_argument("--manifest", type=Path, help="run manifest (default: beside the labels as NAME.manifest.json)")
    parser.add_argument("--days", type=int, default=3, help="simulated days (default 3)")
    parser.add_argument("--senders", type=int, default=60, help="number of senders, 2..1000 (default 60)")
    parser.add_argument("--rate", type=float, default=1.0, help="volume scale; 1.0 is about 170k sends a day")
    parser.add_argument("--seed", type=int, default=1, help="random seed; same seed and options give the same bytes")
    parser.add_argument("--attacks", default="all",
                        help=f"comma list of attack kinds ({', '.join(KINDS)}) or single scenarios "
                             f"({', '.join(SCENARIO_NAMES)}); 'all' (default) or 'none'")
    parser.add_argument("--region", choices=sorted(REGIONS), default="in", help="numbering plan, carriers, clock (default in)")
    parser.add_argument("--start", default=Options.start,
                        help=f"first simulated day, YYYY-MM-DD (default {Options.start}, a Friday)")
    parser.add_argument("--clean", action="store_true", help="no duplicates, reordering or malformed records")
    parser.add_argument("--speedup", type=float,
                        help="with --broker: pace writes so event time runs N times faster than the clock")
    parser.add_argument("--quiet", "-q", action="store_true", help="no progress bar")


def parse_attacks(text: str) -> tuple[str, ...]:
    text = text.strip()
    if text in ("all", ""):
        return KINDS
    if text == "none":
        return ()
    names = tuple(k.strip() for k in text.split(",") if k.strip())
    unknown = [k for k in names if k not in KINDS and k not in SCENARIO_NAMES]
    if unknown:
        raise ConfigError(
            f"--attacks: unknown {', '.join(unknown)}; choose kinds ({', '.join(KINDS)}) or scenarios "
            f"({', '.join(SCENARIO_NAMES)}), 'all' or 'none'"
        )
    return names


def options_from(args: argparse.Namespace) -> Options:
    if args.days < 1:
        raise ConfigError(f"--days {args.days}: simulate at least 1 day")
    if not 2 <= args.senders <= 1000:
        raise ConfigError(f"--senders {args.senders}: choose between 2 and 1000")
    if not 0 < args.rate <= 100:
        raise ConfigError(f"--rate {args.rate}: choose a scale in (0, 100]")
    if args.speedup is not None and (args.speedup <= 0 or args.broker is None):
        raise ConfigError("--speedup needs --broker and a positive factor")
    try:
        time.strptime(args.start, "%Y-%m-%d")
    except ValueError:
        raise ConfigError(f"--start {args.start!r}: write the date as YYYY-MM-DD") from None
    return Options(days=args.days, senders=args.senders, rate=args.rate, seed=args.seed,
                   attacks=parse_attacks(args.attacks), region=args.region, start=args.start, noise=not args.clean)


def side_paths(args: argparse.Namespace) -> tuple[Path, Path]:
    if args.labels:
        labels = args.labels
    elif args.out and str(args.out) != "-":
        name = args.out.name
        stem = name[: -len(".jsonl")] if name.endswith(".jsonl") else name
        labels = args.out.with_name(stem + ".labels.jsonl")
    else:
        labels = Path("simulated.labels.jsonl")
    if args.manifest:
        manifest = args.manifest
    else:
        name = labels.name
        stem = name[: -len(".labels.jsonl")] if name.endswith(".labels.jsonl") else labels.stem
        manifest = labels.with_name(stem + ".manifest.json")
    return labels, manifest


def run(args: argparse.Namespace) -> int:
    options = options_from(args)
    labels_path, manifest_path = side_paths(args)
    started = time.monotonic()
    progress = Progress(options.days * 24, enabled=False if args.quiet else None)
    if args.broker is not None:
        from smsstream.config import Settings
        from smsstream.kafka import client_kwargs
        from smsstream.simulate.run import start_ts

        settings = Settings.from_env()
        writer = BrokerWriter(client_kwargs(settings, args.broker or None), args.speedup, start_ts(options))
        target = "the broker"
    else:
        handle = sys.stdout.buffer if str(args.out) == "-" else _open(args.out)
        writer = JsonlWriter(handle)
        target = str(args.out)
    try:
        result = simulate(options, writer, progress)
    finally:
        writer.close()
    with _open(labels_path) as f:
        f.write("".join(json.dumps(label) + "\n" for label in result.labels).encode())
    with _open(manifest_path) as f:
        f.write(json.dumps(result.manifest, indent=1).encode() + b"\n")
    m = result.manifest
    print(
        f"simulate: {m['records']:,} records over {options.days} days to {target} in {time.monotonic() - started:.1f}s; "
        f"{len(result.labels)} attack episodes in {labels_path}, "
        f"{sum(m['duplicates'].values())} duplicates and {m['malformed_total']} malformed records (manifest {manifest_path})",
        file=sys.stderr,
    )
    return 0


def _open(path: Path):
    try:
        return path.open("wb")
    except OSError as exc:
        raise ConfigError(f"cannot write {path}: {exc.strerror or exc}; choose a writable path") from None
