"""``smsstream demo``: the whole system on one machine, in one command.

Starts the embedded broker (Tansu, or Apache Kafka with ``--engine kafka``),
creates the topics, starts a worker, streams a simulated day with attacks of
all four kinds at a watchable speed, and prints each alert as it lands on
``sms.alerts``: time, severity, kind and entity on one line, the summary
wrapped below it, in event-time order, readable at 80 columns and in a log.
It stops on Ctrl-C, or once the simulated days are over and the worker has
gone quiet, and then scores the alerts against the simulation's own labels
with ``smsstream evaluate``'s scoring. Every child runs in its own process
group and is killed with it, also at interpreter exit; the worker's log, the
labels and the alerts stay in the demo's directory.
"""

from __future__ import annotations

import argparse
import asyncio
import atexit
import heapq
import itertools
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from datetime import datetime, timezone
from pathlib import Path

import orjson

from smsstream.broker import add_engine_option, die_with_parent
from smsstream.records import ALERTS, DEAD_LETTER, SENDS
from smsstream.vocabulary import KINDS

#: A seed whose simulated day has all four attack kinds detected within 19 event-time hours.
DEMO_SEED = 5
DEMO_KEY = "smsstream-demo-only-key"
#: An alert row waits this long for alerts about earlier minutes that other partitions write later.
HOLD_S = 8.0
#: Once the simulated days are over, the demo stops when no alert has come for this long.
QUIET_S = 15.0
COLUMNS = (("time(utc)", 9), ("severity", 8), ("kind", 22))
INDENT = " " * 10


def configure(parser: argparse.ArgumentParser) -> None:
    add_engine_option(parser)
    parser.add_argument("--port", type=int, default=0, help="broker port (default: a free one)")
    parser.add_argument("--speedup", type=float, default=600.0,
                        help="event time runs this many times faster than the clock (default 600: a day in 2.4 min)")
    parser.add_argument("--days", type=int, default=1, help="simulated days (default 1)")
    parser.add_argument("--seed", type=int, default=DEMO_SEED, help=f"simulation seed (default {DEMO_SEED})")
    parser.add_argument("--web-port", type=int, default=0, help="worker web port for /health (default: a free one)")


# --- showing alerts --------------------------------------------------------------

def width() -> int:
    """The terminal's width; 80 in a log or a pipe (``COLUMNS`` overrides)."""
    return max(60, shutil.get_terminal_size((80, 24)).columns)


def table_header() -> str:
    head = " ".join(f"{name.upper():<{w}}" for name, w in COLUMNS) + " ENTITY"
    return f"{head}\n{INDENT}REASON: SUMMARY\n" + "-" * min(width(), 80)


def alert_lines(alert: dict, columns: int = 80) -> str:
    """One alert: time of its window end, severity (or ``resolved``), kind and entity; below, reason and summary."""
    when = datetime.fromtimestamp(alert["window_end"] / 1000, tz=timezone.utc).strftime("%a %H:%M")
    severity = alert["severity"] if alert["status"] == "firing" else "resolved"
    cells = (when, severity, alert["kind"])
    head = " ".join(f"{cell:<{w}}" for cell, (_, w) in zip(cells, COLUMNS))
    body = textwrap.fill(f"{alert['reason']}: {alert['summary']}", width=columns, initial_indent=INDENT,
                         subsequent_indent=INDENT, break_long_words=False, break_on_hyphens=False)
    return f"{head} {alert['entity_type']}:{alert['entity_id']}\n{body}"


class Timeline:
    """Alert records in event-time order, as far as a live stream allows.

    Partitions of ``sms.alerts`` are written at different moments, so an alert
    about 03:50 may land a few seconds after one about 04:20. Each record is held
    :data:`HOLD_S` seconds after it arrives; once one has waited that long, it
    is released with every held record of an earlier or equal window end.
    """

    def __init__(self, hold_s: float = HOLD_S):
        self.hold_s = hold_s
        self._held: list[tuple[int, int, float, dict]] = []
        self._order = itertools.count()

    def add(self, alert: dict, now: float) -> None:
        heapq.heappush(self._held, (int(alert["window_end"]), next(self._order), now, alert))

    def due(self, now: float) -> list[dict]:
        ripe = [window_end for window_end, _, arrived, _ in self._held if now - arrived >= self.hold_s]
        if not ripe:
            return []
        cutoff = max(ripe)
        out = []
        while self._held and self._held[0][0] <= cutoff:
            out.append(heapq.heappop(self._held)[3])
        return out

    def flush(self) -> list[dict]:
        out = [entry[3] for entry in sorted(self._held)]
        self._held.clear()
        return out


# --- the run -----------------------------------------------------------------------

