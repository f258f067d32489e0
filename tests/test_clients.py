"""Downstream clients: kcat and confluent-kafka (both librdkafka) beside aiokafka, on the contract's topics.

A module of its own broker (of the session's engine): the simulated scenario
is written to every input topic by kcat and confluent-kafka, a partition each
in turn, a worker reads it, and both clients read what it writes. Records
written by them must arrive byte for byte and give the alerts replay gives;
what they read must carry the contract's keys and values valid against
``topics/schemas/``.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import time
import uuid
import zlib
from collections import defaultdict
from pathlib import Path

import orjson
import pytest
from jsonschema import Draft202012Validator

import brokers
from smsstream.broker import free_port
from smsstream.kafka_broker import console_consumer, resolve_jars
from smsstream.records import ALERTS, DEAD_LETTER, SENDS
from smsstream.topics import apply_topics, load_specs
from smsstream.worker.process import WorkerProcess
from worker_scenario import MALFORMED, consume, episodes, record, simulated, worker_env

pytestmark = pytest.mark.broker

SPECS = {spec.name: spec for spec in load_specs()}
INPUTS = [name for name, spec in SPECS.items() if spec.role == "input"]
KEY_DELIMITER, RECORD_DELIMITER = "\x1f", "\x1e"  # ASCII unit and record separators: never in JSON text
QUIET = {"log_level": 3}  # librdkafka: errors only (a closing broker is not worth a warning here)


def kcat_works(bootstrap: str) -> tuple[bool, str]:
    """Whether this machine's kcat can talk to the broker at all (Debian 12's cannot talk to Tansu 0.6)."""
    probe = subprocess.run(["kcat", "-b", bootstrap, "-L", "-m", "5"], capture_output=True, text=True, timeout=30)
    lines = probe.stderr.strip().splitlines() or [""]
    first_request = [line.split("]: ", 1)[-1] for line in lines if "ApiVersionRequest failed" in line]
    return probe.returncode == 0, (first_request or lines)[-1]


def partition_of(key: bytes | None, partitions: int) -> int:
    """Our own choice of partition, so each partition is fed by one client in the scenario's order."""
    return zlib.crc32(key or b"") % partitions


def write_with_kcat(bootstrap: str, topic: str, partition: int, records: list, tmp: Path) -> None:
    """``kcat -P``: key and value separated by control characters, an empty value sent as a null (tombstone)."""
    path = tmp / f"kcat-{topic}-{partition}.in"
    with path.open("wb") as out:
        for key, value in records:
            out.write((key or b"") + KEY_DELIMITER.encode() + (value or b"") + RECORD_DELIMITER.encode())
    done = subprocess.run(["kcat", "-b", bootstrap, "-P", "-t", topic, "-p", str(partition), "-K", KEY_DELIMITER,
                           "-D", RECORD_DELIMITER, "-Z", "-l", str(path)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr


def write_with_confluent_kafka(bootstrap: str, topic: str, partition: int, records: list) -> None:
    from confluent_kafka import Producer

    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 20, **QUIET})
    failures: list = []
    for key, value in records:
        producer.produce(topic, value=value, key=key, partition=partition,
                         on_delivery=lambda err, _msg: err and failures.append(err))
        producer.poll(0)
    assert producer.flush(60) == 0 and failures == []


def read_with_kcat(bootstrap: str, topic: str) -> list[tuple[int, bytes | None, bytes | None]]:
    """``kcat -C -J``: every record of ``topic`` from the start, as partition, key and value."""
    done = subprocess.run(["kcat", "-b", bootstrap, "-C", "-t", topic, "-o", "beginning", "-e", "-J"],
                          capture_output=True, timeout=120)
    assert done.returncode == 0, done.stderr
    out = []
    for line in done.stdout.decode("utf-8", "surrogateescape").splitlines():
        envelope = json.loads(line)
        key, payload = envelope["key"], envelope["payload"]
        out.append((envelope["partition"], None if key is None else key.encode("utf-8", "surrogateescape"),
                    None if payload is None else payload.encode("utf-8", "surrogateescape")))
    return out


