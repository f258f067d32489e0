"""The worker's dataflow without a broker: partitions, shards, heartbeats and snapshots, in one process.

``LocalDataflow`` moves records through ``worker.flow`` exactly as the Faust
agents do (same ``Topology``, same shards), with input partitions read at
uneven speeds; the alerts must be those of ``Engine`` over the same events.
"""

from __future__ import annotations

import json
import random

import orjson

import pytest

from smsstream.detection.engine import DETECTOR_PARTS
from smsstream.detection.facts import LOAN_SENDS, LoanSend, RoutineCount, RoutineTally
from smsstream.pseudonym import Pseudonymizer
from smsstream.records import BORROWERS, RECEIPTS, SENDS, TEMPLATES, Receipt, Send, Template
from smsstream.detection.base import PartContext, partition_of
from smsstream.worker.flow import (
    HELD, MISSED, EventTimeMerge, Heartbeat, Item, Outbox, Source, Topology, resume_step,
)
from smsstream.detection.intake import Intake
from smsstream.worker.flow import read_snapshot
from smsstream.worker.transport import encode, format_of
from smsstream.worker.router import InputRouter
from smsstream.worker.shards import Earlier, ShardHost
from traffic import DAY, HOUR, KEY, MINUTE, T0, Sends, book, engine, numbers
from worker_scenario import episodes, record


