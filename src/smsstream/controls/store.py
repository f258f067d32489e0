"""Control entries in and out: the ``sms.detector-config`` topic and files of entries.

The topic is read whole by a reader outside any consumer group (every
worker, ``smsstream config show``, ``replay --config-topic``): a consumer
group would give each reader a share of the partitions, and every reader
needs every entry. A file holds one entry a line as ``config show --json``
writes it: ``{"id": ..., "control": ..., ...}``.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable

import orjson

from smsstream.config import Settings
from smsstream.detection.controls import ControlBook, Entry, parse_entry
from smsstream.errors import BrokerUnreachable, ConfigError, InvalidJson, RecordError
from smsstream.records import CONTROLS

#: Reading the whole control topic (a few hundred small records) gives up after this long.
READ_TIMEOUT_S = 60.0


@dataclass(slots=True)
class ControlRecord:
    """One record of the control topic as read."""

    partition: int
    offset: int
    key: bytes | None
    value: bytes | None


#: what reading one control record can do to a book
OUTCOMES = ("applied", "removed", "invalid")


def apply_record(book: ControlBook, record: ControlRecord) -> str:
    """Apply one record to ``book``; ``applied``, ``removed`` or ``invalid`` (an invalid one changes nothing)."""
    try:
        entry = parse_entry(record.key, record.value)
    except RecordError:
        return "invalid"
    key = record.key.decode() if isinstance(record.key, bytes) else str(record.key)
    book.apply(key, entry)
    return "applied" if entry is not None else "removed"


def entry_lines(lines: Iterable[bytes]) -> Iterable[tuple[int, str | None, Any]]:
    """``(line number, id, value)`` of a file of entries: one JSON object a line, ``{"id": ..., ...}`` or
    ``{"id": ..., "value": null}`` to remove one (``smsstream config show --json`` writes this form)."""
    for lineno, line in enumerate(lines, 1):
        if not line.strip() or line.lstrip().startswith(b"#"):
            continue
        try:
            obj = orjson.loads(line)
        except orjson.JSONDecodeError:
            raise InvalidJson(f"line {lineno}: not a JSON object") from None
        if not isinstance(obj, dict):
            raise RecordError(f"line {lineno}: expected a JSON object with 'id'")
        key = obj.get("id")
        if not isinstance(key, str):
            raise RecordError(f"line {lineno}: field 'id' is missing or not a string")
        value = obj["value"] if "value" in obj and len(obj) == 2 else obj
        yield lineno, key, value


def load_entries(lines: Iterable[bytes], book: ControlBook | None = None) -> ControlBook:
    """A book from a file of entries (``entry_lines``); the first bad line raises ``RecordError`` naming it."""
    book = book if book is not None else ControlBook()
    for lineno, key, value in entry_lines(lines):
        try:
            book.apply(key or "", parse_entry(key, value))
        except RecordError as exc:
            raise type(exc)(f"line {lineno}: {exc}") from None
    return book


def read_file(path: str | Path, book: ControlBook | None = None) -> ControlBook:
    """A book of the entries in a file; a bad line stops it with an error naming the line and the field."""
    try:
        lines = Path(path).read_bytes().splitlines()
    except OSError as exc:
        raise ConfigError(f"cannot read the control entries file {path}: {exc.strerror or exc}") from None
    try:
        return load_entries(lines, book)
    except RecordError as exc:
        raise ConfigError(f"{path}: {exc}; fix the entry (`smsstream config validate {path}` checks a file)") from None


def entry_line(entry: Entry) -> bytes:
    """An entry as one line of a file (``read_file`` reads it back)."""
    return orjson.dumps({"id": entry.id, **entry.value()})


def _client_kwargs(settings: Settings) -> dict[str, Any]:
    from smsstream.kafka import client_kwargs

    return client_kwargs(settings)


async def _consumer(settings: Settings):
    from aiokafka import AIOKafkaConsumer
    from aiokafka.errors import KafkaError

    kwargs = _client_kwargs(settings)
    consumer = AIOKafkaConsumer(**kwargs, group_id=None, enable_auto_commit=False, auto_offset_reset="earliest",
                                request_timeout_ms=10_000)
    try:
        await asyncio.wait_for(consumer.start(), timeout=15)
    except (KafkaError, OSError, asyncio.TimeoutError) as exc:
        await stop(consumer)
        raise BrokerUnreachable(
            f"cannot reach the Kafka broker at {', '.join(kwargs['bootstrap_servers'])} ({exc.__class__.__name__}) "
            "to read the operator controls; check SMSSTREAM_BROKER"
        ) from None
    return consumer


async def stop(consumer) -> None:
    # aiokafka 0.14 re-raises the cancellation of its own task when a group-less consumer stops soon
    # after starting; a cancellation of the caller goes on
    try:
        await consumer.stop()
    except asyncio.CancelledError:
        task = asyncio.current_task()
        if task is not None and task.cancelling():
            raise


async def assign_all(consumer, topic: str = CONTROLS, timeout_s: float = 15.0) -> list:
    """Assign every partition of ``topic`` to a group-less consumer; a clear error if the topic is missing."""
    from aiokafka import TopicPartition

    deadline = time.monotonic() + timeout_s
    partitions = None
    while time.monotonic() < deadline:
        partitions = consumer.partitions_for_topic(topic)
        if partitions:
            break
        await consumer._client.force_metadata_update()
        partitions = consumer.partitions_for_topic(topic)
        if partitions:
            break
        await asyncio.sleep(0.2)
    if not partitions:
        raise ConfigError(f"topic {topic} does not exist; create it with `smsstream topics apply`")
    tps = [TopicPartition(topic, p) for p in sorted(partitions)]
    consumer.assign(tps)
    return tps


async def read_topic(settings: Settings, topic: str = CONTROLS,
                     on_record: Callable[[ControlRecord], None] | None = None) -> tuple[list[ControlRecord], dict]:
    """Every record of the control topic up to its end offsets, in offset order per partition, and the
    position reached in each partition (``{partition: next offset}``)."""
    consumer = await _consumer(settings)
    records: list[ControlRecord] = []
    try:
        tps = await assign_all(consumer, topic)
        ends = await consumer.end_offsets(tps)
        for tp in tps:
            await consumer.seek_to_beginning(tp)
        left = {tp for tp in tps if ends[tp] > await consumer.position(tp)}
        deadline = time.monotonic() + READ_TIMEOUT_S
        while left:
            if time.monotonic() > deadline:
                raise BrokerUnreachable(f"reading {topic} to its end took over {READ_TIMEOUT_S:.0f} s; check the "
                                        "broker's health")
            batch = await consumer.getmany(*left, timeout_ms=2_000)
            for tp, messages in batch.items():
                for m in messages:
                    if m.offset >= ends[tp]:
                        continue
                    record = ControlRecord(tp.partition, m.offset, m.key, m.value)
                    records.append(record)
                    if on_record is not None:
                        on_record(record)
            for tp in list(left):
                if await consumer.position(tp) >= ends[tp]:
                    left.discard(tp)
        return records, {tp.partition: ends[tp] for tp in tps}
    finally:
        await stop(consumer)


def book_from_topic(settings: Settings) -> ControlBook:
    """The entries on the control topic now (invalid records left out, as every worker leaves them out)."""
    book = ControlBook()
    records, _ = asyncio.run(read_topic(settings))
    for record in records:
        apply_record(book, record)
    return book


async def write_records(settings: Settings, records: Iterable[tuple[str, dict | None]], topic: str = CONTROLS) -> None:
    """Write ``(id, value or None)`` records to the control topic and wait until the broker has them."""
    from aiokafka import AIOKafkaProducer
    from aiokafka.errors import KafkaError

    kwargs = _client_kwargs(settings)
    producer = AIOKafkaProducer(**kwargs, acks="all", enable_idempotence=False, request_timeout_ms=15_000)
    try:
        await asyncio.wait_for(producer.start(), timeout=15)
    except (KafkaError, OSError, asyncio.TimeoutError) as exc:
        with contextlib.suppress(Exception):
            await producer.stop()
        raise BrokerUnreachable(
            f"cannot reach the Kafka broker at {', '.join(kwargs['bootstrap_servers'])} ({exc.__class__.__name__}) "
            "to write the control entry; check SMSSTREAM_BROKER"
        ) from None
    try:
        for key, value in records:
            await producer.send_and_wait(topic, key=key.encode(), value=None if value is None else orjson.dumps(value))
    finally:
        await producer.stop()
