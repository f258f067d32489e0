"""``smsstream demo``: the whole system on one machine, in one command.

Starts the embedded broker, creates the topics, starts a worker, streams a
simulated day with attacks of all four kinds at a watchable speed, and prints
each alert as a table row as it lands on ``sms.alerts``. Ctrl-C stops
everything: every child runs in its own process group and is killed with it,
also at interpreter exit.
"""

from __future__ import annotations

import argparse
import asyncio
import atexit
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import orjson

from smsstream.broker import die_with_parent
from smsstream.records import ALERTS
from smsstream.vocabulary import KINDS

#: A seed whose simulated day has all four attack kinds detected within 19 event-time hours.
DEMO_SEED = 5
DEMO_KEY = "smsstream-demo-only-key"
COLUMNS = (("time", 9), ("kind", 22), ("reason", 18), ("severity", 8), ("entity", 34))


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--port", type=int, default=0, help="broker port (default: a free one)")
    parser.add_argument("--speedup", type=float, default=600.0,
                        help="event time runs this many times faster than the clock (default 600: a day in 2.4 min)")
    parser.add_argument("--days", type=int, default=1, help="simulated days (default 1)")
    parser.add_argument("--seed", type=int, default=DEMO_SEED, help=f"simulation seed (default {DEMO_SEED})")
    parser.add_argument("--web-port", type=int, default=0, help="worker web port for /health (default: a free one)")


class Demo:
    """The broker, worker and simulator of one demo run, and their tidy shutdown."""

    def __init__(self, args: argparse.Namespace):
        from smsstream.broker import free_port

        self.args = args
        self.workdir = Path(tempfile.mkdtemp(prefix="smsstream-demo-"))
        self.broker = None
        self.worker = None
        self.simulator: subprocess.Popen | None = None
        self.metrics_port = int(os.environ.get("SMSSTREAM_METRICS_PORT") or 9108)
        self.web_port = args.web_port or free_port()
        self.started = time.monotonic()
        self.seen_kinds: set[str] = set()
        self.rows = 0
        self._stopped = False

    def say(self, text: str) -> None:
        print(f"[{time.monotonic() - self.started:5.0f}s] {text}", flush=True)

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        if not env.get("SMSSTREAM_PSEUDONYM_KEY"):
            env["SMSSTREAM_PSEUDONYM_KEY"] = DEMO_KEY
        env.update(
            SMSSTREAM_BROKER=self.broker.url,
            SMSSTREAM_METRICS_PORT=str(self.metrics_port),
            SMSSTREAM_STORE="memory://",
            SMSSTREAM_DATA_DIR=str(self.workdir / "worker-data"),
        )
        return env

    def start(self) -> None:
        from smsstream.broker import EmbeddedBroker, port_in_use
        from smsstream.errors import ConfigError
        from smsstream.topics import apply_topics
        from smsstream.worker.process import WorkerProcess

        if port_in_use("127.0.0.1", self.metrics_port):
            raise ConfigError(
                f"port {self.metrics_port} for /metrics is taken; set SMSSTREAM_METRICS_PORT to a free port"
            )
        if not os.environ.get("SMSSTREAM_PSEUDONYM_KEY"):
            self.say(f"SMSSTREAM_PSEUDONYM_KEY is not set: using the demo-only key {DEMO_KEY!r} (never in production)")
        self.say("starting the embedded broker (Tansu, in memory) ...")
        self.broker = EmbeddedBroker(port=self.args.port).start()
        self.say(f"broker answering on {self.broker.url}")
        apply_topics(self.broker.url)
        self.say("topics created from topics/")
        self.worker = WorkerProcess(self.env(), self.web_port, self.workdir / "worker.log", loglevel="warn").start()
        self.say(f"worker started (log: {self.workdir / 'worker.log'}); joining its consumer group, "
                 "which takes about 30 s on the embedded broker ...")
        self.worker.wait_ready(progress=self.say)
        self.say(f"worker ready: /health on http://127.0.0.1:{self.web_port}/health, "
                 f"metrics on http://127.0.0.1:{self.metrics_port}/metrics")
        cmd = [sys.executable, "-m", "smsstream", "simulate", "--broker", self.broker.url,
               "--speedup", str(self.args.speedup), "--days", str(self.args.days), "--senders", "6",
               "--rate", "0.05", "--seed", str(self.args.seed), "-q",
               "--labels", str(self.workdir / "labels.jsonl"), "--manifest", str(self.workdir / "manifest.json")]
        with open(self.workdir / "simulate.log", "wb") as log:
            self.simulator = subprocess.Popen(cmd, env=self.env(), stdin=subprocess.DEVNULL, stdout=log,
                                              stderr=subprocess.STDOUT, start_new_session=True,
                                              preexec_fn=die_with_parent)
        self.say(f"streaming {self.args.days} simulated day(s) with attacks at {self.args.speedup:g}x "
                 "(a simulated hour every {:.0f} s); alerts appear below. Ctrl-C stops everything.".format(
                     3600 / self.args.speedup))

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
        shutil.rmtree(self.workdir, ignore_errors=True)

    async def show_alerts(self) -> None:
        from aiokafka import AIOKafkaConsumer

        consumer = AIOKafkaConsumer(ALERTS, bootstrap_servers=self.broker.bootstrap, group_id=None,
                                    auto_offset_reset="earliest", enable_auto_commit=False)
        await consumer.start()
        header_shown = False
        next_status = time.monotonic() + 20
        try:
            while True:
                batch = await consumer.getmany(timeout_ms=1000)
                for messages in batch.values():
                    for message in messages:
                        if not header_shown:
                            print(table_header(), flush=True)
                            header_shown = True
                        alert = orjson.loads(message.value)
                        self.rows += 1
                        print(table_row(alert, shutil.get_terminal_size().columns), flush=True)
                        if alert["status"] == "firing" and alert["kind"] not in self.seen_kinds:
                            self.seen_kinds.add(alert["kind"])
                            if len(self.seen_kinds) == len(KINDS):
                                self.say("all four alert kinds have fired")
                if time.monotonic() >= next_status:
                    next_status = time.monotonic() + 20
                    self.status()
                if not self.worker.running():
                    self.say(f"the worker stopped unexpectedly; its log ends with:\n{self.worker.log_tail(15)}")
                    return
        finally:
            await consumer.stop()

    def status(self) -> None:
        kinds = ", ".join(k for k in KINDS if k in self.seen_kinds) or "none yet"
        sim = "streaming" if self.simulator and self.simulator.poll() is None else "simulation finished"
        self.say(f"{sim}; {self.rows} alert records; kinds firing so far ({len(self.seen_kinds)}/4): {kinds}")


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


