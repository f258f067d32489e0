"""Delivery bookkeeping shared by the targets: what is still owed, and how one HTTP attempt is made.

:class:`Ledger` holds every record read and not yet settled by every target, per
partition, so the consumer commits a partition only up to its first unsettled
record: whatever a crash or a rebalance interrupts is read again. :class:`Courier`
makes one attempt at a time for one target, sleeps an exponential backoff with
jitter after a failure, and keeps the sent/failed/retried figures and the logs.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections import deque
from dataclasses import dataclass, field
from typing import Callable, Iterable

import aiohttp
from aiokafka import TopicPartition
from yarl import URL

from smsstream import __version__
from smsstream.config import NotifySettings
from smsstream.notify.alert import mask_clear_numbers
from smsstream.notify.metrics import NotifyMetrics

log = logging.getLogger("smsstream.notify")

#: Answers that mean "this payload will never be accepted": retrying cannot help, so it is dropped.
REJECTED_STATUSES = frozenset({400, 413, 422})

SENT, FAILED, REJECTED, GAVE_UP = "sent", "failed", "rejected", "gave_up"
USER_AGENT = f"smsstream-notify/{__version__}"


@dataclass(eq=False)
class Pending:
    """One record read from ``sms.alerts``; ``waiting`` names the targets that have not settled it."""

    tp: TopicPartition
    offset: int
    read_at: float
    waiting: set[str] = field(default_factory=set)


class Ledger:
    """Records read and not yet settled by every target, in offset order per partition."""

    def __init__(self) -> None:
        self._queues: dict[TopicPartition, deque[Pending]] = {}
        self._size = 0

    def __len__(self) -> int:
        return self._size

    def add(self, tp: TopicPartition, offset: int, read_at: float, targets: Iterable[str]) -> Pending:
        pending = Pending(tp, offset, read_at, set(targets))
        self._queues.setdefault(tp, deque()).append(pending)
        self._size += 1
        return pending

    @staticmethod
    def settle(pending: Pending, target: str) -> None:
        """``target`` delivered, dropped or skipped the record: it no longer holds the commit back."""
        pending.waiting.discard(target)

    def commit_points(self) -> dict[TopicPartition, int]:
        """Partitions whose first records are settled, with the offset to commit (the next one to read)."""
        points = {}
        for tp, queue in self._queues.items():
            while queue and not queue[0].waiting:
                points[tp] = queue.popleft().offset + 1
                self._size -= 1
        return points

    def forget(self, partitions: Iterable[TopicPartition]) -> None:
        """Partitions this consumer no longer owns: their next owner reads them from the committed offset."""
        for tp in partitions:
            self._size -= len(self._queues.pop(tp, ()))

    def owed(self, target: str) -> tuple[int, float | None]:
        """How many records ``target`` has not settled, and when the oldest of them was read."""
        count, oldest = 0, None
        for queue in self._queues.values():
            first = True
            for pending in queue:
                if target in pending.waiting:
                    count += 1
                    if first:
                        oldest = pending.read_at if oldest is None else min(oldest, pending.read_at)
                        first = False
        return count, oldest


class Backoff:
    """Exponential backoff with jitter: the n-th failure in a row waits between d/2 and d, d = min(max, min * 2^(n-1))."""

    def __init__(self, min_s: float, max_s: float, rng: Callable[[], float] = random.random):
        self.min_s, self.max_s, self._rng = min_s, max_s, rng
        self.failures = 0

    def next_delay(self) -> float:
        self.failures += 1
        ceiling = min(self.max_s, self.min_s * 2 ** min(self.failures - 1, 62))
        return ceiling / 2 + self._rng() * ceiling / 2

    def reset(self) -> None:
        self.failures = 0


def shown(url: str) -> str:
    """A URL fit for logs: without user and password."""
    parsed = URL(url)
    return str(parsed.with_user(None)) if parsed.is_absolute() else "<not a URL>"


class Courier:
    """One target's HTTP attempts, one at a time, with backoff, give-up, metrics and logs."""

    def __init__(self, target: str, url: str, settings: NotifySettings, metrics: NotifyMetrics,
                 session: aiohttp.ClientSession | None = None):
        self.target, self.url = target, url
        self.max_attempts = settings.max_attempts
        self.backoff = Backoff(settings.retry_min_s, settings.retry_max_s)
        self.metrics = metrics
        self._timeout = aiohttp.ClientTimeout(total=settings.timeout_s)
        self._session = session
        #: failed attempts in a row on the delivery now in hand
        self.attempts = 0

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def deliver(self, body: bytes, headers: Callable[[], dict[str, str]]) -> str:
        """One attempt: :data:`SENT`, :data:`REJECTED`, :data:`GAVE_UP`, or :data:`FAILED` after the backoff."""
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=self._timeout)
        if self.attempts:
            self.metrics.retried.labels(self.target).inc()
        try:
            async with self._session.post(self.url, data=body,
                                          headers={"User-Agent": USER_AGENT, **headers()}) as response:
                if 200 <= response.status < 300:
                    return self._succeeded()
                text = (await response.text(errors="replace"))[:200]
                status = response.status
        except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as exc:
            why = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
            return await self._failed(why)
        answer = mask_clear_numbers(" ".join(text.split()).encode())[0].decode(errors="replace")
        why = f"HTTP {status}: {answer}" if answer else f"HTTP {status}"
        if status in REJECTED_STATUSES:
            log.error("%s at %s refused a delivery (%s); dropped, it would be refused again",
                      self.target, shown(self.url), why)
            self.metrics.failed.labels(self.target).inc()
            self.attempts = 0
            return REJECTED
        return await self._failed(why)

    def _succeeded(self) -> str:
        if self.attempts:
            log.info("%s at %s accepts deliveries again after %d failed attempt(s)",
                     self.target, shown(self.url), self.attempts)
        self.attempts = 0
        self.backoff.reset()
        self.metrics.last_success.labels(self.target).set_to_current_time()
        return SENT

    async def _failed(self, why: str) -> str:
        self.metrics.failed.labels(self.target).inc()
        self.attempts += 1
        if self.max_attempts and self.attempts >= self.max_attempts:
            log.error("%s at %s: giving up a delivery after %d failed attempts (%s); it is dropped and counted "
                      "(SMSSTREAM_NOTIFY_MAX_ATTEMPTS=%d)", self.target, shown(self.url), self.attempts, why,
                      self.max_attempts)
            self.attempts = 0  # the backoff stays long: the target is still failing
            return GAVE_UP
        delay = self.backoff.next_delay()
        log.warning("%s at %s: delivery failed (%s), attempt %d; retrying in %.1f s",
                    self.target, shown(self.url), why, self.attempts, delay)
        await asyncio.sleep(delay)
        return FAILED
