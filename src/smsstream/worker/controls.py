"""Operator controls in the worker: the whole of ``sms.detector-config`` into the worker's ``ControlBook``.

Every worker needs every entry (a consumer group would give it a share of the
partitions), so each reads the topic on its own, outside the group:

- at start, before Faust starts (``smsstream worker``), it reads the topic to
  its end (``load``): no event is judged before the entries written so far
  are in force, after a restart as on the first start;
- then a task follows it (``follow``), polling every ``POLL_S``: an entry
  reaches every worker within a second or two of being written.

Entries act on events from their ``ts`` on (``detection.controls``), so a
worker that reads an entry while it works through a backlog applies it to
exactly the events replay applies it to. An invalid record changes nothing
here and is only counted; the worker that owns the topic's partition in the
consumer group dead-letters it once (``dead_letter_agent``), as for every
input topic.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Awaitable, Callable

from smsstream.config import Settings
from smsstream.controls.store import OUTCOMES, ControlRecord, apply_record, assign_all, read_topic, stop
from smsstream.detection.controls import ControlBook, parse_entry
from smsstream.errors import RecordError
from smsstream.metrics import Metrics
from smsstream.records import CONTROLS
from smsstream.worker.flow import Source

log = logging.getLogger(__name__)

#: How often a worker asks the control topic for news.
POLL_S = 0.5
#: After a failed read, the next try comes this much later.
RETRY_S = 5.0


class ControlsReader:
    """Keeps one worker's ``ControlBook`` equal to the control topic: read whole at start, then followed."""

    def __init__(self, settings: Settings, book: ControlBook, metrics: Metrics | None = None,
                 topic: str = CONTROLS):
        self.settings = settings
        self.book = book
        self.metrics = metrics
        self.topic = topic
        #: partition -> next offset to read
        self.positions: dict[int, int] = {}
        #: the topic has been read to its end at least once
        self.loaded = False
        if metrics is not None:
            for outcome in OUTCOMES:  # exported at 0 from the start, so a first invalid entry shows as a rise
                metrics.controls_records.labels(outcome)

    def take(self, record: ControlRecord) -> str:
        """Apply one record; an invalid one is counted and changes nothing."""
        outcome = apply_record(self.book, record)
        self.positions[record.partition] = record.offset + 1
        if outcome == "invalid":
            log.warning("%s partition %d offset %d: invalid control entry left out (dead-lettered by the worker "
                        "that consumes the topic); the entries in force are unchanged", self.topic,
                        record.partition, record.offset)
        if self.metrics is not None:
            self.metrics.controls_records.labels(outcome).inc()
            self.metrics.controls_entries.set(len(self.book))
        return outcome

    async def load(self) -> None:
        """Read the topic to its end into the book (before the worker judges anything)."""
        _, ends = await read_topic(self.settings, self.topic, self.take)
        for partition, end in ends.items():
            self.positions[partition] = max(self.positions.get(partition, 0), end)
        self.loaded = True
        if self.metrics is not None:
            self.metrics.controls_entries.set(len(self.book))
        log.info("operator controls: %d entries in force or scheduled from %s", len(self.book), self.topic)

    async def follow(self, should_stop: Callable[[], bool], sleep: Callable[[float], Awaitable[Any]]) -> None:
        """Poll the topic for new records until ``should_stop``; a failed read is logged and tried again."""
        from aiokafka import AIOKafkaConsumer

        from smsstream.kafka import client_kwargs

        while not should_stop():
            consumer = AIOKafkaConsumer(**client_kwargs(self.settings), group_id=None, enable_auto_commit=False,
                                        auto_offset_reset="earliest")
            try:
                await consumer.start()
                for tp in await assign_all(consumer, self.topic):
                    if tp.partition in self.positions:
                        consumer.seek(tp, self.positions[tp.partition])
                    else:
                        await consumer.seek_to_beginning(tp)
                self.loaded = True
                while not should_stop():
                    batch = await consumer.getmany(timeout_ms=int(POLL_S * 1000))
                    for tp, messages in batch.items():
                        for m in messages:
                            self.take(ControlRecord(tp.partition, m.offset, m.key, m.value))
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - a broker hiccup must not stop the worker
                log.warning("reading %s failed (%s: %s); the controls in force stay as they are, retrying in %s s",
                            self.topic, type(exc).__name__, exc, RETRY_S)
                await sleep(RETRY_S)
            finally:
                await stop(consumer)

    def health(self) -> dict:
        """What ``/health`` says of the controls: how many entries, which, and whether the topic was read."""
        ids = [e.id for e in self.book.entries()]
        return {"entries": len(ids), "ids": ids[:100], "revision": self.book.revision, "loaded": self.loaded}


def dead_letter_agent(send_dead: Callable[[Source, RecordError], Awaitable[Any]]):
    """The agent that reads the control topic in the consumer group only to dead-letter invalid records.

    One worker owns the topic's partition, so an invalid record is
    dead-lettered once (and counted in ``smsstream_dead_letters_total``),
    not once per worker; committed offsets keep a restart from doing it again.
    """

    async def check_controls(stream):
        async for event in stream.events():
            message = event.message
            try:
                parse_entry(message.key, message.value)
            except RecordError as exc:
                await send_dead(Source(CONTROLS, message.partition, message.offset, message.key, message.value), exc)

    return check_controls
