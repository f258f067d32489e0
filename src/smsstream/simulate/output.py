"""Where simulated records go: the noisy arrival stream, and the JSONL and broker writers.

``Stream`` takes records in any order with their event time, adds the noise of a
real pipeline (duplicates, arrival out of order by up to several minutes, the
odd malformed record), and hands them to a writer in arrival order, one
simulated stretch at a time so memory stays bounded by a day of traffic.
"""

from __future__ import annotations

import asyncio
import logging
import random
import sys
import time
from collections import Counter
from typing import IO, Protocol

import orjson

from smsstream.records import BINDINGS, BORROWERS, RECEIPTS, SENDS, TEMPLATES
from smsstream.vocabulary import MINUTE_MS

TOPICS = (SENDS, RECEIPTS, BORROWERS, TEMPLATES, BINDINGS)
_TOPIC_BYTES = {t: t.encode() for t in TOPICS}


class Writer(Protocol):
    def write(self, topic: str, key: str, value: bytes | None, ts: int) -> None:
        """``value``: the record's bytes as they go on the wire (None for a tombstone)."""

    def close(self) -> None: ...


class Noise:
    """Rates of the imperfections a real feed has; all zero gives a clean feed."""

    def __init__(self, duplicate: float = 0.002, reorder: float = 0.01, max_reorder_ms: int = 5 * MINUTE_MS,
                 malformed: float = 0.0003):
        self.duplicate = duplicate
        self.reorder = reorder
        self.max_reorder_ms = max_reorder_ms
        self.malformed = malformed


class Stream:
    """Collects records with their arrival time and releases them in arrival order."""

    def __init__(self, writer: Writer, rng: random.Random, noise: Noise):
        self.writer = writer
        self.rng = rng
        self.noise = noise
        self._pending: list[tuple[int, int, str, str, bytes | None]] = []
        self._seq = 0
        self.counts: Counter[str] = Counter()
        self.duplicates: Counter[str] = Counter()
        self.malformed: Counter[str] = Counter()

    def emit(self, topic: str, key: str, value: dict | None, ts: int, noisy: bool = True,
             rng: random.Random | None = None) -> None:
        """``rng``: the random stream the record's noise is drawn from, when not the stream's own."""
        payload = None if value is None else _compact(orjson.dumps(value))
        arrival = ts
        if noisy:
            rng = rng or self.rng
            noise = self.noise
            roll = rng.random()
            if roll < noise.reorder:
                # mostly seconds late, a tail up to the bound
                late = int(rng.expovariate(1 / 20_000)) if roll < noise.reorder * 0.9 else rng.randrange(MINUTE_MS, noise.max_reorder_ms)
                arrival += min(late, noise.max_reorder_ms)
            elif roll > 1 - noise.duplicate and payload is not None:
                self._push(ts + rng.randrange(0, 120_000), topic, key, payload)
                self.duplicates[topic] += 1
            elif roll > 1 - noise.duplicate - noise.malformed and payload is not None:
                reason, raw = malform(rng, topic, value)  # type: ignore[arg-type]
                self._push(ts + rng.randrange(0, 5_000), topic, key, raw)
                self.malformed[reason] += 1
        self._push(arrival, topic, key, payload)
        self.counts[topic] += 1

    def emit_late(self, topic: str, key: str, value: dict, ts: int, delay_ms: int) -> None:
        """A record that reaches the feed ``delay_ms`` after it happened (gateway batching)."""
        self._push(ts + delay_ms, topic, key, _compact(orjson.dumps(value)))
        self.counts[topic] += 1

    def _push(self, arrival: int, topic: str, key: str, payload) -> None:
        self._seq += 1
        self._pending.append((arrival, self._seq, topic, key, payload))

    def release(self, until: int) -> int:
        """Write every record that has arrived before ``until``; return how many."""
        pending = self._pending
        pending.sort()
        cut = 0
        n = len(pending)
        while cut < n and pending[cut][0] < until:
            cut += 1
        write = self.writer.write
        for arrival, _, topic, key, payload in pending[:cut]:
            write(topic, key, payload, arrival)
        self._pending = pending[cut:]
        return cut

    def release_all(self) -> int:
        return self.release(1 << 62)


def _compact(payload: bytes) -> bytes:
    """An exact-size copy: orjson's result keeps a 4 KiB allocation, which adds up over a day of buffered records."""
    return bytes(memoryview(payload))


