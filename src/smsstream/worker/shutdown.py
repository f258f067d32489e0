"""Stopping a worker within a bounded time, whatever its broker's state, and saying what was not saved.

Faust stops on SIGTERM or SIGINT by stopping its services in turn; with the
broker gone, the last of them waits on the producer for as long as the
producer's request timeout (aiokafka flushes what it holds before it stops,
and retries a gone broker), minutes. So the worker's stop is bounded:

- on the signal, ``ShutdownGuard`` starts a watchdog thread; if the process
  is still there after ``SMSSTREAM_SHUTDOWN_TIMEOUT_S``, it logs one line
  (what was not checkpointed) and exits with ``EXIT_FORCED``, whatever the
  event loop is doing;
- the producer flush is bounded by what is left of that time, and with the
  broker known to be away (``BrokerConnection``) it fails what the producer
  holds at once instead of waiting: none of it can be delivered, and the
  events that made it are not acknowledged, so the partitions' next owner
  makes it again (at least once);
- a clean stop ends with the same one line.

``RepeatedLines`` folds the Kafka client's reconnect errors, logged several
times a second while a broker is away, into one line every ``REPEAT_S``.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
import time
from typing import Any, Callable

log = logging.getLogger(__name__)

#: Exit status of a worker the watchdog had to end (EX_SOFTWARE): its stop did not finish in time.
EXIT_FORCED = 70
#: A log line repeated by the Kafka client is written at most once this often, with how often it came.
REPEAT_S = 30.0


class ShutdownGuard:
    """Bounds a worker's stop: a watchdog thread, a bounded producer flush, one line on what was not saved."""

    def __init__(self, timeout_s: float, unsaved: Callable[[], str], connected: Callable[[], bool] = lambda: True,
                 exit: Callable[[int], Any] = os._exit):
        self.timeout_s = timeout_s
        #: describes, in a few words, what the worker's shards hold that no snapshot covers
        self.unsaved = unsaved
        self.connected = connected
        self._exit = exit
        self.started: float | None = None
        self.done = threading.Event()

    def begin(self, reason: str) -> None:
        """A stop was asked for (a signal): from now on it ends within ``timeout_s``."""
        if self.started is not None:
            return
        self.started = time.monotonic()
        log.info("%s: stopping within %.0f s (SMSSTREAM_SHUTDOWN_TIMEOUT_S)", reason, self.timeout_s)
        threading.Thread(target=self._watch, name="smsstream-shutdown-watchdog", daemon=True).start()

    def left(self) -> float:
        """Seconds left before the watchdog ends the process (the whole timeout before ``begin``)."""
        if self.started is None:
            return self.timeout_s
        return max(0.0, self.started + self.timeout_s - time.monotonic())

    def _watch(self) -> None:
        if self.done.wait(self.left()):
            return
        broker = "" if self.connected() else " (the Kafka broker does not answer)"
        log.error("did not stop within %.0f s%s; exiting now. %s", self.timeout_s, broker, self._describe())
        for handler in logging.getLogger().handlers:
            try:
                handler.flush()
            except Exception:  # noqa: BLE001 - exiting anyway
                pass
        self._exit(EXIT_FORCED)

    def finished(self) -> None:
        """The stop is complete: say how long it took and what was not saved."""
        if self.done.is_set():
            return
        self.done.set()
        took = "" if self.started is None else f" in {time.monotonic() - self.started:.1f} s"
        log.info("stopped%s. %s", took, self._describe())

    def _describe(self) -> str:
        try:
            return self.unsaved()
        except Exception as exc:  # noqa: BLE001 - read from another thread while the loop changes it
            return f"(what was not saved could not be told: {type(exc).__name__})"

    async def flush(self, producer: Any, flushing: Any) -> None:
        """Await the producer's flush ``flushing`` for at most half the time left; with no broker, not at all."""
        if not self.connected():
            _fail_pending(producer, "the Kafka broker does not answer")
        try:
            await asyncio.wait_for(flushing, max(0.1, self.left() / 2))
        except asyncio.TimeoutError:
            log.warning("the producer did not deliver what it held within %.0f s; giving it up (the events that "
                        "made it are not acknowledged and are read again)", max(0.1, self.left() / 2))
            _fail_pending(producer, "stopping: not delivered in time")


def _fail_pending(producer: Any, why: str) -> None:
    """Fail the batches an aiokafka producer still holds, so that stopping it does not wait for them."""
    from aiokafka.errors import KafkaConnectionError

    inner = getattr(producer, "_producer", None)
    accumulator = getattr(inner, "_message_accumulator", None)
    if accumulator is not None:
        accumulator.fail_all(KafkaConnectionError(why))


def worker_class(guard: ShutdownGuard) -> type:
    """Faust's worker, telling ``guard`` when a signal asks it to stop and when it has stopped."""
    import faust

    class Worker(faust.Worker):
        def _on_sigterm(self) -> None:
            guard.begin("SIGTERM")
            super()._on_sigterm()

        def _on_sigint(self) -> None:
            guard.begin("SIGINT")
            super()._on_sigint()

        def _shutdown_loop(self) -> None:
            try:
                super()._shutdown_loop()
            finally:
                guard.finished()

    return Worker


def app_class(guard: ShutdownGuard) -> type:
    """``faust.App`` whose producer flush on stopping is bounded by ``guard``."""
    import faust

    class App(faust.App):
        async def _producer_flush(self, logger: Any) -> None:
            if self._producer is not None:
                logger.info("Flush producer buffer...")
                await guard.flush(self._producer, self._producer.flush())

    return App


class RepeatedLines(logging.Filter):
    """Lets a message through once, then at most once per ``REPEAT_S`` with how often it came meanwhile."""

    def __init__(self, every_s: float = REPEAT_S):
        super().__init__()
        self.every_s = every_s
        self._seen: dict[str, list] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        key = f"{record.name}:{record.msg}"
        now = record.created
        seen = self._seen.get(key)
        if seen is None or now - seen[0] >= self.every_s:
            if seen is not None and seen[1]:
                record.msg = f"{record.msg} (and {seen[1]} more like it in the last {now - seen[0]:.0f} s)"
            if len(self._seen) > 1000:
                self._seen.clear()
            self._seen[key] = [now, 0]
            return True
        seen[1] += 1
        return False


def fold_client_repeats(every_s: float = REPEAT_S) -> None:
    """Fold repeated lines of the Kafka client's loggers (``RepeatedLines``)."""
    import aiokafka.client  # noqa: F401 - their loggers exist once the modules are imported
    import aiokafka.conn  # noqa: F401
    import aiokafka.consumer.fetcher  # noqa: F401
    import aiokafka.consumer.group_coordinator  # noqa: F401
    import aiokafka.producer.sender  # noqa: F401

    folding = RepeatedLines(every_s)
    for name in list(logging.Logger.manager.loggerDict):
        if name == "aiokafka" or name.startswith("aiokafka."):
            logging.getLogger(name).addFilter(folding)
