"""The two smsstream dashboards, *detection* and *worker health*, as panel specs.

Panels query the names of :mod:`smsstream.monitoring.names` only. Per-sender
and per-carrier panels show the ``TOP_K`` largest (``topk``); no metric has a
label per phone number.
"""

from __future__ import annotations

from grafana_foundation_sdk.models import units

from smsstream.monitoring import names as n
from smsstream.monitoring.panels import (
    DashboardSpec, PanelSpec, Query, RowSpec, increase, rate, selector, series, top,
)

DETECTION_UID = "smsstream-detection"
WORKER_HEALTH_UID = "smsstream-worker-health"
RUNBOOKS = "docs/runbooks"

def _sender_rate(metric: str, **labels: str) -> str:
    return rate(metric, n.SENDER, **labels)


def detection() -> DashboardSpec:
    return DashboardSpec(
        DETECTION_UID,
        "smsstream — detection",
        "What smsstream reads and what it finds: input by topic and category, alerts by kind, and the top "
        f"senders' figures behind each alert kind. Runbooks: {RUNBOOKS}/.",
        (_input_row(), _alerts_row(), _senders_row()),
    )


def _input_row() -> RowSpec:
    return RowSpec("Input", (
        PanelSpec(
            "Input records by topic",
            "Records read per second from each input topic, all workers together. sms.sends and "
            "sms.delivery-receipts follow the gateway's traffic; a topic at zero while the gateway is sending "
            "means the producer or its ACLs broke (the SmsstreamNoInput alert pages after 15 min). Check the "
            "worker health dashboard for lag before suspecting the gateway.",
            units.OpsPerSecond,
            (Query(rate(n.EVENTS_IN, n.TOPIC), "{{topic}}"),),
        ),
        PanelSpec(
            "Sends by category",
            "Sends per second by category. Loan-obligation categories (repayment_reminder, overdue_notice, "
            "collection, loan_status) are what the non-borrower detector judges. A category that jumps with no "
            "campaign planned, or reminders outside business hours, deserves a look at the top senders below; a "
            "category that vanishes usually means a producer changed its category names (check sms.dead-letter "
            "for invalid_record).",
            units.OpsPerSecond,
            (Query(rate(n.SENDS, n.CATEGORY), "{{category}}"),),
            style="stacked",
        ),
    ))


def _alerts_row() -> RowSpec:
    return RowSpec("Alerts", (
        PanelSpec(
            "Alerts firing by kind and severity",
            "Alert episodes open now, summed over workers. A few is normal; a sudden climb in one kind is either "
            "an attack spread over many entities or a broken input (e.g. the borrower book stopped updating, so "
            f"every reminder looks like a non-borrower send). Read a few records on sms.alerts and follow their "
            f"runbooks ({RUNBOOKS}/<kind>/<reason>.md); SmsstreamAlertStorm pages when records pile up.",
            units.Short,
            (Query(f"sum by ({n.KIND}, {n.SEVERITY}) ({series(n.ALERTS_FIRING)})", "{{kind}} {{severity}}"),),
            style="stacked",
        ),
        PanelSpec(
            "Alert timeline: records written by kind and status",
            "Alert records written to sms.alerts in each interval: firing (new, or an hourly update while it "
            "keeps firing) and resolved. Bars of firing without later resolved bars are episodes still open. "
            "Compare a burst with the input panels: a burst right after a worker restart or a backlog catch-up "
            "re-sends records already written (same alert_id), which consumers deduplicate by dedup_key.",
            units.Short,
            (Query(increase(n.ALERTS, f"{n.KIND}, {n.STATUS}"), "{{kind}} {{status}}"),),
            style="bars",
            width=24,
        ),
    ))


