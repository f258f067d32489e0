"""A soak: one worker under live traffic at half its measured capacity for a long time, watched for drift.

    python bench/soak.py                       # 30 minutes (measures capacity first, ~2 minutes)
    python bench/soak.py --minutes 5           # to try it out
    python bench/soak.py --rate 4000           # a fixed offered load instead of half the measured capacity
    python bench/soak.py --capacity 1635       # half of a capacity measured by an earlier run

1. Capacity: one simulated scenario (attacks included) is produced to an
   embedded broker as a backlog and read by a fresh worker until every shard
   is idle (``throughput.py``'s stage (c)); its records/s is the capacity.
2. The soak: a fresh broker and worker, then the same scenario produced at
   half that rate, over and over for ``--minutes``. Each lap is shifted in
   event time by the scenario's span and its message and event ids get a lap
   suffix, so the worker sees one long stream of new traffic, not duplicates;
   event time runs faster than the wall clock (the run prints by how much), so
   the worker's state goes through many expiry rounds.

Every ``--every`` seconds it samples the worker's RSS (``VmRSS``), records
produced and read, consumer lag (records produced and not read yet) and
event-time lag: the wall-clock seconds since the producer first sent the event
time each part has reached (from ``smsstream_event_time_lag_seconds``), the
median over parts and the slowest, so a worker keeping up stays near the merge
delay and one falling behind climbs; and the entities the parts hold in state. The RSS slope is a least-squares fit over the samples after the first
``--warmup`` minutes, in MiB an hour.

Writes ``bench/results/soak-<date>-<time>.json`` and ``.png``, copied to
``soak-latest.json`` / ``.png``.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import shutil
import signal
import sys
import tempfile
import threading
import time
from pathlib import Path

import orjson

from smsstream.broker import EmbeddedBroker, free_port
from smsstream.records import BINDINGS, RECEIPTS, SENDS
from smsstream.topics import apply_topics
from smsstream.worker.process import WorkerProcess

from harness import events_read, produce, save_results, simulate
from throughput import KEY, Deadline, Produced, StageFailed, machine, say, worker_backlog, worker_env

BENCH = Path(__file__).resolve().parent
LAG_SECONDS = re.compile(r'^smsstream_event_time_lag_seconds\{part="([^"]+)"\} ([0-9.e+-]+)$', re.M)
STATE = re.compile(r'^smsstream_state_entities\{part="([^"]+)"\} ([0-9.e+-]+)$', re.M)
RSS = re.compile(r"^VmRSS:\s+(\d+) kB", re.M)


def rss_mib(pid: int) -> float | None:
    try:
        return int(RSS.search(Path(f"/proc/{pid}/status").read_text()).group(1)) / 1024
    except (OSError, AttributeError):
        return None


def worker_figures(port: int) -> tuple[dict[str, float], int | None]:
    """Per part, ``smsstream_event_time_lag_seconds`` (wall now minus the event time it reached); entities in state."""
    import urllib.request

    try:
        text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=3).read().decode()
    except OSError:
        return {}, None
    return ({part: float(v) for part, v in LAG_SECONDS.findall(text)},
            int(sum(float(v) for _, v in STATE.findall(text))))


class Laps:
    """The scenario's records again and again, each lap later in event time and with ids of its own."""

    def __init__(self, lines: list[bytes]):
        self.records = [orjson.loads(line) for line in lines]
        stamps = [r["value"]["ts"] for r in self.records if isinstance(r["value"], dict)
                  and isinstance(r["value"].get("ts"), int)]
        self.span_ms = max(stamps) - min(stamps) + 60_000

    def lap(self, n: int):
        if n == 0:
            yield from self.records
            return
        shift, suffix = n * self.span_ms, f".{n}"
        for record in self.records:
            value = record["value"]
            if not isinstance(value, dict):
                yield record
                continue
            value = dict(value)
            if isinstance(value.get("ts"), int):
                value["ts"] += shift
            topic, key = record["topic"], record.get("key")
            if topic in (SENDS, RECEIPTS) and isinstance(value.get("message_id"), str):
                value["message_id"] += suffix
                if topic == RECEIPTS:
                    key = value["message_id"]
            if topic == BINDINGS and isinstance(value.get("event_id"), str):
                value["event_id"] += suffix
            yield {"topic": topic, "key": key, "value": value}


