"""``smsstream demo``: one command shows alerts live, serves /metrics, and Ctrl-C leaves nothing behind."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import pytest

from smsstream.broker import free_port
from processes import alive, descendants
from smsstream.demo import table_header, table_row


WEEKDAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")


def test_an_alert_row_shows_when_kind_entity_and_summary():
    alert = {"window_end": 1_772_445_600_000, "kind": "non_borrower_spike", "reason": "non_borrower_share",
             "severity": "critical", "status": "firing", "entity_type": "sender", "entity_id": "lendloan",
             "summary": "lendloan: 40 of 120 loan reminders went to numbers that are not its borrowers"}
    row = table_row(alert, width=200)
    assert row.startswith("Mon 10:00")
    for text in ("non_borrower_spike", "critical", "sender:lendloan", "40 of 120"):
        assert text in row
    assert "SUMMARY" in table_header()
    assert row.endswith("not its borrowers")
    narrow = table_row(alert, width=130)
    assert len(narrow) <= 130 and narrow.endswith("…")


@pytest.mark.broker
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
@pytest.mark.skipif(os.environ.get("SMSSTREAM_TEST_BROKER", "tansu") != "tansu",
                    reason="the demo always runs its own embedded broker: covered by the Tansu pass")
def test_demo_streams_alerts_serves_metrics_and_ctrl_c_stops_every_process():
    metrics_port = free_port()
    env = dict(os.environ, SMSSTREAM_METRICS_PORT=str(metrics_port))
    env.pop("SMSSTREAM_PSEUDONYM_KEY", None)
    demo = subprocess.Popen([sys.executable, "-m", "smsstream", "demo", "--speedup", "2000"], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(demo.stdout), daemon=True)
    reader.start()
    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and demo.poll() is None:
            if any(line.startswith(WEEKDAYS) for line in lines):
                break
            time.sleep(1)
        output = "".join(lines)
        assert any(line.startswith(WEEKDAYS) for line in lines), output
        assert "demo-only key" in output and "about 30 s" in output
        metrics = urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5).read().decode()
        assert "smsstream_events_in_total" in metrics
        family = descendants(demo.pid)
        assert len(family) >= 3  # broker, worker, simulator
        demo.send_signal(signal.SIGINT)
        assert demo.wait(180) == 0  # the worker gets 20 s to shut down gracefully; a loaded 2-core CI machine is slow
        reader.join(5)
        assert "nothing left running" in "".join(lines)
        time.sleep(1)
        assert [pid for pid in family if alive(pid)] == []
    finally:
        if demo.poll() is None:
            os.killpg(demo.pid, signal.SIGKILL)
            demo.wait()