def _senders_row() -> RowSpec:
    return RowSpec(f"Top {n.TOP_K} senders", (
        PanelSpec(
            "Non-borrower share, busiest senders",
            f"For the {n.TOP_K} senders with the most loan-obligation sends: the share of them sent to numbers "
            "that have no borrower record with that sender. About 1 % (numbers entered by mistake) is the usual "
            "floor. A sender whose share climbs is sending debt reminders to people who owe it nothing: a bought "
            "list, a hijacked account, or reminders aimed at another lender's book (non_borrower_spike alerts "
            "name it). If every sender climbs at once, suspect sms.borrowers (the book stopped updating) before "
            "an attack.",
            units.PercentUnit,
            (Query(top(_sender_rate(n.SENDER_LOAN_SENDS),
                       f"{_sender_rate(n.SENDER_NON_BORROWER_SENDS)} / {_sender_rate(n.SENDER_LOAN_SENDS)}"),
                   "{{sender_id}}"),),
        ),
        PanelSpec(
            "Template drift, busiest senders",
            f"For the {n.TOP_K} senders with the most sends read against a template: the share of bodies that "
            "did not fit the template's registered (or learned) shape. A step up for one sender is a changed "
            "template that was not re-registered, or injected links and callback numbers (template_hijack "
            "content_drift alerts carry the word diff). A step up for every sender at once points at "
            "sms.templates or a gateway change in rendering.",
            units.PercentUnit,
            (Query(top(_sender_rate(n.TEMPLATE_READS),
                       f"{_sender_rate(n.TEMPLATE_READS, outcome='drifted')} / {_sender_rate(n.TEMPLATE_READS)}"),
                   "{{sender_id}}"),),
        ),
        PanelSpec(
            "Rebinds per minute, busiest senders",
            f"Account-to-number rebinds per minute for the {n.TOP_K} senders that rebind most. Lenders rebind "
            "in business hours at a steady rate; a spike at night, or one sender far above its usual rate, is "
            "the shape of account takeover (rebind_anomaly mass_rebind alerts list the devices and IPs). A "
            "sender at zero that usually rebinds may have stopped publishing sms.bindings.",
            units.OpsPerMinute,
            (Query(f"topk({n.TOP_K}, {_sender_rate(n.REBINDS)} * 60)", "{{sender_id}}"),),
        ),
        PanelSpec(
            "Receipt outcomes by carrier (not delivered)",
            f"For the {n.TOP_K} carriers with the most receipts: the share of receipts by status other than "
            "DELIVRD. BLOCKED climbing on one carrier means it filters the traffic (often one sender's content; "
            "delivery_failure_spike alerts say whose). EXPIRED and UNDELIV climbing on every carrier at once is "
            "usually the gateway, not the carriers. Receipts arrive up to 72 h late, so a slow carrier shifts "
            "this graph without any alert.",
            units.PercentUnit,
            (Query(top(rate(n.RECEIPTS, n.CARRIER),
                       f"{rate(n.RECEIPTS, f'{n.CARRIER}, {n.STATUS}', status='!DELIVRD')} "
                       f"/ on ({n.CARRIER}) group_left {rate(n.RECEIPTS, n.CARRIER)}",
                       label=n.CARRIER),
                   "{{carrier}} {{status}}"),),
            width=24,
        ),
    ))


def worker_health() -> DashboardSpec:
    return DashboardSpec(
        WORKER_HEALTH_UID,
        "smsstream — worker health",
        "Whether the smsstream workers keep up: throughput, lag, bad input, merge buffers, checkpoints, "
        f"rebalances, restarts, CPU and memory. Runbooks: {RUNBOOKS}/worker/.",
        (_throughput_row(), _lag_row(), _state_row(), _controls_row(), _process_row()),
    )


def _throughput_row() -> RowSpec:
    return RowSpec("Throughput", (
        PanelSpec(
            "Workers up",
            "Workers Prometheus scrapes successfully, against the replicas you run. Fewer than expected: see "
            "SmsstreamWorkerDown (docs/runbooks/worker/SmsstreamWorkerDown.md); check `kubectl get pods` and "
            "the pod's last log lines.",
            units.Short,
            (Query('sum(up{job=~"$job", instance=~"$instance"})', "up"),),
            style="stat", width=6,
        ),
        PanelSpec(
            "Records in per second, by topic",
            "Input records read per second. A drop to zero with traffic still arriving on the topics means the "
            "workers stopped consuming: look at consumer lag and rebalances below, then at the worker logs.",
            units.OpsPerSecond,
            (Query(rate(n.EVENTS_IN, n.TOPIC), "{{topic}}"),),
            width=9,
        ),
        PanelSpec(
            "Records out per second",
            "Records written to sms.alerts and sms.dead-letter per second. Dead letters above a trickle mean a "
            "producer sends bad records (see Dead letters by reason); alert records far above the usual few an "
            "hour: see SmsstreamAlertStorm.",
            units.OpsPerSecond,
            (Query(rate(n.ALERTS), "sms.alerts"), Query(rate(n.DEAD_LETTERS), "sms.dead-letter")),
            width=9,
        ),
    ))


