"""How items and heartbeats travel on the worker's internal topics.

Only smsstream workers write and read these topics, so a message is a
pickle behind a three-byte header: ``S``, the format version, and one byte
that says what it carries. Input records travel as plain tuples of their
fields, not as objects: a pickled slotted dataclass costs about five times
as much to write and read, and every input record is copied to several
parts. Facts (a minority, most of them added up per minute) travel as the
objects they are.

Every number on these topics is a pseudonym (``detection.intake``), and an
input record carries no raw bytes and no key: where it came from (topic,
partition, offset) is enough to dead-letter it, from the input itself
(``worker.deadletter``).

Release 0.1 wrote ``I``/``H`` and a pickle, with numbers and raw records in
clear; ``decode`` still reads those messages and hands them to
``worker.upgrade`` to be made like today's (``Upgraded``), so a worker
upgraded mid-stream loses nothing its predecessor left on the topics. A
message of a newer format than this release knows raises ``NewerFormat``.
"""

from __future__ import annotations

import pickle
from dataclasses import fields
from operator import attrgetter
from typing import Any, Callable

from smsstream import records
from smsstream.detection.driver import Item, Source
from smsstream.errors import SmsstreamError
from smsstream.worker.flow import Heartbeat

#: The format this release writes; ``decode`` reads it and every older one.
FORMAT = 1
_ITEMS, _BEATS = b"I", b"H"
_HEADER = b"S" + bytes([FORMAT])
_PROTOCOL = pickle.HIGHEST_PROTOCOL

#: What one internal-topic message carries: items in their origin's order, or heartbeats.
Message = list[Item] | list[Heartbeat]


class NewerFormat(SmsstreamError):
    """A message or snapshot written by a newer release than this one."""


class Upgraded(list):
    """Items of a message written by an older release (``version``), already made like today's."""

    version = 0


_RECORD_TYPES: dict[str, type] = {
    records.SENDS: records.Send,
    records.RECEIPTS: records.Receipt,
    records.BORROWERS: records.Borrower,
    records.TEMPLATES: records.Template,
    records.BINDINGS: records.Binding,
}
_ROW_OF: dict[str, Callable[[Any], tuple]] = {
    topic: attrgetter(*(f.name for f in fields(cls))) for topic, cls in _RECORD_TYPES.items()
}
_SEND_SOURCE = [f.name for f in fields(records.Send)].index("source")
_source_row = attrgetter(*(f.name for f in fields(records.Source)))


def _record_row(topic: str, record: Any) -> tuple:
    row = _ROW_OF[topic](record)
    if topic == records.SENDS and row[_SEND_SOURCE] is not None:
        i = _SEND_SOURCE
        row = (*row[:i], _source_row(row[i]), *row[i + 1:])
    return row


def _record(topic: str, row: tuple) -> Any:
    if topic == records.SENDS and row[_SEND_SOURCE] is not None:
        i = _SEND_SOURCE
        return records.Send(*row[:i], records.Source(*row[i]), *row[i + 1:])
    return _RECORD_TYPES[topic](*row)


def encode(message: Message) -> bytes:
    if message and message[0].__class__ is Heartbeat:
        return _HEADER + _BEATS + pickle.dumps([(b.origin, b.watermark, b.idle) for b in message],
                                               protocol=_PROTOCOL)
    rows = []
    for item in message:
        source = item.source
        value = item.value
        if item.stream in _ROW_OF:
            value = _record_row(item.stream, value)
        rows.append((item.stream, item.key, item.ts, item.origin, item.seq,
                     None if source is None else (source.topic, source.partition, source.offset), value))
    return _HEADER + _ITEMS + pickle.dumps(rows, protocol=_PROTOCOL)


def format_of(raw: bytes) -> int:
    """The format version a message was written in (0: release 0.1)."""
    return raw[1] if raw[:1] == b"S" else 0


def decode(raw: bytes, upgrade: Callable[[list[Item]], list[Item]] | None = None) -> Message:
    """A message as written by ``encode`` of this release or an older one (then put through ``upgrade``)."""
    if raw[:1] != b"S":
        return _decode_0_1(raw, upgrade)
    if raw[1] > FORMAT:
        raise NewerFormat(f"written in format {raw[1]} by a newer smsstream; this release reads up to {FORMAT}")
    rows = pickle.loads(memoryview(raw)[3:])
    if raw[2:3] == _BEATS:
        return [Heartbeat(origin, watermark, idle) for origin, watermark, idle in rows]
    kinds = _RECORD_TYPES
    return [Item(stream, key, _record(stream, value) if stream in kinds else value, ts, origin,
                 None if source is None else Source(*source, None, None), seq)
            for stream, key, ts, origin, seq, source, value in rows]


def _decode_0_1(raw: bytes, upgrade: Callable[[list[Item]], list[Item]] | None) -> Message:
    """Release 0.1's messages: items carry numbers in clear and their sources the raw record."""
    rows = pickle.loads(memoryview(raw)[1:])
    if raw[:1] == _BEATS:
        return [Heartbeat(origin, watermark, idle) for origin, watermark, idle in rows]
    if upgrade is None:
        raise NewerFormat("a message of release 0.1 needs upgrading, and no upgrade was given")
    kinds = _RECORD_TYPES
    items = [Item(stream, key, _record(stream, value) if stream in kinds else value, ts, origin,
                  None if source is None else Source(*source[:3], None, None), seq)
             for stream, key, ts, origin, seq, source, value in rows]
    return Upgraded(upgrade(items))