def read_with_confluent_kafka(bootstrap: str, topic: str, count: int,
                              group: bool = True) -> list[tuple[int, bytes | None, bytes | None]]:
    """As a downstream service reads: in a consumer group, or (``group=False``) every partition from its start."""
    from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"downstream-{uuid.uuid4().hex[:8]}",
                         "auto.offset.reset": "earliest", "enable.auto.commit": group, **QUIET})
    if group:
        consumer.subscribe([topic])
    else:
        consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in range(SPECS[topic].partitions)])
    out: list[tuple[int, bytes | None, bytes | None]] = []
    deadline = time.monotonic() + 120
    try:
        while len(out) < count and time.monotonic() < deadline:
            message = consumer.poll(1.0)
            if message is None:
                continue
            assert message.error() is None, message.error()
            out.append((message.partition(), message.key(), message.value()))
    finally:
        consumer.close()
    return out


def read_with_console_consumer(bootstrap: str, topic: str, count: int) -> list[tuple[bytes, bytes]]:
    """Kafka's own console consumer, by the command the README and the demo print (key, a tab, the value)."""
    command = console_consumer(bootstrap, topic) + f" --max-messages {count} --timeout-ms 90000"
    done = subprocess.run(command, shell=True, capture_output=True, timeout=180)
    assert done.returncode == 0, done.stderr
    return [tuple(line.split(b"\t", 1)) for line in done.stdout.splitlines()]


def read_with_aiokafka(bootstrap: str, topic: str, count: int) -> list[tuple[int, bytes | None, bytes | None]]:
    """smsstream's own client: every partition from its start, until ``count`` records came."""
    from aiokafka import AIOKafkaConsumer, TopicPartition

    async def read() -> list:
        consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False)
        await consumer.start()
        try:
            partitions = [TopicPartition(topic, p) for p in range(SPECS[topic].partitions)]
            consumer.assign(partitions)
            await consumer.seek_to_beginning(*partitions)
            out: list = []
            deadline = time.monotonic() + 120
            while len(out) < count and time.monotonic() < deadline:
                batch = await consumer.getmany(timeout_ms=500)
                out += [(m.partition, m.key, m.value) for ms in batch.values() for m in ms]
            return out
        finally:
            await consumer.stop()

    return asyncio.run(read())


@pytest.fixture(scope="module")
def own_broker():
    """A broker for this module alone: it writes the input topics, which the worker tests read from the start."""
    with brokers.broker_of_its_own("writes the contract's input topics") as broker:
        yield broker


@pytest.fixture(scope="module")
def kcat_probe(own_broker) -> tuple[bool, str]:
    if shutil.which("kcat") is None:
        pytest.fail("kcat is not installed: apt-get install kcat (.ci/run does)", pytrace=False)
    return kcat_works(own_broker.bootstrap)


@pytest.fixture(scope="module")
def kcat(kcat_probe) -> bool:
    """True when kcat can talk to this broker; the tests that need it skip, saying why, where it cannot."""
    return kcat_probe[0]


def need_kcat(kcat_probe: tuple[bool, str]) -> None:
    works, error = kcat_probe
    if not works:
        pytest.skip(f"kcat cannot talk to {brokers.describe(brokers.choice())}: {error} "
                    "(the README points kcat users at --engine kafka)")