def _lag_row() -> RowSpec:
    return RowSpec("Lag and input errors", (
        PanelSpec(
            "Consumer lag per topic",
            "Input records not read yet, per topic, summed over the workers' partitions. Flat near zero is "
            "healthy; a steady climb means the workers read slower than the gateway writes: add replicas (up to "
            "the topic's partition count) or CPU. A climb on one topic only, with records in still flowing, is "
            "often one hot partition.",
            units.Short,
            (Query(f"sum by ({n.TOPIC}) ({series(n.CONSUMER_LAG)})", "{{topic}}"),),
        ),
        PanelSpec(
            "Event-time lag per part",
            "Wall clock minus the newest event time each detector part has processed (worst worker). It includes "
            "the gateway's own delay and the 5 min allowed lateness, so a few minutes is normal. Climbing while "
            "records still come in: the part falls behind (check merge buffers and CPU). Climbing with no input: "
            "the gateway went quiet (SmsstreamNoInput).",
            units.Seconds,
            (Query(f"max by ({n.PART}) ({series(n.EVENT_TIME_LAG)})", "{{part}}"),),
        ),
        PanelSpec(
            "Dead letters by topic and reason",
            "Input records written to sms.dead-letter per second. invalid_json / invalid_record / too_large: a "
            "producer sends malformed records; read a few on sms.dead-letter (the error names the field) and "
            "tell its owner. duplicate: a producer retries without idempotence. late: a producer or mirror is "
            "more than the allowed lateness behind. Nothing is lost either way; the worker keeps going.",
            units.OpsPerSecond,
            (Query(rate(n.DEAD_LETTERS, f"{n.TOPIC}, {n.REASON}"), "{{topic}} {{reason}}"),),
        ),
        PanelSpec(
            "Re-reads and heartbeat failures",
            "Records read again after a rebalance (input, shards) and failed heartbeat rounds, per interval. A "
            "few around a rebalance are the repair working. Heartbeat failures that keep coming hold every "
            "part's clock back (alerts stall): check the broker's health and the worker's connection to it.",
            units.Short,
            (Query(increase(n.INPUT_REWINDS, n.TOPIC), "input {{topic}}"),
             Query(increase(n.SHARD_REWINDS, n.PART), "shard {{part}}"),
             Query(increase(n.HEARTBEAT_FAILURES), "heartbeat failures")),
            style="bars",
        ),
    ))


