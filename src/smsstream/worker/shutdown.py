"""Stopping a worker within a bounded time, whatever its broker's state, and saying what was not saved.

Faust stops on SIGTERM or SIGINT by stopping its services in turn; with the
broker gone, it waits on the producer and the consumer for as long as their
request timeouts (aiokafka flushes what it holds before it stops, and
retries a gone broker), minutes. So the worker's stop is bounded
(``ShutdownGuard``):

- with the broker answering, Faust stops as usual (a few seconds), its
  producer flush bounded by half the time left;
- with the broker not answering (``BrokerConnection``, probed every second
  while stopping), nothing can be delivered or saved any more: the worker
  says so and exits at once;
- whatever happens, a watchdog thread ends the process after
  ``SMSSTREAM_SHUTDOWN_TIMEOUT_S`` (exit status ``EXIT_FORCED``), even with
  the event loop stuck.

Each way ends with one log line saying what no saved snapshot covers: those
events were never acknowledged, so whoever owns their partitions next reads
them again (at least once).

Tracebacks of threads that die (the Kafka client's, while stopping) are
logged as one record (``log_thread_exceptions``; Faust would write them to
stderr, which it turns into one log record per fragment), and
``RepeatedLines`` folds the Kafka client's reconnect errors, logged several
times a second while a broker is away, into one line every ``REPEAT_S``.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
import time
from typing import Any, Awaitable, Callable

log = logging.getLogger(__name__)

#: Exit status of a worker the watchdog had to end (EX_SOFTWARE): its stop did not finish in time.
EXIT_FORCED = 70
#: A log line repeated by the Kafka client is written at most once this often, with how often it came.
REPEAT_S = 30.0
#: While stopping, the broker is probed this often.
PROBE_S = 1.0


class ShutdownGuard:
    """Bounds a worker's stop (see the module's docstring) and says what was not saved."""

    def __init__(self, timeout_s: float, unsaved: Callable[[], str],
                 probe: Callable[[], Awaitable[bool]] | None = None, exit: Callable[[int], Any] = os._exit):
        self.timeout_s = timeout_s
        #: describes, in one sentence, what the worker's shards hold that no saved snapshot covers
        self.unsaved = unsaved
        #: asks the broker for an answer; True if it gave one
        self.probe = probe
        self._exit = exit
        self.started: float | None = None
        self.broker_gone = threading.Event()
        self.done = threading.Event()
        self._probing: asyncio.Task | None = None

    def begin(self, reason: str) -> None:
        """A stop was asked for (a signal, handled on the event loop): from now on it ends within ``timeout_s``."""
        if self.started is not None:
            return
        self.started = time.monotonic()
        log.info("%s: stopping within %.0f s (SMSSTREAM_SHUTDOWN_TIMEOUT_S)", reason, self.timeout_s)
        threading.Thread(target=self._watch, name="smsstream-shutdown-watchdog", daemon=True).start()
        if self.probe is not None:
            self._probing = asyncio.get_event_loop().create_task(self._probe_while_stopping())

    def left(self) -> float:
        """Seconds left before the watchdog ends the process (the whole timeout before ``begin``)."""
        if self.started is None:
            return self.timeout_s
        return max(0.0, self.started + self.timeout_s - time.monotonic())

    async def _probe_while_stopping(self) -> None:
        assert self.probe is not None
        while not self.done.is_set():
            if not await self.probe():
                self.broker_gone.set()
                return
            await asyncio.sleep(PROBE_S)

    def _watch(self) -> None:
        """The watchdog thread: exit at once once the broker is known gone, or at the deadline."""
        while not self.done.wait(min(0.2, self.left())):
            if self.broker_gone.is_set():
                self._end(0, "the Kafka broker does not answer, so nothing more can be delivered or saved; "
                             "stopping now.")
                return
            if not self.left():
                broker = "" if self.probe is None or not self.broker_gone.is_set() else " (no broker)"
                self._end(EXIT_FORCED, f"did not stop within {self.timeout_s:.0f} s{broker}; exiting now.")
                return

    def _end(self, status: int, why: str) -> None:
        if self.done.is_set():
            return
        self.done.set()
        log.warning("%s %s", why, self._describe())
        for handler in logging.getLogger().handlers:
            try:
                handler.flush()
            except Exception:  # noqa: BLE001 - exiting anyway
                pass
        self._exit(status)

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

    async def flush(self, flushing: Awaitable) -> None:
        """Await a producer flush for at most half the time left."""
        limit = max(0.1, self.left() / 2)
        try:
            await asyncio.wait_for(flushing, limit)
        except asyncio.TimeoutError:
            log.warning("the producer did not deliver what it held within %.0f s; stopping without it (the events "
                        "that made it were not acknowledged and are read again)", limit)


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
                await guard.flush(self._producer.flush())

    return App


def log_thread_exceptions() -> None:
    """An exception that ends a thread is logged as one record (with its traceback), not written to stderr."""
    def hook(args: threading.ExceptHookArgs) -> None:
        if args.exc_type is SystemExit:
            return
        name = args.thread.name if args.thread is not None else "a thread"
        log.warning("%s stopped with %s", name, args.exc_type.__name__,
                    exc_info=(args.exc_type, args.exc_value, args.exc_traceback))

    threading.excepthook = hook


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
