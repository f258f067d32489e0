"""The worker's dataflow without a broker: partitions, shards, heartbeats and snapshots, in one process.

``LocalDataflow`` moves records through ``worker.flow`` exactly as the Faust
agents do (same ``Topology``, same shards), with input partitions read at
uneven speeds; the alerts must be those of ``Engine`` over the same events.
"""

from __future__ import annotations

import random
import zlib
from collections import deque

from smsstream.detection.base import PartContext
from smsstream.detection.engine import DETECTOR_PARTS
from smsstream.pseudonym import Pseudonymizer
from smsstream.records import BORROWERS, RECEIPTS, SENDS, Send
from smsstream.worker.flow import EventTimeMerge, Heartbeat, Item, Source, Topology, decode, encode
from traffic import HOUR, KEY, MINUTE, T0, Sends, book, engine, numbers


def _partition(key: str, n: int) -> int:
    return zlib.crc32(key.encode()) % n


class LocalDataflow:
    """Input partitions -> route -> part shards -> facts/alerts, with heartbeats, in one process."""

    def __init__(self, topic_partitions: int = 3, partitions: int = 4, seed: int = 0):
        self.rng = random.Random(seed)
        self.ctx = PartContext(Pseudonymizer(KEY))
        topics = {t: topic_partitions for t in (SENDS, RECEIPTS, BORROWERS, "sms.templates", "sms.bindings")}
        self.topology = Topology(DETECTOR_PARTS, topics, partitions)
        self.partitions = partitions
        self.inputs = {(t, i): deque() for t in self.topology.input_topics for i in range(topic_partitions)}
        self.max_ts = {tp: 0 for tp in self.inputs}
        self.offsets: dict = {}
        self.inbox = {(p.name, i): deque() for p in DETECTOR_PARTS for i in range(partitions)}
        self.shards = {}
        self.alerts: list[dict] = []
        self.dead: list[str] = []

    def produce(self, events) -> None:
        n = len({i for _, i in self.inputs})
        for topic, record in events:
            producer_key = getattr(record, "number", None) or getattr(record, "message_id", "")
            self.inputs[(topic, _partition(producer_key, n))].append(record)

    def _shard(self, name: str, partition: int):
        shard = self.shards.get((name, partition))
        if shard is None:
            shard = self.shards[(name, partition)] = self.topology.new_shard(name, self.ctx)
        return shard

    def _read(self, tp, count: int) -> None:
        topic, partition = tp
        queue = self.inputs[tp]
        for _ in range(min(count, len(queue))):
            record = queue.popleft()
            ts = record.ts or self.max_ts[tp]
            self.max_ts[tp] = max(self.max_ts[tp], ts)
            offset = self.offsets[tp] = self.offsets.get(tp, -1) + 1
            source = Source(topic, partition, offset, None, b"{}")
            for name, part_key, route_key in self.topology.route(topic, record):
                item = Item(topic, part_key, record, ts, f"{topic}/{partition}", source, offset)
                self.inbox[(name, _partition(route_key, self.partitions))].append(encode(item))

    def _heartbeats(self) -> None:
        beats: dict[str, list[Heartbeat]] = {}
        for (topic, partition), queue in self.inputs.items():
            beat = Heartbeat(f"{topic}/{partition}", self.max_ts[(topic, partition)], not queue)
            for name in self.topology.heartbeat_targets(topic):
                beats.setdefault(name, []).append(beat)
        for (name, partition), shard in self.shards.items():
            beat = Heartbeat(f"{name}/{partition}", shard.emitted_until, shard.idle)
            for target in self.topology.downstream[name]:
                beats.setdefault(target, []).append(beat)
        for name, batch in beats.items():
            for i in range(self.partitions):
                self.inbox[(name, i)].append(encode(batch))

    def _drain(self) -> None:
        moved = True
        while moved:
            moved = False
            for (name, partition), queue in self.inbox.items():
                while queue:
                    moved = True
                    shard = self._shard(name, partition)
                    shard.offer(decode(queue.popleft()))
                    out = shard.run()
                    self.dead += [str(error) for _, error in out.dead]
                    self.alerts += out.alerts
                    for stream, fact, ts, seq in out.facts:
                        for target, key in self.topology.route_fact(stream, fact):
                            item = Item(stream, key, fact, ts, f"{name}/{partition}", seq=seq)
                            self.inbox[(target, _partition(key, self.partitions))].append(encode(item))
                    shard.emitted_until = shard.progress()

    def run(self, batch: int = 50, restart_every: int = 0) -> list[dict]:
        """Read partitions at random, uneven speeds until all is consumed and every shard is idle."""
        weights = {tp: self.rng.choice([1, 1, 5, 20]) for tp in self.inputs}
        rounds = 0
        while any(self.inputs.values()):
            busy = [tp for tp, q in self.inputs.items() if q]
            tp = self.rng.choices(busy, [weights[b] for b in busy])[0]
            self._read(tp, batch)
            rounds += 1
            if rounds % 5 == 0:
                self._heartbeats()
            self._drain()
            if restart_every and rounds % restart_every == 0:
                self.restart()
        for _ in range(len(self.topology.parts) + 2):
            self._heartbeats()
            self._drain()
        return self.alerts

    def restart(self) -> None:
        """What a worker restart does: every shard is rebuilt from its snapshot."""
        self.shards = {
            (name, partition): self.topology.new_shard(name, self.ctx, shard.snapshot())
            for (name, partition), shard in self.shards.items()
        }


