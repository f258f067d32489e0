"""Whether the worker can reach its Kafka cluster, as its metrics and ``/health`` say.

Faust and aiokafka reconnect by themselves when a broker comes back, and the
worker then catches up from its last snapshots and commits; but while the
broker is away they only log connection errors. A probe of its own (a
metadata request every ``PROBE_S``, with the worker's own security settings)
turns that into one state: connected or not, since when, and how often it
was lost, for ``smsstream_broker_connected``, ``/health`` and one log line
per change. The shutdown guard asks it too: with no broker, there is nothing
left to flush.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from smsstream import kafka
from smsstream.config import Settings

log = logging.getLogger(__name__)

PROBE_S = 2.0
PROBE_TIMEOUT_S = 5.0


class BrokerConnection:
    """The worker's view of its cluster: answered its last probe or not, and its history of losing it."""

    def __init__(self, settings: Settings, metrics: Any = None):
        self.settings = settings
        self.metrics = metrics
        self.connected = True
        #: wall-clock time (epoch s) the broker stopped answering, while it does not
        self.lost_at: float | None = None
        #: wall-clock time it came back the last time, and how long it was away then
        self.back_at: float | None = None
        self.last_outage_s = 0.0
        self.disconnections = 0
        self._client: Any = None
        if metrics is not None:
            metrics.broker_connected.set(1)

    async def probe(self) -> bool:
        """One metadata request to the cluster; updates the state and returns whether it was answered."""
        try:
            await asyncio.wait_for(self._ask(), PROBE_TIMEOUT_S)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - any failure to get an answer means not connected
            self._lost(exc)
            return False
        self._answered()
        return True

    async def _ask(self) -> None:
        from aiokafka.client import AIOKafkaClient

        if self._client is None:
            client = AIOKafkaClient(**kafka.client_kwargs(self.settings), request_timeout_ms=int(PROBE_TIMEOUT_S * 1000))
            await client.bootstrap()
            self._client = client
        await self._client.fetch_all_metadata()

    def _lost(self, exc: BaseException) -> None:
        if not self.connected:
            return
        self.connected = False
        self.lost_at = time.time()
        self.disconnections += 1
        if self.metrics is not None:
            self.metrics.broker_connected.set(0)
            self.metrics.broker_disconnections.inc()
        log.warning("the Kafka broker at %s does not answer (%s); the worker keeps trying and catches up from "
                    "its last snapshots once it is back", self.settings.broker, type(exc).__name__)

    def _answered(self) -> None:
        if self.connected:
            return
        self.connected = True
        self.back_at = time.time()
        self.last_outage_s = self.back_at - (self.lost_at or self.back_at)
        self.lost_at = None
        if self.metrics is not None:
            self.metrics.broker_connected.set(1)
        log.info("the Kafka broker at %s answers again after %.0f s away", self.settings.broker, self.last_outage_s)

    def health(self) -> dict:
        """What ``/health`` says about the broker."""
        body: dict = {"connected": self.connected, "disconnections": self.disconnections}
        if self.lost_at is not None:
            body["disconnected_for_s"] = round(time.time() - self.lost_at, 1)
        if self.back_at is not None:
            body["last_outage_s"] = round(self.last_outage_s, 1)
            body["reconnected_at"] = int(self.back_at * 1000)
        return body

    async def run(self, should_stop) -> None:
        """Probe every ``PROBE_S`` until ``should_stop()``."""
        try:
            while not should_stop():
                await self.probe()
                await asyncio.sleep(PROBE_S)
        finally:
            await self.close()

    async def close(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            try:
                await asyncio.wait_for(client.close(), 2)
            except Exception:  # noqa: BLE001 - closing a client of a broker that may be gone
                pass
