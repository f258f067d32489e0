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


#: Where ``smsstream notify`` starts reading a partition its group has never committed on.
NOTIFY_STARTS = ("earliest", "latest")


@dataclass(frozen=True)
class NotifySettings:
    """How ``smsstream notify`` reads ``sms.alerts`` and delivers; README "Paging" lists the names."""

    group_id: str = "smsstream-notify"
    metrics_port: int = 9109
    start: str = "earliest"
    runbook_base_url: str = "docs/runbooks"
    #: a firing alert is re-sent this often; Alertmanager holds it for ``5 * refresh_s``
    refresh_s: float = 60.0
    #: a firing alert with no record for this long is taken as lost and left to expire
    firing_ttl_s: float = 86400.0
    retry_min_s: float = 1.0
    retry_max_s: float = 60.0
    #: failed attempts before a delivery is given up and counted as dropped; 0 retries for ever
    max_attempts: int = 0
    timeout_s: float = 10.0
    max_inflight: int = 1000

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> "NotifySettings":
        start = env.get("SMSSTREAM_NOTIFY_START", cls.start).lower()
        if start not in NOTIFY_STARTS:
            raise ConfigError(f"SMSSTREAM_NOTIFY_START={start!r} is not one of {', '.join(NOTIFY_STARTS)}")
        settings = cls(
            group_id=env.get("SMSSTREAM_NOTIFY_GROUP") or cls.group_id,
            metrics_port=_int(env, "SMSSTREAM_NOTIFY_METRICS_PORT", cls.metrics_port, minimum=0),
            start=start,
            runbook_base_url=(env.get("SMSSTREAM_RUNBOOK_BASE_URL") or cls.runbook_base_url).rstrip("/"),
            refresh_s=_float(env, "SMSSTREAM_NOTIFY_REFRESH_S", cls.refresh_s, minimum=0.1),
            firing_ttl_s=_float(env, "SMSSTREAM_NOTIFY_FIRING_TTL_S", cls.firing_ttl_s, minimum=1),
            retry_min_s=_float(env, "SMSSTREAM_NOTIFY_RETRY_MIN_S", cls.retry_min_s, minimum=0.01),
            retry_max_s=_float(env, "SMSSTREAM_NOTIFY_RETRY_MAX_S", cls.retry_max_s, minimum=0.01),
            max_attempts=_int(env, "SMSSTREAM_NOTIFY_MAX_ATTEMPTS", cls.max_attempts, minimum=0),
            timeout_s=_float(env, "SMSSTREAM_NOTIFY_TIMEOUT_S", cls.timeout_s, minimum=0.1),
            max_inflight=_int(env, "SMSSTREAM_NOTIFY_MAX_INFLIGHT", cls.max_inflight, minimum=1),
        )
        if settings.retry_max_s < settings.retry_min_s:
            raise ConfigError(
                f"SMSSTREAM_NOTIFY_RETRY_MAX_S={settings.retry_max_s} is below SMSSTREAM_NOTIFY_RETRY_MIN_S="
                f"{settings.retry_min_s}; raise the maximum or lower the minimum"
            )
        return settings


