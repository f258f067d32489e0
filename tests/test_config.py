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