class LocalDataflow:
    """Input partitions -> the worker's router -> its shard host -> facts/alerts, with heartbeats, in one process.

    The worker's own classes (``InputRouter``, ``ShardHost``) do the work;
    only the transport is this harness's: topics are append-only lists read
    from a position, as on a broker, so a crash can be played out: the
    crashed shards come back from their last snapshot and read their topics
    again from that snapshot's position, and the crashed input partitions
    are routed again from their last commit.
    """

    def __init__(self, topic_partitions: int = 3, partitions: int = 4, seed: int = 0,
                 heartbeat_mid_run: bool = False, lagging: frozenset[str] = frozenset(),
                 commit_lags: bool = False, consumer_skips: bool = False, snapshots_lost: bool = False):
        self.rng = random.Random(seed)
        #: a crash also leaves the crashed shards' snapshots unreadable (a torn write, a disk gone bad)
        self.snapshots_lost = snapshots_lost
        #: send heartbeats between a shard's run and the sending of its facts, as the worker's timer may
        self.heartbeat_mid_run = heartbeat_mid_run
        #: parts whose shards process nothing until all input has been read
        self.lagging = lagging
        self.ctx = PartContext(Pseudonymizer(KEY))
        topics = {t: topic_partitions for t in (SENDS, RECEIPTS, BORROWERS, "sms.templates", "sms.bindings")}
        self.topology = Topology(DETECTOR_PARTS, topics, partitions)
        self.router = InputRouter(self.topology, Intake(self.ctx.pseudonymizer))
        self.partitions = partitions
        self.inputs: dict = {(t, i): [] for t in self.topology.input_topics for i in range(topic_partitions)}
        self.read_at = dict.fromkeys(self.inputs, 0)
        self.committed_at = dict.fromkeys(self.inputs, 0)
        self.inbox: dict = {(p.name, i): [] for p in DETECTOR_PARTS for i in range(partitions)}
        self.inbox_at = dict.fromkeys(self.inbox, 0)
        #: (part, partition) -> (snapshot, inbox position it covers)
        self.saved: dict = {}
        self.host = self._host()
        #: a crashed shard's consumer resumes from the checkpoint before its last snapshot (offsets are
        #: committed on a timer) ...
        self.commit_lags = commit_lags
        self.committed: dict = {}
        #: ... or skips the first message after its committed position (as Faust's consumer can after a rebalance)
        self.consumer_skips = consumer_skips
        #: messages a restored shard passed over (its state held them) or read again (its consumer skipped them)
        self.held_over = self.read_again = 0
        #: the heartbeats' clock, seconds: each round is ten seconds after the one before
        self.now = 0.0
        self.alerts: list[dict] = []
        self.dead: list[str] = []
        #: part -> items its shards processed; (part, partition) -> items that shard processed
        self.processed: dict[str, int] = {}
        self.processed_by_shard: dict[tuple[str, int], int] = {}

    def _host(self, snapshots: dict | None = None) -> ShardHost:
        """A shard host whose shards start from ``snapshots`` ((part, partition) -> bytes), else from their
        last saved snapshot, else empty."""
        snapshots = snapshots or {}

        def load(name: str, partition: int) -> bytes | None:
            key = (name, partition)
            return snapshots[key] if key in snapshots else self.saved.get(key, (None, 0))[0]

        self.load = load
        return ShardHost(self.topology, self.ctx, load)

    def _earlier(self, name: str) -> Earlier:
        """What release 0.1 left on every partition of a part: its snapshot, and its messages after it."""
        partitions = {}
        for q in range(self.partitions):
            raw = self.load(name, q)
            covered = read_snapshot(raw)[1]["covered"] if raw and raw[:1] != b"S" else -1
            log = self.inbox[(name, q)]
            partitions[q] = (raw, [(o, log[o]) for o in range(covered + 1, len(log)) if format_of(log[o]) == 0])
        return Earlier(partitions)

    def produce(self, events) -> None:
        n = len({i for _, i in self.inputs})
        for topic, record in events:
            producer_key = getattr(record, "number", None) or getattr(record, "message_id", "")
            self.inputs[(topic, partition_of(producer_key, n))].append(orjson.dumps(record))

    def _left(self, tp) -> int:
        return len(self.inputs[tp]) - self.read_at[tp]

    def _read(self, tp, count: int) -> None:
        topic, partition = tp
        log = self.inputs[tp]
        for offset in range(self.read_at[tp], min(self.read_at[tp] + count, len(log))):
            dead = self.router.take(topic, partition, offset, None, log[offset], event=offset)
            if dead is not None:
                self.dead.append(str(dead[1]))
            self.read_at[tp] = offset + 1
        messages, _, reached = self.router.take_batch(topic)
        self._send(messages)
        self.router.sent(reached)

    def _send(self, messages) -> None:
        for target, items in messages:
            self.inbox[target].append(encode(items))

    def _heartbeats(self) -> None:
        self.now += 10.0
        ends = {tp: len(log) for tp, log in self.inputs.items()}
        beats = self.router.heartbeats(ends, dict(self.committed_at), self.now)
        for name, more in self.host.heartbeats().items():
            beats.setdefault(name, []).extend(more)
        for name, batch in beats.items():
            for i in range(self.partitions):
                self.inbox[(name, i)].append(encode(batch))

    def _drain(self) -> None:
        moved = True
        while moved:
            moved = False
            for (name, partition), log in self.inbox.items():
                if name in self.lagging:
                    continue
                while self.inbox_at[(name, partition)] < len(log):
                    moved = True
                    self._take(name, partition, self.inbox_at[(name, partition)])
                    self.inbox_at[(name, partition)] += 1

    def _take(self, name: str, partition: int, offset: int) -> None:
        """One message of a part's topic, as the worker's part agent takes it."""
        host, log = self.host, self.inbox[(name, partition)]
        earlier = self._earlier(name) if host.needs_earlier(name, partition) else None
        shard = host.shard(name, partition, earlier)
        step = resume_step(shard.covered, offset, shard.rebuilding)
        if step is HELD:
            self.held_over += 1
            return
        if step is MISSED:
            start = shard.covered + 1
            if shard.rebuilding:
                host.rebuild_from(shard, offset)
                start = 0
            for missed in range(start, offset):
                self.read_again += 1
                self._run(shard, name, partition, missed, log[missed])
        self._run(shard, name, partition, offset, log[offset])
        host.hold(name, partition, offset, 0, self.now)

    def _run(self, shard, name: str, partition: int, offset: int, value: bytes) -> None:
        out = self.host.run(shard, name, partition, offset, value)
        self.processed[name] = self.processed.get(name, 0) + out.processed
        where = (name, partition)
        self.processed_by_shard[where] = self.processed_by_shard.get(where, 0) + out.processed
        self.dead += [str(error) for _, error in out.dead]
        self.alerts += out.alerts
        if self.heartbeat_mid_run and out.facts and shard.idle:
            self._heartbeats()
        self._send(out.facts)

    def run(self, batch: int = 50, restart_every: int = 0, checkpoint_every: int = 0,
            crash_at: tuple[int, ...] = ()) -> list[dict]:
        """Read partitions at random, uneven speeds until all is consumed and every shard is idle."""
        weights = {tp: self.rng.choice([1, 1, 5, 20]) for tp in self.inputs}
        rounds = 0
        while any(self._left(tp) for tp in self.inputs):
            busy = [tp for tp in self.inputs if self._left(tp)]
            tp = self.rng.choices(busy, [weights[b] for b in busy])[0]
            self._read(tp, batch)
            rounds += 1
            if rounds % 5 == 0:
                self._heartbeats()
            self._drain()
            if restart_every and rounds % restart_every == 0:
                self.restart()
            if checkpoint_every and rounds % checkpoint_every == 0:
                self.checkpoint(self.rng.random() < 0.5)
            if rounds in crash_at:
                self.crash()
        self.lagging = frozenset()
        for _ in range(len(self.topology.parts) + 4):
            self._heartbeats()
            self._drain()
        return self.alerts

    def restart(self) -> None:
        """What a worker restart does: every shard is rebuilt from its snapshot."""
        self.host = self._host({key: shard.snapshot() for key, shard in self.host.shards.items()})

    def checkpoint(self, half: bool) -> None:
        """Snapshot (and commit) one half of the shards and input partitions, as their owners do at their own pace."""
        for key, shard in self.host.shards.items():
            if self._owned_by_first(key) == half:
                if key in self.saved:
                    self.committed[key] = self.saved[key][1]
                self.saved[key] = (shard.snapshot(), self.inbox_at[key])
                self.host.checkpointed(*key, seconds=0.0)
        for tp in self.inputs:
            if self._owned_by_first(tp) == half:
                self.committed_at[tp] = self.read_at[tp]

    def crash(self) -> None:
        """The first worker dies: what it owned resumes from its last snapshot and commit; what it sent stays sent."""
        for key in list(self.host.slots):
            if self._owned_by_first(key):
                position = self.saved.get(key, (None, 0))[1]
                if self.commit_lags:
                    position = self.committed.get(key, 0)
                if self.consumer_skips and position < len(self.inbox[key]):
                    position += 1
                if self.snapshots_lost and key in self.saved:
                    self.saved[key] = (b"S" + self.rng.randbytes(40), self.saved[key][1])
                self.host.revoked(*key)
                self.inbox_at[key] = position
        crashed = [tp for tp in self.inputs if self._owned_by_first(tp)]
        self.router.revoked(crashed)
        for tp in crashed:
            self.read_at[tp] = self.committed_at[tp]

    @staticmethod
    def _owned_by_first(key: tuple[str, int]) -> bool:
        return key[1] % 2 == 0


