"""Settings to Kafka clients: the one place broker URLs and security become client options.

The broker URL is in Faust form (``kafka://host:port[;kafka://host2:port]``) so the
same ``SMSSTREAM_BROKER`` value drives the Faust worker and every plain aiokafka
client (topics, simulator, tests). Faust itself is imported only when a Faust
config is asked for, so ``topics apply`` stays cheap.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
from typing import Any

from smsstream.config import KafkaSecurity, Settings
from smsstream.errors import ConfigError

SCHEMES = ("kafka://", "aiokafka://")


def bootstrap_servers(broker_url: str) -> list[str]:
    """``kafka://a:9092;kafka://b:9092`` (or bare ``a:9092,b:9092``) -> ``['a:9092', 'b:9092']``."""
    servers = []
    for part in broker_url.replace(",", ";").split(";"):
        part = part.strip()
        if not part:
            continue
        for scheme in SCHEMES:
            if part.startswith(scheme):
                part = part[len(scheme):]
                break
        else:
            if "://" in part:
                raise ConfigError(
                    f"broker URL {broker_url!r} uses an unknown scheme; write kafka://host:port "
                    "(SMSSTREAM_BROKER or --broker)"
                )
        part = part.rstrip("/")
        host, sep, port = part.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ConfigError(
                f"broker URL {broker_url!r} has no host:port in {part!r}; write kafka://host:port "
                "(SMSSTREAM_BROKER or --broker)"
            )
        servers.append(f"{host}:{port}")
    if not servers:
        raise ConfigError("broker URL is empty; set SMSSTREAM_BROKER to kafka://host:port")
    return servers


def faust_broker_url(broker_url: str) -> str:
    """The same servers written the way Faust wants them (``kafka://a:9092;kafka://b:9092``)."""
    return ";".join(f"kafka://{server}" for server in bootstrap_servers(broker_url))


def ssl_context(security: KafkaSecurity) -> ssl.SSLContext | None:
    """A TLS client context for SSL / SASL_SSL, verifying the broker against the CA file if given."""
    if security.protocol not in ("SSL", "SASL_SSL"):
        return None
    try:
        context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=security.ssl_cafile)
        if security.ssl_certfile:
            context.load_cert_chain(security.ssl_certfile, security.ssl_keyfile)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(
            f"cannot load TLS files ({exc.__class__.__name__}: {exc}); check SMSSTREAM_KAFKA_SSL_CAFILE, "
            "SMSSTREAM_KAFKA_SSL_CERTFILE and SMSSTREAM_KAFKA_SSL_KEYFILE"
        ) from None
    context.check_hostname = security.ssl_check_hostname
    return context


def client_kwargs(settings: Settings, broker: str | None = None) -> dict[str, Any]:
    """Keyword arguments for ``AIOKafkaProducer``/``AIOKafkaConsumer``/``AIOKafkaAdminClient``."""
    security = settings.security
    kwargs: dict[str, Any] = {
        "bootstrap_servers": bootstrap_servers(broker or settings.broker),
        "security_protocol": security.protocol,
    }
    context = ssl_context(security)
    if context is not None:
        kwargs["ssl_context"] = context
    if security.protocol.startswith("SASL"):
        kwargs["sasl_mechanism"] = security.sasl_mechanism
        kwargs["sasl_plain_username"] = security.sasl_username
        kwargs["sasl_plain_password"] = str(security.sasl_password) if security.sasl_password else None
    return kwargs


def cannot_connect(exc: BaseException, kwargs: dict[str, Any]) -> str:
    """Why a client built from ``kwargs`` (:func:`client_kwargs`) could not start, and the fix.

    A broker that takes the TCP connection but refuses the client's TLS or SASL
    handshake looks to aiokafka like one that is not there; the settings are named instead.
    """
    servers = kwargs["bootstrap_servers"]
    shown = ",".join(servers)
    protocol = kwargs.get("security_protocol", "PLAINTEXT")
    if protocol != "PLAINTEXT" and any(_port_open(server) for server in servers):
        return (f"the Kafka broker at {shown} answers but refused this client over {protocol} "
                f"({exc.__class__.__name__}): check SMSSTREAM_KAFKA_SASL_USERNAME, SMSSTREAM_KAFKA_SASL_PASSWORD and "
                "SMSSTREAM_KAFKA_SASL_MECHANISM, and that SMSSTREAM_KAFKA_SSL_CAFILE holds the CA that signed its "
                "certificate")
    return (f"no Kafka broker answers at {shown} ({exc.__class__.__name__}); start one with "
            "`smsstream broker` or point SMSSTREAM_BROKER (or --broker) at yours")


