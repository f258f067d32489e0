"""How items and heartbeats travel on the worker's internal topics.

Only smsstream workers write and read these topics, so a message is a
pickle, led by one byte that says what it carries. Input records travel as
plain tuples of their fields, not as objects: a pickled slotted dataclass
costs about five times as much to write and read, and every input record
is copied to several parts. Facts (a minority, most of them added up per
minute) travel as the objects they are.
"""

from __future__ import annotations

import pickle
from dataclasses import fields
from operator import attrgetter
from typing import Any, Callable

from smsstream import records
from smsstream.detection.driver import Item, Source
from smsstream.worker.flow import Heartbeat

_ITEMS, _BEATS = b"I", b"H"
_PROTOCOL = pickle.HIGHEST_PROTOCOL

#: What one internal-topic message carries: items in their origin's order, or heartbeats.
Message = list[Item] | list[Heartbeat]

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
        return _BEATS + pickle.dumps([(b.origin, b.watermark, b.idle) for b in message], protocol=_PROTOCOL)
    rows = []
    for item in message:
        source = item.source
        value = item.value
        if item.stream in _ROW_OF:
            value = _record_row(item.stream, value)
        rows.append((item.stream, item.key, item.ts, item.origin, item.seq,
                     None if source is None else (source.topic, source.partition, source.offset, source.key,
                                                  source.raw),
                     value))
    return _ITEMS + pickle.dumps(rows, protocol=_PROTOCOL)


def decode(raw: bytes) -> Message:
    rows = pickle.loads(memoryview(raw)[1:])
    if raw[:1] == _BEATS:
        return [Heartbeat(origin, watermark, idle) for origin, watermark, idle in rows]
    kinds = _RECORD_TYPES
    return [Item(stream, key, _record(stream, value) if stream in kinds else value, ts, origin,
                 None if source is None else Source(*source), seq)
            for stream, key, ts, origin, seq, source, value in rows]