class RawDataflow(LocalDataflow):
    """``LocalDataflow`` fed with raw records and keys, as producers write them."""

    def produce_raw(self, lines: list[bytes]) -> None:
        for line in lines:
            topic, key, value = record(line)
            by = key.decode() if key else json.loads(value)["message_id"]
            self.inputs[(topic, partition_of(by, len({i for _, i in self.inputs})))].append((key, value))

    def _read(self, tp, count: int) -> None:
        topic, partition = tp
        log = self.inputs[tp]
        for offset in range(self.read_at[tp], min(self.read_at[tp] + count, len(log))):
            key, value = log[offset]
            dead = self.router.take(topic, partition, offset, key, value, event=offset)
            if dead is not None:
                self.dead.append(str(dead[1]))
            self.read_at[tp] = offset + 1
        messages, _, reached = self.router.take_batch(topic)
        self._send(messages)
        self.router.sent(reached)


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


def comparable(alerts: list[dict]) -> list[str]:
    """Alert records as written, bar when they were written (evidence samples included)."""
    return sorted(orjson.dumps({k: v for k, v in a.items() if k != "detected_at"}, option=orjson.OPT_SORT_KEYS)
                  .decode() for a in alerts)


def test_partitioned_worker_raises_the_same_alerts_as_replay_despite_skewed_partitions():
    events = scenario()
    expected = replay(events)
    assert {a["kind"] for a in expected} >= {"non_borrower_spike", "delivery_failure_spike"}
    flow = LocalDataflow()
    flow.produce(events)
    assert comparable(flow.run()) == comparable(expected)
    assert flow.dead == []