def scenario(seed: int = 3):
    rng = random.Random(seed)
    borrowers = numbers(rng, 1500)
    events = book("lender-a", borrowers)
    sends = Sends(rng, "lender-a", "tpl-remind", borrowers)
    events += sends.run(T0, 4 * 60, 20)
    events += sends.run(T0 + 4 * HOUR, 40, 20, stranger_share=0.4)
    events += sends.run(T0 + 4 * HOUR + 40 * MINUTE, 60, 20,
                        statuses={"DELIVRD": 0.5, "BLOCKED": 0.5}, carrier="carrier-b")
    events += sends.run(T0 + 6 * HOUR, 60, 20)
    return sorted(events, key=lambda e: e[1].ts)


def replay(events) -> list[dict]:
    eng = engine()
    out = []
    for topic, record in events:
        out += eng.ingest(topic, record)
    return out


def comparable(alerts: list[dict]) -> list[tuple]:
    return sorted((a["alert_id"], a["status"], a["window_end"], a["observed"], a["summary"]) for a in alerts)


def test_partitioned_worker_raises_the_same_alerts_as_replay_despite_skewed_partitions():
    events = scenario()
    expected = replay(events)
    assert {a["kind"] for a in expected} >= {"non_borrower_spike", "delivery_failure_spike"}
    flow = LocalDataflow()
    flow.produce(events)
    assert comparable(flow.run()) == comparable(expected)
    assert flow.dead == []


def test_shards_restored_from_snapshots_carry_on_as_if_never_stopped():
    events = scenario()
    flow = LocalDataflow(seed=1)
    flow.produce(events)
    assert comparable(flow.run(restart_every=7)) == comparable(replay(events))


def test_a_duplicate_send_is_dead_lettered_once_however_many_parts_read_it():
    events = scenario()[:3000]
    send = next(r for t, r in events if t == SENDS)
    copy = Send(**{f: getattr(send, f) for f in Send.__slots__})
    flow = LocalDataflow()
    flow.produce(events + [(SENDS, copy)])
    flow.run()
    assert len(flow.dead) == 1 and "duplicate send" in flow.dead[0]


def test_merge_waits_for_the_slowest_busy_origin_and_not_for_idle_ones():
    merge = EventTimeMerge(expected=frozenset({"a", "b", "c"}))
    for ts in (10, 20, 30):
        merge.offer(Item("s", "k", ts, ts, "a"))
    merge.heartbeat(Heartbeat("b", 15, idle=False))
    assert merge.release() == []  # "c" has not reported yet
    merge.heartbeat(Heartbeat("c", 0, idle=True))
    assert [i.ts for i in merge.release()] == [10]
    merge.heartbeat(Heartbeat("b", 25, idle=False))
    assert [i.ts for i in merge.release()] == [20]
    merge.heartbeat(Heartbeat("b", 25, idle=True))
    assert [i.ts for i in merge.release()] == [30]


def test_merge_buffer_is_bounded_when_an_origin_stalls():
    merge = EventTimeMerge(expected=frozenset({"a", "slow"}), max_buffered=100)
    merge.heartbeat(Heartbeat("slow", 0, idle=False))
    for ts in range(1, 1001):
        merge.offer(Item("s", "k", ts, ts, "a"))
        merge.release()
    assert len(merge) == 100


def test_an_item_sent_again_after_its_origin_restarted_is_taken_once():
    merge = EventTimeMerge(expected=frozenset({"a"}))
    first = Item("s", "k", "v", 10, "a", seq=7)
    assert merge.offer(first)
    assert not merge.offer(Item("s", "k", "v", 10, "a", seq=7))
    assert merge.offer(Item("s", "k", "v", 11, "a", seq=8))
    merge.heartbeat(Heartbeat("a", 11, idle=True))
    assert [i.seq for i in merge.release()] == [7, 8]
