"""The worker's Prometheus metrics, in one typed container built by :func:`create`.

Labels stay low in cardinality: topics, parts, alert kinds, reasons and
statuses, categories, a fixed set of dead-letter reasons, and, for the
dashboards' busiest senders and carriers, at most ``MAX_SENDERS`` sender ids
and ``MAX_CARRIERS`` carriers a worker (``BoundedLabel``; the rest count as
``_other``). Never a number, an account or a message id.
"""

from __future__ import annotations

from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, ProcessCollector, start_http_server

#: Distinct sender ids, and carriers, one worker names in labels; the rest are ``_other``.
MAX_SENDERS = 500
MAX_CARRIERS = 50
OTHER = "_other"


@dataclass(frozen=True)
class Metrics:
    events_in: Counter
    dead_letters: Counter
    alerts: Counter
    lag_seconds: Gauge
    state_entities: Gauge
    merge_buffered: Gauge
    snapshot_seconds: Histogram
    heartbeat_failures: Counter
    merge_overflow: Counter
    shard_rewinds: Counter
    input_rewinds: Counter
    checkpoint_failures: Counter
    consumer_lag: Gauge
    rebalances: Counter
    alerts_firing: Gauge
    sends: Counter
    receipts: Counter
    rebinds: Counter
    sender_loan_sends: Counter
    sender_non_borrower_sends: Counter
    template_reads: Counter
    controls_entries: Gauge
    controls_records: Counter
    broker_connected: Gauge
    broker_disconnections: Counter