def test_records_later_than_the_allowed_lateness_change_no_episode_between_replay_and_the_worker():
    # one send in twenty reaches the feed up to three minutes late: far beyond the allowed lateness (10 s),
    # so it counts in whichever bucket is open when it is taken, which depends on how partitions interleave
    rng = random.Random(12)
    arriving = [(r.ts + (rng.randrange(20_000, 180_000) if t == SENDS and rng.random() < 0.05 else 0), t, r)
                for t, r in scenario()]
    events = [(t, r) for _, t, r in sorted(arriving, key=lambda e: e[0])]
    expected = replay(events)
    assert sum(a["status"] == "firing" for a in expected) >= 3
    flow = LocalDataflow(seed=5)
    flow.produce(events)
    assert episodes(flow.run()) == episodes(expected)


def test_shards_restored_from_snapshots_carry_on_as_if_never_stopped():
    events = scenario()
    flow = LocalDataflow(seed=1)
    flow.produce(events)
    assert comparable(flow.run(restart_every=7)) == comparable(replay(events))


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_a_crashed_half_resuming_from_older_snapshots_loses_and_doubles_nothing(seed):
    events = scenario()
    flow = LocalDataflow(seed=seed)
    flow.produce(events)
    alerts = flow.run(checkpoint_every=4, crash_at=(30, 61, 97))
    # a record written again after the crash is the same record
    assert sorted(set(comparable(alerts))) == comparable(replay(events))
    assert flow.dead == []


def test_a_shard_whose_snapshot_cannot_be_read_rebuilds_its_state_from_its_partition_and_loses_nothing(caplog):
    events = scenario()
    flow = LocalDataflow(seed=1, snapshots_lost=True)
    flow.produce(events)
    with caplog.at_level("ERROR", logger="smsstream"):
        alerts = flow.run(checkpoint_every=4, crash_at=(40,))
    said = [r.getMessage() for r in caplog.records if "snapshot cannot be read" in r.getMessage()]
    assert said and all("rebuilding its state from its partition" in line for line in said)
    assert sorted(set(comparable(alerts))) == comparable(replay(events))
    assert flow.dead == []


@pytest.mark.parametrize("seed", [1, 2, 3])
@pytest.mark.parametrize("crash, resumed", [
    # the group's offset was committed before the last snapshot: what lies between is held already
    ("commit_lags", "held_over"),
    # the consumer skipped the first message after the restart: it is read again
    ("consumer_skips", "read_again"),
])
def test_a_restored_shard_goes_on_from_where_its_snapshot_ends_not_from_its_consumer(crash, resumed, seed):
    events = scenario()
    flow = LocalDataflow(seed=seed, **{crash: True})
    flow.produce(events)
    alerts = flow.run(checkpoint_every=4, crash_at=(30, 61, 97))
    assert sorted(set(comparable(alerts))) == comparable(replay(events))
    assert getattr(flow, resumed) > 0


def test_a_heartbeat_sent_while_a_shards_facts_are_still_on_their_way_does_not_call_it_idle():
    events = scenario()
    # the receipt join works through its backlog after all input is read; the heartbeat timer fires
    # between its run and the sending of the outcomes that run produced
    flow = LocalDataflow(seed=4, heartbeat_mid_run=True, lagging=frozenset({"receipt_join"}))
    flow.produce(events)
    assert comparable(flow.run()) == comparable(replay(events))


def test_a_hot_senders_sends_reach_its_shards_as_counts_per_minute_not_one_by_one():
    rng = random.Random(5)
    borrowers = numbers(rng, 1500)
    events = book("lender-a", borrowers) + Sends(rng, "lender-a", "tpl-remind", borrowers).run(T0, 30, 400)
    events.sort(key=lambda e: e[1].ts)
    loan_sends = sum(1 for topic, _ in events if topic == SENDS)
    flow = LocalDataflow()
    flow.produce(events)
    assert comparable(flow.run()) == comparable(replay(events))
    # every send is judged against the borrower book and every receipt joined, one by one ...
    assert flow.processed["borrower_book"] >= loan_sends
    # ... but the sender's shard takes the routine ones as a few counts a minute from each producer shard;
    # what still comes one by one are the non-borrower sends and failed receipts (the evidence)
    for part in ("non_borrower_sender", "non_borrower_template", "delivery_sender", "delivery_carrier"):
        assert flow.processed[part] < loan_sends / 10, part


