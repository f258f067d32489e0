"""Faults on a real broker: a worker killed and restarted, workers coming and going, the broker going away.

Each compares the alerts with replay's for the same input (``worker_scenario.same_episodes``:
the same episodes, with the same alert ids, none twice). The broker-restart test needs a broker
that keeps its data across a restart: Apache Kafka (Tansu's memory storage keeps nothing). To keep
``.ci/run`` short, each test runs on the one broker it says (``brokers.only_on``).
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import time

import orjson
import pytest

from brokers import only_on, running_broker
from paging import wait_for
from smsstream.broker import free_port
from smsstream.records import ALERTS
from smsstream.topics import apply_topics
from smsstream.worker.process import WorkerProcess
from smsstream.worker.shutdown import EXIT_FORCED
from worker_scenario import (
    consume, end_offsets, episodes, log_digest, metric, prepared, produce, same_episodes, simulated, worker_env,
)

#: A small scenario with a few episodes of three kinds (a purchased list, a number fan-in, a blocking carrier).
SMALL = ["--days", "2", "--senders", "3", "--rate", "0.01", "--seed", "6", "--clean",
         "--attacks", "purchased_list,number_fan_in,carrier_blocking"]


def until_episodes(expected: list[dict]):
    want = set(episodes(expected))
    return lambda ms: set(episodes([orjson.loads(m.value) for m in ms])) >= want


def alerts_of(records: list) -> list[dict]:
    return [orjson.loads(m.value) for m in records]


@pytest.mark.broker
@only_on("tansu", "restoring from its own snapshots and part topics is the worker's, whatever the broker")
def test_a_worker_killed_mid_stream_and_restarted_writes_the_alerts_of_an_uninterrupted_run(broker_url, bootstrap,
                                                                                           tmp_path):
    expected = prepared(broker_url, bootstrap, tmp_path)["expected"]
    env = worker_env(broker_url, tmp_path)
    port = free_port()
    start = asyncio.run(end_offsets(bootstrap, ALERTS))
    worker = WorkerProcess(env, port, tmp_path / "first.log").start()
    restarted: list[WorkerProcess] = []

    def kill_and_restart(messages: list) -> None:
        if not restarted and len(messages) >= len(expected) // 3:
            worker.kill()
            restarted.append(WorkerProcess(env, port, tmp_path / "restarted.log").start())

    try:
        worker.wait_ready()
        records = asyncio.run(consume(bootstrap, ALERTS, until_episodes(expected), 420, start=start,
                                      on_batch=kill_and_restart))
        assert restarted and restarted[0].running()
        log = restarted[0].log_path.read_text()
    finally:
        worker.stop()
        for w in restarted:
            w.stop()
    assert "restored from its table" in log  # it went on from its own snapshots, not from scratch
    same_episodes(alerts_of(records), expected, worker, *restarted)


@pytest.mark.broker
@only_on("kafka", "group rebalances are the broker's coordinator at work: Apache Kafka's is the production one")
def test_alerts_are_those_of_one_worker_while_the_group_grows_from_two_to_three_and_shrinks_to_one(broker_url,
                                                                                                  bootstrap, tmp_path):
    expected = prepared(broker_url, bootstrap, tmp_path)["expected"]
    env = worker_env(broker_url, tmp_path)
    start = asyncio.run(end_offsets(bootstrap, ALERTS))

    def worker(name: str) -> WorkerProcess:
        return WorkerProcess({**env, "SMSSTREAM_METRICS_PORT": str(free_port())}, free_port(), tmp_path / f"{name}.log")

    first, second, third = worker("first"), worker("second"), worker("third")
    steps: list[str] = []

    def change_the_group(messages: list) -> None:
        if not steps and len(messages) >= len(expected) // 4:
            steps.append("three")
            third.start()
        elif steps == ["three"] and len(messages) >= len(expected) // 2:
            steps.append("one")
            first.stop()  # SIGTERM: scaled down, as Kubernetes does
            second.stop()

    try:
        first.start()
        second.start()
        first.wait_ready()
        second.wait_ready()
        records = asyncio.run(consume(bootstrap, ALERTS, until_episodes(expected), 480, start=start,
                                      on_batch=change_the_group))
        assert third.running()
    finally:
        for w in (first, second, third):
            w.stop()
    assert steps == ["three", "one"], f"the group changed only {steps} before the stream was done"
    same_episodes(alerts_of(records), expected, first, second, third)


@pytest.mark.broker
@only_on("tansu", "a broker gone is the same to the worker whichever it was")
def test_a_worker_whose_broker_is_gone_stops_at_once_on_sigterm_and_says_what_it_did_not_save(tmp_path):
    with running_broker() as broker:
        apply_topics(broker.url)
        lines, _ = simulated(tmp_path, SMALL)
        asyncio.run(produce(broker.bootstrap, lines, []))
        env = worker_env(broker.url, tmp_path, SMSSTREAM_SHUTDOWN_TIMEOUT_S="20")
        worker = WorkerProcess(env, free_port(), tmp_path / "worker.log").start()
        try:
            worker.wait_ready()
            wait_for(lambda: (metric(env["SMSSTREAM_METRICS_PORT"], "smsstream_events_in_total",
                                     topic="sms.sends") or 0) > 100, 60, "the worker to read some sends")
            broker.stop()
            health = wait_for(lambda: (h := worker.health()) and not h["broker"]["connected"] and h, 30,
                              "/health to say the broker is gone")
            assert health["status"] == "broker unreachable"
            assert metric(env["SMSSTREAM_METRICS_PORT"], "smsstream_broker_connected") == 0
            os.killpg(worker.pid, signal.SIGTERM)
            asked = time.monotonic()
            code = worker.process.wait(60)
            took = time.monotonic() - asked
        finally:
            worker.stop()
    log = worker.log_path.read_text()
    assert code == 0 and took < 20, f"exit {code} after {took:.0f} s\n{worker.log_tail(30)}"
    said = [line for line in log.splitlines() if "stopping now" in line]
    assert len(said) == 1 and "Not covered by a saved snapshot" in said[0], said
    # no traceback cut into one log record per fragment (Faust's stderr redirect)
    assert not re.search(r"\] \^ $|WARNING\] (Traceback|File \")", log, re.M), worker.log_tail(40)


@pytest.mark.broker
@only_on("tansu", "stopping is the worker's own work")
def test_a_worker_stopped_with_its_broker_up_stops_cleanly_and_says_what_it_did_not_save(broker_url, bootstrap,
                                                                                         tmp_path):
    prepared(broker_url, bootstrap, tmp_path)
    env = worker_env(broker_url, tmp_path)
    worker = WorkerProcess(env, free_port(), tmp_path / "worker.log").start()
    try:
        worker.wait_ready()
        wait_for(lambda: (metric(env["SMSSTREAM_METRICS_PORT"], "smsstream_events_in_total",
                                 topic="sms.sends") or 0) > 100, 60, "the worker to read some sends")
        os.killpg(worker.pid, signal.SIGTERM)
        code = worker.process.wait(60)
    finally:
        worker.stop()
    said = [line for line in worker.log_path.read_text().splitlines() if "stopped in" in line]
    assert code == 0 and len(said) == 1, worker.log_tail(30)
    assert "saved snapshot" in said[0]


@pytest.mark.broker
@only_on("kafka", "needs a broker that keeps its data across a restart; Tansu's memory storage keeps nothing")
def test_a_worker_rides_out_a_broker_restart_says_so_and_writes_the_alerts_of_an_uninterrupted_run(tmp_path):
    lines, expected = simulated(tmp_path, SMALL)
    with running_broker("kafka") as broker:
        apply_topics(broker.url)
        asyncio.run(produce(broker.bootstrap, lines, []))
        env = worker_env(broker.url, tmp_path)
        worker = WorkerProcess(env, free_port(), tmp_path / "worker.log").start()
        seen: list[dict] = []

        def restart_the_broker(messages: list) -> None:
            if not seen and len(messages) >= len(expected) // 3:
                broker.restart(down_s=5.0)
                seen.append(worker.health() or {})

        try:
            worker.wait_ready()
            records = asyncio.run(consume(broker.bootstrap, ALERTS, until_episodes(expected), 300,
                                          on_batch=restart_the_broker))
            health = wait_for(lambda: (h := worker.health()) and h["broker"]["connected"] and h, 30,
                              "/health to say the broker is back")
            disconnections = metric(env["SMSSTREAM_METRICS_PORT"], "smsstream_broker_disconnections_total")
            assert worker.running()
        finally:
            worker.stop()
    assert seen, "the broker should be restarted before the stream is done"
    assert health["broker"]["disconnections"] >= 1 and health["broker"]["last_outage_s"] >= 1, health
    assert disconnections and disconnections >= 1
    assert "does not answer" in worker.log_path.read_text() and "answers again" in worker.log_path.read_text()
    same_episodes(alerts_of(records), expected, worker)
