"""One simulated scenario on the session's broker, shared by the worker tests.

The input topics of a broker are shared by every test of a session, so the
scenario is produced once; each test runs its workers under its own
``SMSSTREAM_APP_ID`` (own consumer group, own internal topics), reads the
input from the start, and looks only at the alert records written after it
started. ``expected`` is what ``replay`` writes before its end-of-input flush
(a live worker never reaches the end of its input).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import sys
import time
import urllib.request
import uuid
from pathlib import Path

import orjson

from conftest import PSEUDONYM_KEY
from smsstream.broker import free_port
from smsstream.detection.engine import Engine
from smsstream.pseudonym import Pseudonymizer
from smsstream.records import SENDS
from smsstream.replay import replay_lines
from smsstream.topics import apply_topics

#: A small clean scenario with every attack kind: two simulated days, a few senders.
SCENARIO = ["--days", "2", "--senders", "6", "--rate", "0.03", "--seed", "7", "--clean"]
MALFORMED = [
    (b"bad-json", b"{not json"),
    (b"bad-field", b'{"message_id": "x1", "ts": "yesterday"}'),
    (b"\xff\xfe", b"\xff\xfe\x00binary"),
]

_prepared: dict[str, dict] = {}


class NoFlush(Engine):
    def flush(self) -> list[dict]:
        return []


def prepared(broker_url: str, bootstrap: str, tmp: Path) -> dict:
    """Topics applied, scenario produced (once per broker), and the alerts replay expects.

    Before the scenario come the ``MALFORMED`` sends and a copy of the
    scenario's first send (``duplicate``), so the scenario's own copy is the
    one a part refuses as a duplicate and dead-letters.
    """
    if broker_url not in _prepared:
        apply_topics(broker_url)
        lines, expected = simulated(tmp)
        first = next(line for line in lines if record(line)[0] == SENDS)
        _, key, value = record(first)
        duplicate = (key or b"", value or b"")
        asyncio.run(produce(bootstrap, lines, [*MALFORMED, duplicate]))
        _prepared[broker_url] = {"lines": lines, "expected": expected, "duplicate": duplicate}
    return _prepared[broker_url]


def simulated(tmp: Path, scenario: list[str] = SCENARIO) -> tuple[list[bytes], list[dict]]:
    """The scenario's lines (replay format) and the alerts replay writes for them before its final flush."""
    path = tmp / "events.jsonl"
    subprocess.run([sys.executable, "-m", "smsstream", "simulate", *scenario, "-q", "-o", str(path)],
                   check=True, capture_output=True)
    lines = path.read_bytes().splitlines()
    expected: list[dict] = []
    replay_lines(lines, NoFlush(Pseudonymizer(PSEUDONYM_KEY)), expected.append)
    return lines, expected


def record(line: bytes) -> tuple[str, bytes | None, bytes | None]:
    """A replay-format line as the Kafka record a producer writes: topic, key, value (None for a tombstone)."""
    obj = orjson.loads(line)
    value = obj["value"]
    raw = None if value is None else value.encode() if isinstance(value, str) else orjson.dumps(value)
    key = obj.get("key")
    return obj["topic"], key.encode() if key else None, raw


async def produce(bootstrap: str, lines: list[bytes], malformed: list[tuple[bytes, bytes]]) -> None:
    from aiokafka import AIOKafkaProducer

    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=20)
    await producer.start()
    try:
        for key, value in malformed:
            await producer.send(SENDS, value=value, key=key)
        for line in lines:
            topic, key, value = record(line)
            await producer.send(topic, value=value, key=key)
        await producer.flush()
    finally:
        await producer.stop()


async def _assigned(topic: str, bootstrap: str):
    """A group-less consumer subscribed to ``topic``, once it has all its partitions (metadata loaded)."""
    from aiokafka import AIOKafkaConsumer

    consumer = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest",
                                group_id=None, enable_auto_commit=False)
    await consumer.start()
    for _ in range(200):
        if consumer.assignment():
            break
        await asyncio.sleep(0.05)
    return consumer


async def _stop(consumer) -> None:
    # aiokafka 0.14 re-raises the cancellation of its own commit-reset task when a
    # group-less consumer stops right after starting
    with contextlib.suppress(asyncio.CancelledError):
        await consumer.stop()


async def topics_named(broker_url: str, prefix: str) -> dict[str, dict[int, list[tuple]]]:
    """``topic -> partition -> [(key, value)]`` of every topic named ``prefix...`` (a worker's internal topics)."""
    from aiokafka import AIOKafkaConsumer

    from smsstream.config import Settings
    from smsstream.kafka import client_kwargs, read_range

    settings = Settings.from_env({"SMSSTREAM_BROKER": broker_url})
    consumer = AIOKafkaConsumer(**client_kwargs(settings), group_id=None)
    await consumer.start()
    try:
        cluster = await consumer._client.fetch_all_metadata()
        names = sorted(t for t in cluster.topics() if t.startswith(prefix))
        partitions = {t: sorted(cluster.partitions_for_topic(t) or ()) for t in names}
    finally:
        await _stop(consumer)
    out: dict[str, dict[int, list[tuple]]] = {}
    for topic, ps in partitions.items():
        out[topic] = {p: [(key, value) for _, key, value in await read_range(settings, topic, p, 0, None)]
                      for p in ps}
    return out


