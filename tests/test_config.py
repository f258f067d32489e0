"""Kafka security from the environment reaches aiokafka and Faust the same way."""

from __future__ import annotations

import ssl

import faust
import pytest

from smsstream.config import Settings
from smsstream.errors import ConfigError
from smsstream.kafka import bootstrap_servers, client_kwargs, faust_config

SASL = {
    "SMSSTREAM_BROKER": "kafka://k1.example:9093;kafka://k2.example:9093",
    "SMSSTREAM_KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
    "SMSSTREAM_KAFKA_SASL_MECHANISM": "SCRAM-SHA-256",
    "SMSSTREAM_KAFKA_SASL_USERNAME": "smsstream",
    "SMSSTREAM_KAFKA_SASL_PASSWORD": "s3cret",
}


def test_plaintext_by_default():
    settings = Settings.from_env({})
    assert client_kwargs(settings) == {"bootstrap_servers": ["127.0.0.1:9092"], "security_protocol": "PLAINTEXT"}
    assert faust_config(settings) == {"broker": "kafka://127.0.0.1:9092"}


def test_scram_over_tls_reaches_aiokafka():
    kwargs = client_kwargs(Settings.from_env(SASL))
    assert kwargs["bootstrap_servers"] == ["k1.example:9093", "k2.example:9093"]
    assert kwargs["security_protocol"] == "SASL_SSL"
    assert kwargs["sasl_mechanism"] == "SCRAM-SHA-256"
    assert (kwargs["sasl_plain_username"], kwargs["sasl_plain_password"]) == ("smsstream", "s3cret")
    assert kwargs["ssl_context"].verify_mode == ssl.CERT_REQUIRED and kwargs["ssl_context"].check_hostname


def test_scram_over_tls_reaches_faust_as_sasl_credentials():
    config = faust_config(Settings.from_env(SASL))
    assert config["broker"] == "kafka://k1.example:9093;kafka://k2.example:9093"
    credentials = config["broker_credentials"]
    assert isinstance(credentials, faust.SASLCredentials)
    assert credentials.protocol.value == "SASL_SSL" and credentials.mechanism.value == "SCRAM-SHA-256"
    assert (credentials.username, credentials.password) == ("smsstream", "s3cret")


def test_sasl_plain_without_tls_has_no_tls_context():
    env = dict(SASL, SMSSTREAM_KAFKA_SECURITY_PROTOCOL="SASL_PLAINTEXT", SMSSTREAM_KAFKA_SASL_MECHANISM="PLAIN")
    kwargs = client_kwargs(Settings.from_env(env))
    assert "ssl_context" not in kwargs and kwargs["sasl_mechanism"] == "PLAIN"
    credentials = faust_config(Settings.from_env(env))["broker_credentials"]
    assert credentials.protocol.value == "SASL_PLAINTEXT" and credentials.mechanism.value == "PLAIN"


def test_tls_only_reaches_faust_as_ssl_credentials():
    settings = Settings.from_env({"SMSSTREAM_KAFKA_SECURITY_PROTOCOL": "SSL", "SMSSTREAM_KAFKA_SSL_CHECK_HOSTNAME": "false"})
    assert client_kwargs(settings)["security_protocol"] == "SSL"
    credentials = faust_config(settings)["broker_credentials"]
    assert isinstance(credentials, faust.SSLCredentials) and credentials.context.check_hostname is False


def test_a_missing_ca_file_names_the_variable(tmp_path):
    settings = Settings.from_env(
        {"SMSSTREAM_KAFKA_SECURITY_PROTOCOL": "SSL", "SMSSTREAM_KAFKA_SSL_CAFILE": str(tmp_path / "missing.pem")}
    )
    with pytest.raises(ConfigError, match="SMSSTREAM_KAFKA_SSL_CAFILE"):
        client_kwargs(settings)


def test_sasl_without_a_password_is_refused_by_name():
    env = {k: v for k, v in SASL.items() if k != "SMSSTREAM_KAFKA_SASL_PASSWORD"}
    with pytest.raises(ConfigError, match="SMSSTREAM_KAFKA_SASL_PASSWORD"):
        Settings.from_env(env)


def test_the_password_does_not_show_in_settings_repr():
    assert "s3cret" not in repr(Settings.from_env(SASL))


@pytest.mark.parametrize(
    "url,servers",
    [
        ("kafka://a:9092", ["a:9092"]),
        ("kafka://a:9092;kafka://b:9093", ["a:9092", "b:9093"]),
        ("a:9092,b:9093", ["a:9092", "b:9093"]),
        ("aiokafka://a:9092/", ["a:9092"]),
    ],
)
def test_broker_urls_in_faust_form_or_bare(url, servers):
    assert bootstrap_servers(url) == servers


@pytest.mark.parametrize("url", ["", "kafka://a", "http://a:9092", "kafka://a:notaport"])
def test_a_malformed_broker_url_names_the_setting(url):
    with pytest.raises(ConfigError, match="SMSSTREAM_BROKER"):
        bootstrap_servers(url)


