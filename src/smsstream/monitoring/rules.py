"""Prometheus recording and alerting rules for the smsstream workers, each with its ``promtool`` test.

Every alert carries, beside its expression, the two cases its unit test
checks: traffic that must fire it and the nearest traffic that must not (a
blip shorter than its ``for``, a rate just under its threshold). The rule file
is in the ``groups:`` form a PrometheusRule's ``spec`` carries unchanged.

Annotations name the runbook by its path in this repository
(``docs/runbooks/worker/<alert>.md``); the Helm chart can prefix a base URL.
They template only ``$labels``, so the tests know their exact text.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from smsstream.monitoring import names as n
from smsstream.records import SENDS

RUNBOOK_DIR = "docs/runbooks/worker"
W = f'job="{n.WORKER_JOB}"'

#: how long without a single send before SmsstreamNoInput pages
NO_INPUT_MINUTES = 15
#: records of consumer lag below which a growing lag is not worth a page
CONSUMER_LAG_FLOOR = 10_000
#: seconds of event-time lag below which a growing lag is not worth a page
EVENT_TIME_LAG_FLOOR_S = 900
#: share of a topic's records dead-lettered (per reason) that pages
DEAD_LETTER_SHARE = 0.01
#: firing alert records of one kind in 15 minutes that make a storm
ALERT_STORM_RECORDS = 100
#: failed heartbeat rounds in 5 minutes (a round a second) that hold the clocks back
HEARTBEAT_FAILURES_5M = 30


@dataclass(frozen=True)
class Case:
    """Input series (promtool's expanding notation, one sample a minute) and the alerts expected at ``at``."""

    series: dict[str, str]
    at: str
    alerts: tuple[dict[str, str], ...] = ()


@dataclass(frozen=True)
class Alert:
    name: str
    expr: str
    severity: str
    summary: str
    description: str
    fires: Case
    quiet: Case
    for_: str = "0m"

    @property
    def runbook(self) -> str:
        return f"{RUNBOOK_DIR}/{self.name}.md"

    def annotations(self) -> dict[str, str]:
        return {"summary": self.summary, "description": self.description, "runbook_url": self.runbook}


@dataclass(frozen=True)
class Recording:
    record: str
    expr: str
    #: input series, evaluation time and the samples expected of ``record`` then
    test: Case
    expected: tuple[tuple[dict[str, str], float], ...] = field(default=())


RECORDINGS = (
    Recording(
        "smsstream:events_in:rate10m",
        f"sum by (job, {n.TOPIC}) (rate({n.EVENTS_IN}{{{W}}}[10m]))",
        Case({f'{n.EVENTS_IN}{{{W}, instance="w0", topic="{SENDS}"}}': "0+600x20",
              f'{n.EVENTS_IN}{{{W}, instance="w1", topic="{SENDS}"}}': "0+1200x20"}, "15m"),
        (({"job": n.WORKER_JOB, "topic": SENDS}, 30),),
    ),
    Recording(
        "smsstream:dead_letters:rate10m",
        f"sum by (job, {n.TOPIC}, {n.REASON}) (rate({n.DEAD_LETTERS}{{{W}}}[10m]))",
        Case({f'{n.DEAD_LETTERS}{{{W}, instance="w0", topic="{SENDS}", reason="late"}}': "0+60x20"}, "15m"),
        (({"job": n.WORKER_JOB, "topic": SENDS, "reason": "late"}, 1),),
    ),
    Recording(
        "smsstream:consumer_lag_records:sum",
        f"sum by (job, {n.TOPIC}) ({n.CONSUMER_LAG}{{{W}}})",
        Case({f'{n.CONSUMER_LAG}{{{W}, instance="w0", topic="{SENDS}"}}': "100x5",
              f'{n.CONSUMER_LAG}{{{W}, instance="w1", topic="{SENDS}"}}': "50x5"}, "3m"),
        (({"job": n.WORKER_JOB, "topic": SENDS}, 150),),
    ),
    Recording(
        "smsstream:event_time_lag_seconds:max",
        f"max by (job, {n.PART}) ({n.EVENT_TIME_LAG}{{{W}}})",
        Case({f'{n.EVENT_TIME_LAG}{{{W}, instance="w0", part="sender-share"}}': "20x5",
              f'{n.EVENT_TIME_LAG}{{{W}, instance="w1", part="sender-share"}}': "400x5"}, "3m"),
        (({"job": n.WORKER_JOB, "part": "sender-share"}, 400),),
    ),
)


def _up(values: str, instance: str = "w0") -> dict[str, str]:
    return {f'up{{{W}, instance="{instance}"}}': values}


# Series of one worker (instance "w0") the rule tests feed.
_JOB = {"job": n.WORKER_JOB}
_SENDS_IN = f'{n.EVENTS_IN}{{{W}, instance="w0", topic="{SENDS}"}}'


def _availability_alerts() -> tuple[Alert, ...]:
    """Workers gone, input gone, or the workers falling behind."""
    job, sends = _JOB, _SENDS_IN
    lag = f'{n.CONSUMER_LAG}{{{W}, instance="w0", topic="{SENDS}"}}'
    ev_lag = f'{n.EVENT_TIME_LAG}{{{W}, instance="w0", part="sender-share"}}'
    return (
        Alert(
            "SmsstreamWorkerDown", f"up{{{W}}} == 0", "warning",
            "smsstream worker {{ $labels.instance }} is down",
            "Prometheus has failed to scrape this worker for 5 minutes. The other workers take over its "
            "partitions within about 20 s, so detection goes on if any are left; find out why it stopped.",
            fires=Case(_up("1 1 0x10"), "8m", ({**job, "instance": "w0"},)),
            quiet=Case(_up("1 1 0 0 0 1x10"), "8m"),
            for_="5m",
        ),
        Alert(
            "SmsstreamNoWorkers", f"absent(up{{{W}}} == 1)", "critical",
            "no smsstream worker is up: nothing is being detected",
            f"No scrape target of job {n.WORKER_JOB} has been up for 5 minutes. Attacks go unnoticed until a "
            "worker runs again (input waits on Kafka, so nothing is lost within the topics' retention).",
            fires=Case({**_up("1 1 0x10"), **_up("1 1 0x10", "w1")}, "8m", ({},)),
            quiet=Case({**_up("1 1 0x10"), **_up("1x10", "w1")}, "8m"),
            for_="5m",
        ),
        Alert(
            "SmsstreamNoInput",
            f'sum by (job) (increase({n.EVENTS_IN}{{{W}, topic="{SENDS}"}}[{NO_INPUT_MINUTES}m])) == 0',
            "warning",
            f"smsstream has read no send for {NO_INPUT_MINUTES} minutes",
            f"The workers are up but read nothing from {SENDS}. Either the gateway stopped producing (or writes "
            "elsewhere), or the workers cannot read the topic (ACLs, a deleted topic).",
            fires=Case({sends: "0+100x5 500x30"}, "30m", (job,)),
            quiet=Case({sends: "0+100x5 500x10 510x20"}, "30m"),
            for_="5m",
        ),
        Alert(
            "SmsstreamConsumerLagGrowing",
            f"smsstream:consumer_lag_records:sum > {CONSUMER_LAG_FLOOR} "
            "and deriv(smsstream:consumer_lag_records:sum[15m]) > 0",
            "warning",
            "smsstream falls behind on {{ $labels.topic }}",
            f"More than {CONSUMER_LAG_FLOOR} records of this topic wait to be read and the backlog has kept "
            "growing for 30 minutes: the workers read slower than the gateway writes. Alerts come late.",
            fires=Case({lag: "0+1000x60"}, "50m", ({**job, "topic": SENDS},)),
            quiet=Case({lag: "30000-200x60"}, "50m"),
            for_="15m",
        ),
        Alert(
            "SmsstreamEventTimeLagGrowing",
            f"smsstream:event_time_lag_seconds:max > {EVENT_TIME_LAG_FLOOR_S} "
            "and deriv(smsstream:event_time_lag_seconds:max[15m]) > 0 "
            "and on (job) sum by (job) (smsstream:events_in:rate10m) > 0",
            "warning",
            "smsstream part {{ $labels.part }} falls behind in event time",
            f"The part's newest processed event is more than {EVENT_TIME_LAG_FLOOR_S // 60} minutes old and "
            "getting older for 30 minutes while input still arrives: its alerts come late.",
            fires=Case({ev_lag: "300+60x60", sends: "0+600x60"}, "50m", ({**job, "part": "sender-share"},)),
            quiet=Case({ev_lag: "300+60x60", sends: "0+600x5 3000x55"}, "50m"),
            for_="15m",
        ),
    )


def _processing_alerts() -> tuple[Alert, ...]:
    """Input the workers cannot use, output they cannot deliver, and floods of alerts."""
    job, sends = _JOB, _SENDS_IN
    dead = f'{n.DEAD_LETTERS}{{{W}, instance="w0", topic="{SENDS}", reason="invalid_json"}}'
    checkpoints = f'{n.CHECKPOINT_FAILURES}{{{W}, instance="w0", part="template-watch"}}'
    overflow = f'{n.MERGE_OVERFLOW}{{{W}, instance="w0", part="template-watch"}}'
    storm = f'{n.ALERTS}{{{W}, instance="w0", kind="non_borrower_spike", status="firing"}}'
    beats = f'{n.HEARTBEAT_FAILURES}{{{W}, instance="w0"}}'
    return (
        Alert(
            "SmsstreamDeadLetterRate",
            f"smsstream:dead_letters:rate10m / on (job, {n.TOPIC}) group_left smsstream:events_in:rate10m "
            f"> {DEAD_LETTER_SHARE}",
            "warning",
            "{{ $labels.reason }} records on {{ $labels.topic }} go to the dead-letter topic",
            f"More than {DEAD_LETTER_SHARE:.0%} of this topic's records have been dead-lettered for this reason "
            "for 10 minutes. They are kept on sms.dead-letter, not detected on: a producer is sending records "
            "smsstream cannot use.",
            fires=Case({sends: "0+1000x30", dead: "0+20x30"}, "25m",
                       ({**job, "topic": SENDS, "reason": "invalid_json"},)),
            quiet=Case({sends: "0+1000x30", dead: "0+5x30"}, "25m"),
            for_="10m",
        ),
        Alert(
            "SmsstreamCheckpointFailures",
            f"sum by (job, {n.PART}) (increase({n.CHECKPOINT_FAILURES}{{{W}}}[5m])) > 0",
            "critical",
            "smsstream part {{ $labels.part }} cannot checkpoint",
            "Shards of this part have kept failing to deliver their facts, alerts or dead letters for 10 "
            "minutes, so their state is not saved and their input is not acknowledged; parts downstream miss "
            "those facts and alerts may be missing.",
            fires=Case({checkpoints: "0+2x30"}, "20m", ({**job, "part": "template-watch"},)),
            quiet=Case({checkpoints: "0 1 2 3 3x30"}, "20m"),
            for_="10m",
        ),
        Alert(
            "SmsstreamMergeOverflow",
            f"sum by (job, {n.PART}) (increase({n.MERGE_OVERFLOW}{{{W}}}[15m])) > 0",
            "info",
            "smsstream part {{ $labels.part }} released events before its slowest input caught up",
            "A full merge buffer released items out of event-time order (a backlog read at uneven speeds). "
            "Alerts of this stretch may differ slightly from what `smsstream replay` gives.",
            fires=Case({overflow: "0 0 0 500 500x20"}, "10m", ({**job, "part": "template-watch"},)),
            quiet=Case({overflow: "0x30"}, "10m"),
        ),
        Alert(
            "SmsstreamAlertStorm",
            f'sum by (job, {n.KIND}) (increase({n.ALERTS}{{{W}, status="firing"}}[15m])) > {ALERT_STORM_RECORDS}',
            "warning",
            "a storm of {{ $labels.kind }} alerts",
            f"More than {ALERT_STORM_RECORDS} firing records of this kind in 15 minutes. Either a wide attack "
            "(many senders, templates or numbers at once) or a broken input that makes normal traffic look "
            "abnormal; security on-call is being flooded either way.",
            fires=Case({storm: "0+20x30"}, "20m", ({**job, "kind": "non_borrower_spike"},)),
            quiet=Case({storm: "0+5x30"}, "20m"),
            for_="5m",
        ),
        Alert(
            "SmsstreamHeartbeatFailing",
            f"sum by (job, instance) (increase({n.HEARTBEAT_FAILURES}{{{W}}}[5m])) > {HEARTBEAT_FAILURES_5M}",
            "warning",
            "smsstream worker {{ $labels.instance }} keeps failing its heartbeats",
            "More than one heartbeat round in ten has failed for 10 minutes. Heartbeats move every part's "
            "event-time clock on; while they fail, buckets close late and alerts stall.",
            fires=Case({beats: "0+20x30"}, "20m", ({**job, "instance": "w0"},)),
            quiet=Case({beats: "0+3x30"}, "20m"),
            for_="10m",
        ),
    )


ALERTS = _availability_alerts() + _processing_alerts()


def rule_groups() -> dict:
    """The rule file: ``{"groups": [...]}``."""
    return {"groups": [
        {"name": "smsstream.records", "rules": [{"record": r.record, "expr": r.expr} for r in RECORDINGS]},
        {"name": "smsstream.alerts", "rules": [
            {"alert": a.name, "expr": a.expr, **({"for": a.for_} if a.for_ != "0m" else {}),
             "labels": {"severity": a.severity}, "annotations": a.annotations()}
            for a in ALERTS
        ]},
    ]}


def _render(template: str, labels: dict[str, str]) -> str:
    return re.sub(r"\{\{ \$labels\.(\w+) \}\}", lambda m: labels.get(m.group(1), ""), template)


def _series(case: Case) -> list[dict]:
    return [{"series": s, "values": v} for s, v in case.series.items()]


def rule_tests(rule_file: str) -> dict:
    """The ``promtool test rules`` file: per alert a firing and a quiet case, per recording rule its value."""
    tests = []
    for a in ALERTS:
        for what, case in (("fires", a.fires), ("stays quiet", a.quiet)):
            expected = [
                {"exp_labels": {**labels, "severity": a.severity},
                 "exp_annotations": {k: _render(v, labels) for k, v in a.annotations().items()}}
                for labels in case.alerts
            ]
            tests.append({"name": f"{a.name} {what}", "interval": "1m", "input_series": _series(case),
                          "alert_rule_test": [{"eval_time": case.at, "alertname": a.name, "exp_alerts": expected}]})
    for r in RECORDINGS:
        tests.append({"name": f"{r.record} records", "interval": "1m", "input_series": _series(r.test),
                      "promql_expr_test": [{"expr": r.record, "eval_time": r.test.at, "exp_samples": [
                          {"labels": _labels_text(r.record, labels), "value": value}
                          for labels, value in r.expected]}]})
    return {"rule_files": [rule_file], "evaluation_interval": "1m", "tests": tests}


def _labels_text(metric: str, labels: dict[str, str]) -> str:
    return metric + "{" + ", ".join(f'{k}="{v}"' for k, v in sorted(labels.items())) + "}"
