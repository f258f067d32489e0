"""What the paging tests run against: the real Alertmanager, HTTP receivers that record, and the notifier as a process.

Alertmanager is Debian's ``prometheus-alertmanager``, started on loopback with no
cluster port and its storage in a temp dir; its own webhook receiver points at a
:class:`Receiver` so a test sees what Alertmanager would page with (firing, then
resolved). The notifier runs as ``smsstream notify`` in a child process: its log
file, ``/health`` and ``/metrics`` are what an operator would see.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
import uuid
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Callable

import orjson

from conftest import PSEUDONYM_KEY
from smsstream.broker import die_with_parent, free_port
from smsstream.pseudonym import Pseudonymizer
from smsstream.records import ALERTS

ALERTMANAGER = "prometheus-alertmanager"
INSTALL = "apt-get install prometheus-alertmanager"


class PagingSetupError(RuntimeError):
    pass


def wait_for(condition: Callable[[], object], timeout: float, what: str, every: float = 0.1):
    """Poll ``condition`` until it returns something truthy; fail naming ``what`` after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(every)


# -- HTTP receivers ---------------------------------------------------------------------------------


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: bytes
    status: int


@dataclass
class Receiver:
    """A local HTTP server that records every POST; ``answer`` picks the status (and may sleep)."""

    answer: Callable[[str, dict[str, str], bytes], int] = lambda path, headers, body: 200
    received: list[Received] = field(default_factory=list)

    def __post_init__(self):
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 (http.server's name)
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                headers = {k.lower(): v for k, v in self.headers.items()}
                try:
                    status = owner.answer(self.path, headers, body)
                except Exception:  # a test's answer function must not hang the client
                    status = 599
                owner.received.append(Received(self.path, headers, body, status))
                try:
                    self.send_response(status)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                except OSError:
                    pass  # the client gave up waiting (a timeout test)

            def log_message(self, *args):
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def url(self, path: str = "/") -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def bodies(self, path: str | None = None, status: int | None = 200) -> list[bytes]:
        return [r.body for r in list(self.received)
                if (path is None or r.path == path) and (status is None or r.status == status)]

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


# -- Alertmanager -----------------------------------------------------------------------------------

AM_CONFIG = """
route:
  receiver: recorder
  group_by: [dedup_key]
  group_wait: 0s
  group_interval: 1s
  repeat_interval: 1h
receivers:
  - name: recorder
    webhook_configs:
      - url: {url}
        send_resolved: true
"""


class Alertmanager:
    """Debian's Alertmanager on a free loopback port; notifications go to ``receiver`` at ``/alertmanager``."""

    def __init__(self, receiver: Receiver):
        if shutil.which(ALERTMANAGER) is None:
            raise PagingSetupError(f"no `{ALERTMANAGER}` on PATH; install it ({INSTALL}) or run `bash .ci/run`")
        self.receiver = receiver
        self.port = free_port()
        self.workdir = Path(tempfile.mkdtemp(prefix="smsstream-am-"))
        (self.workdir / "am.yml").write_text(AM_CONFIG.format(url=receiver.url("/alertmanager")))
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> "Alertmanager":
        storage = Path(tempfile.mkdtemp(prefix="data-", dir=self.workdir))
        log = open(self.workdir / "alertmanager.log", "ab")
        self.process = subprocess.Popen(
            [ALERTMANAGER, f"--config.file={self.workdir / 'am.yml'}", f"--storage.path={storage}",
             f"--web.listen-address=127.0.0.1:{self.port}", "--cluster.listen-address="],
            stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, preexec_fn=die_with_parent,
        )
        log.close()
        wait_for(self._ready, 30, "Alertmanager to answer on /-/ready")
        return self

    def _ready(self) -> bool:
        if self.process is not None and self.process.poll() is not None:
            raise PagingSetupError(f"Alertmanager exited:\n{(self.workdir / 'alertmanager.log').read_text()[-2000:]}")
        try:
            with urllib.request.urlopen(f"{self.url}/-/ready", timeout=1) as response:
                return response.status == 200
        except OSError:
            return False

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(10)
        self.process = None

    def alerts(self) -> list[dict]:
        """``GET /api/v2/alerts``: what Alertmanager holds as active (resolved alerts are not listed)."""
        with urllib.request.urlopen(f"{self.url}/api/v2/alerts", timeout=5) as response:
            return json.loads(response.read())

    def alert(self, dedup_key: str) -> dict | None:
        return next((a for a in self.alerts() if a["labels"].get("dedup_key") == dedup_key), None)

    def notifications(self, dedup_key: str) -> list[str]:
        """The statuses Alertmanager paged with for ``dedup_key``, in order (``firing``, ``resolved``)."""
        out = []
        for body in self.receiver.bodies("/alertmanager"):
            message = json.loads(body)
            out += [a["status"] for a in message["alerts"] if a["labels"].get("dedup_key") == dedup_key]
        return out

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self.workdir, ignore_errors=True)


# -- the notifier -----------------------------------------------------------------------------------


