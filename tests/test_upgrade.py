"""A worker upgraded from release 0.1 carries on from its shards' snapshots and its part topics' messages.

``tests/fixtures/release-0.1/`` holds what release 0.1 left behind, written by
that release's code (``make_release_0_1_snapshots.py``): every shard's
snapshot three quarters into a simulated scenario, and messages routed onto
the part topics after those snapshots and not yet read. Today's code restores
them and reads on; its alerts must be those of a dataflow that ran the whole
input without stopping.
"""

from __future__ import annotations

import base64
import gzip
import json
from pathlib import Path

from test_worker_flow import RawDataflow, comparable

RELEASE_0_1 = Path(__file__).resolve().parent / "fixtures" / "release-0.1"


def release_0_1() -> tuple[list[bytes], dict]:
    lines = gzip.decompress((RELEASE_0_1 / "events.jsonl.gz").read_bytes()).splitlines()
    state = json.loads(gzip.decompress((RELEASE_0_1 / "state.json.gz").read_bytes()))
    return lines, state


def uninterrupted(lines: list[bytes], state: dict) -> list[dict]:
    flow = RawDataflow(topic_partitions=state["topic_partitions"], partitions=state["partitions"], seed=12)
    flow.produce_raw(lines)
    return flow.run()


def resumed(lines: list[bytes], state: dict, snapshots: dict | None = None) -> RawDataflow:
    """A dataflow whose shards start from release 0.1's snapshots, its part topics holding what 0.1 left unread."""
    flow = RawDataflow(topic_partitions=state["topic_partitions"], partitions=state["partitions"], seed=12)
    flow.produce_raw(lines)
    for where, n in state["input_read"].items():
        topic, partition = where.rsplit("/", 1)
        flow.read_at[(topic, int(partition))] = flow.committed_at[(topic, int(partition))] = n
    for where, covered in state["covered"].items():
        name, partition = where.rsplit("/", 1)
        key = (name, int(partition))
        flow.inbox[key] = [b""] * covered + [base64.b64decode(m) for m in state["unread"][where]]
        flow.inbox_at[key] = covered
    given = snapshots if snapshots is not None else state["snapshots"]
    flow.host = flow._host({(w.rsplit("/", 1)[0], int(w.rsplit("/", 1)[1])): base64.b64decode(s)
                            for w, s in given.items()})
    flow.alerts = list(state["alerts_before"])
    return flow


def test_a_worker_upgraded_from_release_0_1_writes_the_alerts_it_would_have_written_without_stopping():
    lines, state = release_0_1()
    expected = uninterrupted(lines, state)
    assert {a["kind"] for a in expected} >= {"non_borrower_spike", "template_hijack", "rebind_anomaly"}
    assert state["alerts_before"] and len(state["alerts_before"]) < len(expected)
    flow = resumed(lines, state)
    alerts = flow.run()
    assert sorted(set(comparable(alerts))) == sorted(set(comparable(expected)))
    assert flow.dead == []
