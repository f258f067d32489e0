"""The same simulated scenario scored through ``replay`` and through live workers on the embedded broker.

    python bench/worker_evaluate.py                              # 1 day, 20 senders, rate 0.2
    python bench/worker_evaluate.py --days 3 --senders 60 --rate 1 --workers 2
    python bench/worker_evaluate.py --days 3 --senders 60 --rate 1 --pace 2500   # streamed, not a backlog

Simulates a labelled scenario to JSONL, runs ``smsstream replay`` over it,
then starts Tansu, creates the topics, produces the same records, starts
``--workers`` worker processes in one group and collects ``sms.alerts`` until
every input record has been read and no alert has come for ``--settle``
seconds. Both alert sets are scored by ``smsstream evaluate``; the figures
must agree. Also prints the workers' throughput (input records over the wall
time from the first worker being ready to the last input record read).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import orjson

from smsstream.broker import EmbeddedBroker, free_port
from smsstream.records import ALERTS
from smsstream.topics import apply_topics
from smsstream.worker.process import WorkerProcess

from harness import DEAD_LETTERS, OVERFLOW, caught_up, events_read, produce, simulate, smsstream, summed_by_label

KEY = "bench-worker-evaluate"


def records_bar_detected_at(path: Path) -> set[bytes]:
    out = set()
    for line in path.read_bytes().splitlines():
        record = orjson.loads(line)
        record.pop("detected_at", None)
        out.add(orjson.dumps(record, option=orjson.OPT_SORT_KEYS))
    return out


async def collect_alerts(bootstrap: str, total: int, metrics_ports: list[int], settle: float, timeout: float,
                         workers: list[WorkerProcess]) -> tuple[list[bytes], float]:
    """Alert records until all input is processed and ``settle`` s pass without one; the time processing took."""
    from aiokafka import AIOKafkaConsumer

    consumer = AIOKafkaConsumer(ALERTS, bootstrap_servers=bootstrap, auto_offset_reset="earliest",
                                group_id=None, enable_auto_commit=False)
    await consumer.start()
    values: list[bytes] = []
    started = last_alert = last_report = time.monotonic()
    read_all_at = done_at = None
    # a worker's counter restarts with it, so the sum only says "all read" once it reaches the total
    try:
        while time.monotonic() - started < timeout:
            batch = await consumer.getmany(timeout_ms=1000)
            got = [m.value for ms in batch.values() for m in ms]
            now = time.monotonic()
            if got:
                values += got
                last_alert = now
            read = events_read(metrics_ports)
            if read_all_at is None and read >= total:
                read_all_at = now
            if now - last_report >= 10:
                last_report = now
                alive = sum(w.running() for w in workers)
                print(f"  [{now - started:5.0f}s] read {read:,}/{total:,} input records "
                      f"({read / (now - started):,.0f}/s), {len(values)} alert records, {alive} worker(s) up, "
                      f"{'caught up' if caught_up(workers) else 'processing'}", flush=True)
            up = read_all_at is not None and caught_up(workers)
            done_at = (done_at or now) if up else None
            if done_at is not None and now - max(last_alert, done_at) >= settle:
                break
        else:
            print(f"  gave up after {timeout:.0f} s", flush=True)
    finally:
        with contextlib.suppress(asyncio.CancelledError):
            await consumer.stop()
    return values, (done_at or time.monotonic()) - started


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--days", type=int, default=1)
    parser.add_argument("--senders", type=int, default=20)
    parser.add_argument("--rate", type=float, default=0.2)
    parser.add_argument("--seed", type=int, default=11)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--pace", type=float, default=0.0,
                        help="produce at this many records/s while the workers run (live traffic) instead of "
                             "producing everything first (a backlog)")
    parser.add_argument("--settle", type=float, default=30.0, help="quiet seconds that end the collection")
    parser.add_argument("--timeout", type=float, default=3600.0)
    parser.add_argument("--loglevel", default="warn", help="the workers' log level (logs are kept beside the files)")
    parser.add_argument("--keep", help="directory for the files (default: a temporary one)")
    args = parser.parse_args()

    workdir = Path(args.keep or tempfile.mkdtemp(prefix="smsstream-worker-eval-"))
    workdir.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "SMSSTREAM_PSEUDONYM_KEY": os.environ.get("SMSSTREAM_PSEUDONYM_KEY") or KEY}
    events = workdir / "events.jsonl"
    labels = workdir / "events.labels.jsonl"
    print(f"simulating {args.days} day(s), {args.senders} senders, rate {args.rate}, seed {args.seed} -> {events}")
    lines = simulate(events, args.days, args.senders, args.rate, args.seed, env)
    print(f"replaying {len(lines):,} records")
    smsstream("replay", str(events), "-o", str(workdir / "replay-alerts.jsonl"), "--quiet",
              "--dead-letter", str(workdir / "replay-dead.jsonl"), env=env)
    replay_dead = len((workdir / "replay-dead.jsonl").read_bytes().splitlines())

    with EmbeddedBroker() as broker:
        apply_topics(broker.url)
        if not args.pace:
            print(f"producing to {broker.url}")
            asyncio.run(produce(broker.bootstrap, lines))
        worker_env = {**env, "SMSSTREAM_BROKER": broker.url, "SMSSTREAM_STORE": "memory://",
                      "SMSSTREAM_DATA_DIR": str(workdir / "worker-data")}
        ports = [free_port() for _ in range(args.workers)]
        workers = [WorkerProcess({**worker_env, "SMSSTREAM_METRICS_PORT": str(port)}, free_port(),
                                 workdir / f"worker-{i}.log", loglevel=args.loglevel).start()
                   for i, port in enumerate(ports)]
        try:
            for w in workers:
                w.wait_ready(progress=lambda text: print(f"  {text}", flush=True))
            print(f"{args.workers} worker(s) ready; collecting alerts")
            if args.pace:
                print(f"producing to {broker.url} at {args.pace:,.0f} records/s while the workers read")

            async def run() -> tuple[list[bytes], float]:
                collecting = asyncio.ensure_future(collect_alerts(broker.bootstrap, len(lines), ports, args.settle,
                                                                  args.timeout, workers))
                if args.pace:
                    await produce(broker.bootstrap, lines, args.pace)
                return await collecting

            values, took = asyncio.run(run())
            worker_dead = summed_by_label(ports, DEAD_LETTERS)
            # items released early from full merge buffers, by part: where records may differ from replay's
            overflow = summed_by_label(ports, OVERFLOW)
        finally:
            for w in workers:
                w.stop()
    (workdir / "worker-alerts.jsonl").write_bytes(b"".join(v + b"\n" for v in values))
    print(f"workers processed {len(lines):,} records in {took:.0f} s ({len(lines) / max(took, 1e-9):,.0f} records/s)")

    scores = {}
    for name in ("replay", "worker"):
        out = subprocess.run([sys.executable, "-m", "smsstream", "evaluate", "--labels", str(labels),
                              "--alerts", str(workdir / f"{name}-alerts.jsonl")],
                             check=True, env=env, capture_output=True, text=True).stdout
        scores[name] = out
        print(f"\n== evaluate, {name} ==\n{out}")
    print(f"dead letters: replay {replay_dead:,}; workers {sum(worker_dead.values()):,} {worker_dead}")
    mine, theirs = (records_bar_detected_at(workdir / f"{n}-alerts.jsonl") for n in ("replay", "worker"))
    print(f"alert records bar detected_at: {len(mine & theirs)} identical, {len(mine - theirs)} only in replay, "
          f"{len(theirs - mine)} only from the workers")
    print(f"items released early from full merge buffers: {sum(overflow.values()):,} {overflow}")
    same = scores["replay"] == scores["worker"]
    print("figures agree" if same else "FIGURES DIFFER", f"(files in {workdir})")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
