"""`smsstream broker`: Tansu on loopback until stopped, and a clear refusal when the port is taken."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys

import pytest

from smsstream.broker import EmbeddedBroker, free_port, kafka_answers, port_in_use
from smsstream.cli import main
from smsstream.errors import BrokerStartError


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


def test_the_command_prints_the_address_and_stops_cleanly_on_ctrl_c():
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "smsstream", "broker", "--port", str(port)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        first = process.stdout.readline()
        assert f"127.0.0.1:{port}" in first
        assert kafka_answers("127.0.0.1", port)
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=30) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert not port_in_use("127.0.0.1", port), "Tansu outlived the command"
