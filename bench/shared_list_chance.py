"""shared_list on honest strays only: how often does it fire when lenders' strays meet by chance?

    python bench/shared_list_chance.py                     # 40 lenders, 7 days, 3 seeds, six meeting rates
    python bench/shared_list_chance.py --rates 0.01 --seeds 1

Each lender sends 2 to 2,000 non-borrower loan SMS a day (log-uniform), at
random times, to numbers drawn at random from a pool sized so that a stray
meets another lender's within a day with about the given probability (the
measured rate per stray is printed beside it). No list is worked, so every
sender with a firing ``shared_list`` finding is a false alarm. The detection
core runs as in replay (``Engine`` with the non-borrower parts); findings are
counted as the sender part judges them, whether or not another reason leads
the alert (every send here is a non-borrower send, so ``non_borrower_share``
fires too).
"""

from __future__ import annotations

import argparse
import math
import random
import sys

from smsstream.detection import shared_list
from smsstream.detection.engine import Engine
from smsstream.detection.non_borrower import NON_BORROWER_PARTS
from smsstream.pseudonym import Pseudonymizer
from smsstream.records import SENDS, Send
from smsstream.vocabulary import DAY_MS

T0 = 1_772_409_600_000


def run(rate: float, days: int, lenders: int, seed: int) -> tuple[int, int, int, int]:
    """(strays, lender pairs met on a number, senders with a firing shared_list finding, pool size)."""
    rng = random.Random(seed)
    per_day = [math.exp(rng.uniform(math.log(2), math.log(2000))) for _ in range(lenders)]
    pool = max(1000, int(sum(per_day) / rate))
    sends = [Send(f"m{i}-{j}", T0 + rng.randrange(days * DAY_MS), f"lender-{i:03d}", None,
                  f"+91{rng.randrange(pool):010d}", "repayment_reminder", "Your EMI is due.")
             for i, daily in enumerate(per_day) for j in range(int(daily * days))]
    sends.sort(key=lambda s: s.ts)
    fired: set[str] = set()
    judge = shared_list.SharedList.judge

    def counting(self, sender, *args):
        finding = judge(self, sender, *args)
        if finding is not None and finding.firing:
            fired.add(sender)
        return finding

    shared_list.SharedList.judge = counting  # type: ignore[method-assign]
    try:
        engine = Engine(Pseudonymizer("bench-key"), parts=NON_BORROWER_PARTS)
        for send in sends:
            engine.ingest(SENDS, send)
        engine.flush()
    finally:
        shared_list.SharedList.judge = judge  # type: ignore[method-assign]
    return len(sends), engine.counters().get("numbers_shared_by_lenders", 0), len(fired), pool


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rates", type=float, nargs="+", default=[1e-4, 1e-3, 3e-3, 1e-2, 2e-2, 5e-2],
                    help="target chance of a stray meeting another lender's within a day")
    ap.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    ap.add_argument("--days", type=int, default=7)
    ap.add_argument("--lenders", type=int, default=40)
    args = ap.parse_args()
    print("| target rate | seed | strays | pool | pairs met | measured rate per stray | senders firing |")
    print("|---|---|---|---|---|---|---|")
    for rate in args.rates:
        for seed in args.seeds:
            strays, met, fired, pool = run(rate, args.days, args.lenders, seed)
            print(f"| {rate:g} | {seed} | {strays:,} | {pool:,} | {met:,} | {2 * met / max(strays, 1):.4f} | "
                  f"{fired} of {args.lenders} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
