"""Settings from the environment: one frozen object, read once, passed down.

The names of CONTRACT.md are fixed; the Kafka security names are documented in
the README's configuration table.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Mapping

from smsstream.errors import ConfigError


class Secret(str):
    """A string that does not show itself in repr or logs."""

    def __repr__(self) -> str:
        return "Secret('**********')"


SECURITY_PROTOCOLS = ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL")
SASL_MECHANISMS = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")


@dataclass(frozen=True)
class KafkaSecurity:
    protocol: str = "PLAINTEXT"
    sasl_mechanism: str | None = None
    sasl_username: str | None = None
    sasl_password: Secret | None = field(default=None, repr=False)
    ssl_cafile: str | None = None
    ssl_certfile: str | None = None
    ssl_keyfile: str | None = None
    ssl_check_hostname: bool = True


@dataclass(frozen=True)
class Settings:
    broker: str = "kafka://127.0.0.1:9092"
    pseudonym_key: Secret | None = field(default=None, repr=False)
    alert_repeat_s: int = 3600
    metrics_port: int = 9108
    #: Whether ``SMSSTREAM_METRICS_PORT`` was set: the demo picks a free port when it was not.
    metrics_port_set: bool = False
    alertmanager_url: str | None = None
    #: Faust table store: ``memory://`` (tests, demo) or ``rocksdb://`` (production).
    store: str = "memory://"
    data_dir: str = "./smsstream-data"
    #: Downloads kept between runs: Apache Kafka's jars for ``smsstream broker --engine kafka``.
    cache_dir: str = "~/.cache/smsstream"
    security: KafkaSecurity = field(default_factory=KafkaSecurity)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> "Settings":
        env = os.environ if env is None else env
        key = env.get("SMSSTREAM_PSEUDONYM_KEY")
        return cls(
            broker=env.get("SMSSTREAM_BROKER", cls.broker),
            pseudonym_key=Secret(key) if key else None,
            alert_repeat_s=_int(env, "SMSSTREAM_ALERT_REPEAT_S", cls.alert_repeat_s, minimum=1),
            metrics_port=_int(env, "SMSSTREAM_METRICS_PORT", cls.metrics_port, minimum=0),
            metrics_port_set=bool(env.get("SMSSTREAM_METRICS_PORT")),
            alertmanager_url=env.get("SMSSTREAM_ALERTMANAGER_URL") or None,
            store=env.get("SMSSTREAM_STORE", cls.store),
            data_dir=env.get("SMSSTREAM_DATA_DIR", cls.data_dir),
            cache_dir=env.get("SMSSTREAM_CACHE_DIR") or _cache_dir(env),
            security=_security(env),
        )

    def require_pseudonym_key(self) -> Secret:
        if not self.pseudonym_key:
            raise ConfigError(
                "SMSSTREAM_PSEUDONYM_KEY is not set: phone numbers cannot be pseudonymised. "
                "Set it to a secret string (the same on every worker and for `evaluate`)."
            )
        return self.pseudonym_key


def _cache_dir(env: Mapping[str, str]) -> str:
    """``$XDG_CACHE_HOME/smsstream``, else ``~/.cache/smsstream`` (the XDG base directory rule)."""
    base = env.get("XDG_CACHE_HOME") or os.path.join(env.get("HOME") or os.path.expanduser("~"), ".cache")
    return os.path.join(base, "smsstream")


def _int(env: Mapping[str, str], name: str, default: int, minimum: int) -> int:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ConfigError(f"{name}={raw!r} is not an integer; unset it for the default {default}") from None
    if value < minimum:
        raise ConfigError(f"{name}={value} must be at least {minimum}; unset it for the default {default}")
    return value


def _security(env: Mapping[str, str]) -> KafkaSecurity:
    protocol = env.get("SMSSTREAM_KAFKA_SECURITY_PROTOCOL", "PLAINTEXT").upper()
    if protocol not in SECURITY_PROTOCOLS:
        raise ConfigError(
            f"SMSSTREAM_KAFKA_SECURITY_PROTOCOL={protocol!r} is not one of {', '.join(SECURITY_PROTOCOLS)}"
        )
    mechanism = env.get("SMSSTREAM_KAFKA_SASL_MECHANISM") or None
    if protocol.startswith("SASL"):
        mechanism = (mechanism or "SCRAM-SHA-512").upper()
        if mechanism not in SASL_MECHANISMS:
            raise ConfigError(
                f"SMSSTREAM_KAFKA_SASL_MECHANISM={mechanism!r} is not one of {', '.join(SASL_MECHANISMS)}"
            )
        for name in ("SMSSTREAM_KAFKA_SASL_USERNAME", "SMSSTREAM_KAFKA_SASL_PASSWORD"):
            if not env.get(name):
                raise ConfigError(f"{name} is required when SMSSTREAM_KAFKA_SECURITY_PROTOCOL={protocol}")
    password = env.get("SMSSTREAM_KAFKA_SASL_PASSWORD")
    return KafkaSecurity(
        protocol=protocol,
        sasl_mechanism=mechanism,
        sasl_username=env.get("SMSSTREAM_KAFKA_SASL_USERNAME") or None,
        sasl_password=Secret(password) if password else None,
        ssl_cafile=env.get("SMSSTREAM_KAFKA_SSL_CAFILE") or None,
        ssl_certfile=env.get("SMSSTREAM_KAFKA_SSL_CERTFILE") or None,
        ssl_keyfile=env.get("SMSSTREAM_KAFKA_SSL_KEYFILE") or None,
        ssl_check_hostname=env.get("SMSSTREAM_KAFKA_SSL_CHECK_HOSTNAME", "true").lower() not in ("0", "false", "no"),
    )