def malform(rng: random.Random, topic: str, value: dict) -> tuple[str, str]:
    """A broken copy of a record, as a string: what a buggy producer or a bad hop would write."""
    choice = rng.randrange(8)
    if choice == 0:
        text = orjson.dumps(value).decode()
        return "truncated_json", text[: rng.randrange(1, max(2, len(text) - 1))]
    broken = dict(value)
    if choice == 1:
        broken["ts"] = broken["ts"] // 1000
        return "ts_in_seconds", orjson.dumps(broken).decode()
    if choice == 2 and "number" in broken:
        broken["number"] = broken["number"][3:]
        return "number_not_e164", orjson.dumps(broken).decode()
    if choice == 3 and "category" in broken:
        broken["category"] = rng.choice(("reminder", "REPAYMENT_REMINDER", "promo"))
        return "unknown_category", orjson.dumps(broken).decode()
    if choice == 4 and "status" in broken and topic == RECEIPTS:
        broken["status"] = rng.choice(("delivered", "FAILED", "SENT"))
        return "unknown_status", orjson.dumps(broken).decode()
    if choice == 5 and "body" in broken:
        broken["body"] = broken["body"] * (5000 // max(1, len(broken["body"])) + 1)
        return "body_too_long", orjson.dumps(broken).decode()
    if choice == 6:
        return "not_an_object", orjson.dumps([value]).decode()
    first = next(iter(broken))
    broken.pop(first)
    return f"missing_{first}", orjson.dumps(broken).decode()


class JsonlWriter:
    """The replay format of CONTRACT.md: ``{"topic", "key", "value"}`` a line, ``value`` a string if malformed."""

    def __init__(self, handle: IO[bytes]):
        self.handle = handle
        self._buffer: list[bytes] = []

    def write(self, topic: str, key: str, value, ts: int) -> None:
        if value is None:
            body = b"null"
        elif isinstance(value, str):
            body = orjson.dumps(value)
        else:
            body = value
        self._buffer.append(b'{"topic":"' + _TOPIC_BYTES[topic] + b'","key":' + orjson.dumps(key) + b',"value":' + body + b"}\n")
        if len(self._buffer) >= 20_000:
            self.flush()

    def flush(self) -> None:
        self.handle.write(b"".join(self._buffer))
        self._buffer.clear()

    def close(self) -> None:
        self.flush()
        self.handle.flush()


class BrokerWriter:
    """Produces each record to its Kafka topic, keyed as CONTRACT.md says; malformed records as raw bytes.

    With ``speedup`` the producer waits so that event time advances ``speedup``
    times faster than the wall clock; without it, it writes as fast as it can.
    """

    def __init__(self, producer_kwargs: dict, speedup: float | None, start_ts: int):
        self.loop = asyncio.new_event_loop()
        self.speedup = speedup
        self.start_ts = start_ts
        self.wall_start: float | None = None
        self.batch: list[tuple[str, bytes, bytes | None]] = []
        from aiokafka import AIOKafkaProducer

        async def start():
            producer = AIOKafkaProducer(linger_ms=20, max_batch_size=512 * 1024, **producer_kwargs)
            try:
                await asyncio.wait_for(producer.start(), 30)
            except BaseException:
                await producer.stop()
                raise
            return producer

        quiet = logging.getLogger("aiokafka")
        level = quiet.level
        quiet.setLevel(logging.CRITICAL)  # the one-line error below says it better
        try:
            self.producer = self.loop.run_until_complete(start())
        except Exception as exc:  # noqa: BLE001 - any connection failure becomes one line
            from smsstream.errors import BrokerUnreachable

            self.loop.close()
            servers = ", ".join(producer_kwargs.get("bootstrap_servers", []))
            raise BrokerUnreachable(
                f"cannot reach the broker at {servers} ({exc.__class__.__name__}); start one with "
                "`smsstream broker` or set SMSSTREAM_BROKER / --broker"
            ) from None
        finally:
            quiet.setLevel(level)

    def write(self, topic: str, key: str, value, ts: int) -> None:
        if isinstance(value, str):
            value = value.encode("utf-8")
        if self.speedup:
            if self.wall_start is None:
                self.wall_start = time.monotonic()
            due = self.wall_start + (ts - self.start_ts) / 1000 / self.speedup
            if due > time.monotonic() + 0.05:
                self._send_batch()
                time.sleep(max(0.0, due - time.monotonic()))
        self.batch.append((topic, key.encode("utf-8"), value))
        if len(self.batch) >= 5_000:
            self._send_batch()

    def _send_batch(self) -> None:
        if not self.batch:
            return
        batch, self.batch = self.batch, []

        async def send_all():
            futures = [await self.producer.send(t, value=v, key=k) for t, k, v in batch]
            await asyncio.gather(*futures)

        self.loop.run_until_complete(send_all())

    def close(self) -> None:
        try:
            self._send_batch()
            self.loop.run_until_complete(self.producer.stop())
        finally:
            self.loop.close()


class Progress:
    """A one-line progress bar on stderr, redrawn at most a few times a second."""

    def __init__(self, total: float, enabled: bool | None = None, stream: IO[str] = sys.stderr):
        self.total = total
        self.stream = stream
        self.enabled = stream.isatty() if enabled is None else enabled
        self.started = time.monotonic()
        self._last = 0.0

    def update(self, done: float, records: int, label: str) -> None:
        now = time.monotonic()
        if not self.enabled or (now - self._last < 0.2 and done < self.total):
            return
        self._last = now
        share = min(1.0, done / self.total) if self.total else 1.0
        bar = "#" * int(share * 30)
        self.stream.write(
            f"\rsimulate [{bar:<30}] {share:4.0%} {label} {records:,} records {now - self.started:5.1f}s"
        )
        self.stream.flush()

    def finish(self) -> None:
        if self.enabled:
            self.stream.write("\n")
            self.stream.flush()
