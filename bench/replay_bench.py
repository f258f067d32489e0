"""Replay throughput and detection-state memory, measured on this machine.

    python bench/replay_bench.py                       # simulate 1 day, replay it, report events/s
    python bench/replay_bench.py --events s1.jsonl     # replay an existing file
    python bench/replay_bench.py --by-part             # also: time spent in each detector part
    python bench/replay_bench.py --memory              # bytes per tracked number, message, sender, template

Throughput is wall-clock time of ``replay_lines`` (read, decode, detect,
write alerts to memory) over every line of the file, on one core. Memory is
``tracemalloc``'s count of bytes allocated for N synthetic entities of each
kind, divided by N: the cost one more sender, template, number or in-flight
message adds to a worker's state.
"""

from __future__ import annotations

import argparse
import gc
import os
import subprocess
import sys
import tempfile
import time
import tracemalloc
from collections import defaultdict

from smsstream.detection.base import BUCKET_MS, PartContext
from smsstream.detection.delivery import CarrierDelivery, ReceiptJoin, SenderDelivery, TemplateDelivery
from smsstream.detection.engine import DETECTOR_PARTS, Engine
from smsstream.detection.facts import LOAN_SENDS, SHARED_NUMBERS, DeliveryOutcome, LoanSend, SharedNumber
from smsstream.detection.gate import EventGate
from smsstream.detection.non_borrower import BorrowerBook, SenderShare, TemplateShare
from smsstream.detection.shared_list import NumberLenders, SharedList
from smsstream.detection.templates import SenderBook, TemplateSources
from smsstream.detection.templates.facts import SourceCount
from smsstream.pseudonym import Pseudonymizer
from smsstream.records import BORROWERS, SENDS, Borrower, Send
from smsstream.replay import replay_lines

KEY = "bench-key"
T0 = 1_772_409_600_000


def simulate(days: int, directory: str) -> str:
    path = os.path.join(directory, "bench.jsonl")
    env = {**os.environ, "SMSSTREAM_PSEUDONYM_KEY": KEY}
    subprocess.run([sys.executable, "-m", "smsstream", "simulate", "-o", path, "--days", str(days),
                    "--seed", "1", "--quiet"], check=True, env=env)
    return path


def timed_parts(engine: Engine) -> dict[str, float]:
    """Wrap every part's ``process`` and ``advance`` to add up the time spent in each."""
    spent: dict[str, float] = defaultdict(float)
    for part in engine.parts:
        for method in ("process", "advance"):
            inner = getattr(part, method)

            def wrapper(*args, _inner=inner, _name=part.name):
                t = time.perf_counter()
                try:
                    return _inner(*args)
                finally:
                    spent[_name] += time.perf_counter() - t

            setattr(part, method, wrapper)
    return spent


def throughput(path: str, by_part: bool, parts: list[str] | None) -> None:
    classes = [c for c in DETECTOR_PARTS if parts is None or c.name in parts]
    engine = Engine(Pseudonymizer(KEY), parts=classes)
    spent = timed_parts(engine) if by_part else None
    alerts: list[dict] = []
    with open(path, "rb") as f:
        report = replay_lines(f, engine, alerts.append)
    print(f"replay: {report.lines:,} lines in {report.seconds:.1f} s = {report.rate:,.0f} events/s "
          f"({len(alerts)} alert records; parts: {', '.join(c.name for c in classes)})")
    if spent:
        total = report.seconds
        print(f"  {'part':<24} {'seconds':>8} {'share':>6}")
        for name, sec in sorted(spent.items(), key=lambda kv: -kv[1]):
            print(f"  {name:<24} {sec:8.2f} {sec / total:6.1%}")
        rest = total - sum(spent.values())
        print(f"  {'(read, decode, gate)':<24} {rest:8.2f} {rest / total:6.1%}")


def measure(label: str, unit: str, n: int, build) -> None:
    """Bytes allocated by ``build(n)`` (which must keep what it builds alive) per unit."""
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    keep = build(n)
    gc.collect()
    after = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    print(f"  {label:<52} {(after - before) / n:8.0f} bytes per {unit}")
    del keep


def ctx() -> PartContext:
    return PartContext(Pseudonymizer(KEY))


def numbers(n: int) -> list[str]:
    return [f"+9198{i:08d}" for i in range(n)]