class NotifierProcess:
    """``smsstream notify`` as a child process with its own consumer group."""

    def __init__(self, env: dict[str, str], log_path: Path):
        self.env = env
        self.port = int(env["SMSSTREAM_NOTIFY_METRICS_PORT"])
        self.log_path = log_path
        self.process: subprocess.Popen | None = None

    def start(self) -> "NotifierProcess":
        log = open(self.log_path, "ab")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "smsstream", "notify"], env=self.env, stdin=subprocess.DEVNULL,
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True, preexec_fn=die_with_parent,
        )
        log.close()
        return self

    def get(self, path: str) -> bytes | None:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}", timeout=2) as response:
                return response.read()
        except (OSError, urllib.error.URLError):
            return None

    def health(self) -> dict | None:
        raw = self.get("/health")
        return json.loads(raw) if raw else None

    def metric(self, name: str, **labels: str) -> float:
        """One sample of ``/metrics`` (0 when absent)."""
        from prometheus_client.parser import text_string_to_metric_families

        text = (self.get("/metrics") or b"").decode()
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                    return sample.value
        return 0.0

    def wait_ready(self, timeout: float = 90) -> dict:
        def ready():
            if self.process is not None and self.process.poll() is not None:
                raise AssertionError(f"smsstream notify exited ({self.process.returncode}):\n{self.log()[-3000:]}")
            health = self.health()
            return health if health and health["assigned_partitions"] else None

        return wait_for(ready, timeout, "the notifier to join its group and be assigned partitions", every=0.25)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self) -> int | None:
        """SIGTERM: commit what was delivered and leave the group."""
        if self.process is None:
            return None
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        return self.process.returncode


def notifier_env(broker_url: str, tmp: Path, **settings: str) -> dict[str, str]:
    """A fresh group reading from the end (earlier tests' records are history), quick retry timings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SMSSTREAM_")}
    env.update(
        SMSSTREAM_BROKER=broker_url,
        SMSSTREAM_NOTIFY_GROUP=f"notify-test-{uuid.uuid4().hex[:8]}",
        SMSSTREAM_NOTIFY_START="latest",
        SMSSTREAM_NOTIFY_METRICS_PORT=str(free_port()),
        SMSSTREAM_NOTIFY_RETRY_MIN_S="0.1",
        SMSSTREAM_NOTIFY_RETRY_MAX_S="0.5",
        SMSSTREAM_NOTIFY_TIMEOUT_S="2",
        SMSSTREAM_NOTIFY_REFRESH_S="1",
        SMSSTREAM_RUNBOOK_BASE_URL="https://runbooks.example/smsstream",
    )
    env.update(settings)
    return env


# -- alert records ----------------------------------------------------------------------------------

_pn = Pseudonymizer(PSEUDONYM_KEY)


def alert_record(status: str = "firing", **fields) -> dict:
    """A contract-valid alert about a number account of its own (``entity_id`` unique per call unless given)."""
    now = int(time.time() * 1000)
    entity = fields.pop("entity_id", None) or _pn.pseudonym(f"+91987{uuid.uuid4().int % 10**7:07d}")
    kind, entity_type = fields.get("kind", "rebind_anomaly"), fields.get("entity_type", "number")
    record = {
        "alert_id": uuid.uuid4().hex[:24],
        "dedup_key": f"{kind}/{entity_type}/{entity}",
        "kind": kind,
        "reason": "number_fan_in",
        "severity": "warning",
        "status": status,
        "entity_type": entity_type,
        "entity_id": entity,
        "sender_id": "rupeepay",
        "template_id": None,
        "window_start": now - 600_000,
        "window_end": now,
        "observed": 7,
        "expected": 0.4,
        "score": 12.5,
        "summary": f"number {entity} collected 7 accounts at rupeepay in 10 min, against 0.4 usually",
        "evidence": {"numbers": [entity]},
        "first_seen": now - 600_000,
        "last_seen": now,
        "detected_at": now,
    }
    record.update(fields)
    return record


def resolved(record: dict, **fields) -> dict:
    return {**record, "status": "resolved", "detected_at": int(time.time() * 1000), **fields}


def write(bootstrap: str, *records: dict | tuple[bytes, bytes], spread: bool = False) -> None:
    """Produce alert records (dicts keyed by dedup_key, or raw ``(key, value)`` pairs) to sms.alerts.

    ``spread`` writes the n-th record to partition n instead of the key's partition.
    """
    from aiokafka import AIOKafkaProducer

    async def produce():
        producer = AIOKafkaProducer(bootstrap_servers=bootstrap)
        await producer.start()
        try:
            for n, record in enumerate(records):
                key, value = record if isinstance(record, tuple) else (record["dedup_key"].encode(),
                                                                      orjson.dumps(record))
                await producer.send_and_wait(ALERTS, value=value, key=key, partition=n if spread else None)
        finally:
            await producer.stop()

    asyncio.run(produce())


def committed_and_end(bootstrap: str, group: str) -> tuple[dict[int, int | None], dict[int, int]]:
    """The group's committed offsets on sms.alerts and the partitions' end offsets (read without joining it)."""
    from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

    async def read():
        producer = AIOKafkaProducer(bootstrap_servers=bootstrap)
        await producer.start()
        try:
            partitions = [TopicPartition(ALERTS, p) for p in sorted(await producer.partitions_for(ALERTS))]
        finally:
            await producer.stop()
        consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False)
        await consumer.start()
        try:
            committed = {tp.partition: await consumer.committed(tp) for tp in partitions}
            ends = await consumer.end_offsets(partitions)
        finally:
            await consumer.stop()
        return committed, {tp.partition: offset for tp, offset in ends.items()}

    return asyncio.run(read())