def test_lateness_settings_are_read_and_a_horizon_shorter_than_the_lateness_is_refused():
    settings = Settings.from_env({"SMSSTREAM_ALLOWED_LATENESS_S": "30", "SMSSTREAM_LATE_HORIZON_S": "600"})
    assert (settings.allowed_lateness_s, settings.late_horizon_s) == (30, 600)
    with pytest.raises(ConfigError, match="raise the horizon"):
        Settings.from_env({"SMSSTREAM_ALLOWED_LATENESS_S": "120", "SMSSTREAM_LATE_HORIZON_S": "60"})


def test_health_and_metrics_stay_on_loopback_unless_told_otherwise():
    assert Settings.from_env({}).bind_host == "127.0.0.1"
    assert Settings.from_env({"SMSSTREAM_BIND_HOST": "0.0.0.0"}).bind_host == "0.0.0.0"


def _non_loopback_address() -> str | None:
    import socket

    probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        probe.connect(("10.255.255.255", 9))  # UDP: picks the outbound address, sends nothing
        address = probe.getsockname()[0]
    except OSError:
        return None
    finally:
        probe.close()
    return None if address.startswith("127.") else address


def _serve_worker_metrics(host: str, port: int) -> None:
    from prometheus_client import CollectorRegistry, Counter

    from smsstream import metrics

    registry = CollectorRegistry()
    Counter("bind_probe", "a probe", registry=registry).inc()
    metrics.serve(registry, port, host=host)


def _serve_notifier_health(host: str, port: int) -> None:
    import asyncio
    import threading

    from prometheus_client import CollectorRegistry, Counter

    from smsstream.notify.service import serve_health

    registry = CollectorRegistry()
    Counter("bind_probe", "a probe", registry=registry).inc()
    notifier = type("Notifier", (), {"registry": registry, "status": lambda self: {"status": "ok"}})()
    started = threading.Event()

    def serve():
        loop = asyncio.new_event_loop()
        loop.run_until_complete(serve_health(notifier, host, port))
        started.set()
        loop.run_forever()

    threading.Thread(target=serve, daemon=True).start()
    assert started.wait(10)


@pytest.mark.parametrize("serve", [_serve_worker_metrics, _serve_notifier_health])
@pytest.mark.parametrize("host,reachable_from_outside", [("127.0.0.1", False), ("0.0.0.0", True)])
def test_metrics_bind_to_the_host_setting(serve, host, reachable_from_outside):
    import socket
    import urllib.request

    from smsstream.broker import free_port

    other = _non_loopback_address()
    if other is None:
        pytest.skip("this machine has no non-loopback address to try")
    port = free_port()
    serve(host, port)
    assert b"bind_probe_total 1.0" in urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read()
    try:
        socket.create_connection((other, port), timeout=2).close()
        reached = True
    except OSError:
        reached = False
    assert reached is reachable_from_outside


def test_notifier_settings_have_working_defaults_and_name_the_variable_when_wrong():
    notify = Settings.from_env({}).notify
    assert (notify.group_id, notify.metrics_port, notify.start) == ("smsstream-notify", 9109, "earliest")
    assert notify.runbook_base_url == "docs/runbooks" and notify.max_attempts == 0
    tuned = Settings.from_env({"SMSSTREAM_NOTIFY_RETRY_MIN_S": "0.05", "SMSSTREAM_RUNBOOK_BASE_URL": "https://x/rb/"})
    assert tuned.notify.retry_min_s == 0.05 and tuned.notify.runbook_base_url == "https://x/rb"
    for env, name in [
        ({"SMSSTREAM_NOTIFY_START": "middle"}, "SMSSTREAM_NOTIFY_START"),
        ({"SMSSTREAM_NOTIFY_REFRESH_S": "soon"}, "SMSSTREAM_NOTIFY_REFRESH_S"),
        ({"SMSSTREAM_NOTIFY_MAX_INFLIGHT": "0"}, "SMSSTREAM_NOTIFY_MAX_INFLIGHT"),
        ({"SMSSTREAM_NOTIFY_RETRY_MIN_S": "5", "SMSSTREAM_NOTIFY_RETRY_MAX_S": "1"}, "SMSSTREAM_NOTIFY_RETRY_MAX_S"),
    ]:
        with pytest.raises(ConfigError, match=name):
            Settings.from_env(env)


def test_the_webhook_secret_does_not_show_in_settings_repr():
    settings = Settings.from_env({"SMSSTREAM_WEBHOOK_URL": "http://hook", "SMSSTREAM_WEBHOOK_SECRET": "whsec-123"})
    assert settings.webhook_secret == "whsec-123" and "whsec-123" not in repr(settings)


def test_faust_options_given_to_smsstream_worker_go_before_its_worker_command():
    from smsstream.worker.cli import faust_argv

    assert faust_argv(["--loop", "uvloop", "-l", "info", "--web-port", "6067"]) == [
        "--loop", "uvloop", "worker", "-l", "info", "--web-port", "6067"]
    assert faust_argv(["--loop=uvloop"]) == ["--loop=uvloop", "worker"]
    assert faust_argv([]) == ["worker"]
    assert faust_argv(["tables"]) == ["tables"]