def memory() -> None:
    print("memory (tracemalloc, CPython objects):")

    def book(n):
        part, nums = BorrowerBook(ctx()), numbers(n)
        for num in nums:
            part.process(BORROWERS, num, Borrower("lender-a", num, None, "active", T0))
        return part

    def book_two(n):
        part, nums = BorrowerBook(ctx()), numbers(n)
        for num in nums:
            for lender in ("lender-a", "lender-b"):
                part.process(BORROWERS, num, Borrower(lender, num, None, "active", T0))
        return part

    def join(n):
        part = ReceiptJoin(ctx())
        for i in range(n):
            part.process(SENDS, f"m{i:010d}", Send(f"m{i:010d}", T0 + i, "lender-a", "T00001", "+919800000000",
                                                   "repayment_reminder", "", carrier="jio"))
        return part

    def gate(n):
        g = EventGate()
        for i in range(n):
            g.check(SENDS, Send(f"m{i:010d}", T0 + i, "s", None, "+919800000000", "otp", ""))
        return g

    def shares(part_cls, fact):
        def build(n):
            part = part_cls(ctx())
            for minute in range(90):
                for i in range(n):
                    part.process("", f"e{i:06d}", fact(i, T0 + minute * BUCKET_MS))
                part.advance(T0 + minute * BUCKET_MS)
            return part
        return build

    def loan(i, ts):
        return LoanSend(ts, f"s{i:06d}", f"t{i:06d}", "m1", i % 50 == 0, "pn:0123456789abcdef" if i % 50 == 0 else None)

    def outcome(i, ts, carriers=("jio", "airtel", "vi", "bsnl")):
        return DeliveryOutcome(ts, f"s{i:06d}", f"t{i:06d}", carriers[ts // BUCKET_MS % 4], "delivered", "DELIVRD", "m1")

    def sender_book(n):
        part = SenderBook(ctx())
        keys = [(f"ak_{k}", f"10.{k}.0.5") for k in range(3)]
        sent = SourceCount(4, ((1, "m1"), (2, "m2")))
        for minute in range(90):
            ts = T0 + minute * BUCKET_MS
            for i in range(n):
                for t in range(10):
                    part.process("", f"s{i:06d}", TemplateSources(ts, f"s{i:06d}", f"t{i:06d}-{t}", f"t{t}#0", 4,
                                                                  {keys[t % 3]: sent}))
            part.advance(ts)
        return part

    def strays(lenders):
        def build(n):
            part = NumberLenders(ctx())
            for i in range(n):
                pn = f"pn:{i:016x}"
                for lender in lenders:
                    part.process(LOAN_SENDS, pn, LoanSend(T0 + i, lender, "t1", f"m{i:010d}", True, pn))
            return part
        return build

    def sender_side(shared):
        def build(n):
            sides = []
            for _ in range(n):
                side = SharedList()
                for hour in range(24):
                    side.count_stray(T0 + hour * 3_600_000)
                for j in range(shared):
                    side.take(SharedNumber(T0 + j, "lender-a", "lender-b", f"pn:{j:016x}", f"m{j:010d}"), T0)
                sides.append(side)
            return sides
        return build

    measure("borrower book, number owing one lender", "number", 100_000, book)
    measure("borrower book, number owing two lenders", "number", 50_000, book_two)
    measure("receipt join, send waiting for its receipt", "message", 100_000, join)
    measure("duplicate gate, remembered event id", "event id", 100_000, gate)
    measure("non_borrower_spike per sender (after 90 min)", "sender", 2_000, shares(SenderShare, loan))
    measure("non_borrower_spike per template (after 90 min)", "template", 2_000, shares(TemplateShare, loan))
    measure("delivery per sender, 4 carrier slices (after 90 min)", "sender", 1_000, shares(SenderDelivery, outcome))
    measure("delivery per template (after 90 min)", "template", 2_000, shares(TemplateDelivery, outcome))
    measure("delivery per carrier (after 90 min)", "carrier", 200, shares(CarrierDelivery, outcome))
    measure("template_hijack_sender, 10 templates, 3 keys (after 90 min)", "sender", 1_000, sender_book)
    measure("shared_list, number with one lender's strays in the window", "number", 100_000,
            strays(("lender-a",)))
    measure("shared_list, number two lenders sent strays to", "number", 50_000, strays(("lender-a", "lender-b")))
    measure("shared_list per sender, strays every hour of the day", "sender", 2_000, sender_side(0))
    measure("shared_list per sender, the same with 100 shared numbers", "sender", 200, sender_side(100))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", help="replay this JSONL instead of simulating one")
    parser.add_argument("--days", type=int, default=1, help="simulated days when no --events (default 1)")
    parser.add_argument("--by-part", action="store_true", help="report the time spent in each part")
    parser.add_argument("--parts", help="comma list of part names to run (default: all)")
    parser.add_argument("--memory", action="store_true", help="measure bytes per tracked entity instead")
    args = parser.parse_args()
    if args.memory:
        memory()
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        path = args.events or simulate(args.days, tmp)
        throughput(path, args.by_part, args.parts.split(",") if args.parts else None)
    return 0


if __name__ == "__main__":
    sys.exit(main())
