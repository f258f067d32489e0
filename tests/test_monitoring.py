"""Dashboards, rules and runbooks: checked in as the code builds them, complete, and passing promtool."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from smsstream.monitoring import RULES_FILE, RULES_TEST_FILE, build_files, names
from smsstream.monitoring.dashboards import DETECTION_UID, WORKER_HEALTH_UID, all_dashboards
from smsstream.monitoring.rules import ALERTS
from smsstream.vocabulary import REASONS

REPO = Path(__file__).resolve().parents[1]
DEPLOY = REPO / "deploy"
RUNBOOKS = REPO / "docs" / "runbooks"

#: runbooks written ahead of the reason (a number list worked by several lenders)
NOT_YET_RAISED: set[str] = set()


def dashboards() -> list[dict]:
    return [json.loads((DEPLOY / "grafana" / f"{spec.uid}.json").read_text()) for spec in all_dashboards()]


def panels(dashboard: dict) -> list[dict]:
    return [p for p in dashboard["panels"] if p["type"] != "row"]


def test_checked_in_dashboards_and_rules_are_what_the_code_builds():
    stale = [path for path, text in build_files().items()
             if not (DEPLOY / path).exists() or (DEPLOY / path).read_text(encoding="utf-8") != text]
    assert not stale, f"out of date under deploy/: {stale}; run `python -m smsstream.monitoring`"


def test_the_check_command_names_a_file_edited_by_hand(tmp_path):
    deploy = tmp_path / "deploy"
    shutil.copytree(DEPLOY / "grafana", deploy / "grafana")
    shutil.copytree(DEPLOY / "prometheus", deploy / "prometheus")
    from smsstream.monitoring.__main__ import main

    assert main(["--deploy", str(deploy), "--check"]) == 0
    edited = deploy / "grafana" / f"{DETECTION_UID}.json"
    edited.write_text(edited.read_text().replace("Sends by category", "Sends by kind"))
    assert main(["--deploy", str(deploy), "--check"]) == 1
    assert main(["--deploy", str(deploy)]) == 0  # rewritten
    assert main(["--deploy", str(deploy), "--check"]) == 0


def test_the_two_dashboards_keep_their_uids_and_titles():
    got = {d["uid"]: d["title"] for d in dashboards()}
    assert got == {DETECTION_UID: "smsstream — detection", WORKER_HEALTH_UID: "smsstream — worker health"}
    assert all(d["schemaVersion"] >= 39 for d in dashboards())  # Grafana 11 or newer


def test_every_panel_has_a_unit_a_description_and_queries_through_the_datasource_variable():
    for dashboard in dashboards():
        assert [v["name"] for v in dashboard["templating"]["list"]][0] == "datasource"
        ids = [p["id"] for p in dashboard["panels"]]
        assert len(ids) == len(set(ids))
        for panel in panels(dashboard):
            where = f"{dashboard['uid']}: {panel['title']}"
            assert panel["fieldConfig"]["defaults"].get("unit"), where
            assert len(panel.get("description", "")) > 80, where
            assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, where
            ref_ids = [t["refId"] for t in panel["targets"]]
            assert ref_ids and all(ref_ids) and len(set(ref_ids)) == len(ref_ids), where
            assert all(t["datasource"]["uid"] == "${datasource}" for t in panel["targets"]), where


def test_per_sender_and_per_carrier_panels_are_bounded_and_no_query_has_a_label_per_number():
    for dashboard in dashboards():
        for panel in panels(dashboard):
            for target in panel["targets"]:
                expr = target["expr"]
                if names.SENDER in expr or names.CARRIER in expr:
                    assert f"topk({names.TOP_K}," in expr, panel["title"]
                assert not re.search(r"\bnumber\b", expr), panel["title"]


def test_the_detection_dashboard_covers_the_issue_list():
    titles = " | ".join(p["title"].lower() for p in panels(dashboards()[0]))
    for words in ("by topic", "category", "kind and severity", "timeline", "non-borrower share", "template drift",
                  "rebinds", "by carrier"):
        assert words in titles


def test_the_worker_health_dashboard_covers_the_issue_list():
    titles = " | ".join(p["title"].lower() for p in panels(dashboards()[1]))
    for words in ("records in", "records out", "consumer lag", "event-time lag", "dead letters", "merge buffers",
                  "checkpoint time", "checkpoint failures", "rebalances", "restarts", "cpu", "memory"):
        assert words in titles


def test_every_alert_rule_links_a_runbook_that_exists():
    rules = (DEPLOY / "prometheus" / RULES_FILE).read_text()
    for alert in ALERTS:
        assert f"alert: {alert.name}" in rules
        assert (REPO / alert.runbook).is_file(), alert.runbook
        assert f"runbook_url: {alert.runbook}" in rules


def test_every_kind_and_reason_has_a_runbook_with_the_four_sections():
    pages = {(p.parent.name, p.stem) for p in RUNBOOKS.glob("*/*.md") if p.parent.name != "worker"}
    raised = {(kind, reason) for kind, reasons in REASONS.items() for reason in reasons}
    assert raised <= pages, f"reasons without a runbook: {sorted(raised - pages)}"
    assert {reason for _, reason in pages - raised} <= NOT_YET_RAISED, f"runbooks of no reason: {pages - raised}"
    for kind, reason in sorted(pages):
        page = (RUNBOOKS / kind / f"{reason}.md").read_text()
        for section in ("## What it means", "## A real incident", "## A false alarm", "## First checks",
                        "## What to do"):
            assert section in page, f"{kind}/{reason}.md lacks {section!r}"


def test_every_worker_runbook_belongs_to_a_rule():
    pages = {p.stem for p in (RUNBOOKS / "worker").glob("*.md")}
    assert pages == {a.name for a in ALERTS}


def _promtool(*args: str) -> subprocess.CompletedProcess:
    if shutil.which("promtool") is None:
        if os.environ.get("CI"):
            pytest.fail("promtool is missing; .ci/run installs Debian's prometheus package")
        pytest.skip("promtool is missing (apt-get install prometheus)")
    return subprocess.run(["promtool", *args], cwd=DEPLOY / "prometheus", capture_output=True, text=True,
                          timeout=120)


def test_promtool_accepts_the_rules():
    result = _promtool("check", "rules", RULES_FILE)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"{len(ALERTS) + 4} rules found" in result.stdout


def test_each_alert_fires_on_its_traffic_and_stays_quiet_on_its_twin():
    text = (DEPLOY / "prometheus" / RULES_TEST_FILE).read_text()
    for alert in ALERTS:
        assert f"name: {alert.name} fires" in text and f"name: {alert.name} stays quiet" in text
    result = _promtool("test", "rules", RULES_TEST_FILE)
    assert result.returncode == 0, result.stdout + result.stderr


def test_promtool_tests_fail_when_a_threshold_moves(tmp_path):
    """The rule tests can fail: the same tests against rules with a raised threshold do."""
    rules = (DEPLOY / "prometheus" / RULES_FILE).read_text()
    (tmp_path / RULES_FILE).write_text(rules.replace("> 100\n", "> 1000\n"))
    shutil.copy(DEPLOY / "prometheus" / RULES_TEST_FILE, tmp_path)
    if shutil.which("promtool") is None:
        pytest.skip("promtool is missing (apt-get install prometheus)")
    result = subprocess.run(["promtool", "test", "rules", RULES_TEST_FILE], cwd=tmp_path, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode != 0
    assert "SmsstreamAlertStorm fires" in result.stdout + result.stderr