@dataclass(frozen=True)
class Settings:
    broker: str = "kafka://127.0.0.1:9092"
    pseudonym_key: Secret | None = field(default=None, repr=False)
    alert_repeat_s: int = 3600
    #: how far behind the latest event time a send or binding may arrive and still count in its own bucket
    allowed_lateness_s: int = 10
    #: how far behind it one may arrive and still count (in the first open bucket); later is dead-lettered
    late_horizon_s: int = 1800
    #: how long a number's non-borrower loan SMS from one lender wait for another lender's (``shared_list``)
    shared_list_window_s: int = 86400
    metrics_port: int = 9108
    #: interface for /health and /metrics: loopback by default, 0.0.0.0 for Kubernetes probes and scrapes
    bind_host: str = "127.0.0.1"
    #: Whether ``SMSSTREAM_METRICS_PORT`` was set: the demo picks a free port when it was not.
    metrics_port_set: bool = False
    alertmanager_url: str | None = None
    webhook_url: str | None = None
    webhook_secret: Secret | None = field(default=None, repr=False)
    notify: NotifySettings = field(default_factory=NotifySettings)
    #: Faust table store: ``memory://`` (tests, demo) or ``rocksdb://`` (production).
    store: str = "memory://"
    data_dir: str = "./smsstream-data"
    #: the worker's consumer group and the prefix of its internal topics and tables
    app_id: str = "smsstream"
    #: Downloads kept between runs: Apache Kafka's jars for ``smsstream broker --engine kafka``.
    cache_dir: str = "~/.cache/smsstream"
    security: KafkaSecurity = field(default_factory=KafkaSecurity)
    #: SIGTERM/SIGINT stop a worker within this long, whatever the broker's state (then it exits anyway)
    shutdown_timeout_s: float = 30.0

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> "Settings":
        env = os.environ if env is None else env
        key = env.get("SMSSTREAM_PSEUDONYM_KEY")
        webhook_secret = env.get("SMSSTREAM_WEBHOOK_SECRET")
        return cls(
            broker=env.get("SMSSTREAM_BROKER", cls.broker),
            pseudonym_key=Secret(key) if key else None,
            alert_repeat_s=_int(env, "SMSSTREAM_ALERT_REPEAT_S", cls.alert_repeat_s, minimum=1),
            allowed_lateness_s=_int(env, "SMSSTREAM_ALLOWED_LATENESS_S", cls.allowed_lateness_s, minimum=0),
            late_horizon_s=_int(env, "SMSSTREAM_LATE_HORIZON_S", cls.late_horizon_s, minimum=0),
            shared_list_window_s=_int(env, "SMSSTREAM_SHARED_LIST_WINDOW_S", cls.shared_list_window_s,
                                      minimum=3600, maximum=7 * 86400),
            metrics_port=_int(env, "SMSSTREAM_METRICS_PORT", cls.metrics_port, minimum=0),
            bind_host=env.get("SMSSTREAM_BIND_HOST") or cls.bind_host,
            metrics_port_set=bool(env.get("SMSSTREAM_METRICS_PORT")),
            alertmanager_url=env.get("SMSSTREAM_ALERTMANAGER_URL") or None,
            webhook_url=env.get("SMSSTREAM_WEBHOOK_URL") or None,
            webhook_secret=Secret(webhook_secret) if webhook_secret else None,
            notify=NotifySettings.from_env(env),
            store=env.get("SMSSTREAM_STORE", cls.store),
            data_dir=env.get("SMSSTREAM_DATA_DIR", cls.data_dir),
            app_id=env.get("SMSSTREAM_APP_ID") or cls.app_id,
            cache_dir=env.get("SMSSTREAM_CACHE_DIR") or _cache_dir(env),
            security=_security(env),
            shutdown_timeout_s=_float(env, "SMSSTREAM_SHUTDOWN_TIMEOUT_S", cls.shutdown_timeout_s, minimum=1),
        )

    def __post_init__(self) -> None:
        if self.late_horizon_s < self.allowed_lateness_s:
            raise ConfigError(
                f"SMSSTREAM_LATE_HORIZON_S={self.late_horizon_s} is shorter than SMSSTREAM_ALLOWED_LATENESS_S="
                f"{self.allowed_lateness_s}; a record within the allowed lateness must still count: raise the horizon"
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


def _int(env: Mapping[str, str], name: str, default: int, minimum: int, maximum: int | None = None) -> int:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ConfigError(f"{name}={raw!r} is not an integer; unset it for the default {default}") from None
    if value < minimum:
        raise ConfigError(f"{name}={value} must be at least {minimum}; unset it for the default {default}")
    if maximum is not None and value > maximum:
        raise ConfigError(f"{name}={value} must be at most {maximum}; unset it for the default {default}")
    return value


def _float(env: Mapping[str, str], name: str, default: float, minimum: float) -> float:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ConfigError(f"{name}={raw!r} is not a number; unset it for the default {default:g}") from None
    if not value >= minimum:
        raise ConfigError(f"{name}={raw} must be at least {minimum:g}; unset it for the default {default:g}")
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
