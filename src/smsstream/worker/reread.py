"""What the worker reads back from the broker outside its consumer group: raw input to dead-letter, and
what release 0.1 left on other partitions.

A part refuses a record (a duplicate, one too late) long after the router
passed it on, and the items the router sends carry where a record came from,
not its raw bytes (which may hold a number in clear): ``with_raw`` reads
them from the input partition, so the dead letter carries the record as it
arrived. ``release_0_1`` gathers, for a part keyed by numbers, every
partition's 0.1 snapshot from its table's changelog and the 0.1 messages left
unread on its topic (``shards.Earlier``).
"""

from __future__ import annotations

import logging
from typing import Any

from smsstream import kafka
from smsstream.config import Settings
from smsstream.detection.driver import Source
from smsstream.errors import RecordError
from smsstream.worker.flow import read_snapshot
from smsstream.worker.shards import Earlier
from smsstream.worker.snapshots import load_snapshot
from smsstream.worker.transport import format_of

log = logging.getLogger(__name__)


async def with_raw(settings: Settings, dead: list[tuple[Source, RecordError]]) -> list[tuple[Source, RecordError]]:
    """The refused records, each with its key and raw value read from its input partition.

    A record no longer there (retention) keeps a null ``raw``; its error says so.
    """
    wanted: dict[tuple[str, int], list[int]] = {}
    for source, _ in dead:
        if source.raw is None and source.partition is not None:
            wanted.setdefault((source.topic, source.partition), []).append(source.offset)
    found: dict[tuple[str, int], dict[int, tuple[Any, Any]]] = {}
    for (topic, partition), offsets in wanted.items():
        try:
            found[(topic, partition)] = await kafka.read_offsets(settings, topic, partition, offsets)
        except Exception as exc:  # noqa: BLE001 - the dead letter goes out without its raw bytes then
            log.warning("could not read back %d refused record(s) of %s partition %d to dead-letter them (%s: %s); "
                        "they are dead-lettered without their raw bytes", len(offsets), topic, partition,
                        type(exc).__name__, exc)
    out = []
    for source, error in dead:
        if source.raw is None and source.partition is not None:
            read = found.get((source.topic, source.partition))
            got = None if read is None else read.get(source.offset)
            if got is not None:
                source = Source(source.topic, source.partition, source.offset, got[0], got[1])
            else:
                why = "could not be read back" if read is None else f"is no longer on {source.topic} (retention)"
                error = type(error)(f"{error} (the record {why}: raw not kept)")
        out.append((source, error))
    return out


async def release_0_1(settings: Settings, part_topic: str, changelog: str, partitions: int) -> Earlier:
    """Every partition's release 0.1 snapshot of one part, and the 0.1 messages after it on the part's topic."""
    found = {}
    for q in range(partitions):
        table: dict = {}
        for _, key, value in await kafka.read_range(settings, changelog, q, 0, None):
            if value is None:
                table.pop(key, None)
            else:
                table[key] = value
        raw = load_snapshot(table, q, release_0_1=True)
        covered = read_snapshot(raw)[1]["covered"] if raw else -1
        messages = [(offset, value) for offset, _, value in await kafka.read_range(settings, part_topic, q,
                                                                                   covered + 1, None)
                    if value and format_of(value) == 0]
        found[q] = (raw, messages)
    log.info("%s: read release 0.1's snapshots and %d unread messages of its %d partitions", part_topic,
             sum(len(m) for _, m in found.values()), partitions)
    return Earlier(found)