def table_header() -> str:
    head = " ".join(f"{name.upper():<{width}}" for name, width in COLUMNS) + " SUMMARY"
    return head + "\n" + "-" * len(head)


def table_row(alert: dict, width: int = 160) -> str:
    """One alert as a row: event time of its window end, kind, reason, severity, entity, summary."""
    when = datetime.fromtimestamp(alert["window_end"] / 1000, tz=timezone.utc).strftime("%a %H:%M")
    status = "" if alert["status"] == "firing" else "✓ "
    cells = (when, alert["kind"], alert["reason"], alert["severity"],
             f"{alert['entity_type']}:{alert['entity_id']}")
    row = " ".join(f"{_fit(str(c), w):<{w}}" for c, (_, w) in zip(cells, COLUMNS))
    room = max(20, width - len(row) - 1)
    return f"{row} {_fit(status + alert['summary'], room)}"


def _fit(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


def run(args: argparse.Namespace) -> int:
    logging.getLogger("aiokafka").setLevel(logging.WARNING)
    demo = Demo(args)
    atexit.register(demo.stop)
    # Ctrl-C must stop the demo even when it was started from a shell that ignores SIGINT for background jobs.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    try:
        demo.start()
        asyncio.run(demo.show_alerts())
    except KeyboardInterrupt:
        print(flush=True)
        demo.say("stopping: simulator, worker, broker ...")
    finally:
        demo.stop()
    demo.say("stopped; nothing left running")
    return 0
