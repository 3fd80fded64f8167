"""Dashboard, alert rules and docs: every metric they name exists, and their structure holds."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from sidecar.metrics import Metrics, UsageMetrics
from tests.deploy.common import ALERT_TESTS, ALERTS, BASE, DASHBOARD, OPERATIONS
from tests.deploy.crd_schemas import RULE_GROUPS

METRIC_NAME = re.compile(r"sidecar_[a-z_]+")
HISTOGRAM_SUFFIXES = ("_bucket", "_sum", "_count")
DURATION = re.compile(r"^([0-9]+(ms|s|m|h|d|w|y))+$")
PAIRS = {"(": ")", "[": "]", "{": "}"}


def defined_metrics() -> tuple[set[str], set[str]]:
    """(every series name the code can expose, the histogram base names) from Metrics() and
    UsageMetrics."""
    names: set[str] = set()
    histograms: set[str] = set()
    registry = Metrics().registry
    UsageMetrics(registry)
    for family in registry.collect():
        if not family.name.startswith("sidecar_"):
            continue  # process_* and python_*: the client library's standard collectors
        if family.type == "counter":
            names.add(family.name + "_total")
        elif family.type == "histogram":
            histograms.add(family.name)
            names.update(family.name + s for s in ("", *HISTOGRAM_SUFFIXES))
        else:
            names.add(family.name)
    return names, histograms


def named_metrics(text: str) -> set[str]:
    """Metric names in a text, with histogram suffixes stripped."""
    found = set()
    for name in METRIC_NAME.findall(text):
        for suffix in HISTOGRAM_SUFFIXES:
            if name.endswith(suffix):
                name = name[: -len(suffix)]
        found.add(name)
    return found


def _dashboard() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return data


def _rules() -> list[dict[str, Any]]:
    groups = yaml.safe_load(ALERTS.read_text())["groups"]
    return [rule for group in groups for rule in group["rules"]]


def _targets() -> list[tuple[dict[str, Any], dict[str, Any]]]:
    return [(panel, target) for panel in _dashboard()["panels"] for target in panel.get("targets", [])]


def _headings() -> set[str]:
    """GitHub-style anchors of the headings of docs/operations.md."""
    anchors = set()
    for line in OPERATIONS.read_text().splitlines():
        if line.startswith("#"):
            title = line.lstrip("#").strip().lower()
            anchors.add(re.sub(r"[^a-z0-9 _-]", "", title).replace(" ", "-"))
    return anchors


@pytest.mark.parametrize("path", [DASHBOARD, ALERTS, BASE / "prometheusrule.yaml", OPERATIONS],
                         ids=lambda p: p.name)
def test_every_metric_named_exists_in_the_code(path: Path) -> None:
    """Every sidecar_* name in the dashboard, the alert rules and the operations guide is a
    metric that sidecar.metrics.Metrics defines (histograms with their _bucket/_sum/_count)."""
    names, histograms = defined_metrics()
    valid = names | histograms
    named = named_metrics(path.read_text())
    assert named, f"{path.name} names no metric"
    assert sorted(named - valid) == []


def test_every_metric_is_documented_and_on_the_dashboard() -> None:
    """Each metric the code defines has a row in the operations guide and a dashboard panel,
    so a new metric cannot ship unexplained."""
    names, _ = defined_metrics()
    exposed = {n for n in names if not n.endswith(HISTOGRAM_SUFFIXES)}
    documented = named_metrics(OPERATIONS.read_text())
    on_dashboard = named_metrics(" ".join(t["expr"] for _, t in _targets()))
    assert sorted(exposed - documented) == []
    assert sorted(exposed - on_dashboard) == []


def test_metric_extraction_catches_an_unknown_name() -> None:
    """The name check is not vacuous: a misspelt metric is reported, suffixes are stripped."""
    names, histograms = defined_metrics()
    named = named_metrics("rate(sidecar_overhead_seconds_bucket[5m]) + sidecar_requests_totl")
    assert named - (names | histograms) == {"sidecar_requests_totl"}


def _balanced(expr: str) -> bool:
    stack: list[str] = []
    quoted = False
    for i, ch in enumerate(expr):
        if ch == '"' and (i == 0 or expr[i - 1] != "\\"):
            quoted = not quoted
        elif quoted:
            continue
        elif ch in PAIRS:
            stack.append(PAIRS[ch])
        elif ch in PAIRS.values():
            if not stack or stack.pop() != ch:
                return False
    return not stack and not quoted


def test_alert_rules_are_complete() -> None:
    """Each alert has a balanced expression, a `for`, a severity and summary, description,
    runbook text and a runbook_url whose anchor is a section of docs/operations.md."""
    jsonschema.validate(yaml.safe_load(ALERTS.read_text())["groups"], RULE_GROUPS)
    rules = _rules()
    names = [r["alert"] for r in rules]
    assert len(names) == len(set(names)) >= 5
    anchors = _headings()
    for rule in rules:
        assert rule["expr"].strip() and _balanced(rule["expr"]), rule["alert"]
        assert DURATION.match(rule["for"]), rule["alert"]
        assert rule["labels"]["severity"] in {"critical", "warning", "info"}
        notes = rule["annotations"]
        for key in ("summary", "description", "runbook"):
            assert len(notes[key]) > 20, (rule["alert"], key)
        path, _, anchor = notes["runbook_url"].partition("#")
        assert path == "docs/operations.md" and anchor == rule["alert"].lower() and anchor in anchors


def test_required_alerts_exist() -> None:
    """The alerts issue 9 asks for are all there: blocked spikes, store down, degraded mode,
    upstream error rate and overhead p99."""
    required = {"SidecarBlockedRequestsSpike": "sidecar_blocked_requests_total",
                "SidecarStoreDown": "sidecar_store_up", "SidecarDegradedMode": "sidecar_degraded",
                "SidecarUpstreamErrorRate": "upstream_error",
                "SidecarOverheadP99High": "sidecar_overhead_seconds_bucket"}
    exprs = {r["alert"]: r["expr"] for r in _rules()}
    for alert, needle in required.items():
        assert needle in exprs[alert]


def test_prometheusrule_holds_the_same_rules_as_the_rule_file() -> None:
    """The PrometheusRule in the base and deploy/prometheus/sidecar-alerts.yaml never drift."""
    crd = yaml.safe_load((BASE / "prometheusrule.yaml").read_text())
    assert crd["spec"]["groups"] == yaml.safe_load(ALERTS.read_text())["groups"]


def _promtool() -> str:
    path = shutil.which("promtool")
    assert path, "promtool is needed (apt-get install prometheus) to parse the PromQL for real"
    return path


def test_promtool_accepts_the_rules_and_their_unit_tests_pass() -> None:
    """promtool parses every alert expression and the alert unit tests (fire / do not fire,
    labels and annotations) pass."""
    check = subprocess.run([_promtool(), "check", "rules", str(ALERTS)], capture_output=True,
                           text=True, check=False)
    assert check.returncode == 0, check.stdout + check.stderr
    test = subprocess.run([_promtool(), "test", "rules", ALERT_TESTS.name], cwd=ALERT_TESTS.parent,
                          capture_output=True, text=True, check=False)
    assert test.returncode == 0, test.stdout + test.stderr


def test_promtool_parses_every_dashboard_query(tmp_path: Path) -> None:
    """Every dashboard query is valid PromQL once Grafana's variables are substituted."""
    rules = []
    for panel, target in _targets():
        expr = (target["expr"].replace("$__rate_interval", "5m").replace("$namespace", ".*")
                .replace("$pod", ".*"))
        rules.append({"record": f"dashboard:panel{panel['id']}:{target['refId']}", "expr": expr})
    path = tmp_path / "dashboard-rules.yaml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    check = subprocess.run([_promtool(), "check", "rules", str(path)], capture_output=True,
                           text=True, check=False)
    assert check.returncode == 0, check.stdout + check.stderr


