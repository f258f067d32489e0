"""A flood of malformed records, good ones interleaved, through a running worker on its own broker.

Every good record is counted and makes the alerts a clean run makes; every
bad one lands on the dead-letter topic once, with an error naming what is
wrong; the worker's memory stays flat while it works through them.

It starts a broker of its own (Tansu starts in under a second): on the
session's broker, every later worker test would read the flood too.
"""

from __future__ import annotations

import asyncio
import random
import threading
import time
from pathlib import Path

import orjson
import pytest

from brokers import only_on, running_broker
from paging import wait_for
from smsstream.broker import free_port
from smsstream.records import ALERTS, BINDINGS, BORROWERS, DEAD_LETTER, RECEIPTS, SENDS, TEMPLATES
from smsstream.topics import apply_topics
from smsstream.worker.process import WorkerProcess
from test_faults import SMALL, until_episodes
from worker_scenario import consume, metric, record, same_episodes, simulated, worker_env

FLOOD = 100_000
#: Good sends written a second time: the parts refuse them, and dead-letter them read back from the input.
DUPLICATES = 100


def malformed(rng: random.Random, i: int) -> tuple[str, bytes, bytes | None]:
    """One bad record of a kind picked at random: ``(topic, key, value)``."""
    ts = 1_772_800_000_000 + i
    send = {"message_id": f"bad-{i}", "ts": ts, "sender_id": "flood", "template_id": None, "number": "+919800000001",
            "category": "repayment_reminder", "body": "pay now"}
    kind = rng.randrange(12)
    key = b"flood-%d" % i
    if kind == 0:
        return SENDS, key, b"{not json %d" % i
    if kind == 1:
        return SENDS, key, orjson.dumps([send])
    if kind == 2:
        return SENDS, key, orjson.dumps({**send, "ts": "yesterday"})
    if kind == 3:
        return SENDS, key, orjson.dumps({**send, "number": 919800000001})
    if kind == 4:
        return SENDS, key, orjson.dumps({k: v for k, v in send.items() if k != "category"})
    if kind == 5:
        return SENDS, key, orjson.dumps({**send, "category": "lottery"})
    if kind == 6:
        return SENDS, key, orjson.dumps({**send, "body": "x" * 5000 if i % 50 else "y" * 70_000})
    if kind == 7:
        return SENDS, key, b"\xff\xfe\x00" + bytes(rng.randrange(256) for _ in range(20))
    if kind == 8:
        return RECEIPTS, key, orjson.dumps({"message_id": f"bad-{i}", "ts": ts, "status": "LOST"})
    if kind == 9:
        return BINDINGS, key, orjson.dumps({"event_id": f"bad-{i}", "ts": ts, "sender_id": "flood", "account_id": "a",
                                            "old_number": None, "new_number": "0800 FLOOD"})
    if kind == 10:
        return BORROWERS, b"no-bar-%d" % i, None  # a tombstone whose key names no pair
    return TEMPLATES, key, orjson.dumps({"template_id": f"bad-{i}", "sender_id": "flood", "category": "otp", "ts": ts})


async def produce_flood(bootstrap: str, lines: list[bytes]) -> tuple[dict[str, int], int]:
    """The good lines with ``FLOOD`` bad records spread evenly among them; records per topic, and how many are bad.

    ``DUPLICATES`` sends are written a second time right after themselves, as a producer's retry would: a copy
    far ahead of its place in event time would move the clock on and make the records between it late.
    """
    from aiokafka import AIOKafkaProducer

    rng = random.Random(19)
    good = [record(line) for line in lines]
    twice = set(rng.sample([i for i, r in enumerate(good) if r[0] == SENDS], DUPLICATES))
    stream: list[tuple[str, bytes | None, bytes | None]] = []
    per_good = FLOOD / len(good)
    made = 0
    for n, rec in enumerate(good, 1):
        while made < int(n * per_good):
            stream.append(malformed(rng, made))
            made += 1
        stream.append(rec)
        if n - 1 in twice:
            stream.append(rec)
    stream += [malformed(rng, i) for i in range(made, FLOOD)]
    counts: dict[str, int] = {}
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=50, max_batch_size=1 << 20,
                                max_request_size=2_000_000)
    await producer.start()
    try:
        for topic, key, value in stream:
            await producer.send(topic, value=value, key=key)
            counts[topic] = counts.get(topic, 0) + 1
        await producer.flush()
    finally:
        await producer.stop()
    return counts, FLOOD + DUPLICATES


def rss_mb(pid: int) -> float | None:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    return next(int(line.split()[1]) / 1024 for line in status.splitlines() if line.startswith("VmRSS:"))


@pytest.mark.broker
@only_on("tansu", "how a worker treats bad input does not depend on the broker, and the flood is the slowest test")
def test_a_flood_of_malformed_records_is_dead_lettered_while_every_good_record_counts_and_memory_stays_flat(
        tmp_path):
    lines, expected = simulated(tmp_path, SMALL)
    with running_broker() as broker:
        apply_topics(broker.url)
        counts, bad = asyncio.run(produce_flood(broker.bootstrap, lines))
        env = worker_env(broker.url, tmp_path)
        port = env["SMSSTREAM_METRICS_PORT"]
        worker = WorkerProcess(env, free_port(), tmp_path / "worker.log").start()
        samples: list[tuple[float, float]] = []
        stop = threading.Event()

        def sample() -> None:
            while not stop.wait(1.0):
                read = sum(metric(port, "smsstream_events_in_total", topic=t) or 0 for t in counts)
                rss = rss_mb(worker.pid)
                if rss is not None:
                    samples.append((read, rss))

        sampler = threading.Thread(target=sample, daemon=True)
        try:
            worker.wait_ready()
            sampler.start()
            alerts = asyncio.run(consume(broker.bootstrap, ALERTS, until_episodes(expected), 600))
            dead = asyncio.run(consume(broker.bootstrap, DEAD_LETTER, lambda ms: len(ms) >= bad, 600))
            wait_for(lambda: all(metric(port, "smsstream_events_in_total", topic=t) == n for t, n in counts.items()),
                     60, "every record to be counted")
            stop.set()
            sampler.join()
        finally:
            stop.set()
            worker.stop()
    letters = [orjson.loads(m.value) for m in dead]
    assert len(letters) == bad == FLOOD + DUPLICATES  # every bad record once, nothing else
    assert len({(d["topic"], d["partition"], d["offset"]) for d in letters}) == bad
    assert sum(d["error"].startswith("duplicate send") for d in letters) == DUPLICATES
    assert all(d["raw"] is not None or d["topic"] == BORROWERS for d in letters)
    same_episodes([orjson.loads(m.value) for m in alerts], expected, worker)
    total = sum(counts.values())
    # memory flat: what the worker holds after a quarter of the flood is what it holds at its end
    quarter = max((rss for read, rss in samples if read <= total / 4), default=None)
    end = max(rss for read, rss in samples if read >= total * 0.9)
    assert quarter is not None and end - quarter < 64, f"RSS {quarter:.0f} MB -> {end:.0f} MB: {samples[::10]}"
