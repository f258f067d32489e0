"""The signed webhook: each alert record POSTed as JSON, with an HMAC-SHA256 signature header.

``X-Smsstream-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256(secret, "<t>.<body>")>``.
A receiver recomputes the HMAC over the timestamp, a dot and the raw body bytes,
compares it in constant time, and refuses a timestamp older than its tolerance
(5 minutes is usual), so a captured request cannot be replayed later. Every retry
is signed afresh. :func:`verify` does exactly that, for receivers written in Python.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import time
from collections import deque
from typing import Callable

from smsstream.notify.alert import AlertRecord
from smsstream.notify.delivery import FAILED, SENT, Courier, Ledger, Pending
from smsstream.notify.metrics import NotifyMetrics

SIGNATURE_HEADER = "X-Smsstream-Signature"
#: How far a signature's timestamp may be from the receiver's clock, by default.
TOLERANCE_S = 300


def signature(secret: str | bytes, body: bytes, timestamp: int) -> str:
    """The header value for ``body`` signed at ``timestamp`` (Unix seconds)."""
    key = secret.encode() if isinstance(secret, str) else secret
    digest = hmac.new(key, str(timestamp).encode() + b"." + body, hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={digest}"


def verify(secret: str | bytes, header: str | None, body: bytes, now: float | None = None,
           tolerance_s: float = TOLERANCE_S) -> bool:
    """True when ``header`` signs ``body`` under ``secret`` with a timestamp within ``tolerance_s`` of ``now``."""
    if not header:
        return False
    parts: dict[str, list[str]] = {}
    for item in header.split(","):
        name, _, value = item.strip().partition("=")
        parts.setdefault(name, []).append(value)
    stamps = parts.get("t", [])
    if len(stamps) != 1 or not stamps[0].isdigit():
        return False
    timestamp = int(stamps[0])
    if abs((time.time() if now is None else now) - timestamp) > tolerance_s:
        return False
    expected = signature(secret, body, timestamp).rpartition("v1=")[2]
    return any(hmac.compare_digest(expected, candidate) for candidate in parts.get("v1", []))


class WebhookTarget:
    """Posts every record that may page, in the order read, one at a time."""

    name = "webhook"

    def __init__(self, courier: Courier, secret: str, ledger: Ledger, metrics: NotifyMetrics,
                 wall: Callable[[], float] = time.time):
        self.courier, self._secret, self.ledger, self.metrics = courier, secret, ledger, metrics
        self._wall = wall
        self._queue: deque[tuple[Pending, bytes]] = deque()
        self._wake = asyncio.Event()

    def offer(self, pending: Pending, alert: AlertRecord) -> None:
        held = alert.hold_back(int(self._wall() * 1000))
        if held:
            self.metrics.skipped.labels(self.name, held).inc()
            self.ledger.settle(pending, self.name)
            return
        self._queue.append((pending, alert.body))
        self._wake.set()

    def restore(self, tp, alert: AlertRecord) -> None:
        """History before the committed offset was posted already."""

    def revoke(self, partitions) -> None:
        """Records of these partitions are posted by their next owner."""
        partitions = set(partitions)
        self._queue = deque(item for item in self._queue if item[0].tp not in partitions)

    def keep_only(self, partitions) -> None:
        """Nothing is kept beyond the queue."""

    def status(self) -> dict:
        return {}

    def _headers(self, body: bytes) -> dict[str, str]:
        return {
            "Content-Type": "application/json",
            SIGNATURE_HEADER: signature(self._secret, body, int(self._wall())),
        }

    async def run(self) -> None:
        while True:
            if not self._queue:
                self._wake.clear()
                await self._wake.wait()
                continue
            pending, body = self._queue[0]
            outcome = await self.courier.deliver(body, lambda: self._headers(body))
            if outcome == FAILED:
                continue
            if not self._queue or self._queue[0][0] is not pending:
                continue  # its partition was revoked meanwhile; the next owner delivers it
            self._queue.popleft()
            if outcome == SENT:
                self.metrics.sent.labels(self.name).inc()
            else:
                self.metrics.dropped.labels(self.name, outcome).inc()
            self.ledger.settle(pending, self.name)