def test_a_hot_templates_bodies_are_read_on_every_partition_and_judged_as_one():
    rng = random.Random(6)
    borrowers = numbers(rng, 1500)
    text = "Dear customer, your repayment of {amount} is due on {date}."
    sends = Sends(rng, "lender-a", "tpl-remind", borrowers)
    events = book("lender-a", borrowers) + [(TEMPLATES, Template("tpl-remind", "lender-a", "repayment_reminder",
                                                                  text, T0 - HOUR))]
    events += sends.run(T0, 60, 300)
    events += sends.run(T0 + 40 * MINUTE, 5, 4, body="Dear customer, your repayment of 500 is due on 3 May. "
                                                      "Pay at https://lender-a-refund.top/p now.")
    events.sort(key=lambda e: e[1].ts)
    template_sends = sum(1 for topic, _ in events if topic == SENDS)
    expected = replay(events)
    assert [a["reason"] for a in expected if a["kind"] == "template_hijack" and a["status"] == "firing"] == [
        "content_drift"]
    flow = LocalDataflow(partitions=4)
    flow.produce(events)
    assert comparable(flow.run()) == comparable(expected)
    # every partition reads a share of the template's bodies, none the bulk of them ...
    readers = [flow.processed_by_shard.get(("template_hijack_reader", i), 0) for i in range(4)]
    assert sum(1 for n in readers if n > template_sends / 8) >= 3 and max(readers) < template_sends / 2, readers
    # ... and the template's own shard takes a few tallies a minute from each
    assert flow.processed["template_hijack"] < template_sends / 10


def test_a_stolen_key_on_a_barely_used_template_is_found_by_the_partitioned_worker_as_by_replay():
    # the template's reads are split over four readers; the sender's source book adds their sources up
    rng = random.Random(8)
    borrowers = numbers(rng, 400)
    text = "Dear customer, your repayment of {amount} is due on {date}."
    rare = "Dear customer, your loan is overdue. Reply PAY to settle today."
    events = book("lender-a", borrowers) + [
        (TEMPLATES, Template("tpl-remind", "lender-a", "repayment_reminder", text, T0 - HOUR)),
        (TEMPLATES, Template("tpl-rare", "lender-a", "overdue_notice", rare, T0 - HOUR))]
    events += Sends(rng, "lender-a", "tpl-rare", borrowers).run(T0, 300, 1 / 60, category="overdue_notice", body=rare)
    for day in range(2):
        events += Sends(rng, "lender-a", "tpl-remind", borrowers).run(T0 + day * DAY + 9 * HOUR, 240, 2)
    # more sends a minute than a tally keeps samples of, so the evidence is a pick among readers' picks
    events += Sends(rng, "lender-a", "tpl-rare", borrowers).run(
        T0 + 2 * DAY + 3 * HOUR, 20, 12, category="overdue_notice", body=rare, api_key="key-stolen",
        ip="185.220.101.7")
    events.sort(key=lambda e: e[1].ts)
    expected = replay(events)
    assert [a["entity_id"] for a in expected if a["reason"] == "volume_burst" and a["status"] == "firing"] == [
        "lender-a"]
    flow = LocalDataflow(partitions=4)
    flow.produce(events)
    assert comparable(flow.run()) == comparable(expected)


def test_another_lenders_template_read_on_every_partition_is_reported_once_as_by_replay():
    # Every reader partition of the template sees lender-b's first send of it with lender-a's link and tells
    # lender-b's link book; the book must name the link once, as replay's single reader does.
    rng = random.Random(9)
    a, b = numbers(rng, 600), numbers(rng, 600, prefix="+86137")
    text = "Dear customer, your repayment of {amount} is due on {date}. Pay at {link}"
    link_a, link_b = "https://pay.lender-a.example/app", "https://lender-b.example/pay"
    events = book("lender-a", a) + book("lender-b", b) + [
        (TEMPLATES, Template("tpl-a", "lender-a", "repayment_reminder", text, T0 - HOUR)),
        (TEMPLATES, Template("tpl-b", "lender-b", "repayment_reminder", text, T0 - HOUR))]
    body = "Dear customer, your repayment of 500 is due on 3 May. Pay at %s"
    events += Sends(rng, "lender-a", "tpl-a", a).run(T0, 9 * 60, 2, body=body % link_a)
    events += Sends(rng, "lender-b", "tpl-b", b).run(T0, 9 * 60, 2, body=body % link_b)
    events += Sends(rng, "lender-b", "tpl-a", b).run(T0 + 8 * HOUR, 30, 1, body=body % link_a,
                                                     api_key="key-b", ip="10.0.0.2")
    events.sort(key=lambda e: e[1].ts)
    expected = replay(events)
    drift = [a for a in expected if a["dedup_key"] == "template_hijack/sender/lender-b" and a["status"] == "firing"]
    assert len(drift) == 1 and len(drift[0]["evidence"]["message_ids"]) == 1, drift
    flow = LocalDataflow(partitions=4)
    flow.produce(events)
    assert comparable(flow.run()) == comparable(expected)