@pytest.fixture(scope="module")
def scenario(own_broker, kcat, tmp_path_factory):
    """The worker scenario written by the third-party clients, read by a worker; what each client wrote."""
    tmp = tmp_path_factory.mktemp("clients")
    apply_topics(own_broker.url)
    lines, expected = simulated(tmp)
    written: dict[str, dict[int, list]] = {name: defaultdict(list) for name in INPUTS}
    for key, value in MALFORMED:
        written[SENDS][partition_of(key, SPECS[SENDS].partitions)].append((key, value))
    for line in lines:
        topic, key, value = record(line)
        written[topic][partition_of(key, SPECS[topic].partitions)].append((key, value))
    writers: dict[tuple[str, int], str] = {}
    for topic, by_partition in written.items():
        for partition, records in by_partition.items():
            if kcat and partition % 2 == 0:
                write_with_kcat(own_broker.bootstrap, topic, partition, records, tmp)
                writers[(topic, partition)] = "kcat"
            else:
                write_with_confluent_kafka(own_broker.bootstrap, topic, partition, records)
                writers[(topic, partition)] = "confluent-kafka"
    env = worker_env(own_broker.url, tmp)
    worker = WorkerProcess(env, free_port(), tmp / "worker.log").start()
    try:
        worker.wait_ready()
        want = set(episodes(expected))
        alerts = asyncio.run(consume(
            own_broker.bootstrap, ALERTS, lambda ms: set(episodes([orjson.loads(m.value) for m in ms])) >= want,
            300))
        dead = asyncio.run(consume(own_broker.bootstrap, DEAD_LETTER, lambda ms: len(ms) >= len(MALFORMED), 60))
    finally:
        worker.stop()
    return {"expected": expected, "written": written, "writers": writers, "alerts": alerts, "dead": dead}


def test_every_input_topic_is_written_by_both_clients_where_kcat_can(scenario, kcat):
    by_topic: dict[str, set[str]] = defaultdict(set)
    for (topic, _), client in scenario["writers"].items():
        by_topic[topic].add(client)
    assert set(by_topic) == set(INPUTS)
    want = {"kcat", "confluent-kafka"} if kcat else {"confluent-kafka"}
    assert all(clients == want for clients in by_topic.values()), dict(by_topic)


@pytest.mark.parametrize("reader", ["aiokafka", "kcat", "confluent-kafka"])
def test_records_written_by_kcat_and_confluent_kafka_read_back_byte_for_byte_in_order(
        own_broker, scenario, kcat_probe, reader):
    if reader == "kcat":
        need_kcat(kcat_probe)
    for topic in INPUTS:
        written = scenario["written"][topic]
        count = sum(map(len, written.values()))
        if reader == "aiokafka":
            got = read_with_aiokafka(own_broker.bootstrap, topic, count)
        elif reader == "kcat":
            got = read_with_kcat(own_broker.bootstrap, topic)
        else:
            got = read_with_confluent_kafka(own_broker.bootstrap, topic, count, group=False)
        by_partition: dict[int, list] = defaultdict(list)
        for partition, key, value in got:
            by_partition[partition].append((key, value))
        assert dict(by_partition) == dict(written), f"{topic} read by {reader} differs from what the clients wrote"
    tombstones = [v for records in scenario["written"]["sms.borrowers"].values() for _, v in records if v is None]
    assert tombstones, "the scenario should remove a borrower (a null value) so tombstones are tried"


def test_the_worker_reads_their_records_as_it_reads_aiokafkas(scenario):
    """Same alerts as replay (the worker tests show aiokafka's records give exactly these), same dead letters."""
    expected = scenario["expected"]
    assert len({a["kind"] for a in expected}) >= 2
    assert episodes([orjson.loads(m.value) for m in scenario["alerts"]]) == episodes(expected)
    dead = {m.key: orjson.loads(m.value) for m in scenario["dead"]}
    assert set(dead) == {key for key, _ in MALFORMED}
    assert dead[b"\xff\xfe"]["raw_encoding"] == "base64" and "not valid JSON" in dead[b"bad-json"]["error"]


def contract_key(topic: str, value: dict, key: bytes) -> bytes:
    """The key CONTRACT.md gives a record of ``topic``: the alert's dedup_key, or the dead input's own key."""
    return value["dedup_key"].encode() if topic == ALERTS else key


