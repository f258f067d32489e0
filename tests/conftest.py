"""Shared fixtures: one real broker per test session, chosen by SMSSTREAM_TEST_BROKER.

``tansu`` (default) starts the embedded broker, ``kafka`` starts Apache Kafka
(``smsstream broker --engine kafka``), anything else is taken as the bootstrap
address of a running broker. Tests that need it are marked ``@pytest.mark.broker``
and take ``broker_url`` (Faust form, ``kafka://127.0.0.1:PORT``) or ``bootstrap``
(``127.0.0.1:PORT``).
"""

from __future__ import annotations

import os

import pytest

from brokers import BrokerFailed, describe, running_broker

PSEUDONYM_KEY = "test-pseudonym-key"


def pytest_report_header(config):
    return f"SMSSTREAM_TEST_BROKER: {describe(os.environ.get('SMSSTREAM_TEST_BROKER', 'tansu'))}"


#: ``tests/part_removal.py`` sets this to a part's name to take that part off the detector list for a run.
WITHOUT_PART = "SMSSTREAM_TEST_WITHOUT_PART"


def pytest_configure(config):
    """Before any test is collected: drop the part named in ``WITHOUT_PART`` from ``DETECTOR_PARTS``."""
    name = os.environ.get(WITHOUT_PART)
    if not name:
        return
    from smsstream.detection.engine import DETECTOR_PARTS

    names = [part.name for part in DETECTOR_PARTS]
    if name not in names:
        raise pytest.UsageError(f"{WITHOUT_PART}={name!r} names no detector part; the parts are {', '.join(names)}")
    DETECTOR_PARTS[:] = [part for part in DETECTOR_PARTS if part.name != name]


@pytest.fixture(scope="session")
def _broker():
    try:
        with running_broker() as broker:
            yield broker
    except BrokerFailed as exc:
        pytest.fail(str(exc), pytrace=False)


@pytest.fixture(scope="session")
def broker_url(_broker) -> str:
    """Faust-form URL of the session's broker, as SMSSTREAM_BROKER would hold it."""
    return _broker.url


@pytest.fixture(scope="session")
def bootstrap(_broker) -> str:
    """``host:port`` of the session's broker, for aiokafka's ``bootstrap_servers``."""
    return _broker.bootstrap


@pytest.fixture
def pseudonym_key(monkeypatch) -> str:
    monkeypatch.setenv("SMSSTREAM_PSEUDONYM_KEY", PSEUDONYM_KEY)
    return PSEUDONYM_KEY


@pytest.fixture(autouse=True)
def _fresh_message_ids():
    """Each test numbers its hand-made messages from 0, so its evidence samples do not depend on the tests before it."""
    import traffic

    traffic.Sends.counter = 0