def test_a_list_worked_by_three_lenders_is_found_by_the_partitioned_worker_as_by_replay():
    # each number's lenders are kept on its own shard, each lender's judgement on another
    rng = random.Random(10)
    shared = numbers(rng, 40, prefix="+86150")
    events = []
    for i, name in enumerate(("lender-a", "lender-b", "lender-c")):
        borrowers = numbers(rng, 1000, prefix=f"+8613{i}")
        events += book(name, borrowers) + Sends(rng, name, f"tpl-{name}", borrowers).run(T0, 5 * 60, 4)
        # collection notices typed by hand (no template), within the lender's usual share of strays
        events += Sends(rng, name, None, borrowers).run(T0 + HOUR, 4 * 60, 0.1, stranger_share=1.0,
                                                        strangers=shared, category="collection")
    events.sort(key=lambda e: e[1].ts)
    expected = replay(events)
    listed = {a["entity_id"] for a in expected if a["status"] == "firing" and a["reason"] == "shared_list"}
    assert listed == {"lender-a", "lender-b", "lender-c"}
    flow = LocalDataflow(partitions=4)
    flow.produce(events)
    assert comparable(flow.run()) == comparable(expected)
    # and the same from snapshots, half of the shards crashing twice
    flow = LocalDataflow(partitions=4, seed=2)
    flow.produce(events)
    assert sorted(set(comparable(flow.run(checkpoint_every=4, crash_at=(30, 61))))) == comparable(expected)