class Demo:
    """The broker, worker and simulator of one demo run, what it saw, and its tidy shutdown."""

    def __init__(self, args: argparse.Namespace):
        from smsstream.broker import free_port
        from smsstream.config import Settings

        self.args = args
        self.settings = Settings.from_env()
        self.key = self.settings.pseudonym_key or DEMO_KEY
        self.workdir = Path(tempfile.mkdtemp(prefix="smsstream-demo-"))
        self.broker = None
        self.worker = None
        self.simulator: subprocess.Popen | None = None
        self.metrics_port = self.settings.metrics_port if self.settings.metrics_port_set else free_port()
        self.web_port = args.web_port or free_port()
        self.started = time.monotonic()
        self.timeline = Timeline()
        self.alerts: list[dict] = []
        self.rows_shown = 0
        self.labels: Path = self.workdir / "demo.labels.jsonl"
        self.span: tuple[int, int] | None = None  # the simulation's first and last event time
        self.reached = 0  # the latest event time streamed so far (from sms.sends)
        self._stopped = False

    def say(self, text: str) -> None:
        line = f"[{time.monotonic() - self.started:5.0f}s] {text}"
        print(textwrap.fill(line, width=width(), subsequent_indent=" " * 9, break_long_words=False,
                            break_on_hyphens=False), flush=True)

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        env.update(
            SMSSTREAM_PSEUDONYM_KEY=str(self.key),
            SMSSTREAM_BROKER=self.broker.url,
            SMSSTREAM_METRICS_PORT=str(self.metrics_port),
            SMSSTREAM_STORE="memory://",
            SMSSTREAM_DATA_DIR=str(self.workdir / "worker-data"),
        )
        return env

    def simulate_command(self, *target: str) -> list[str]:
        return [sys.executable, "-m", "smsstream", "simulate", *target, "--days", str(self.args.days),
                "--senders", "6", "--rate", "0.05", "--seed", str(self.args.seed), "-q",
                "--labels", str(self.labels), "--manifest", str(self.workdir / "demo.manifest.json")]

    def start(self) -> None:
        from smsstream.broker import embedded_broker, port_in_use
        from smsstream.errors import ConfigError
        from smsstream.topics import apply_topics
        from smsstream.worker.process import WorkerProcess

        if port_in_use("127.0.0.1", self.metrics_port):
            raise ConfigError(
                f"port {self.metrics_port} for /metrics is taken; set SMSSTREAM_METRICS_PORT to a free port, "
                "or unset it and the demo picks one"
            )
        if not self.settings.pseudonym_key:
            self.say(f"SMSSTREAM_PSEUDONYM_KEY is not set: using the demo-only key {DEMO_KEY!r} (never in production)")
        self.broker = embedded_broker(self.args.engine, port=self.args.port)
        self.say(f"starting the embedded broker ({self.broker.name}) ...")
        self.broker.start()
        self.say(f"broker answering on {self.broker.url}")
        self.tell_outside_clients()
        apply_topics(self.broker.url)
        self.say("topics created from topics/")
        # the same seed and options give the same traffic: simulated once to a sink for its labels
        labelling = subprocess.Popen(self.simulate_command("-o", "-"), env=self.env(), stdin=subprocess.DEVNULL,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, preexec_fn=die_with_parent)
        log = self.workdir / "worker.log"
        self.worker = WorkerProcess(self.env(), self.web_port, log, loglevel="warn").start()
        self.say(f"worker started, its log in {log}; joining its consumer group"
                 + (", which takes about 30 s on Tansu ..." if self.args.engine == "tansu" else " ..."))
        self.worker.wait_ready(progress=self.say)
        self.say(f"worker ready: /health on http://127.0.0.1:{self.web_port}/health, "
                 f"metrics on http://127.0.0.1:{self.metrics_port}/metrics")
        _, errors = labelling.communicate()
        if labelling.returncode != 0:
            raise ConfigError(f"simulating the demo's labels failed: {errors.decode(errors='replace').strip()}")
        manifest = orjson.loads((self.workdir / "demo.manifest.json").read_bytes())
        self.span = (int(manifest["start"]), int(manifest["end"]))
        with open(self.workdir / "simulate.log", "wb") as out:
            self.simulator = subprocess.Popen(
                self.simulate_command("--broker", self.broker.url, "--speedup", str(self.args.speedup)),
                env=self.env(), stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                start_new_session=True, preexec_fn=die_with_parent)
        self.say(f"streaming {self.args.days} simulated day(s) with attacks at {self.args.speedup:g}x (a simulated "
                 f"hour every {3600 / self.args.speedup:.0f} s); alerts appear below. Ctrl-C stops everything.")

    def tell_outside_clients(self) -> None:
        bootstrap = self.broker.bootstrap
        if self.args.engine == "kafka":
            from smsstream.kafka_broker import console_consumer

            self.say("watch from another terminal:")
            print(f"  kcat -b {bootstrap} -C -q -t {ALERTS} -f '%k %s\\n'\n"
                  f"  {console_consumer(bootstrap, DEAD_LETTER, self.settings)}", flush=True)
        else:
            self.say("other clients: aiokafka, confluent-kafka and Kafka's Java clients work with Tansu; "
                     "Debian 12's kcat does not (use --engine kafka for it)")

    async def show_alerts(self) -> None:
        """Print alerts as they come, until the simulation is over and the worker quiet, or the worker dies."""
        from aiokafka import AIOKafkaConsumer

        consumer = AIOKafkaConsumer(ALERTS, SENDS, bootstrap_servers=self.broker.bootstrap, group_id=None,
                                    auto_offset_reset="earliest", enable_auto_commit=False)
        await consumer.start()
        next_status = time.monotonic() + 20
        last_alert = time.monotonic()
        try:
            with open(self.workdir / "alerts.jsonl", "ab") as saved:
                while True:
                    batch = await consumer.getmany(timeout_ms=500)
                    now = time.monotonic()
                    for message in (m for messages in batch.values() for m in messages):
                        if message.topic == SENDS:
                            self.reached = max(self.reached, _event_time(message.value))
                            continue
                        alert = orjson.loads(message.value)
                        saved.write(message.value + b"\n")
                        self.alerts.append(alert)
                        self.timeline.add(alert, now)
                        last_alert = now
                    saved.flush()
                    self.show(self.timeline.due(now))
                    if now >= next_status:
                        next_status = now + 20
                        self.status()
                    if not self.worker.running():
                        self.say(f"the worker stopped unexpectedly; its log ends with:\n{self.worker.log_tail(15)}")
                        return
                    if self.simulator.poll() is not None and now - last_alert >= QUIET_S:
                        self.say(f"the simulated day(s) are over and no alert came for {QUIET_S:.0f} s")
                        return
        finally:
            await consumer.stop()

    def show(self, alerts: list[dict]) -> None:
        for alert in alerts:
            if not self.rows_shown:
                print(table_header(), flush=True)
            self.rows_shown += 1
            print(alert_lines(alert, width()), flush=True)

    def status(self) -> None:
        firing = {a["kind"] for a in self.alerts if a["status"] == "firing"}
        kinds = ", ".join(k for k in KINDS if k in firing) or "none yet"
        streaming = "streaming" if self.simulator and self.simulator.poll() is None else "simulation finished"
        self.say(f"{streaming}; {len(self.alerts)} alert records; kinds firing so far ({len(firing)}/4): {kinds}")

    def report(self) -> None:
        """The rows still held, then recall and time to detect against the simulation's labels."""
        self.show(self.timeline.flush())
        if self.span is None or not self.labels.exists():
            return
        from smsstream.evaluate import pseudonymise_entities, read_episodes, render_table, score_until
        from smsstream.pseudonym import Pseudonymizer

        start, end = self.span
        until = min(max(self.reached, start), end)
        episodes = read_episodes(self.labels)
        pseudonymise_entities(episodes, Pseudonymizer(str(self.key)))
        result, still_open = score_until(episodes, self.alerts, start, until)
        reached = datetime.fromtimestamp(until / 1000, tz=timezone.utc).strftime("%a %H:%M")
        self.say(f"scored against the simulation's labels up to {reached} of event time "
                 f"(smsstream evaluate's rules); {len(still_open)} episode(s) still open, not scored:")
        print(render_table(result, "streamed so far"), flush=True)

    def stop(self) -> None:
        if self._stopped:
            return
        self._stopped = True
        if self.simulator is not None and self.simulator.poll() is None:
            _kill_group(self.simulator)
        if self.worker is not None:
            self.worker.stop(timeout=10)
        if self.broker is not None:
            self.broker.stop()
        shutil.rmtree(self.workdir / "worker-data", ignore_errors=True)
        if not (self.workdir / "worker.log").exists():  # stopped before the worker started: nothing to keep
            shutil.rmtree(self.workdir, ignore_errors=True)


def _event_time(value: bytes) -> int:
    try:
        ts = orjson.loads(value).get("ts")
    except (orjson.JSONDecodeError, AttributeError):
        return 0
    return ts if isinstance(ts, int) else 0


def _kill_group(process: subprocess.Popen) -> None:
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(process.pid, sig)
        except (ProcessLookupError, PermissionError):
            break
        try:
            process.wait(timeout=5)
            break
        except subprocess.TimeoutExpired:
            continue


def run(args: argparse.Namespace) -> int:
    logging.getLogger("aiokafka").setLevel(logging.WARNING)
    demo = Demo(args)
    atexit.register(demo.stop)
    # Ctrl-C must stop the demo even when it was started from a shell that ignores SIGINT for background jobs.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    try:
        try:
            demo.start()
            asyncio.run(demo.show_alerts())
        except KeyboardInterrupt:
            print(flush=True)
            demo.say("stopping on Ctrl-C")
        if demo.simulator is not None and demo.simulator.poll() is None:
            _kill_group(demo.simulator)
        demo.report()
        demo.say(f"stopping the worker and the broker; the worker's log, labels and alerts stay in {demo.workdir}")
    finally:
        demo.stop()
    demo.say("stopped; nothing left running")
    return 0