async def produce_laps(bootstrap: str, laps: Laps, rate: float, seconds: float, produced: Produced,
                       stop: threading.Event) -> None:
    """``rate`` records a second for ``seconds``, lap after lap."""
    from aiokafka import AIOKafkaProducer

    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=5, max_batch_size=512 * 1024)
    await producer.start()
    started = time.monotonic()
    i = 0
    try:
        pending = []
        lap = 0
        while not stop.is_set():
            for record in laps.lap(lap):
                ahead = i / rate - (time.monotonic() - started)
                if ahead > 0.002:
                    await asyncio.sleep(ahead)
                if time.monotonic() - started >= seconds or stop.is_set():
                    return
                value, key = record["value"], record.get("key")
                raw = None if value is None else value.encode() if isinstance(value, str) else orjson.dumps(value)
                produced.sent(record, time.time())
                pending.append(await producer.send(record["topic"], value=raw, key=key.encode() if key else None))
                i += 1
                if len(pending) >= 5000:
                    await asyncio.gather(*pending)
                    pending.clear()
            lap += 1
            say(f"  lap {lap} produced ({i:,} records)")
    finally:
        await asyncio.gather(*pending, return_exceptions=True)
        await producer.stop()


def sample(worker: WorkerProcess, port: int, produced: Produced, started: float) -> dict:
    """One sample. Event-time lag per part: wall seconds since the producer first sent the event time the part
    has reached. Parts fed by sparse topics (borrowers, templates: each lap sends them at its start) reach
    their event time in jumps, so the median over parts is the headline and the slowest is kept beside it."""
    read = events_read([port])
    lags, entities = worker_figures(port)
    now = time.time()
    by_part = {}
    for part, lag in lags.items():
        sent_at = produced.event_time_reached(int((now - lag) * 1000))
        if sent_at is not None:
            by_part[part] = round(max(0.0, now - sent_at), 1)
    ordered = sorted(by_part.values())
    return {"t_s": round(time.monotonic() - started, 1), "rss_mib": rss_mib(worker.pid), "produced": produced.count,
            "read": read, "consumer_lag": max(0, produced.count - read), "state_entities": entities,
            "event_time_lag_s": ordered[len(ordered) // 2] if ordered else None,
            "event_time_lag_slowest_s": ordered[-1] if ordered else None, "event_time_lag_by_part": by_part}


def slope_per_hour(points: list[tuple[float, float]]) -> float | None:
    """Least-squares slope of (seconds, MiB), in MiB an hour."""
    if len(points) < 3:
        return None
    n = len(points)
    mx, my = sum(x for x, _ in points) / n, sum(y for _, y in points) / n
    sxx = sum((x - mx) ** 2 for x, _ in points)
    return sum((x - mx) * (y - my) for x, y in points) / sxx * 3600 if sxx else None


def soak(lines: list[bytes], rate: float, minutes: float, every: float, workdir: Path) -> dict:
    laps = Laps(lines)
    produced, stop, samples = Produced(), threading.Event(), []
    with EmbeddedBroker() as broker:
        apply_topics(broker.url)
        port = free_port()
        worker = WorkerProcess(worker_env(broker.url, workdir, "soak", port, False), free_port(),
                               workdir / "worker-soak.log", loglevel="warn").start()
        try:
            worker.wait_ready(progress=lambda text: say(f"  {text}"))
            say(f"worker ready; producing at {rate:,.0f} records/s for {minutes:g} minutes")
            producing = threading.Thread(target=lambda: asyncio.run(
                produce_laps(broker.bootstrap, laps, rate, minutes * 60, produced, stop)), daemon=True)
            started = time.monotonic()
            producing.start()
            while producing.is_alive():
                producing.join(every)
                if not worker.running():
                    raise StageFailed(f"the worker exited with code {worker.process.returncode}; its log ends "
                                      f"with:\n{worker.log_tail(15)}")
                samples.append(sample(worker, port, produced, started))
                s = samples[-1]
                say(f"  {s['t_s'] / 60:5.1f} min: RSS {s['rss_mib'] or 0:,.0f} MiB, produced {s['produced']:,}, "
                    f"lag {s['consumer_lag']:,} records, event time {s['event_time_lag_s'] or 0:.1f} s behind "
                    f"(slowest part {s['event_time_lag_slowest_s'] or 0:.1f} s), {s['state_entities'] or 0:,} entities")
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline and events_read([port]) < produced.count:
                time.sleep(1)
            samples.append(sample(worker, port, produced, started))
        finally:
            stop.set()
            worker.stop()
    span_s = (produced.high_ts[-1] - produced.high_ts[0]) / 1000 if produced.high_ts else 0.0
    return {"samples": samples, "produced": produced.count, "event_time_speedup": span_s / (minutes * 60)}


def summarise(result: dict, warmup_min: float) -> dict:
    samples = result["soak"]["samples"]
    settled = [(s["t_s"], s["rss_mib"]) for s in samples if s["t_s"] >= warmup_min * 60 and s["rss_mib"]]
    lags = [s["consumer_lag"] for s in samples]
    event_lags = [s["event_time_lag_s"] for s in samples if s["event_time_lag_s"] is not None]
    entities = [s["state_entities"] for s in samples if s.get("state_entities") is not None]
    rss = [s["rss_mib"] for s in samples if s["rss_mib"]]
    return {"rss_slope_mib_per_hour": slope_per_hour(settled), "rss_first_mib": rss[0] if rss else None,
            "rss_after_warmup_mib": settled[0][1] if settled else None, "rss_last_mib": rss[-1] if rss else None,
            "rss_max_mib": max(rss, default=None), "consumer_lag_max": max(lags, default=None),
            "consumer_lag_last": lags[-1] if lags else None,
            "event_time_lag_max_s": max(event_lags, default=None),
            "event_time_lag_median_s": sorted(event_lags)[len(event_lags) // 2] if event_lags else None,
            "state_entities_after_warmup": next((s["state_entities"] for s in samples if s["t_s"] >= warmup_min * 60
                                                  and s.get("state_entities") is not None), None),
            "state_entities_last": entities[-1] if entities else None,
            "read_all": samples[-1]["read"] >= result["soak"]["produced"] if samples else False}


def chart(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    samples, summary = result["soak"]["samples"], result["summary"]
    minutes = [s["t_s"] / 60 for s in samples]
    fig, axes = plt.subplots(3, 1, figsize=(10, 9), sharex=True)
    slope = summary["rss_slope_mib_per_hour"]
    axes[0].plot(minutes, [s["rss_mib"] for s in samples], color="#4c72b0")
    axes[0].axvline(result["warmup_min"], color="grey", linestyle=":", linewidth=1, label="end of warm-up")
    axes[0].set_ylabel("worker RSS (MiB)")
    axes[0].set_title(f"RSS; slope after warm-up {slope:+.1f} MiB/h" if slope is not None else "RSS", fontsize=9)
    axes[0].legend(fontsize=7)
    axes[1].plot(minutes, [s["consumer_lag"] for s in samples], color="#dd8452")
    axes[1].set_ylabel("consumer lag (records)")
    axes[2].plot(minutes, [s["event_time_lag_s"] for s in samples], color="#55a868", label="median part")
    axes[2].plot(minutes, [s.get("event_time_lag_slowest_s") for s in samples], color="#c44e52", linewidth=0.8,
                 label="slowest part")
    axes[2].set_ylabel("event-time lag (s)")
    axes[2].legend(fontsize=7)
    if any(s.get("state_entities") is not None for s in samples):
        twin = axes[0].twinx()
        twin.plot(minutes, [s.get("state_entities") for s in samples], color="#8172b3", linewidth=0.8)
        twin.set_ylabel("entities in state", color="#8172b3")
    axes[2].set_xlabel("minutes")
    m = result["machine"]
    fig.suptitle(f"smsstream soak.py {result['date']}: {result['offered_rate']:,.0f} records/s offered "
                 f"(capacity {result['capacity']['rate']:,.0f}), {result['minutes']:g} min; "
                 f"{m['cpu']}, {m['cores']} cores", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def run(args: argparse.Namespace, workdir: Path) -> dict:
    env = {**os.environ, "SMSSTREAM_PSEUDONYM_KEY": os.environ.get("SMSSTREAM_PSEUDONYM_KEY") or KEY}
    result: dict = {"date": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "machine": machine(), "minutes": args.minutes,
                    "warmup_min": args.warmup, "scenario": {"days": args.days, "senders": args.senders,
                                                            "rate": args.scale, "seed": args.seed}}
    events = workdir / "events.jsonl"
    say(f"simulating {args.days} day(s), {args.senders} senders, rate {args.scale}, seed {args.seed}")
    lines = simulate(events, args.days, args.senders, args.scale, args.seed, env)
    result["scenario"]["records"] = len(lines)
    if args.capacity:
        result["capacity"] = {"rate": args.capacity, "measured_earlier": True}
    elif args.rate:
        result["capacity"] = {"rate": 2 * args.rate, "given": True}
    else:
        with EmbeddedBroker() as broker:
            apply_topics(broker.url)
            say(f"capacity: {len(lines):,} records as a backlog, read by a fresh worker until every shard is idle")
            asyncio.run(produce(broker.bootstrap, lines))
            result["capacity"] = worker_backlog(broker.url, len(lines), workdir, False, Deadline("capacity", 1800))
        say(f"  capacity {result['capacity']['rate']:,.0f} records/s")
    result["offered_rate"] = args.rate or result["capacity"]["rate"] / 2
    result["soak"] = soak(lines, result["offered_rate"], args.minutes, args.every, workdir)
    result["summary"] = summarise(result, args.warmup)
    result["machine"]["load_average_at_end"] = os.getloadavg()[0]
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=30.0)
    parser.add_argument("--rate", type=float, help="records/s offered (default: half of the measured capacity)")
    parser.add_argument("--capacity", type=float, help="a capacity measured before, records/s: skip measuring it")
    parser.add_argument("--every", type=float, default=10.0, help="seconds between samples (default %(default)s)")
    parser.add_argument("--warmup", type=float, default=5.0,
                        help="minutes left out of the RSS slope (default %(default)s)")
    parser.add_argument("--days", type=int, default=1)
    parser.add_argument("--senders", type=int, default=60)
    parser.add_argument("--scale", type=float, default=0.25, help="the scenario's volume (simulate --rate)")
    parser.add_argument("--seed", type=int, default=11)
    parser.add_argument("--results", type=Path, default=BENCH / "results", help="where JSON and PNG go")
    parser.add_argument("--keep", type=Path, help="keep the scenario and logs here")
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    workdir = args.keep or Path(tempfile.mkdtemp(prefix="smsstream-soak-"))
    workdir.mkdir(parents=True, exist_ok=True)
    try:
        result = run(args, workdir)
    except StageFailed as exc:
        print(f"soak.py: error: {exc}\n(scenario and logs kept in {workdir})", file=sys.stderr)
        return 1
    s = result["summary"]
    print(f"\nRSS {s['rss_after_warmup_mib']:,.0f} -> {s['rss_last_mib']:,.0f} MiB after warm-up, slope "
          f"{s['rss_slope_mib_per_hour']:+.1f} MiB/h; consumer lag max {s['consumer_lag_max']:,} records; "
          f"event-time lag median {s['event_time_lag_median_s']:.1f} s, max {s['event_time_lag_max_s']:.1f} s; "
          f"every record read: {s['read_all']}")
    json_path, png_path = save_results(result, args.results, "soak", chart)
    print(f"wrote {json_path} and {png_path} (also as soak-latest.json/png)")
    if not args.keep:
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