def test_a_routine_count_sent_again_after_its_producer_restarted_counts_once():
    topology = Topology(DETECTOR_PARTS, {t: 1 for t in (SENDS, RECEIPTS, BORROWERS)}, 1)
    shard = topology.new_shard("non_borrower_sender", PartContext(Pseudonymizer(KEY)))

    def count(ts: int, n: int) -> Item:
        return Item(LOAN_SENDS, "lender-a", RoutineCount(ts, T0, "lender-a", "tpl", None, n), ts, "borrower_book/0")

    # the producer's counts so far for the first minute, then its final count, then a restored producer
    # sending both again, then the next minute
    for item in (count(T0 + 10_000, 5), count(T0 + 50_000, 8), count(T0 + 10_000, 5), count(T0 + 50_000, 8)):
        shard.offer([item])
    shard.offer([Item(LOAN_SENDS, "lender-a", RoutineCount(T0 + MINUTE + 5_000, T0 + MINUTE, "lender-a", "tpl",
                                                         None, 3), T0 + MINUTE + 5_000, "borrower_book/0")])
    shard.offer([count(T0 + 50_000, 8)])
    shard.offer([Heartbeat(origin, T0 + HOUR, idle=True) for origin in topology.expected["non_borrower_sender"]])
    shard.run()
    ring = shard.part.entities["lender-a"].ring
    assert [ring.get(T0 // MINUTE)[0], ring.get(T0 // MINUTE + 1)[0]] == [8, 3]


def test_a_shard_whose_merge_overflowed_tells_its_downstream_no_more_than_its_slowest_origin():
    topology = Topology(DETECTOR_PARTS, {t: 1 for t in (SENDS, RECEIPTS, BORROWERS)}, 1)
    shard = topology.new_shard("receipt_join", PartContext(Pseudonymizer(KEY)))
    shard.merge.max_buffered = 10
    shard.offer([Heartbeat(origin, T0, idle=False) for origin in topology.expected["receipt_join"]])
    fast = f"{RECEIPTS}/0"
    early = 0
    for i in range(50):
        receipt = Receipt(f"m{i}", T0 + i * MINUTE, "DELIVRD", None, "carrier-a")
        shard.offer([Item(RECEIPTS, receipt.message_id, receipt, receipt.ts, fast,
                          Source(RECEIPTS, 0, i, None, b"{}"), seq=i)])
        shard.run()
        early += shard.overflowed
    # 39 receipts went through early to bound the buffer (the first was due), but the other origins may still send
    # anything from T0 on: facts from those are still to come, so downstream must not close past T0
    assert shard.merge.released_until >= T0 + 39 * MINUTE
    assert shard.progress() == T0
    assert early == 39


def test_a_producer_adds_up_routine_facts_of_its_open_minute_and_passes_evidence_on():
    tally = RoutineTally()
    assert tally.roll(T0 + 1_000) == []
    routine = [LoanSend(T0 + s * 1_000, "lender-a", "tpl", f"m{s}", False) for s in (30, 5, 50)]
    hit = LoanSend(T0 + 20_000, "lender-a", "tpl", "m-hit", True, "pn:x")
    older = LoanSend(T0 - 1_000, "lender-a", "tpl", "m-old", False)
    assert [tally.take(LOAN_SENDS, f) for f in (*routine, hit, older)] == [True, True, True, False, False]
    assert tally.roll(T0 + 59_000) == []  # still the same minute
    ((stream, counted),) = tally.roll(T0 + MINUTE)
    assert (stream, counted.count, counted.first_ts, counted.ts) == (LOAN_SENDS, 3, T0 + 5_000, T0 + 50_000)


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


def test_merge_buffer_is_bounded_when_an_origin_stalls_and_counts_what_it_let_out_early():
    merge = EventTimeMerge(expected=frozenset({"a", "slow"}), max_buffered=100)
    merge.heartbeat(Heartbeat("slow", 0, idle=False))
    for ts in range(1, 1001):
        merge.offer(Item("s", "k", ts, ts, "a"))
        merge.release()
    assert len(merge) == 100
    # the 900 oldest went on before the slow origin had passed them: operators see that as a metric
    assert merge.overflowed == 900
    merge.heartbeat(Heartbeat("slow", 2000, idle=False))
    assert len(merge.release()) == 100 and merge.overflowed == 900


def test_an_item_sent_again_after_its_origin_restarted_is_taken_once():
    merge = EventTimeMerge(expected=frozenset({"a"}))
    first = Item("s", "k", "v", 10, "a", seq=7)
    assert merge.offer(first)
    assert not merge.offer(Item("s", "k", "v", 10, "a", seq=7))
    assert merge.offer(Item("s", "k", "v", 11, "a", seq=8))
    merge.heartbeat(Heartbeat("a", 11, idle=True))
    assert [i.seq for i in merge.release()] == [7, 8]


def test_an_outbox_keeps_each_partitions_items_in_order_and_messages_bounded():
    outbox = Outbox(partitions=4)
    for seq in range(5_000):
        outbox.add("part", "one-hot-sender", Item("s", "one-hot-sender", None, seq, "up/0", seq=seq))
    messages = outbox.take()
    assert {target for target, _ in messages} == {("part", partition_of("one-hot-sender", 4))}
    assert max(len(items) for _, items in messages) <= Outbox.MAX_MESSAGE_ITEMS
    assert [item.seq for _, items in messages for item in items] == list(range(5_000))
    assert outbox.take() == [] and outbox.items == 0


def test_items_and_heartbeats_come_off_the_internal_topic_as_they_went_on():
    from smsstream.records import BINDINGS, Binding, Borrower, Source as Origin
    from smsstream.worker.transport import decode

    sends = [Send("m1", T0, "lender-a", "tpl", "+8613800000000", "repayment_reminder", "body", "acc-1",
                  Origin("key-1", "10.0.0.1", "api"), "cmcc"),
             Send("m2", T0 + 1, "lender-a", None, "+8613800000001", "otp", "code")]
    items = [Item(SENDS, s.number, s, s.ts, "sms.sends/0", Source(SENDS, 0, i, None, None), i)
             for i, s in enumerate(sends)]
    items += [Item(BORROWERS, "+8613800000000", Borrower("lender-a", "+8613800000000", None, "closed", 0, True),
                   T0, "sms.borrowers/1", None, 7),
              Item(BINDINGS, "lender-a|acc-1", Binding("e1", T0, "lender-a", "acc-1", None, "+8613800000002"), T0,
                   "sms.bindings/0"),
              Item(LOAN_SENDS, "lender-a", LoanSend(T0, "lender-a", "tpl", "m1", True, "pn:x"), T0,
                   "borrower_book/2", seq=3)]
    assert decode(encode(items)) == items
    beats = [Heartbeat("sms.sends/0", T0, False), Heartbeat("borrower_book/1", T0 - 1, True)]
    assert decode(encode(beats)) == beats
