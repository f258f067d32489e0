"""`smsstream broker`: Tansu or Apache Kafka on loopback until stopped, and a clear refusal when the port is taken."""

from __future__ import annotations

import os
import signal
import socket
import stat
import subprocess
import sys
import time

import pytest

from processes import alive, descendants
from smsstream.broker import EmbeddedBroker, free_port, kafka_answers, port_in_use
from smsstream.cli import main
from smsstream.config import Settings
from smsstream.errors import BrokerStartError
from smsstream import kafka_broker
from smsstream.kafka_broker import KafkaBroker, jar_dir, java_binary, resolve_jars


@pytest.fixture
def taken_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield sock.getsockname()[1]


def test_a_taken_port_is_refused_before_starting_anything(taken_port):
    with pytest.raises(BrokerStartError, match=f"port {taken_port} .* already in use.*--port"):
        EmbeddedBroker(port=taken_port).start()


def test_the_command_refuses_a_taken_port_in_one_line(taken_port, capsys):
    assert main(["broker", "--port", str(taken_port)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "already in use" in err[0]


def test_an_embedded_broker_answers_kafka_requests_and_frees_its_port_when_stopped():
    with EmbeddedBroker() as broker:
        assert broker.url == f"kafka://127.0.0.1:{broker.port}"
        assert kafka_answers("127.0.0.1", broker.port)
    assert not broker.running()
    assert not port_in_use("127.0.0.1", broker.port)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
@pytest.mark.parametrize("engine", ["tansu", "kafka"])
def test_the_command_prints_the_address_and_ctrl_c_leaves_nothing_running(engine):
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "smsstream", "broker", "--engine", engine, "--port", str(port)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        line = process.stdout.readline()
        while line and "answering on" not in line:
            line = process.stdout.readline()
        assert f"127.0.0.1:{port}" in line, process.stderr.read() if process.poll() is not None else line
        assert kafka_answers("127.0.0.1", port)
        family = descendants(process.pid)
        assert family, f"{engine} runs in a child process"
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=60) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    time.sleep(0.5)
    assert [pid for pid in family if alive(pid)] == [], f"{engine} outlived the command"
    assert not port_in_use("127.0.0.1", port), f"{engine} outlived the command"


def test_the_kafka_engine_refuses_a_taken_port_before_starting_java(taken_port):
    with pytest.raises(BrokerStartError, match=f"port {taken_port} .* already in use.*--port"):
        KafkaBroker(port=taken_port).start()


def fake_maven(bin_dir, script: str):
    """An ``mvn`` on PATH that runs ``script`` (sh) in place of Maven."""
    bin_dir.mkdir(exist_ok=True)
    mvn = bin_dir / "mvn"
    mvn.write_text("#!/bin/sh\n" + script)
    mvn.chmod(mvn.stat().st_mode | stat.S_IEXEC)
    return bin_dir


def test_the_jars_are_fetched_once_with_progress_into_the_cache(tmp_path, monkeypatch):
    # a stand-in for Maven: reports two downloads and puts a jar beside the pom it was given
    bin_dir = fake_maven(tmp_path / "bin", """
pom=$(echo "$@" | sed 's/.*-f \\([^ ]*\\).*/\\1/')
lib=$(dirname "$pom")/lib
echo "Downloaded from central: https://repo/kafka_2.13.pom (5 kB)"
echo "Downloaded from central: https://repo/kafka_2.13.jar (6 MB)"
mkdir -p "$lib" && touch "$lib/kafka_2.13-0.jar" "$lib/kafka-clients-0.jar"
echo "$@" >> "$(dirname "$pom")/calls"
""")
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    monkeypatch.setattr(kafka_broker, "PROGRESS_EVERY_S", 0)
    settings = Settings(cache_dir=str(tmp_path / "cache"))
    said: list[str] = []
    lib = resolve_jars(settings, progress=said.append)
    assert lib == jar_dir(settings) and (lib / "kafka_2.13-0.jar").exists()
    assert (lib.parent / "pom.xml").read_text().count("kafka_2.13") == 1
    assert "first use" in said[0] and "  2 files downloaded so far ..." in said and "2 jars" in said[-1]
    assert resolve_jars(settings, progress=said.append) == lib
    assert len((lib.parent / "calls").read_text().splitlines()) == 1, "fetched again although cached"


def test_a_failed_fetch_names_the_fix_and_is_tried_again_next_time(tmp_path, monkeypatch):
    unreachable = 'echo "[ERROR] Could not transfer artifact: Network is unreachable"; exit 1\n'
    bin_dir = fake_maven(tmp_path / "bin", unreachable)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    settings = Settings(cache_dir=str(tmp_path / "cache"))
    with pytest.raises(BrokerStartError, match="Maven Central.*Network is unreachable"):
        resolve_jars(settings, progress=lambda _: None)
    assert not (jar_dir(settings).parent / ".complete").exists()


def test_without_maven_or_java_the_error_names_what_to_install(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))  # neither mvn nor java
    with pytest.raises(BrokerStartError, match="apt-get install maven.*--engine tansu"):
        resolve_jars(Settings(cache_dir=str(tmp_path / "cache")), progress=lambda _: None)
    with pytest.raises(BrokerStartError, match="apt-get install openjdk-17-jre-headless.*--engine tansu"):
        java_binary()


def test_fetch_only_is_refused_for_tansu_in_one_line(capsys):
    assert main(["broker", "--engine", "tansu", "--fetch-only"]) == 1
    assert "--engine kafka" in capsys.readouterr().err
