"""The streaming worker on a real broker: same alerts as replay, bad input dead-lettered, clear startup errors."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import urllib.request

import orjson
import pytest

from smsstream.broker import free_port
from smsstream.config import Settings
from smsstream.errors import ConfigError
from smsstream.records import ALERTS, CONTROLS, DEAD_LETTER, SENDS
from smsstream.topics import apply_topics
from smsstream.worker.app import preflight
from smsstream.worker.snapshots import (
    CHUNK_BYTES, checkpoint, delivered, forget_delivered, load_snapshot, save_snapshot,
)
from smsstream.worker.process import WorkerProcess
from clear_numbers import dead_letter_texts, input_numbers, scan
from worker_scenario import (
    MALFORMED, comparable, consume, end_offsets, episodes, prepared, record, topics_named, worker_env,
)


@pytest.fixture(scope="module")
def streamed(broker_url, bootstrap, tmp_path_factory):
    """One worker over the shared scenario, which starts with a few malformed sends."""
    tmp = tmp_path_factory.mktemp("worker")
    scenario = prepared(broker_url, bootstrap, tmp)
    expected = scenario["expected"]
    env = worker_env(broker_url, tmp)
    start = asyncio.run(end_offsets(bootstrap, ALERTS))
    dead_start = asyncio.run(end_offsets(bootstrap, DEAD_LETTER))
    worker = WorkerProcess(env, free_port(), tmp / "worker.log").start()
    try:
        worker.wait_ready()
        want = set(episodes(expected))
        records = asyncio.run(consume(
            bootstrap, ALERTS, lambda ms: set(episodes([orjson.loads(m.value) for m in ms])) >= want, 300,
            start=start))
        (tmp / "expected.jsonl").write_bytes(b"".join(orjson.dumps(a) + b"\n" for a in expected))
        (tmp / "worker-alerts.jsonl").write_bytes(b"".join(m.value + b"\n" for m in records))
        # control entries other tests left invalid on the shared control topic are dead-lettered again by this
        # worker's new consumer group: only the input's are this test's
        def inputs(ms):
            return [m for m in ms if orjson.loads(m.value)["topic"] != CONTROLS]

        dead = inputs(asyncio.run(consume(bootstrap, DEAD_LETTER, lambda ms: len(inputs(ms)) >= len(MALFORMED) + 1, 30,
                                          start=dead_start)))
        metrics_text = urllib.request.urlopen(
            f"http://127.0.0.1:{env['SMSSTREAM_METRICS_PORT']}/metrics", timeout=5).read().decode()
        internal = asyncio.run(topics_named(broker_url, env["SMSSTREAM_APP_ID"]))
        yield {"expected": expected, "records": records, "dead": dead, "metrics": metrics_text,
               "health": worker.health(), "alive": worker.running(), "scenario": scenario, "internal": internal,
               "app_id": env["SMSSTREAM_APP_ID"], "worker": worker}
    finally:
        worker.stop()


@pytest.mark.broker
def test_worker_writes_the_alerts_replay_writes(streamed):
    expected = streamed["expected"]
    assert len({a["kind"] for a in expected}) >= 2
    alerts = [orjson.loads(m.value) for m in streamed["records"]]
    assert episodes(alerts) == episodes(expected)
    same = set(comparable(alerts)) & set(comparable(expected))
    # the figures of most records are equal to the last digit; the rest differ by late records only (episodes)
    assert len(same) >= 0.8 * len(set(comparable(expected))), f"{len(same)} of {len(expected)} records identical"
    assert all(m.key.decode() == orjson.loads(m.value)["dedup_key"] for m in streamed["records"])
    assert all(isinstance(a["detected_at"], int) and a["detected_at"] > 0 for a in alerts)


@pytest.mark.broker
def test_malformed_records_land_on_the_dead_letter_topic_and_the_worker_keeps_going(streamed):
    dead = {m.key: orjson.loads(m.value) for m in streamed["dead"]}
    duplicate_key, duplicate = streamed["scenario"]["duplicate"]
    assert set(dead) == {key for key, _ in MALFORMED} | {duplicate_key}
    assert "not valid JSON" in dead[b"bad-json"]["error"]
    assert dead[b"bad-field"]["error"].startswith("field '")
    assert dead[b"\xff\xfe"]["raw_encoding"] == "base64"
    assert all(d["topic"] == SENDS and isinstance(d["offset"], int) for d in dead.values())
    assert streamed["alive"]
    # the unparseable text and the non-UTF-8 bytes both fail as JSON
    assert 'smsstream_dead_letters_total{reason="invalid_json",topic="sms.sends"} 2.0' in streamed["metrics"]
    assert 'smsstream_dead_letters_total{reason="invalid_record",topic="sms.sends"} 1.0' in streamed["metrics"]
    assert "+91" not in streamed["metrics"]


@pytest.mark.broker
def test_a_record_a_part_refuses_is_dead_lettered_with_its_raw_bytes_read_back_from_the_input(streamed):
    key, value = streamed["scenario"]["duplicate"]
    letter = next(orjson.loads(m.value) for m in streamed["dead"] if m.key == key)
    assert letter["error"].startswith("duplicate send")
    assert letter["raw"] == value.decode() and letter["topic"] == SENDS
    assert 'smsstream_dead_letters_total{reason="duplicate",topic="sms.sends"} 1.0' in streamed["metrics"]


def snapshots_of(changelog: dict[int, list[tuple]]) -> list[bytes]:
    """The latest snapshot of each partition of a table, from its changelog."""
    blobs = []
    for partition, messages in changelog.items():
        table: dict = {}
        for key, value in messages:
            if value is None:
                table.pop(key, None)
            else:
                table[key] = value
        blob = load_snapshot(table, partition)
        if blob:
            blobs.append(blob)
    return blobs


@pytest.mark.broker
def test_no_output_of_a_worker_holds_a_phone_number_in_clear(streamed):
    numbers = input_numbers(streamed["scenario"]["lines"])
    assert len(numbers) > 100
    internal = streamed["internal"]
    part_topics = [v for topic, ps in internal.items() if "-part-" in topic for m in ps.values() for _, v in m]
    snapshots = [blob for topic, ps in internal.items() if topic.endswith("-changelog") for blob in snapshots_of(ps)]
    assert len(part_topics) > 100 and len(snapshots) >= 20
    assert all(blob[:2] == b"S\x01" for blob in snapshots)  # today's format, pseudonyms only
    worker = streamed["worker"]
    outputs = {
        "alerts": [m.value for m in streamed["records"]],
        "dead letters (but their raw record and key)": dead_letter_texts(m.value for m in streamed["dead"]),
        "part topics": part_topics,
        "table snapshots": snapshots,
        "the worker's log": [worker.log_path.read_bytes()],
        "/metrics": [streamed["metrics"]],
        "/health": [orjson.dumps(streamed["health"])],
    }
    assert scan(outputs, numbers) == {}


def test_the_scan_finds_the_numbers_release_0_1_kept_in_clear():
    import base64
    import gzip
    import json
    from pathlib import Path

    fixture = Path(__file__).resolve().parent / "fixtures" / "release-0.1"
    state = json.loads(gzip.decompress((fixture / "state.json.gz").read_bytes()))
    numbers = input_numbers(gzip.decompress((fixture / "events.jsonl.gz").read_bytes()).splitlines())
    found = scan({"0.1 snapshots": [base64.b64decode(s) for s in state["snapshots"].values()],
                  "0.1 part topics": [base64.b64decode(m) for ms in state["unread"].values() for m in ms]}, numbers)
    assert set(found) == {"0.1 snapshots", "0.1 part topics"}


@pytest.mark.broker
def test_health_endpoint_reports_assigned_partitions(streamed):
    health = streamed["health"]
    assert health["status"] == "ok" and health["assigned_partitions"] > 0


@pytest.mark.broker
def test_missing_topics_are_named_with_the_command_that_creates_them(broker_url):
    settings = Settings.from_env({"SMSSTREAM_BROKER": broker_url})
    with pytest.raises(ConfigError, match=r"sms\.not-there.*smsstream topics apply"):
        asyncio.run(preflight(settings, topics=["sms.not-there"]))


@pytest.mark.broker
def test_startup_counts_every_partition_of_every_topic_so_no_input_partition_is_left_unwaited(broker_url, bootstrap):
    apply_topics(broker_url)
    settings = Settings.from_env({"SMSSTREAM_BROKER": broker_url})
    counts = asyncio.run(preflight(settings))
    assert counts == {t: len(asyncio.run(end_offsets(bootstrap, t))) for t in counts}
    assert all(n > 0 for n in counts.values())


def test_unreachable_broker_names_the_address_and_the_fix(tmp_path):
    port = free_port()
    env = dict(os.environ, SMSSTREAM_BROKER=f"kafka://127.0.0.1:{port}", SMSSTREAM_PSEUDONYM_KEY="k")
    result = subprocess.run([sys.executable, "-m", "smsstream", "worker"], env=env, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 1
    assert f"127.0.0.1:{port}" in result.stderr
    assert "smsstream broker" in result.stderr and "SMSSTREAM_BROKER" in result.stderr



def test_a_snapshot_save_killed_after_its_deletes_leaves_the_next_save_and_restore_working():
    table: dict = {}
    big, small, last = os.urandom(CHUNK_BYTES * 2), b"small", b"after the crash"
    save_snapshot(table, 3, big)  # slot 0, three chunks (zlib cannot shrink random bytes)
    save_snapshot(table, 3, big)  # slot 1, three chunks
    # a worker saving `small` into slot 0 deleted the slot's second chunk, then was killed
    # before the manifest switched: its successor's table has the tombstone, not the switch
    del table[b"s1/3/0/1"]
    assert load_snapshot(table, 3) == big
    save_snapshot(table, 3, small)
    assert load_snapshot(table, 3) == small
    save_snapshot(table, 3, last)
    assert load_snapshot(table, 3) == last


def test_a_shard_snapshot_is_saved_only_once_the_facts_and_alerts_it_sent_are_on_the_broker():
    async def scenario():
        table: dict = {}
        save_snapshot(table, 0, b"before")
        loop = asyncio.get_running_loop()
        fact, alert = loop.create_future(), loop.create_future()
        sent = [fact, alert]
        saving = asyncio.create_task(checkpoint(table, 0, sent, lambda: b"after", lambda: True))
        await asyncio.sleep(0.05)
        fact.set_result("delivered")
        await asyncio.sleep(0.05)
        # a worker killed now must restore the state whose alert has not left yet
        assert load_snapshot(table, 0) == b"before"
        alert.set_result("delivered")
        outcome = await saving
        assert outcome.saved and outcome.failed is None
        assert load_snapshot(table, 0) == b"after"
        assert sent == []

    asyncio.run(scenario())


def test_a_shard_whose_facts_were_not_delivered_keeps_its_last_snapshot():
    async def scenario():
        table: dict = {}
        save_snapshot(table, 0, b"before")
        loop = asyncio.get_running_loop()
        lost, fine = loop.create_future(), loop.create_future()
        lost.set_exception(TimeoutError("no answer from the partition leader"))
        fine.set_result("delivered")
        outcome = await checkpoint(table, 0, [fine, lost], lambda: b"after", lambda: True)
        assert not outcome.saved and isinstance(outcome.failed, TimeoutError)
        assert load_snapshot(table, 0) == b"before"

    asyncio.run(scenario())


def test_a_shard_revoked_while_its_deliveries_are_awaited_leaves_the_table_to_its_new_owner():
    async def scenario():
        table: dict = {}
        save_snapshot(table, 0, b"new owner's")
        loop = asyncio.get_running_loop()
        fact = loop.create_future()
        owned = [True]
        saving = asyncio.create_task(checkpoint(table, 0, [fact], lambda: b"stale", lambda: owned[0]))
        await asyncio.sleep(0.05)
        owned[0] = False  # a rebalance moved the partition meanwhile
        fact.set_result("delivered")
        outcome = await saving
        assert not outcome.saved and outcome.failed is None
        assert load_snapshot(table, 0) == b"new owner's"

    asyncio.run(scenario())


def test_a_worker_stopping_during_a_checkpoint_leaves_the_deliveries_to_the_producer():
    async def scenario():
        loop = asyncio.get_running_loop()
        fact = loop.create_future()
        waiting = asyncio.create_task(delivered([fact]))
        await asyncio.sleep(0.05)
        waiting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiting
        assert not fact.cancelled()
        fact.set_result("delivered")

    asyncio.run(scenario())


def test_a_shard_between_checkpoints_keeps_only_deliveries_in_flight_or_failed():
    async def scenario():
        loop = asyncio.get_running_loop()
        done, waiting, lost = loop.create_future(), loop.create_future(), loop.create_future()
        done.set_result("delivered")
        lost.set_exception(TimeoutError("no answer from the partition leader"))
        sent = [done, waiting, lost]
        forget_delivered(sent)
        assert sent == [waiting, lost]
        waiting.set_result("delivered")
        assert isinstance(await delivered(sent), TimeoutError)

    asyncio.run(scenario())


@pytest.mark.broker
def test_messages_a_consumer_skipped_are_read_from_the_partition_itself(broker_url, bootstrap):
    from aiokafka import AIOKafkaProducer

    from smsstream.kafka import read_range

    topic = f"test-read-range-{os.urandom(4).hex()}"

    async def produce_ten() -> None:
        producer = AIOKafkaProducer(bootstrap_servers=bootstrap)
        await producer.start()
        try:
            for i in range(10):
                await producer.send_and_wait(topic, b"m%d" % i, key=b"k%d" % i, partition=0)
        finally:
            await producer.stop()

    asyncio.run(produce_ten())
    settings = Settings.from_env({"SMSSTREAM_BROKER": broker_url})
    got = asyncio.run(read_range(settings, topic, 0, 3, 7))
    assert got == [(i, b"k%d" % i, b"m%d" % i) for i in (3, 4, 5, 6)]
    assert asyncio.run(read_range(settings, topic, 0, 9, 9)) == []