def _port_open(server: str) -> bool:
    host, _, port = server.rpartition(":")
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=2):
            return True
    except (OSError, ValueError):
        return False


def faust_credentials(security: KafkaSecurity) -> Any:
    """``broker_credentials`` for ``faust.App``: SASL or TLS credentials, or None for PLAINTEXT."""
    import faust

    context = ssl_context(security)
    if security.protocol.startswith("SASL"):
        return faust.SASLCredentials(
            username=security.sasl_username,
            password=str(security.sasl_password) if security.sasl_password else None,
            mechanism=security.sasl_mechanism,
            ssl_context=context,
        )
    if context is not None:
        return faust.SSLCredentials(context)
    return None


def faust_config(settings: Settings, broker: str | None = None) -> dict[str, Any]:
    """``broker`` and ``broker_credentials`` for ``faust.App(...)``."""
    config: dict[str, Any] = {"broker": faust_broker_url(broker or settings.broker)}
    credentials = faust_credentials(settings.security)
    if credentials is not None:
        config["broker_credentials"] = credentials
    return config


async def read_range(settings: Settings, topic: str, partition: int, start: int,
                     end: int | None) -> list[tuple[int, Any, Any]]:
    """(offset, key, value) of the messages of one partition from ``start`` up to ``end`` (exclusive; None: its end).

    A short-lived reader outside any consumer group. Fewer come back when the
    topic no longer holds some of them (retention): the first offset says so.
    """
    from aiokafka import AIOKafkaConsumer, TopicPartition

    if end is not None and start >= end:
        return []
    tp = TopicPartition(topic, partition)
    reader = AIOKafkaConsumer(**client_kwargs(settings), group_id=None, enable_auto_commit=False,
                              auto_offset_reset="earliest")
    await reader.start()
    got: list[tuple[int, Any, Any]] = []
    try:
        reader.assign([tp])
        if end is None:
            end = (await reader.end_offsets([tp]))[tp]
        reader.seek(tp, start)
        while await reader.position(tp) < end:
            batch = await reader.getmany(tp, timeout_ms=5_000)
            if not batch:
                break
            got += [(r.offset, r.key, r.value) for r in batch.get(tp, ()) if r.offset < end]
    finally:
        await _stop_reader(reader)
    return got


async def _stop_reader(reader: Any) -> None:
    """Stop a group-less reader.

    aiokafka 0.14 re-raises the cancellation of its own task when a group-less
    consumer stops soon after starting; a cancellation of this task goes on.
    """
    try:
        await reader.stop()
    except asyncio.CancelledError:
        if asyncio.current_task().cancelling():
            raise


async def read_offsets(settings: Settings, topic: str, partition: int,
                       offsets: list[int]) -> dict[int, tuple[Any, Any]]:
    """``offset -> (key, value)`` of the given messages of one partition; those gone to retention are missing.

    One short-lived reader outside any consumer group; it seeks once per gap,
    so offsets close together cost one fetch.
    """
    from aiokafka import AIOKafkaConsumer, TopicPartition

    wanted = sorted(set(offsets))
    members = set(wanted)
    if not wanted:
        return {}
    tp = TopicPartition(topic, partition)
    reader = AIOKafkaConsumer(**client_kwargs(settings), group_id=None, enable_auto_commit=False,
                              auto_offset_reset="earliest")
    await reader.start()
    got: dict[int, tuple[Any, Any]] = {}
    try:
        reader.assign([tp])
        i = 0
        while i < len(wanted):
            reader.seek(tp, wanted[i])
            batch = (await reader.getmany(tp, timeout_ms=5_000)).get(tp, ())
            if not batch:
                break
            for message in batch:
                if message.offset in members:
                    got[message.offset] = (message.key, message.value)
            last = batch[-1].offset
            i = next((j for j in range(i, len(wanted)) if wanted[j] > last), len(wanted))
    finally:
        await _stop_reader(reader)
    return got

