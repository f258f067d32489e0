"""``smsstream broker --engine kafka``: a single-node Apache Kafka (KRaft) on loopback, from Maven jars.

Tansu, the default engine, serves aiokafka, Faust and recent librdkafka, but
not every client a downstream team uses (Debian 12's kcat fails its first
request). This engine runs the real thing: a combined broker and controller
with storage in a temporary directory, removed when it stops. Its jars are
resolved once with Maven from the ``pom.xml`` shipped in the package into
``SMSSTREAM_CACHE_DIR/kafka-<version>/lib``; after that it needs only Java 17.
"""

from __future__ import annotations

import base64
import re
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Callable

from smsstream.broker import DEFAULT_HOST, LocalBroker, die_with_parent, free_port
from smsstream.config import Settings
from smsstream.errors import BrokerStartError

#: ``pom.xml`` (what to fetch) and ``log4j2.xml`` (the broker's log), shipped as package data.
DATA_DIR = Path(__file__).resolve().parent / "data" / "kafka"
JAVA_FIX = "install Java 17 or newer (Debian: apt-get install openjdk-17-jre-headless), or use --engine tansu"
CONSOLE_CONSUMER = "org.apache.kafka.tools.consumer.ConsoleConsumer"
#: How often a first fetch of the jars says how far it got.
PROGRESS_EVERY_S = 3.0


def kafka_version() -> str:
    """The Apache Kafka version the shipped ``pom.xml`` asks for."""
    ns = {"m": "http://maven.apache.org/POM/4.0.0"}
    node = ET.parse(DATA_DIR / "pom.xml").getroot().find("m:properties/m:kafka.version", ns)
    assert node is not None and node.text, "pom.xml has no kafka.version property"
    return node.text.strip()


def jar_dir(settings: Settings | None = None) -> Path:
    """Where this version's jars live (or will, once fetched)."""
    settings = settings or Settings.from_env()
    return Path(settings.cache_dir).expanduser() / f"kafka-{kafka_version()}" / "lib"


def _say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def resolve_jars(settings: Settings | None = None, progress: Callable[[str], None] = _say) -> Path:
    """The directory of Apache Kafka's jars, fetched with Maven on first use (a few minutes, ~70 MB).

    A marker file is written only once Maven succeeded, so an interrupted fetch
    is redone rather than half-used.
    """
    lib = jar_dir(settings)
    done = lib.parent / ".complete"
    if done.exists() and any(lib.glob("kafka_2.13-*.jar")):
        return lib
    mvn = shutil.which("mvn")
    if mvn is None:
        raise BrokerStartError(
            f"Apache Kafka's jars are not in {lib} yet, and fetching them needs Maven: "
            "install it (Debian: apt-get install maven) and run again, or use --engine tansu"
        )
    lib.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(DATA_DIR / "pom.xml", lib.parent / "pom.xml")
    shutil.rmtree(lib, ignore_errors=True)
    progress(f"fetching Apache Kafka {kafka_version()}'s jars with Maven into {lib} (first use only) ...")
    command = [mvn, "-B", "-Dstyle.color=never", "-f", str(lib.parent / "pom.xml"), "dependency:copy-dependencies"]
    output = _run_maven(command, progress)
    if output is not None:
        raise BrokerStartError(
            "Maven could not fetch Apache Kafka's jars (check access to Maven Central, or a proxy in "
            f"~/.m2/settings.xml); its output ends with: {' | '.join(output[-8:])}"
        )
    done.write_text(f"{kafka_version()}\n")
    progress(f"  {sum(1 for _ in lib.glob('*.jar'))} jars in {lib}")
    return lib


def _run_maven(command: list[str], progress: Callable[[str], None]) -> list[str] | None:
    """Run Maven, telling how many files it fetched every few seconds; its output lines if it failed."""
    lines: list[str] = []
    fetched = 0
    said = time.monotonic()
    process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               text=True, preexec_fn=die_with_parent)
    try:
        assert process.stdout is not None
        for line in process.stdout:
            lines.append(line.rstrip())
            if line.startswith("Downloaded from"):
                fetched += 1
            if time.monotonic() - said >= PROGRESS_EVERY_S:
                said = time.monotonic()
                progress(f"  {fetched} files downloaded so far ...")
        code = process.wait()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    return None if code == 0 else lines


def java_binary() -> str:
    """``java`` on PATH, checked to be 17 or newer (Apache Kafka 4.x refuses older ones)."""
    java = shutil.which("java")
    if java is None:
        raise BrokerStartError(f"Apache Kafka needs `java`, and there is none on PATH: {JAVA_FIX}")
    shown = subprocess.run([java, "-XshowSettings:properties", "-version"], capture_output=True, text=True).stderr
    found = re.search(r"java\.specification\.version = (\d+)", shown)
    if found and int(found.group(1)) < 17:
        raise BrokerStartError(f"Apache Kafka 4.x needs Java 17 or newer; {java} is Java {found.group(1)}: {JAVA_FIX}")
    return java


def console_consumer(bootstrap: str, topic: str, settings: Settings | None = None) -> str:
    """A shell command that prints ``topic`` from the start, key and value, with Kafka's own console consumer."""
    return (f"java -cp '{jar_dir(settings)}/*' {CONSOLE_CONSUMER} --bootstrap-server {bootstrap} "
            f"--topic {topic} --from-beginning --property print.key=true")


