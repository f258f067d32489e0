"""How fast `smsstream simulate` writes its default run (the issue asks for >= 1M events in < 2 min).

    python bench/simulate_bench.py [--days 3] [--senders 60] [--rate 1.0] [--keep PATH]

Prints one line of figures; writes to a temporary file unless --keep is given.
"""

from __future__ import annotations

import argparse
import resource
import sys
import tempfile
import time
from pathlib import Path

from smsstream.simulate import Options, simulate
from smsstream.simulate.output import JsonlWriter


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--days", type=int, default=Options.days)
    parser.add_argument("--senders", type=int, default=Options.senders)
    parser.add_argument("--rate", type=float, default=Options.rate)
    parser.add_argument("--seed", type=int, default=Options.seed)
    parser.add_argument("--keep", type=Path, help="write the traffic here instead of a temporary file")
    args = parser.parse_args()
    options = Options(days=args.days, senders=args.senders, rate=args.rate, seed=args.seed)
    with (args.keep.open("wb") if args.keep else tempfile.TemporaryFile()) as handle:
        writer = JsonlWriter(handle)
        wall, cpu = time.perf_counter(), time.process_time()
        result = simulate(options, writer)
        writer.close()
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        size = handle.tell()
    records = result.manifest["records"]
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(
        f"simulate days={args.days} senders={args.senders} rate={args.rate}: {records:,} records "
        f"({size / 2**20:,.0f} MiB), {len(result.labels)} episodes in {wall:.1f}s wall / {cpu:.1f}s CPU "
        f"= {records / wall:,.0f} records/s; peak RSS {peak_mib:,.0f} MiB"
    )
    return 0 if records >= 1_000_000 or args.days != 3 else 1


if __name__ == "__main__":
    sys.exit(main())
