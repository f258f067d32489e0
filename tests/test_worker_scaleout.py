"""Two workers in one group share the partitions; one is SIGKILLed mid-stream and the other finishes its work."""

from __future__ import annotations

import asyncio

import orjson
import pytest

from brokers import only_on
from smsstream.broker import free_port
from smsstream.records import ALERTS
from smsstream.worker.process import WorkerProcess
from worker_scenario import consume, end_offsets, episodes, prepared, same_episodes, worker_env


@pytest.mark.broker
@only_on("kafka", "a group taking over a dead member's partitions is the coordinator's work: Apache Kafka's is the "
         "production one (test_faults.py SIGKILLs a worker on Tansu)")
def test_killing_one_of_two_workers_loses_no_counts_and_duplicates_no_episode(broker_url, bootstrap, tmp_path):
    expected = prepared(broker_url, bootstrap, tmp_path)["expected"]
    env = worker_env(broker_url, tmp_path)
    start = asyncio.run(end_offsets(bootstrap, ALERTS))
    first = WorkerProcess(env, free_port(), tmp_path / "first.log").start()
    second = WorkerProcess({**env, "SMSSTREAM_METRICS_PORT": str(free_port())}, free_port(),
                           tmp_path / "second.log").start()
    killed: list[int] = []

    def kill_first_mid_stream(messages: list) -> None:
        if not killed and len(messages) >= len(expected) // 4:
            killed.append(len(messages))
            first.kill()

    try:
        first.wait_ready()
        second.wait_ready()
        shared = (first.health() or {}).get("assigned_partitions", 0), second.health()["assigned_partitions"]
        want = set(episodes(expected))
        records = asyncio.run(consume(
            bootstrap, ALERTS, lambda ms: set(episodes([orjson.loads(m.value) for m in ms])) >= want, 420,
            start=start, on_batch=kill_first_mid_stream))
        assert second.running()
    finally:
        first.stop()
        second.stop()

    assert all(shared), f"both workers should own partitions before the kill, got {shared}"
    assert killed and killed[0] < len(expected), "the first worker should die before the stream is done"
    alerts = [orjson.loads(m.value) for m in records]
    (tmp_path / "worker-alerts.jsonl").write_bytes(b"".join(m.value + b"\n" for m in records))
    (tmp_path / "expected.jsonl").write_bytes(b"".join(orjson.dumps(a) + b"\n" for a in expected))
    same_episodes(alerts, expected, first, second)
