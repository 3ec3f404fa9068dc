"""The shipped Grafana dashboard and Prometheus alert rules: promtool accepts them, the alerts fire on the
series they watch, and every metric a panel or rule names is one the real server exports (scraped here)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import requests
import yaml
from prometheus_client.parser import text_string_to_metric_families

from tests.dashboard.fleet import Fleet

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "docs" / "grafana" / "edgefleet.json"
ALERTS = ROOT / "docs" / "prometheus" / "alerts.yml"
GRAFANA_VARIABLES = {"$__rate_interval": "5m", "$__interval": "1m", "$__range": "1h"}
KEYWORDS = {"and", "or", "unless", "bool", "offset", "by", "without", "on", "ignoring", "group_left",
            "group_right", "inf", "nan", "atan2"}


def promtool() -> str:
    path = shutil.which("promtool") or "/usr/bin/promtool"
    if not Path(path).exists():
        pytest.skip("promtool is not installed (.ci/run installs Debian's prometheus package)")
    return path


def panel_exprs() -> list[str]:
    def walk(panels: list[dict[str, Any]]) -> list[str]:
        found = []
        for panel in panels:
            found += [t["expr"] for t in panel.get("targets", []) if t.get("expr")]
            found += walk(panel.get("panels", []))
        return found

    exprs = walk(json.loads(DASHBOARD.read_text())["panels"])
    for name, value in GRAFANA_VARIABLES.items():
        exprs = [e.replace(name, value) for e in exprs]
    return exprs


def rule_exprs() -> list[str]:
    return [rule["expr"] for group in yaml.safe_load(ALERTS.read_text())["groups"] for rule in group["rules"]]


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects (not its functions, labels, keywords or durations)."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'', '""', expr)  # string literals
    text = re.sub(r"\{[^}]*\}", "", text)  # label matchers
    text = re.sub(r"\[[^\]]*\]", "", text)  # range and subquery durations
    text = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", text)
    names = set()
    for match in re.finditer(r"(?<![\w.])([a-zA-Z_:][a-zA-Z0-9_:]*)\b(\s*\()?", text):
        word, call = match.group(1), match.group(2)
        if not call and word.lower() not in KEYWORDS:
            names.add(word)
    return names


def test_metric_names_reads_promql() -> None:
    expr = ('histogram_quantile(0.99, sum by (job, le) (rate(edgefleet_checkin_duration_seconds_bucket{code!="x"}'
            '[5m]))) > 1 and on (job) max without (instance) (edgefleet_devices{state="online"}) offset 5m')
    assert metric_names(expr) == {"edgefleet_checkin_duration_seconds_bucket", "edgefleet_devices"}


def exported(fleet: Fleet) -> set[str]:
    device = fleet.rollout_device("assigned")
    requests.get(f"{fleet.server.url}/v1/devices/{device}/manifest", timeout=5,
                 headers={"Authorization": f"Bearer {fleet.tokens[device]}"}).raise_for_status()  # a check-in
    response = requests.get(fleet.server.url + "/metrics", headers={"Authorization": "Bearer scrape-me"}, timeout=10)
    response.raise_for_status()
    names = set()
    for family in text_string_to_metric_families(response.text):
        names |= {sample.name for sample in family.samples}
        suffixes = {"counter": ["_total"], "histogram": ["_bucket", "_sum", "_count"]}.get(family.type, [""])
        names |= {family.name + suffix for suffix in suffixes}  # declared families with no sample yet
    return names


def test_every_metric_a_panel_or_rule_names_is_exported(fleet: Fleet) -> None:
    served = exported(fleet)
    used = {name for expr in panel_exprs() + rule_exprs() for name in metric_names(expr)}
    assert len(used) >= 15  # the extraction found the queries' metrics, not nothing
    assert used <= served, sorted(used - served)
    watched = {"edgefleet_devices", "edgefleet_devices_by_model_version", "edgefleet_rollout_state",
               "edgefleet_rollout_devices", "edgefleet_checkin_duration_seconds_bucket",
               "edgefleet_ingest_invalid_total", "edgefleet_report_queue_depth",
               "edgefleet_fleet_inference_latency_seconds_bucket"}
    assert watched <= {name for expr in panel_exprs() for name in metric_names(expr)}


def test_alert_rules_pass_promtool() -> None:
    done = subprocess.run([promtool(), "check", "rules", str(ALERTS)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"SUCCESS: {len(rule_exprs())} rules found" in done.stdout


def test_every_panel_query_parses(tmp_path: Path) -> None:
    """promtool parses each panel's query as a recording rule: a typo in the dashboard fails here."""
    rules = {"groups": [{"name": "dashboard", "rules": [
        {"record": f"edgefleet_dashboard:panel_{i}", "expr": expr} for i, expr in enumerate(panel_exprs())]}]}
    path = tmp_path / "dashboard-rules.yml"
    path.write_text(yaml.safe_dump(rules))
    done = subprocess.run([promtool(), "check", "rules", str(path)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr


def test_the_dashboard_has_the_promised_panels() -> None:
    titles = {p["title"] for p in json.loads(DASHBOARD.read_text())["panels"]}
    for title in ("Devices online", "Versions in the field", "Rollout progress (committed share)", "Check-in latency",
                  "Messages ingested", "Messages rejected", "Report queue", "Fleet inference p95 by version"):
        assert title in titles


ALERT_TESTS = Path(__file__).with_name("alerts_test.yml")


def test_alerts_fire_on_the_series_they_watch() -> None:
    done = subprocess.run([promtool(), "test", "rules", str(ALERT_TESTS)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    tested = set(re.findall(r"alertname: (\w+)", ALERT_TESTS.read_text()))
    assert {"EdgefleetRolloutPaused", "EdgefleetDevicesOffline", "EdgefleetIngestInvalid",
            "EdgefleetReportQueueDeep"} <= tested