def create(registry: CollectorRegistry | None = None, prefix: str = "smsstream") -> Metrics:
    """A fresh set of metrics registered in ``registry`` (a new one when None)."""
    registry = registry if registry is not None else CollectorRegistry()
    return Metrics(
        events_in=Counter(
            f"{prefix}_events_in", "Input records read, by topic.", ["topic"], registry=registry
        ),
        dead_letters=Counter(
            f"{prefix}_dead_letters",
            "Input records written to sms.dead-letter, by input topic and reason.",
            ["topic", "reason"],
            registry=registry,
        ),
        alerts=Counter(
            f"{prefix}_alerts", "Alert records written to sms.alerts, by kind and status.", ["kind", "status"],
            registry=registry,
        ),
        lag_seconds=Gauge(
            f"{prefix}_event_time_lag_seconds",
            "Wall-clock now minus the latest event time a part has processed.",
            ["part"],
            registry=registry,
        ),
        state_entities=Gauge(
            f"{prefix}_state_entities", "Entities held in a part's state on this worker.", ["part"],
            registry=registry,
        ),
        merge_buffered=Gauge(
            f"{prefix}_merge_buffered",
            "Items a part holds back until slower upstream partitions catch up in event time.",
            ["part"],
            registry=registry,
        ),
        snapshot_seconds=Histogram(
            f"{prefix}_snapshot_seconds",
            "Time to take and save one shard's state snapshot to its table, not counting the wait for its "
            "deliveries (snapshots of larger states are spaced out).",
            ["part"],
            buckets=(0.001, 0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
            registry=registry,
        ),
        heartbeat_failures=Counter(
            f"{prefix}_heartbeat_failures",
            "Heartbeat rounds that failed (retried a second later); a steady rise holds every part's clock back.",
            registry=registry,
        ),
        merge_overflow=Counter(
            f"{prefix}_merge_overflow",
            "Items a shard's full merge buffer released before every upstream partition had passed them "
            "(backlogs read at uneven speeds); their buckets may differ from replay's.",
            ["part"],
            registry=registry,
        ),
        input_rewinds=Counter(
            f"{prefix}_input_rewinds",
            "Times the consumer went on past records of an input partition this worker had not sent on yet, "
            "after a rebalance gave the partition back, and they were read from the partition itself.",
            ["topic"],
            registry=registry,
        ),
        checkpoint_failures=Counter(
            f"{prefix}_checkpoint_failures",
            "Checkpoints a shard gave up because facts, alerts or dead letters it had sent were not delivered: "
            "parts downstream miss them, so alerts may differ from replay's.",
            ["part"],
            registry=registry,
        ),
        shard_rewinds=Counter(
            f"{prefix}_shard_rewinds",
            "Times a shard found messages of its partition missing between its saved state and the next one "
            "delivered, and read them again.",
            ["part"],
            registry=registry,
        ),
        consumer_lag=Gauge(
            f"{prefix}_consumer_lag_records",
            "Records of this worker's input partitions not read yet (end offset minus the next to read), by topic.",
            ["topic"],
            registry=registry,
        ),
        rebalances=Counter(
            f"{prefix}_rebalances", "Partition assignments this worker received (rebalances it took part in).",
            registry=registry,
        ),
        alerts_firing=Gauge(
            f"{prefix}_alerts_firing", "Alert episodes open in this worker's alert books.",
            ["kind", "reason", "severity"], registry=registry,
        ),
        sends=Counter(f"{prefix}_sends", "Sends read from sms.sends, by category.", ["category"], registry=registry),
        receipts=Counter(
            f"{prefix}_receipts", "Delivery receipts read, by carrier and SMPP status word.", ["carrier", "status"],
            registry=registry,
        ),
        rebinds=Counter(
            f"{prefix}_rebinds", "Bindings that moved an account off an old number, by sender.", ["sender_id"],
            registry=registry,
        ),
        sender_loan_sends=Counter(
            f"{prefix}_sender_loan_sends", "Loan-obligation sends judged against the borrower book, by sender.",
            ["sender_id"], registry=registry,
        ),
        sender_non_borrower_sends=Counter(
            f"{prefix}_sender_non_borrower_sends",
            "Of those, sends to numbers that are not borrowers of the sender, by sender.", ["sender_id"],
            registry=registry,
        ),
        template_reads=Counter(
            f"{prefix}_template_reads",
            "Sends read against their template, by sender and outcome (fits, drifted).", ["sender_id", "outcome"],
            registry=registry,
        ),
        controls_entries=Gauge(
            f"{prefix}_controls_entries", "Operator control entries (sms.detector-config) this worker holds.",
            registry=registry,
        ),
        controls_records=Counter(
            f"{prefix}_controls_records",
            "Records of sms.detector-config this worker read, by outcome: applied, removed (a tombstone), or "
            "invalid (left out; the worker that consumes the topic in the group dead-letters it).",
            ["outcome"], registry=registry,
        ),
        broker_connected=Gauge(
            f"{prefix}_broker_connected",
            "1 while the worker's probe of the Kafka cluster gets answers, 0 while it does not (it reconnects by "
            "itself and catches up once the broker is back).",
            registry=registry,
        ),
        broker_disconnections=Counter(
            f"{prefix}_broker_disconnections",
            "Times the worker lost the Kafka cluster (its probe went unanswered after having been answered).",
            registry=registry,
        ),
    )


class BoundedLabel:
    """A label value from the input (a sender id, a carrier) kept to at most ``limit`` distinct values."""

    def __init__(self, limit: int):
        self.limit = limit
        self.named: set[str] = set()

    def __call__(self, value: str | None) -> str:
        if value is None:
            return "unknown"
        if value in self.named:
            return value
        if len(self.named) < self.limit:
            self.named.add(value)
            return value
        return OTHER


def register_process_metrics(registry: CollectorRegistry) -> None:
    """CPU, memory and start time of this process (``process_*``) on ``registry``."""
    ProcessCollector(registry=registry)


def serve(registry: CollectorRegistry, port: int, host: str = "127.0.0.1") -> None:
    """Serve ``/metrics`` on ``host:port`` in a background thread (port 0 means do not serve).

    ``host`` is ``Settings.bind_host`` (``SMSSTREAM_BIND_HOST``): loopback unless a
    Prometheus outside the pod or machine must scrape it.
    """
    if port:
        start_http_server(port, addr=host, registry=registry)
