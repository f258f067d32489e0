"""Every metric, label and scrape job the dashboards and rules use: the one place that names them.

A metric renamed in ``smsstream.metrics`` (or added for a panel) is a one-line
change here; ``python -m smsstream.monitoring`` then rebuilds every dashboard,
rule and rule test from these names.

``tests/test_monitoring_prometheus.py`` runs every panel's query against a
real Prometheus scraping a worker, so a name here that the worker does not
export fails there.
"""

from __future__ import annotations

#: Prometheus ``job`` labels. The Helm chart's ServiceMonitors set these; a
#: hand-written scrape config must use the same job names for the rules to match.
WORKER_JOB = "smsstream-worker"
NOTIFIER_JOB = "smsstream-notify"

#: Per-sender and per-carrier panels show at most this many series (``topk``).
TOP_K = 10

# --- the worker's own (src/smsstream/metrics.py) --------------------------------
#: counter {topic}: input records read
EVENTS_IN = "smsstream_events_in_total"
#: counter {topic, reason}: input records written to sms.dead-letter
DEAD_LETTERS = "smsstream_dead_letters_total"
#: counter {kind, status}: alert records written to sms.alerts
ALERTS = "smsstream_alerts_total"
#: gauge {part}: wall clock minus the latest event time a part has processed
EVENT_TIME_LAG = "smsstream_event_time_lag_seconds"
#: gauge {part}: entities in a part's state on this worker
STATE_ENTITIES = "smsstream_state_entities"
#: gauge {part}: items held back until slower upstream partitions catch up
MERGE_BUFFERED = "smsstream_merge_buffered"
#: counter {part}: items released from a full merge buffer early
MERGE_OVERFLOW = "smsstream_merge_overflow_total"
#: histogram {part}: time to take and save one shard snapshot
SNAPSHOT_SECONDS = "smsstream_snapshot_seconds"
#: counter {part}: checkpoints given up because deliveries failed
CHECKPOINT_FAILURES = "smsstream_checkpoint_failures_total"
#: counter: heartbeat rounds that failed
HEARTBEAT_FAILURES = "smsstream_heartbeat_failures_total"
#: counter {topic}: input records read again from the partition after a rebalance
INPUT_REWINDS = "smsstream_input_rewinds_total"
#: counter {part}: internal messages a shard read again
SHARD_REWINDS = "smsstream_shard_rewinds_total"
#: gauge: operator control entries (sms.detector-config) a worker holds
CONTROLS_ENTRIES = "smsstream_controls_entries"
#: counter {outcome}: control records read: applied, removed or invalid
CONTROLS_RECORDS = "smsstream_controls_records_total"

#: gauge {topic}: records of this worker's assigned input partitions not read yet (end offset minus position)
CONSUMER_LAG = "smsstream_consumer_lag_records"
#: counter: partition assignments this worker received (each one a rebalance it took part in)
REBALANCES = "smsstream_rebalances_total"
#: counter {category}: sends read from sms.sends, by category (CONTRACT.md's eight)
SENDS = "smsstream_sends_total"
#: gauge {kind, reason, severity}: alert episodes open (firing) in this worker's alert books
ALERTS_FIRING = "smsstream_alerts_firing"
#: counter {sender_id}: loan-obligation sends judged for the non-borrower share
SENDER_LOAN_SENDS = "smsstream_sender_loan_sends_total"
#: counter {sender_id}: of those, sends to numbers with no borrower record of that sender
SENDER_NON_BORROWER_SENDS = "smsstream_sender_non_borrower_sends_total"
#: counter {sender_id, outcome}: sends read against their template, ``outcome`` = ``fits`` or ``drifted``
TEMPLATE_READS = "smsstream_template_reads_total"
#: counter {sender_id}: rebinds (a binding with an old number) read from sms.bindings
REBINDS = "smsstream_rebinds_total"
#: counter {carrier, status}: delivery receipts read, by carrier and SMPP status word
RECEIPTS = "smsstream_receipts_total"

# --- prometheus_client's process collector, on the worker's registry ---
PROCESS_CPU = "process_cpu_seconds_total"
PROCESS_MEMORY = "process_resident_memory_bytes"
PROCESS_START = "process_start_time_seconds"

# --- label names ---
TOPIC = "topic"
PART = "part"
REASON = "reason"
KIND = "kind"
STATUS = "status"
SEVERITY = "severity"
CATEGORY = "category"
SENDER = "sender_id"
CARRIER = "carrier"
OUTCOME = "outcome"

#: the input topic whose silence means the gateway stopped feeding smsstream
SENDS_TOPIC = "sms.sends"
