"""The shipped dashboards, rules and catalogue: generated, parseable, tested, consistent."""

import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from conveyor.telemetry import artifacts
from conveyor.telemetry.dashboards import DASHBOARDS

PROMTOOL = shutil.which("promtool")
RULES_DIR = artifacts.RULES.parent


def promtool(*args: str, cwd: Path = RULES_DIR) -> subprocess.CompletedProcess[str]:
    assert PROMTOOL, "promtool is installed by `make test` (Debian package prometheus)"
    return subprocess.run([PROMTOOL, *args], capture_output=True, text=True, cwd=cwd)


def exported_series() -> set[str]:
    return {name for m in artifacts.metric_catalogue() for name in m.series_names()}


def recorded_series() -> set[str]:
    groups = yaml.safe_load(artifacts.RULES.read_text())["groups"]
    return {r["record"] for g in groups for r in g["rules"] if "record" in r}


def metric_names(expr: str) -> set[str]:
    names = set(re.findall(r"\b(conveyor_[a-z_]+|[a-z_]+:conveyor_[a-z_:0-9]+)\b", expr))
    return names - set(artifacts.SCOPE_LABELS)  # conveyor_release is a label


def variables(expr: str, namespace: str = "jobs", release: str = "conveyor") -> str:
    """A dashboard query with Grafana's variables replaced as Grafana would."""
    for name, value in (("$__rate_interval", "5m"), ("$namespace", namespace),
                        ("$release", release), ("$queue", ".*"), ("$task", ".*")):  # fmt: skip
        expr = expr.replace(name, value)
    return expr


def test_generated_files_are_up_to_date() -> None:
    assert artifacts.main(["--check"]) == 0, "run: python -m conveyor.telemetry.artifacts"


def test_rules_pass_promtool_check() -> None:
    result = promtool("check", "rules", artifacts.RULES.name)
    assert result.returncode == 0, result.stdout + result.stderr


def test_rule_unit_tests_pass() -> None:
    result = promtool("test", "rules", artifacts.RULE_TESTS.name)
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_alert_has_a_firing_and_a_non_firing_case() -> None:
    firing, silent = set(), set()
    for case in artifacts.RULE_CASES:
        for check in case.cases:
            (firing if check.firing else silent).add(check.alert)
    alerts = set(artifacts.alert_rules())
    assert alerts - firing == set(), "alerts never shown to fire"
    assert alerts - silent == set(), "alerts never shown to stay quiet"
    assert (firing | silent) - alerts == set(), "cases for alerts that do not exist"


def test_every_alert_has_severity_summary_and_runbook() -> None:
    for name, rule in artifacts.alert_rules().items():
        assert rule["labels"]["severity"] in ("warning", "critical"), name
        assert rule["annotations"]["summary"], name
        assert len(rule["annotations"]["runbook"].split()) >= 25, f"{name}: write a runbook"


def test_rules_use_only_exported_or_recorded_metrics() -> None:
    known = exported_series() | recorded_series()
    for group in yaml.safe_load(artifacts.RULES.read_text())["groups"]:
        for rule in group["rules"]:
            unknown = metric_names(rule["expr"]) - known
            assert unknown == set(), (rule.get("alert") or rule.get("record"), unknown)


@pytest.mark.parametrize("dashboard", DASHBOARDS, ids=lambda d: d.uid)
def test_dashboard_queries_parse(dashboard: object, tmp_path: Path) -> None:
    queries = dashboard.queries()  # type: ignore[attr-defined]
    assert queries
    concrete = [variables(q) for q in queries]
    assert not [q for q in concrete if "$" in q]
    rules = {
        "groups": [
            {
                "name": "dashboard",
                "rules": [
                    {"record": f"dashboard:query_{i}", "expr": q} for i, q in enumerate(concrete)
                ],
            }
        ]
    }
    path = tmp_path / "queries.yml"
    path.write_text(yaml.safe_dump(rules))
    result = promtool("check", "rules", str(path), cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("dashboard", DASHBOARDS, ids=lambda d: d.uid)
def test_every_dashboard_selector_is_scoped_by_namespace_and_release(dashboard: object) -> None:
    model = dashboard.model()  # type: ignore[attr-defined]
    listed = [v["name"] for v in model["templating"]["list"]]
    assert listed[:3] == ["datasource", "namespace", "release"]
    for expr in dashboard.queries():  # type: ignore[attr-defined]
        found = re.findall(r"\b(conveyor_[a-z_]+)(\{[^}]*\})?", expr)
        assert found, expr
        for name, matchers in found:
            assert 'namespace="$namespace",conveyor_release="$release"' in matchers, (name, expr)
    # The chart appends "-" and an 8-character hash; Grafana allows 40 characters.
    assert len(model["uid"]) <= 40 - 9


def test_rule_aggregations_keep_the_scope_and_only_the_chart_copy_names_a_release() -> None:
    text = artifacts.RULES.read_text()
    assert "__CONVEYOR_" not in text
    assert "@" not in text
    exprs = [r["expr"] for g in yaml.safe_load(text)["groups"] for r in g["rules"]]
    for expr in exprs:
        assert not re.search(r"\b(sum|max|min|avg|count)\s*\(", expr), f"no by clause: {expr}"
        for clause in re.findall(r"\b(?:by|on)\s*\(([^)]*)\)", expr):
            labels = {label.strip() for label in clause.split(",")}
            assert "namespace" in labels, expr
            if "horizontalpodautoscaler" not in expr:  # kube-state-metrics: no release label
                assert "conveyor_release" in labels, expr
    copy = artifacts.CHART_RULES.read_text()
    assert copy.count(artifacts.SCOPE_PLACEHOLDER) > len(exprs)
    assert artifacts.HPA_PLACEHOLDER in copy


@pytest.mark.parametrize("dashboard", DASHBOARDS, ids=lambda d: d.uid)
def test_dashboards_use_only_exported_metrics(dashboard: object) -> None:
    names = set().union(*(metric_names(q) for q in dashboard.queries()))  # type: ignore[attr-defined]
    assert names, "a dashboard with no Conveyor metric"
    assert names - exported_series() == set()


def test_every_exported_metric_is_on_a_dashboard_or_in_a_rule() -> None:
    used = set().union(*(metric_names(q) for d in DASHBOARDS for q in d.queries()))
    groups = yaml.safe_load(artifacts.RULES.read_text())["groups"]
    used |= set().union(*(metric_names(r["expr"]) for g in groups for r in g["rules"]))
    shown = {m.name for m in artifacts.metric_catalogue()
             if any(series in used for series in m.series_names())}  # fmt: skip
    assert {m.name for m in artifacts.metric_catalogue()} - shown == set()


def test_catalogue_has_no_unbounded_labels() -> None:
    for metric in artifacts.metric_catalogue():
        assert not set(metric.labels) & {"pod", "hostname", "host", "pid", "job_id", "worker"}


def test_otel_collector_reference_receives_otlp_http_traces() -> None:
    config = yaml.safe_load((artifacts.ROOT / "otel-collector.yaml").read_text())
    assert config["receivers"]["otlp"]["protocols"]["http"]["endpoint"].endswith(":4318")
    pipeline = config["service"]["pipelines"]["traces"]
    assert pipeline["receivers"] == ["otlp"]
    assert set(pipeline["processors"]) <= set(config["processors"])
    assert set(pipeline["exporters"]) <= set(config["exporters"])