async def end_offsets(bootstrap: str, topic: str) -> dict:
    consumer = await _assigned(topic, bootstrap)
    try:
        tps = list(consumer.assignment())
        return {tp.partition: offset for tp, offset in (await consumer.end_offsets(tps)).items()}
    finally:
        await _stop(consumer)


async def consume(bootstrap: str, topic: str, until, timeout: float, start: dict | None = None,
                  on_batch=None) -> list:
    """Read ``topic`` (from ``start`` offsets, else the beginning) until ``until(messages)`` holds and 5 s pass quietly."""
    consumer = await _assigned(topic, bootstrap)
    for tp in consumer.assignment():
        if start and tp.partition in start:
            consumer.seek(tp, start[tp.partition])
        else:
            await consumer.seek_to_beginning(tp)
    messages: list = []
    quiet_since = time.monotonic()
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            batch = await consumer.getmany(timeout_ms=1000)
            got = [m for ms in batch.values() for m in ms]
            if got:
                messages += got
                quiet_since = time.monotonic()
                if on_batch is not None:
                    on_batch(messages)
            elif until(messages) and time.monotonic() - quiet_since >= 5:
                break
    finally:
        await _stop(consumer)
    return messages


def episodes(alerts: list[dict]) -> list[tuple]:
    """Which episodes alert, and when each record of theirs was written: what replay and the worker agree on.

    Their figures agree too, bar records that arrived later than the allowed
    lateness: those count in the first bucket still open, and which bucket
    that is depends on how the input partitions interleaved (docs/detection.md, "Late
    records"), so a baseline may differ in its last digits.
    """
    return sorted({(a["dedup_key"], a["alert_id"], a["status"], a["reason"], a["severity"], a["window_start"],
                    a["window_end"]) for a in alerts})


def comparable(alerts: list[dict]) -> list[bytes]:
    """Alert records bar ``detected_at``, deduplicated (a re-sent record is the same record).

    Everything else is compared, evidence samples included: which sends an
    alert quotes is a pick by hash of message id, so it does not depend on
    the order in which the worker's partitions deliver them.
    """
    def strip(a: dict) -> dict:
        return {k: v for k, v in a.items() if k != "detected_at"}

    return sorted({orjson.dumps(strip(a), option=orjson.OPT_SORT_KEYS) for a in alerts})


def metric(port: int | str, name: str, **labels: str) -> float | None:
    """One sample of a worker's ``/metrics`` (None when it does not answer or has no such sample)."""
    from prometheus_client.parser import text_string_to_metric_families

    try:
        text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    except OSError:
        return None
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return sample.value
    return None


def same_episodes(alerts: list[dict], expected: list[dict], *workers) -> None:
    """The worker's alerts are replay's: every episode once, with replay's ids, and records re-sent unchanged."""
    missing = set(episodes(expected)) - set(episodes(alerts))
    assert not missing, (f"{len(missing)} of {len(expected)} alert records never came: {sorted(missing)[:5]}\n"
                         f"{log_digest(*workers)}")
    assert episodes(alerts) == episodes(expected), log_digest(*workers)
    # no duplicated episode: one alert_id per (dedup_key, first_seen), and the same ids as replay
    ids = {(a["dedup_key"], a["first_seen"]): a["alert_id"] for a in alerts}
    assert len(set(ids.values())) == len(ids) == len({a["alert_id"] for a in alerts})
    assert {a["alert_id"] for a in alerts} == {a["alert_id"] for a in expected}
    # a record written twice (before and after a crash or a rebalance) is the same record, bar detected_at
    by_change: dict[tuple, set] = {}
    for a in alerts:
        by_change.setdefault((a["alert_id"], a["status"], a["window_end"]), set()).add(
            orjson.dumps({k: v for k, v in a.items() if k not in ("detected_at", "evidence")},
                         option=orjson.OPT_SORT_KEYS))
    assert all(len(v) == 1 for v in by_change.values())


def log_digest(*workers, lines: int = 40) -> str:
    """What went on in each worker (rebalances, recovery, warnings), for a failing test's message."""
    keep = ("WARNING", "ERROR", "CRITICAL", "Traceback", "rebalanc", "Recovery", "assigned", "restored", "Worker ready")
    out = []
    for w in workers:
        text = w.log_path.read_text(errors="replace").splitlines() if w.log_path.exists() else []
        picked = [line[:200] for line in text if any(k in line for k in keep)]
        out.append(f"--- {w.log_path.name} ({len(text)} lines), notable:\n" + "\n".join(picked[-lines:]))
    return "\n".join(out)


def worker_env(broker_url: str, tmp: Path, **extra) -> dict:
    env = dict(os.environ, SMSSTREAM_BROKER=broker_url, SMSSTREAM_PSEUDONYM_KEY=PSEUDONYM_KEY,
               SMSSTREAM_METRICS_PORT=str(free_port()), SMSSTREAM_DATA_DIR=str(tmp / "data"),
               SMSSTREAM_STORE="memory://", SMSSTREAM_APP_ID=f"smsstream-test-{uuid.uuid4().hex[:8]}")
    env.update(extra)
    return env