def test_dashboard_variables_and_datasource() -> None:
    """The dashboard has a Prometheus data-source variable and namespace and pod variables, and
    every query uses that data source and filters by namespace and pod."""
    variables = {v["name"]: v for v in _dashboard()["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    for name in ("namespace", "pod"):
        assert variables[name]["type"] == "query"
        assert variables[name]["datasource"]["uid"] == "${datasource}"
    assert "$namespace" in variables["pod"]["definition"]
    targets = _targets()
    assert len(targets) >= 15
    for panel, target in targets:
        assert panel["datasource"]["uid"] == target["datasource"]["uid"] == "${datasource}"
        assert 'namespace=~"$namespace"' in target["expr"] and 'pod=~"$pod"' in target["expr"], \
            panel["title"]


def _boxes() -> list[tuple[int, int, int, int, str]]:
    return [(p["gridPos"]["x"], p["gridPos"]["y"], p["gridPos"]["w"], p["gridPos"]["h"], p["title"])
            for p in _dashboard()["panels"]]


def test_dashboard_layout_is_sound() -> None:
    """Panel ids are unique and panels fit the 24-column grid without overlapping."""
    panels = _dashboard()["panels"]
    assert len({p["id"] for p in panels}) == len(panels)
    cells: dict[tuple[int, int], str] = {}
    for x, y, w, h, title in _boxes():
        assert 0 <= x and x + w <= 24 and w > 0 and h > 0, title
        for cx in range(x, x + w):
            for cy in range(y, y + h):
                assert (cx, cy) not in cells, f"{title} overlaps {cells[(cx, cy)]}"
                cells[(cx, cy)] = title


def test_dashboard_shows_what_operators_need_first() -> None:
    """Blocked requests by reason is the top panel; overhead p50/p99 sits beside upstream
    latency; tokens, rate-limit refusals, redactions by kind, store health and degraded mode
    each have a panel."""
    panels = [p for p in _dashboard()["panels"] if p["type"] != "row"]
    top = min(panels, key=lambda p: (p["gridPos"]["y"], p["gridPos"]["x"]))
    assert top["title"] == "Blocked requests by reason"
    assert "sum by (reason)" in top["targets"][0]["expr"]
    assert "sidecar_blocked_requests_total" in top["targets"][0]["expr"]
    by_title = {p["title"]: p for p in panels}
    overhead, upstream = by_title["Sidecar overhead p50 / p99"], by_title["Upstream latency p50 / p99"]
    assert overhead["gridPos"]["y"] == upstream["gridPos"]["y"]
    assert [t["expr"][:21] for t in overhead["targets"]] == ["histogram_quantile(0."] * 2
    assert "0.5," in overhead["targets"][0]["expr"] and "0.99," in overhead["targets"][1]["expr"]
    wanted = {"Tokens": "sidecar_tokens_total", "Rate-limit refusals": "rate_limit_exceeded",
              "Redactions by kind": "sidecar_redactions_total", "Store health": "sidecar_store_up",
              "Degraded (fail-open) mode": "sidecar_degraded"}
    for title, needle in wanted.items():
        assert any(needle in t["expr"] for t in by_title[title]["targets"]), title
