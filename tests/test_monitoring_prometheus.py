"""The dashboards and rules against a real Prometheus scraping a real worker fed simulated traffic.

No Grafana server exists here, so each dashboard is checked the way Grafana
would use it: every query of every panel, with the dashboard's variables
filled in, runs as a range query and must return data from the worker.

These tests use the session's broker but are not marked ``broker``: what they
check (metric names, queries, rules) does not depend on which broker it is, so
CI runs them once, on Tansu, not again on Apache Kafka.
"""

from __future__ import annotations

import json
import math
import re
import time
from pathlib import Path

import pytest

from prometheus_server import PrometheusServer
from smsstream.broker import free_port
from smsstream.monitoring import RULES_FILE, names
from smsstream.worker.process import WorkerProcess
from worker_scenario import MALFORMED, log_digest, prepared, worker_env

DEPLOY = Path(__file__).resolve().parents[1] / "deploy"

#: Panel queries (dashboard uid, panel title, refId) on metrics the worker does not export yet, as strict
#: xfails naming what they wait for. Empty: every panel has its data.
EXPECTED_MISSING: dict[tuple[str, str, str], str] = {}

#: How Grafana would fill the variables for a 2-minute view scraped every second.
VARIABLES = {"$__rate_interval": "1m", "$__interval": "15s", "$job": names.WORKER_JOB, "$instance": ".*"}


def dashboard_queries() -> list[tuple[str, str, str, str]]:
    """(dashboard uid, panel title, refId, expr) for every query of every panel of every dashboard."""
    out = []
    for path in sorted((DEPLOY / "grafana").glob("*.json")):
        dashboard = json.loads(path.read_text())
        for panel in dashboard["panels"]:
            for target in panel.get("targets", []):
                out.append((dashboard["uid"], panel["title"], target["refId"], target["expr"]))
    return out


def filled(expr: str) -> str:
    for variable, value in sorted(VARIABLES.items(), key=lambda kv: -len(kv[0])):
        expr = expr.replace(variable, value)
    assert "$" not in expr, f"a variable the test does not fill: {expr}"
    return expr


def has_data(result: list[dict]) -> bool:
    return any(not math.isnan(float(v)) for series in result for _, v in series["values"])


@pytest.fixture(scope="module")
def scraped(broker_url, bootstrap, tmp_path_factory):
    """A worker over the shared scenario, scraped by Prometheus with the project's rules loaded."""
    tmp = tmp_path_factory.mktemp("monitoring")
    scenario = prepared(broker_url, bootstrap, tmp)
    env = worker_env(broker_url, tmp)
    prometheus = PrometheusServer({names.WORKER_JOB: [f"127.0.0.1:{env['SMSSTREAM_METRICS_PORT']}"]},
                                  [DEPLOY / "prometheus" / RULES_FILE])
    # scraping from before the worker starts: it reads the scenario in seconds, and rates are data only then
    prometheus.start()
    started = time.time()
    worker = WorkerProcess(env, free_port(), tmp / "worker.log").start()
    try:
        worker.wait_ready()
        # every input record read (the malformed ones too), every shard idle, then a few more scrapes
        total = len(scenario["lines"]) + len(MALFORMED)
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline:
            health = worker.health() or {}
            read = prometheus.query(f"sum({names.EVENTS_IN})")
            if (read and float(read[0]["value"][1]) >= total and health.get("shards")
                    and health.get("idle_shards") == health.get("shards")):
                break
            time.sleep(2)
        time.sleep(5)
        # rates (and shares of them) are data only while the scenario is read: every query looks back to
        # the start of the scrape
        prometheus.query_since = lambda expr: prometheus.query_range(expr, seconds=int(time.time() - started) + 10)
        yield prometheus
    except BaseException:
        print(log_digest(worker), prometheus.log_tail(), sep="\n")
        raise
    finally:
        prometheus.stop()
        worker.stop()


@pytest.mark.parametrize("uid,title,ref_id,expr", [
    pytest.param(*q, id=f"{q[0]}/{q[1]}/{q[2]}",
                 marks=[pytest.mark.xfail(strict=True, reason=f"waits for {EXPECTED_MISSING[q[:3]]}")]
                 if q[:3] in EXPECTED_MISSING else [])
    for q in dashboard_queries()
])
def test_every_dashboard_query_returns_data_from_a_running_worker(scraped, uid, title, ref_id, expr):
    assert has_data(scraped.query_since(filled(expr))), f"{uid}: {title} ({ref_id}) returned no data:\n{filled(expr)}"


def test_the_expected_missing_list_names_only_existing_panel_queries():
    queries = {q[:3] for q in dashboard_queries()}
    assert set(EXPECTED_MISSING) <= queries


def test_the_job_and_worker_variables_list_the_scraped_worker(scraped):
    jobs = scraped.api("label/job/values", **{"match[]": names.EVENTS_IN})
    assert jobs == [names.WORKER_JOB]
    instances = scraped.api("label/instance/values", **{"match[]": f'{names.EVENTS_IN}{{job="{names.WORKER_JOB}"}}'})
    assert len(instances) == 1 and re.fullmatch(r"127\.0\.0\.1:\d+", instances[0])


def test_the_rules_load_and_evaluate_without_error_against_the_worker(scraped):
    deadline = time.monotonic() + 30
    while True:
        groups = scraped.api("rules")["groups"]
        rules = [r for g in groups for r in g["rules"]]
        if rules and all(r.get("lastEvaluation", "").startswith("2") and r["health"] != "unknown" for r in rules):
            break
        assert time.monotonic() < deadline, "the rules were not evaluated within 30 s"
        time.sleep(1)
    assert {g["name"] for g in groups} == {"smsstream.records", "smsstream.alerts"}
    assert [(r["name"], r.get("lastError")) for r in rules if r["health"] != "ok"] == []
    recorded = scraped.api("query", query="smsstream:events_in:rate10m")["result"]
    assert {s["metric"]["topic"] for s in recorded} >= {"sms.sends", "sms.delivery-receipts"}
    firing = [r["name"] for r in rules if r.get("type") == "alerting" and r["state"] == "firing"]
    assert firing == [], "a healthy worker fed ordinary traffic set off alerts"
