"""``smsstream demo``: alerts live in event-time order at 80 columns, scored when it stops, nothing left behind."""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path

import pytest

from processes import alive, descendants
from smsstream.demo import Timeline, alert_lines, table_header

WEEKDAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
T0 = 1_772_445_600_000  # Monday 2 March 2026, 10:00 UTC
MINUTE = 60_000


def alert(window_end: int = T0, status: str = "firing", summary: str = "lendloan: 40 of 120 loan reminders "
          "went to numbers that are not its borrowers, against 1 in 100 usually; likely a purchased list") -> dict:
    return {"window_end": window_end, "kind": "non_borrower_spike", "reason": "non_borrower_share",
            "severity": "critical", "status": status, "entity_type": "sender", "entity_id": "lendloan",
            "summary": summary}


def test_an_alert_shows_time_severity_kind_and_entity_with_its_summary_wrapped_below_at_80_columns():
    lines = alert_lines(alert(), 80).splitlines()
    assert lines[0].split() == ["Mon", "10:00", "critical", "non_borrower_spike", "sender:lendloan"]
    assert len(lines) == 4, "the summary wraps onto lines of its own"
    assert all(line.startswith(" " * 10) for line in lines[1:])
    assert " ".join(" ".join(lines[1:]).split()).startswith("non_borrower_share: lendloan: 40 of 120")
    assert " ".join(lines[1:]).split()[-1] == "list", "nothing cut off"
    assert max(map(len, lines)) <= 80 and max(map(len, table_header().splitlines())) <= 80


def test_a_resolved_alert_shows_resolved_where_a_firing_one_shows_its_severity():
    assert alert_lines(alert(status="resolved"), 80).split()[2] == "resolved"
    assert alert_lines(alert(status="firing"), 80).split()[2] == "critical"


def test_an_alert_about_an_earlier_minute_landing_within_the_hold_is_shown_first():
    timeline = Timeline(hold_s=8)
    timeline.add(alert(T0 + 30 * MINUTE), now=0)
    assert timeline.due(now=5) == []
    timeline.add(alert(T0), now=6)  # another partition's alert, written later about an earlier minute
    shown = timeline.due(now=8)
    assert [a["window_end"] for a in shown] == [T0, T0 + 30 * MINUTE]


def test_an_alert_landing_after_the_hold_is_shown_after_the_later_ones_already_shown():
    timeline = Timeline(hold_s=8)
    timeline.add(alert(T0 + 30 * MINUTE), now=0)
    assert [a["window_end"] for a in timeline.due(now=8)] == [T0 + 30 * MINUTE]
    timeline.add(alert(T0), now=9)
    timeline.add(alert(T0 + 90 * MINUTE), now=9)
    assert timeline.due(now=10) == []
    assert [a["window_end"] for a in timeline.flush()] == [T0, T0 + 90 * MINUTE]