@pytest.mark.parametrize(("client", "topic"), [
    ("kcat", ALERTS), ("kcat", DEAD_LETTER), ("confluent-kafka", ALERTS), ("confluent-kafka", DEAD_LETTER),
    ("console-consumer", DEAD_LETTER),
])
def test_a_downstream_client_reads_the_output_topics_with_contract_keys_and_valid_values(
        own_broker, scenario, kcat_probe, client, topic):
    reference = scenario["alerts"] if topic == ALERTS else scenario["dead"]
    if client == "kcat":
        need_kcat(kcat_probe)
        got = [(key, value) for _, key, value in read_with_kcat(own_broker.bootstrap, topic)]
    elif client == "confluent-kafka":
        # alerts in a consumer group, as a downstream service reads them; dead letters partition by partition,
        # as an operator looks at them (and one group join less: each takes ~25 s on Tansu)
        read = read_with_confluent_kafka(own_broker.bootstrap, topic, len(reference), group=topic == ALERTS)
        got = [(key, value) for _, key, value in read]
    else:
        resolve_jars()
        got = read_with_console_consumer(own_broker.bootstrap, topic, len(reference))
    validator = Draft202012Validator(SPECS[topic].schema())
    assert sorted(got) == sorted((m.key, m.value) for m in reference), "not the records aiokafka reads"
    for key, value in got:
        parsed = json.loads(value)
        assert not list(validator.iter_errors(parsed)), f"{topic} value invalid against its schema: {value[:200]!r}"
        assert key == contract_key(topic, parsed, key)
    if topic == DEAD_LETTER:
        assert {key for key, _ in got} == {key for key, _ in MALFORMED}


def test_a_topic_compacted_as_sms_alerts_is_keeps_the_latest_record_of_each_dedup_key(
        own_broker, scenario, kcat_probe):
    """A consumer that compacts by key, as CONTRACT.md allows, ends with each alert's latest state."""
    if brokers.choice() == "tansu":
        pytest.skip("Tansu's memory storage never compacts; Apache Kafka does (SMSSTREAM_TEST_BROKER=kafka)")
    need_kcat(kcat_probe)
    from confluent_kafka.admin import AdminClient, NewTopic

    spec = SPECS[ALERTS]
    assert "compact" in spec.cleanup_policy
    records = [(m.key, m.value) for m in sorted(scenario["alerts"], key=lambda m: (m.partition, m.offset))]
    latest = {key: value for key, value in records}
    assert len(latest) < len(records), "the scenario should give some alert more than one record"
    topic = f"compacted-alerts-{uuid.uuid4().hex[:8]}"
    # the contract topic's own policy, with segments that roll (and get cleaned) within seconds
    configs = {**spec.configs(), "segment.ms": "200", "min.cleanable.dirty.ratio": "0.01"}
    admin = AdminClient({"bootstrap.servers": own_broker.bootstrap, **QUIET})
    admin.create_topics([NewTopic(topic, num_partitions=1, replication_factor=1, config=configs)])[topic].result(30)
    tmp = Path(f"/tmp/{topic}")
    tmp.mkdir()
    try:
        write_with_kcat(own_broker.bootstrap, topic, 0, records, tmp)
        time.sleep(0.5)
        write_with_kcat(own_broker.bootstrap, topic, 0, [(b"roll", b"{}")], tmp)  # closes the segment above
        deadline = time.monotonic() + 60
        while True:
            kept = [(k, v) for _, k, v in read_with_kcat(own_broker.bootstrap, topic) if k != b"roll"]
            if len(kept) == len(latest) or time.monotonic() > deadline:
                break
            time.sleep(1)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    assert dict(kept) == latest and len(kept) == len(latest), f"{len(kept)} records kept for {len(latest)} keys"
    statuses = {orjson.loads(v)["status"] for v in latest.values()}
    assert "resolved" in statuses, "some alert should end resolved, replacing its firing record"


def test_where_kcat_cannot_talk_to_the_broker_the_reason_is_its_first_request(kcat_probe):
    """Where kcat cannot talk to the broker, the reason is librdkafka's first request, as the README says."""
    works, error = kcat_probe
    if works:
        pytest.skip("kcat talks to this broker")
    assert "ApiVersionRequest failed: Local: Read underflow" in error, error
