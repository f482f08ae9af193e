"""The shipped dashboards, rules and catalogue: generated, parseable, tested, consistent."""

import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

import conveyor
from conveyor.telemetry.metrics import QUEUE_WAIT_BUCKETS, RUNTIME_BUCKETS
from tools.observability import artifacts, catalogue, rule_cases, rules
from tools.observability.dashboards import DASHBOARDS
from tools.observability.promql import selectors

PROMTOOL = shutil.which("promtool")
RULES_DIR = artifacts.RULES.parent


def promtool(*args: str, cwd: Path = RULES_DIR) -> subprocess.CompletedProcess[str]:
    assert PROMTOOL, "promtool is installed by `make test` (Debian package prometheus)"
    return subprocess.run([PROMTOOL, *args], capture_output=True, text=True, cwd=cwd)


def exported_series() -> set[str]:
    return {name for m in catalogue.metric_catalogue() for name in m.series_names()}


def recorded_series() -> set[str]:
    groups = yaml.safe_load(artifacts.RULES.read_text())["groups"]
    return {r["record"] for g in groups for r in g["rules"] if "record" in r}


def metric_names(expr: str) -> set[str]:
    names = set(re.findall(r"\b(conveyor_[a-z_]+|[a-z_]+:conveyor_[a-z_:0-9]+)\b", expr))
    return names - set(rules.SCOPE_LABELS)  # conveyor_release is a label


def variables(expr: str, namespace: str = "jobs", release: str = "conveyor") -> str:
    """A dashboard query with Grafana's variables replaced as Grafana would."""
    for name, value in (("$__rate_interval", "5m"), ("$namespace", namespace),
                        ("$release", release), ("$queue", ".*"), ("$task", ".*")):  # fmt: skip
        expr = expr.replace(name, value)
    return expr


def test_generated_files_are_up_to_date() -> None:
    assert artifacts.main(["--check"]) == 0, "run: python -m tools.observability.artifacts"


def test_rules_pass_promtool_check() -> None:
    result = promtool("check", "rules", artifacts.RULES.name)
    assert result.returncode == 0, result.stdout + result.stderr


def test_rule_unit_tests_pass() -> None:
    result = promtool("test", "rules", artifacts.RULE_TESTS.name)
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_alert_has_a_firing_and_a_non_firing_case() -> None:
    firing, silent = set(), set()
    for case in rule_cases.RULE_CASES:
        for check in case.cases:
            (firing if check.firing else silent).add(check.alert)
    alerts = set(rules.alert_rules())
    assert alerts - firing == set(), "alerts never shown to fire"
    assert alerts - silent == set(), "alerts never shown to stay quiet"
    assert (firing | silent) - alerts == set(), "cases for alerts that do not exist"


def test_every_alert_has_severity_summary_and_runbook() -> None:
    for name, rule in rules.alert_rules().items():
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
        found = selectors(expr)
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
    assert copy.count(rules.SCOPE_PLACEHOLDER) > len(exprs)
    assert rules.HPA_PLACEHOLDER in copy


@pytest.mark.parametrize("dashboard", DASHBOARDS, ids=lambda d: d.uid)
def test_dashboards_use_only_exported_metrics(dashboard: object) -> None:
    names = set().union(*(metric_names(q) for q in dashboard.queries()))  # type: ignore[attr-defined]
    assert names, "a dashboard with no Conveyor metric"
    assert names - exported_series() == set()


def test_every_exported_metric_is_on_a_dashboard_or_in_a_rule() -> None:
    used = set().union(*(metric_names(q) for d in DASHBOARDS for q in d.queries()))
    groups = yaml.safe_load(artifacts.RULES.read_text())["groups"]
    used |= set().union(*(metric_names(r["expr"]) for g in groups for r in g["rules"]))
    shown = {m.name for m in catalogue.metric_catalogue()
             if any(series in used for series in m.series_names())}  # fmt: skip
    assert {m.name for m in catalogue.metric_catalogue()} - shown == set()


def test_catalogue_has_no_unbounded_labels() -> None:
    for metric in catalogue.metric_catalogue():
        assert not set(metric.labels) & {"pod", "hostname", "host", "pid", "job_id", "worker"}