class DemoRun:
    """``smsstream demo`` in its own process group, its output collected line by line."""

    def __init__(self, *args: str, env: dict):
        self.process = subprocess.Popen([sys.executable, "-m", "smsstream", "demo", *args], env=env,
                                        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                        start_new_session=True)
        self.lines: list[str] = []
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        for line in self.process.stdout:
            self.lines.append(line.rstrip("\n"))

    @property
    def output(self) -> str:
        return "\n".join(self.lines)

    def rows(self) -> list[str]:
        return [line for line in self.lines if line.startswith(WEEKDAYS)]

    def wait_for(self, predicate, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and self.process.poll() is None and not predicate():
            time.sleep(1)
        assert predicate(), self.output

    def finish(self, timeout: float) -> int:
        code = self.process.wait(timeout)
        self.reader.join(5)
        return code

    def kill(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()


@contextmanager
def port_9108_taken():
    """The default metrics port held by something else, as on a machine already running a worker."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind(("127.0.0.1", 9108))
            sock.listen()
        except OSError:
            pass  # taken already
        yield


def demo_env() -> dict:
    env = dict(os.environ, COLUMNS="80")
    for name in ("SMSSTREAM_PSEUDONYM_KEY", "SMSSTREAM_METRICS_PORT"):
        env.pop(name, None)
    return env


def assert_scored_and_readable(run: DemoRun) -> None:
    output = run.output
    assert re.search(r"^overall +\d+ +\d+ ", output, re.M), output
    assert "still open" in output and "recall" in output
    assert max(len(line) for line in run.lines if not line.startswith(("  kcat", "  java"))) <= 80
    kept = Path(re.search(r"stay in (\S+)", output).group(1))
    try:
        assert (kept / "worker.log").stat().st_size > 0 and (kept / "alerts.jsonl").exists()
        assert not (kept / "worker-data").exists()
    finally:
        shutil.rmtree(kept, ignore_errors=True)  # kept for a user; a test run leaves nothing in /tmp


@pytest.mark.broker
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
@pytest.mark.skipif(os.environ.get("SMSSTREAM_TEST_BROKER", "tansu") != "tansu",
                    reason="runs Tansu, its default engine: the Apache Kafka pass runs --engine kafka instead")
def test_demo_streams_alerts_serves_metrics_on_a_free_port_and_ctrl_c_scores_and_stops_every_process():
    with port_9108_taken():
        run = DemoRun("--speedup", "2000", env=demo_env())
        try:
            run.wait_for(lambda: run.rows(), 300)
            assert "demo-only key" in run.output and "about 30 s" in run.output
            metrics_port = re.search(r"metrics on\s+http://127\.0\.0\.1:(\d+)/metrics", run.output).group(1)
            metrics = urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5).read().decode()
            assert "smsstream_events_in_total" in metrics
            family = descendants(run.process.pid)
            assert len(family) >= 3  # broker, worker, simulator
            run.process.send_signal(signal.SIGINT)
            assert run.finish(180) == 0  # the worker gets 10 s to stop gracefully; a loaded CI machine is slow
        finally:
            run.kill()
    assert "nothing left running" in run.output
    assert_scored_and_readable(run)
    time.sleep(1)
    assert [pid for pid in family if alive(pid)] == []


@pytest.mark.broker
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
@pytest.mark.skipif(os.environ.get("SMSSTREAM_TEST_BROKER", "tansu") != "kafka",
                    reason="starts Apache Kafka: run in the Apache Kafka pass (SMSSTREAM_TEST_BROKER=kafka)")
def test_demo_on_apache_kafka_can_be_watched_with_kcat_and_the_console_consumer_and_scores_its_day():
    run = DemoRun("--engine", "kafka", "--speedup", "3000", env=demo_env())
    try:
        run.wait_for(lambda: run.rows(), 300)
        kcat = next(line.strip() for line in run.lines if line.startswith("  kcat "))
        alerts = subprocess.run(kcat + " -e", shell=True, capture_output=True, text=True, timeout=60)
        keys = [line.split(" ", 1)[0] for line in alerts.stdout.splitlines()]
        assert keys and all(re.fullmatch(r"\w+/\w+/\S+", key) for key in keys), alerts.stdout + alerts.stderr
        console = next(line.strip() for line in run.lines if line.startswith("  java "))
        dead = subprocess.run(console + " --max-messages 1 --timeout-ms 60000", shell=True, capture_output=True,
                              text=True, timeout=120)
        assert '"error":' in dead.stdout, dead.stdout + dead.stderr
        family = descendants(run.process.pid)
        assert run.finish(300) == 0, "the demo stops by itself once its simulated day is over"
    finally:
        run.kill()
    assert "the simulated day(s) are over" in run.output
    assert_scored_and_readable(run)
    assert int(re.search(r"^overall +\d+ +(\d+) ", run.output, re.M).group(1)) > 0
    assert [pid for pid in family if alive(pid)] == []