def _state_row() -> RowSpec:
    return RowSpec("State, merge buffers and checkpoints", (
        PanelSpec(
            "Merge buffers and overflow",
            "Items each part holds until the slowest upstream partition catches up in event time, and items a "
            "full buffer had to release early (overflow). Buffers grow during a backlog read at uneven speeds "
            "and drain after; overflow means alerts of that stretch may differ slightly from replay "
            "(SmsstreamMergeOverflow). A buffer that never drains: one input partition is stuck or idle "
            "without heartbeats; check consumer lag per topic.",
            units.Short,
            (Query(f"sum by ({n.PART}) ({series(n.MERGE_BUFFERED)})", "held {{part}}"),
             Query(increase(n.MERGE_OVERFLOW, n.PART), "overflow {{part}}")),
        ),
        PanelSpec(
            "Checkpoint time (p99) per part",
            "Time to take and save one shard's snapshot (p99), not counting the wait for its deliveries. It "
            "grows with the state (see entities); seconds are fine, as snapshots of large states are spaced "
            "out. Tens of seconds: the table store's disk is slow or full; check the PersistentVolume.",
            units.Seconds,
            (Query(f"histogram_quantile(0.99, sum by ({n.PART}, le) "
                   f"(rate({n.SNAPSHOT_SECONDS}_bucket{selector()}[$__rate_interval])))", "{{part}}"),),
        ),
        PanelSpec(
            "Checkpoint failures per part",
            "Checkpoints given up because facts, alerts or dead letters a shard sent were not delivered. Any "
            "sustained count pages (SmsstreamCheckpointFailures): the broker refuses or times out writes; check "
            "its health, the internal topics' ISR and the worker's ACLs on them.",
            units.Short,
            (Query(increase(n.CHECKPOINT_FAILURES, n.PART), "{{part}}"),),
            style="bars",
        ),
        PanelSpec(
            "State entities per part",
            "Entities (numbers, senders, templates, ...) held in each part's state. It follows traffic and "
            "expires idle entities, so it levels off; a climb without end means state is not expiring "
            "(memory will follow): note the part and tell the developers.",
            units.Short,
            (Query(f"sum by ({n.PART}) ({series(n.STATE_ENTITIES)})", "{{part}}"),),
        ),
    ))


def _controls_row() -> RowSpec:
    return RowSpec("Operator controls", (
        PanelSpec(
            "Control entries held per worker",
            "Entries of sms.detector-config (sensitivity, allow lists, silences, shadow) each worker applies. "
            "Every worker follows the whole topic, so all lines should be equal within seconds of a change; "
            "one worker behind the others: see its log for the control topic (`smsstream config show` lists "
            "what the topic holds).",
            units.Short,
            (Query(f"sum by (instance) ({series(n.CONTROLS_ENTRIES)})", "{{instance}}"),),
            width=12,
        ),
        PanelSpec(
            "Control records read, by outcome",
            "Records of sms.detector-config read per interval: applied, removed (a tombstone) or invalid. An "
            "invalid entry never changes the running configuration and is dead-lettered with the field it "
            "gets wrong: find it on sms.dead-letter and fix it with `smsstream config validate` / `set`.",
            units.Short,
            (Query(increase(n.CONTROLS_RECORDS, "outcome"), "{{outcome}}"),),
            style="bars", width=12,
        ),
    ))


def _process_row() -> RowSpec:
    return RowSpec("Rebalances, restarts, CPU and memory", (
        PanelSpec(
            "Rebalances",
            "Partition assignments the workers received per interval. Expect a burst when a worker starts, "
            "stops or is rescheduled. Rebalances with no deploy going on: a worker misses its session timeout "
            "(CPU starved, long GC pauses, a stuck event loop); check CPU below and the liveness probe.",
            units.Short,
            (Query(increase(n.REBALANCES), "rebalances"),),
            style="bars", width=6,
        ),
        PanelSpec(
            "Restarts in the last hour",
            "Worker process restarts in the trailing hour, per worker. A pod that restarts over and over is "
            "killed by its liveness probe or by the memory limit (OOMKilled in `kubectl describe pod`): raise "
            "the limit or see the worker's last log lines.",
            units.Short,
            (Query(f"sum by (instance) (changes({series(n.PROCESS_START)}[1h]))", "{{instance}}"),),
            style="bars", width=6,
        ),
        PanelSpec(
            "CPU per worker",
            "CPU used per worker, 100 % being one core. A worker is one Python process: near 100 % it is "
            "saturated, whatever the pod's limit; spread partitions over more replicas instead of raising it.",
            units.PercentUnit,
            (Query(f"sum by (instance) (rate({series(n.PROCESS_CPU)}[$__rate_interval]))", "{{instance}}"),),
            width=6,
        ),
        PanelSpec(
            "Memory per worker",
            "Resident memory per worker. It grows with state and the merge buffers, then levels off. Close to "
            "the pod's memory limit: raise the limit or add replicas before the kernel kills it.",
            units.BytesIEC,
            (Query(f"sum by (instance) ({series(n.PROCESS_MEMORY)})", "{{instance}}"),),
            width=6,
        ),
    ))


def all_dashboards() -> list[DashboardSpec]:
    return [detection(), worker_health()]