def test_otel_collector_reference_receives_otlp_http_traces() -> None:
    config = yaml.safe_load((artifacts.ROOT / "otel-collector.yaml").read_text())
    assert config["receivers"]["otlp"]["protocols"]["http"]["endpoint"].endswith(":4318")
    pipeline = config["service"]["pipelines"]["traces"]
    assert pipeline["receivers"] == ["otlp"]
    assert set(pipeline["processors"]) <= set(config["processors"])
    assert set(pipeline["exporters"]) <= set(config["exporters"])


def test_scaled_rules_divide_every_duration_and_keep_every_expression(tmp_path: Path) -> None:
    scaled_text = rules.scaled_rules_text(30)
    shipped, scaled = (yaml.safe_load(t)["groups"] for t in (rules.rules_text(), scaled_text))
    seconds = {"0m": 0, "30s": 30, "1m": 60, "2m": 120, "5m": 300, "10m": 600, "15m": 900,
               "1h": 3600}  # fmt: skip
    windows = re.compile(r"\[(\w+)\]")
    assert [g["interval"] for g in scaled if "interval" in g] == ["1000ms"]
    changed = 0
    for group, scaled_group in zip(shipped, scaled, strict=True):
        for rule, scaled_rule in zip(group["rules"], scaled_group["rules"], strict=True):
            if "for" in rule:
                expected = seconds[rule["for"]] * 1000 // 30
                assert scaled_rule["for"] == (f"{max(1000, expected)}ms" if expected else "0s")
            found = windows.findall(rule["expr"])
            assert windows.findall(scaled_rule["expr"]) == [
                f"{seconds[w] * 1000 // 30}ms" for w in found
            ]
            assert windows.sub("[]", rule["expr"]) == windows.sub("[]", scaled_rule["expr"])
            changed += len(found)
    assert changed >= 10
    (tmp_path / "scaled.yml").write_text(scaled_text)
    result = promtool("check", "rules", "scaled.yml", cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr


def test_queue_wait_buckets_surround_each_objective_and_run_time_starts_below_a_ms() -> None:
    (rule,) = [r for n, r in rules.alert_rules().items() if n == "ConveyorQueueWaitHigh"]
    objectives = [float(t) for t in re.findall(r"\} > (\d+)\)", rule["expr"])]
    assert objectives == [10, 120, 1800]
    buckets = QUEUE_WAIT_BUCKETS
    for objective in objectives:
        at = buckets.index(objective)  # a boundary: "above the objective" is exact
        below, above = buckets[at - 1], buckets[at + 1]
        # A p95 just past the objective interpolates within 50% of it, not a whole decade.
        assert objective / below <= 1.5, (objective, below)
        assert above / objective <= 1.5, (objective, above)
    assert RUNTIME_BUCKETS[0] <= 0.0005
    assert len([b for b in RUNTIME_BUCKETS if b < 0.005]) >= 3


def test_queue_wait_high_waits_as_long_as_its_percentile_window() -> None:
    (rule,) = [r for n, r in rules.alert_rules().items() if n == "ConveyorQueueWaitHigh"]
    (window,) = set(re.findall(r"p95_(\w+)\{", rule["expr"]))
    assert rule["for"] == window
    groups = yaml.safe_load(rules.rules_text())["groups"]
    (recording,) = [
        r
        for g in groups
        for r in g["rules"]
        if r.get("record") == f"queue:conveyor_job_queue_wait_seconds:p95_{window}"
    ]
    assert f"[{window}]" in recording["expr"]


def test_catalogue_documents_every_series_a_service_exposes() -> None:
    readme = artifacts.README.read_text()
    assert "`conveyor_beat_runs_created`" in readme
    for metric in catalogue.metric_catalogue():
        assert f"`{metric.name}`" in readme
    assert [m.created for m in catalogue.metric_catalogue() if m.created] == [
        "conveyor_beat_runs_created",
        "conveyor_beat_schedule_ticks_created",
    ]


def test_tools_are_not_part_of_the_shipped_package() -> None:
    package = Path(conveyor.__file__).parent
    assert not list(package.rglob("artifacts.py"))
    assert not list(package.rglob("dashboards.py"))
    for path in package.rglob("*.py"):
        assert "parents[3]" not in path.read_text(), path
