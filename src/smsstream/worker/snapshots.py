"""Shard snapshots in a Faust table, saved only once everything they cover is delivered.

A shard's snapshot marks its events as done, so it may reach the table only
after the facts, alerts and dead letters those events produced are on the
broker (``checkpoint``). Snapshots are compressed and cut into chunks under
Kafka's message limit, written into the slot not in use, then switched to
(``save_snapshot``), so a worker killed half-way leaves the previous one whole.

Release 0.1 saved its snapshots under the bare partition number; today's go
under ``s1/<partition>`` (``KEY_PREFIX``), so a 0.1 snapshot stays whole in the
table after the upgrade, for the shards of other partitions that take their
entities from it (``worker.upgrade``), and a worker prefers today's.
"""

from __future__ import annotations

import asyncio
import time
import zlib
from dataclasses import dataclass
from typing import Any, Awaitable, Callable

import orjson

#: Table values stay well under Kafka's default 1 MB message limit.
CHUNK_BYTES = 256 * 1024
#: Where today's snapshots live in the table; release 0.1's had no prefix.
KEY_PREFIX = b"s1/"


@dataclass(frozen=True)
class Checkpointed:
    """What :func:`checkpoint` did."""

    saved: bool
    #: the first delivery that failed; nothing was saved then
    failed: BaseException | None = None
    #: time to take and save the snapshot, not counting the wait for deliveries
    seconds: float = 0.0


def _failure(delivery: asyncio.Future) -> BaseException | None:
    """Why a finished delivery failed, or None if the broker took it."""
    if delivery.cancelled():
        return asyncio.CancelledError("the delivery was cancelled (the producer is stopping)")
    return delivery.exception()


def forget_delivered(sent: list) -> None:
    """Drop the deliveries already confirmed; keep those in flight, and failures for the next checkpoint."""
    sent[:] = [f for f in sent if not f.done() or _failure(f) is not None]


async def delivered(sent: list[Awaitable]) -> BaseException | None:
    """Wait until every message in ``sent`` is delivered or has failed; the first failure, if any.

    Cancelling the wait (a worker shutting down) leaves the deliveries
    themselves alone: they belong to the producer, which flushes them.
    """
    futures = [asyncio.ensure_future(f) for f in sent]
    sent.clear()
    if futures:
        await asyncio.wait(futures)
    return next((failure for failure in map(_failure, futures) if failure is not None), None)


async def checkpoint(table: Any, partition: int, sent: list[Awaitable], snapshot: Callable[[], bytes],
                     owned: Callable[[], bool]) -> Checkpointed:
    """Save a shard's snapshot once everything it sent since the last one is on the broker.

    A snapshot marks its events as done. Saved while their facts, alerts or
    dead letters were still in the producer's buffers, a worker killed then
    would restore a state whose outputs never left: the parts downstream
    would miss those facts for good. Nothing is saved if a delivery failed,
    nor for a shard that stopped being this worker's during the wait (its
    partition's table is its new owner's).
    """
    failed = await delivered(sent)
    if failed is not None or not owned():
        return Checkpointed(saved=False, failed=failed)
    started = time.monotonic()
    save_snapshot(table, partition, snapshot())
    return Checkpointed(saved=True, seconds=time.monotonic() - started)


def save_snapshot(table: Any, partition: int, blob: bytes) -> None:
    """Write a shard's snapshot compressed, in chunks, into the slot not in use, then switch slots.

    Two slots make the switch atomic: a worker killed half-way leaves the
    manifest pointing at the previous, complete snapshot.
    """
    data = zlib.compress(blob, 1)
    chunks = [data[i:i + CHUNK_BYTES] for i in range(0, len(data), CHUNK_BYTES)] or [b""]
    key = KEY_PREFIX + str(partition).encode()
    manifest = orjson.loads(table[key]) if table.get(key) else {"slot": 1, "counts": [0, 0]}
    slot = 1 - manifest["slot"]
    for i, chunk in enumerate(chunks):
        table[b"%s/%d/%d" % (key, slot, i)] = chunk
    for i in range(len(chunks), manifest["counts"][slot]):
        # a worker killed between these deletes and the manifest leaves some of them done already
        table.pop(b"%s/%d/%d" % (key, slot, i), None)
    manifest["counts"][slot] = len(chunks)
    manifest["slot"] = slot
    table[key] = orjson.dumps(manifest)


def load_snapshot(table: Any, partition: int, release_0_1: bool = False) -> bytes | None:
    """The partition's latest snapshot (today's, else release 0.1's), or 0.1's only; None if there is none."""
    if not release_0_1:
        today = _load(table, KEY_PREFIX + str(partition).encode())
        if today is not None:
            return today
    return _load(table, str(partition).encode())


def _load(table: Any, key: bytes) -> bytes | None:
    raw = table.get(key)
    if not raw:
        return None
    manifest = orjson.loads(raw)
    slot = manifest["slot"]
    data = b"".join(table[b"%s/%d/%d" % (key, slot, i)] for i in range(manifest["counts"][slot]))
    return zlib.decompress(data)
