"""What the worker counts for its dashboards while it moves records, kept out of the agents.

Input by category, receipts by carrier and status, rebinds, the non-borrower
share and template drift of the busiest senders (bounded label sets), open
alert episodes and consumer lag. Every labelled counter the rules read is
created at zero when the worker starts, so ``increase()`` sees its first rise.
"""

from __future__ import annotations

from collections import Counter
from typing import Any, Callable, Iterable

from smsstream import records
from smsstream.detection.facts import LoanSend, RoutineCount, TemplateRead
from smsstream.metrics import MAX_CARRIERS, MAX_SENDERS, BoundedLabel, Metrics
from smsstream.vocabulary import KINDS, STATUSES
from smsstream.worker.flow import Shard, Topology

#: The parts whose drivers are watched, and what for.
NON_BORROWER_SENDER = "non_borrower_sender"
TEMPLATE_READER = "template_hijack_reader"


class Telemetry:
    """Counts what the router decodes and what watched parts take, into the worker's metrics."""

    def __init__(self, metrics: Metrics, topology: Topology):
        self.metrics = metrics
        self.sender = BoundedLabel(MAX_SENDERS)
        self.carrier = BoundedLabel(MAX_CARRIERS)
        self._read = {t: metrics.events_in.labels(t) for t in topology.input_topics}
        self._sends = {c: metrics.sends.labels(c) for c in records.CATEGORIES}
        for topic in topology.input_topics:
            metrics.input_rewinds.labels(topic)
        for p in topology.parts:
            for counter in (metrics.merge_overflow, metrics.checkpoint_failures, metrics.shard_rewinds):
                counter.labels(p.name)
        for kind in KINDS:
            for status in STATUSES:
                metrics.alerts.labels(kind, status)
        self._firing: set[tuple[str, str, str]] = set()

    def read(self, topic: str) -> None:
        self._read[topic].inc()

    def decoded(self, topic: str, record: Any) -> None:
        if topic == records.SENDS:
            self._sends[record.category].inc()
        elif topic == records.RECEIPTS:
            self.metrics.receipts.labels(self.carrier(record.carrier), record.status).inc()
        elif topic == records.BINDINGS and record.old_number is not None:
            self.metrics.rebinds.labels(self.sender(record.sender_id)).inc()

    def watch(self, part: str) -> Callable[[Any, list | None], None] | None:
        """What counts a part's driver's intake, for the parts the dashboards look into."""
        if part == NON_BORROWER_SENDER:
            return self._loan_send
        if part == TEMPLATE_READER:
            return self._template_read
        return None

    def _loan_send(self, value: Any, made: list | None) -> None:
        sender = self.sender(value.sender_id)
        if value.__class__ is RoutineCount:
            self.metrics.sender_loan_sends.labels(sender).inc(value.count)
        elif value.__class__ is LoanSend:
            self.metrics.sender_loan_sends.labels(sender).inc()
            if value.non_borrower:
                self.metrics.sender_non_borrower_sends.labels(sender).inc()

    def _template_read(self, value: Any, made: list | None) -> None:
        for _, fact in made or ():
            if fact.__class__ is TemplateRead:
                outcome = "fits" if fact.fitting else "drifted"
                self.metrics.template_reads.labels(self.sender(value.sender_id), outcome).inc()

    def episodes(self, shards: Iterable[Shard]) -> None:
        """Set the open episodes of this worker's alert books, by kind, reason and severity."""
        open_now: Counter[tuple[str, str, str]] = Counter()
        for shard in shards:
            for episode in list(shard.part.book.episodes.values()):
                finding = episode.latest
                open_now[(finding.kind, finding.reason, episode.severity)] += 1
        gauge = self.metrics.alerts_firing
        for labels in self._firing - open_now.keys():
            gauge.labels(*labels).set(0)
        for labels, n in open_now.items():
            gauge.labels(*labels).set(n)
        self._firing = set(open_now)

    def consumer_lag(self, lag: dict[str, int]) -> None:
        for topic, n in lag.items():
            self.metrics.consumer_lag.labels(topic).set(n)