class KafkaBroker(LocalBroker):
    """One Apache Kafka node (broker and controller) on a loopback port, storage in a temporary directory.

    Used like :class:`smsstream.broker.EmbeddedBroker`: ``port=0`` picks a free
    port; a context manager, or :meth:`start` and :meth:`stop`. ``properties``
    override or add ``server.properties`` entries (the tests shorten the log
    cleaner's pause); ``listeners`` adds listeners beside the PLAINTEXT one, by
    security protocol and port (the SASL_SSL test: their settings go in
    ``properties``). On Linux the JVM dies with the thread that started it.
    """

    name = "Apache Kafka"
    #: Kafka's controlled shutdown takes a few seconds
    stop_timeout = 20.0

    def __init__(self, port: int = 0, host: str = DEFAULT_HOST, startup_timeout: float = 120.0,
                 heap: str = "768m", properties: dict[str, str] | None = None, settings: Settings | None = None,
                 listeners: dict[str, int] | None = None):
        super().__init__(port, host, startup_timeout)
        self.listeners = dict(listeners or {})
        self.heap = heap
        self.properties = dict(properties or {})
        self.settings = settings or Settings.from_env()
        self.lib: Path | None = None
        self._java: str | None = None

    def java(self, main_class: str, *args: str, heap: str | None = None) -> list[str]:
        """The command line that runs ``main_class`` from Kafka's jars (the broker, its storage tool)."""
        assert self.lib is not None and self._java is not None, "jars not resolved: call start() first"
        return [
            self._java, f"-Xmx{heap or self.heap}", "-XX:+UseSerialGC", "-Djava.awt.headless=true",
            f"-Dlog4j2.configurationFile={DATA_DIR / 'log4j2.xml'}", "-cp", f"{self.lib}/*", main_class, *args,
        ]

    def _server_properties(self) -> Path:
        assert self._workdir is not None
        controller_port = free_port(self.host)
        extra = "".join(f",{protocol}://{self.host}:{port}" for protocol, port in self.listeners.items())
        protocols = "".join(f",{protocol}:{protocol}" for protocol in self.listeners)
        properties = {
            "process.roles": "broker,controller",
            "node.id": "1",
            "controller.quorum.voters": f"1@{self.host}:{controller_port}",
            "listeners": f"PLAINTEXT://{self.host}:{self.port},CONTROLLER://{self.host}:{controller_port}{extra}",
            "advertised.listeners": f"PLAINTEXT://{self.host}:{self.port}{extra}",
            "controller.listener.names": "CONTROLLER",
            "inter.broker.listener.name": "PLAINTEXT",
            "listener.security.protocol.map": f"PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT{protocols}",
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
            # Kafka's default, kept on purpose: a new group's first assignment waits 3 s, by which time a
            # worker's internal topics, created just before it joins, are in the metadata the assignment
            # reads. At 0, Faust's assignor skipped smsstream-part-template_hijack and that part never ran.
            "group.initial.rebalance.delay.ms": "3000",
            **self.properties,
        }
        path = self._workdir / "server.properties"
        path.write_text("".join(f"{k}={v}\n" for k, v in properties.items()))
        return path

    def start(self) -> "KafkaBroker":
        if self._process is not None:
            return self
        self._claim_port()
        self._java = java_binary()
        self.lib = resolve_jars(self.settings)
        self._workdir = Path(tempfile.mkdtemp(prefix="smsstream-kafka-"))
        self.log_path = self._workdir / "kafka.log"
        try:
            self._format(self._server_properties())
            self._launch()
        except BaseException:
            self.stop(keep_log=True)
            raise
        return self

    def _launch(self) -> None:
        assert self._workdir is not None
        self._spawn(self.java("kafka.Kafka", str(self._workdir / "server.properties")))
        self.wait_until_answering()

    def restart(self, down_s: float = 0.0, crash: bool = False) -> None:
        """Stop the broker (SIGTERM, or SIGKILL with ``crash``) and start it again on the same port and data.

        For fault tests: unlike Tansu's memory storage, its log directories
        keep every topic, offset and committed position across the restart.
        """
        assert self._process is not None and self._workdir is not None, "broker not started"
        if crash:
            self._process.kill()
        self._terminate(30.0)
        time.sleep(down_s)
        self._launch()

    def _format(self, config: Path) -> None:
        """KRaft storage must be formatted with a cluster id before the first start."""
        cluster_id = "-"
        while cluster_id.startswith("-"):  # the storage tool would read a leading '-' as an option
            cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        formatted = subprocess.run(
            self.java("kafka.tools.StorageTool", "format", "-t", cluster_id, "-c", str(config), heap="256m"),
            capture_output=True, text=True, timeout=120, preexec_fn=die_with_parent,
        )
        if formatted.returncode != 0:
            tail = (formatted.stdout + formatted.stderr).strip().splitlines()[-5:]
            raise BrokerStartError("formatting Apache Kafka's storage failed: " + " | ".join(tail))

    def stop(self, keep_log: bool = False) -> None:
        """As :meth:`LocalBroker.stop`; with ``keep_log`` the log stays but the topic data goes."""
        if keep_log and self._workdir is not None:
            self._terminate(self.stop_timeout)
            shutil.rmtree(self._workdir / "data", ignore_errors=True)
            return
        super().stop()
