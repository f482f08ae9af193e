"""Two releases in one cluster: their series, alerts and dashboards must not mix.

The rules tested here are the ones the chart renders (PrometheusRule spec) for release `prod` in
namespace `prod` and release `staging` in namespace `staging`, loaded together into one
`promtool test rules` run, as one Prometheus would load both PrometheusRules; likewise the
queries of KEDA's prometheus trigger. Each case is also run against rules (or queries) that do
not scope by release, and must fail there.
"""

import copy
import json
import re
import shutil
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import helm_python
import pytest
import yaml

from tests.charts.render import CHART, of_kind, render_values, scenario_values
from tools.observability.promql import selectors
from tools.observability.rules import ALWAYS_ON_TIERS, SCOPE_PLACEHOLDER

PROMTOOL = shutil.which("promtool")
RELEASES = {"prod": "prod", "staging": "staging"}  # release -> namespace
PROD = {"namespace": "prod", "conveyor_release": "prod"}
STAGING = {"namespace": "staging", "conveyor_release": "staging"}
W, C = {"severity": "warning"}, {"severity": "critical"}


@cache
def render_release(release: str, scenario: str = "full") -> tuple[dict[str, Any], ...]:
    """A scenario (`full`: every monitoring object on) as release `release`."""
    chart = helm_python.Chart.load(str(CHART))
    out = chart.render(scenario_values(scenario), name=release, namespace=RELEASES[release])
    return tuple(doc for path, text in sorted(out.items()) if path.endswith(".yaml")
                 for doc in yaml.safe_load_all(text) if doc)  # fmt: skip


def rendered_rules(release: str) -> dict[str, Any]:
    (rule,) = of_kind(render_release(release), "PrometheusRule")
    spec: dict[str, Any] = rule["spec"]
    return spec


def dashboards(release: str) -> dict[str, dict[str, Any]]:
    """ConfigMap data key -> dashboard model."""
    found = {}
    for config in of_kind(render_release(release), "ConfigMap"):
        if config["metadata"]["labels"].get("grafana_dashboard") == "1":
            ((key, text),) = config["data"].items()
            found[key] = json.loads(text)
    return found


def promtool(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    assert PROMTOOL, "promtool is installed by `make test` (Debian package prometheus)"
    return subprocess.run([PROMTOOL, *args], capture_output=True, text=True, cwd=cwd)


# --- selectors -------------------------------------------------------------------------------


def test_selector_parser_sees_every_selector() -> None:
    expr = ('sum by (namespace, conveyor_release, queue) (rate(conveyor_x_total{a="b{c}"}[5m]))'
            ' / on (namespace) up and a:conveyor_y:ratio{q="1"} > 0')  # fmt: skip
    assert selectors(expr) == [("conveyor_x_total", '{a="b{c}"}'), ("up", ""),
                               ("a:conveyor_y:ratio", '{q="1"}')]  # fmt: skip


# --- monitors --------------------------------------------------------------------------------


@pytest.mark.parametrize("release", RELEASES)
def test_monitors_label_every_target_with_the_release(release: str) -> None:
    docs = render_release(release)
    (service_monitor,) = of_kind(docs, "ServiceMonitor")
    (pod_monitor,) = of_kind(docs, "PodMonitor")
    components = service_monitor["spec"]["selector"]["matchExpressions"][1]["values"]
    assert set(components) == {"api", "exporter"}
    endpoints = service_monitor["spec"]["endpoints"] + pod_monitor["spec"]["podMetricsEndpoints"]
    assert [e["port"] for e in endpoints] == ["metrics", "metrics"]
    for endpoint in endpoints:
        # Target relabeling (not metricRelabelings): `up` gets the label too.
        assert {"action": "replace", "targetLabel": "conveyor_release",
                "replacement": release} in endpoint["relabelings"]  # fmt: skip
    # Every selected Service and pod has the port the monitors scrape.
    services = {s["metadata"]["labels"]["app.kubernetes.io/component"]: s
                for s in of_kind(docs, "Service")}  # fmt: skip
    for component in components:
        assert "metrics" in [port["name"] for port in services[component]["spec"]["ports"]]
    pods = {d["spec"]["template"]["metadata"]["labels"]["app.kubernetes.io/component"]: d
            for d in of_kind(docs, "Deployment")}  # fmt: skip
    for component in pod_monitor["spec"]["selector"]["matchExpressions"][1]["values"]:
        ports = pods[component]["spec"]["template"]["spec"]["containers"][0]["ports"]
        assert "metrics" in [port["name"] for port in ports], component


# --- rules -----------------------------------------------------------------------------------


@pytest.mark.parametrize("release", RELEASES)
def test_every_rule_selector_names_its_release(release: str, tmp_path: Path) -> None:
    """Each release's PrometheusRule reads only its own series: no alert of one release fires
    on another's, absent() is per release, and two releases' recording rules never write the
    same series."""
    namespace = RELEASES[release]
    scope = f'namespace="{namespace}",conveyor_release="{release}"'
    hpas = f'namespace="{namespace}",horizontalpodautoscaler=~"(keda-hpa-)?{release}-conveyor-'
    spec = rendered_rules(release)
    checked = 0
    for group in spec["groups"]:
        for rule in group["rules"]:
            for name, matchers in selectors(rule["expr"]):
                expected = hpas if name.startswith("kube_") else scope
                assert expected in matchers, (rule.get("alert") or rule.get("record"), name)
                checked += 1
    source = (CHART / "files" / "conveyor-rules.yml").read_text().splitlines()
    placeholders = sum(line.count("__CONVEYOR_") for line in source if not line.startswith("#"))
    assert checked == placeholders > 0
    (tmp_path / "rules.yml").write_text(yaml.safe_dump(spec))
    result = promtool("check", "rules", "rules.yml", cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr


@dataclass(frozen=True)
class Case:
    """Input series of both releases (1-minute steps); at `at`, each alert fires exactly for
    the label sets given (none: it must not fire)."""

    name: str
    series: dict[str, str]
    at: str
    alerts: dict[str, tuple[dict[str, str], ...]]
    # True when the case relies on the chart naming the release in the selectors (absent(),
    # kube-state-metrics series), not only on aggregations keeping the scope labels.
    needs_matchers: bool = False


def _s(name: str, scope: dict[str, str], **labels: str) -> str:
    return name + "{" + ",".join(f'{k}="{v}"' for k, v in {**scope, **labels}.items()) + "}"


def _healthy(scope: dict[str, str], pod: str) -> dict[str, str]:
    """A release whose beat ticks, exporter and API report, and targets answer."""
    return {
        _s("conveyor_beat_leader", scope, pod=f"{pod}-beat"): "1x30",
        _s("conveyor_beat_last_tick_timestamp_seconds", scope, pod=f"{pod}-beat"): "0+60x30",
        _s("conveyor_exporter_up", scope): "1x30",
        _s("conveyor_http_requests_total", scope, route="/healthz", status="200"): "0+1x30",
        _s("up", scope, job=f"{pod}-exporter", instance=f"{pod}:9810"): "1x30",
    }


_HPA = "kube_horizontalpodautoscaler_"

CASES = (
    Case("one beat leader in each release", {**_healthy(PROD, "p"), **_healthy(STAGING, "s")},
         "10m", {"ConveyorBeatTwoLeaders": (), "ConveyorBeatNotTicking": (),
                 "ConveyorMetricsAbsent": (), "ConveyorScrapeTargetDown": ()}),
    Case("two beat leaders in staging, one in prod", {
        **_healthy(PROD, "p"), **_healthy(STAGING, "s"),
        _s("conveyor_beat_leader", STAGING, pod="s-beat-2"): "1x30",
    }, "10m", {"ConveyorBeatTwoLeaders": ({**STAGING, **C},)}),
    Case("a backlog without workers in staging; prod's has workers", {
        _s("conveyor_queue_length", PROD, queue="low"): "5x30",
        _s("conveyor_workers", PROD, queue="low"): "2x30",
        _s("conveyor_queue_length", STAGING, queue="low"): "5x30",
        _s("conveyor_workers", STAGING, queue="low"): "0x30",
    }, "15m", {"ConveyorBacklogWithoutConsumers": ({**STAGING, "queue": "low", **C},)}),
    Case("staging's exporter is gone and its beat too; prod reports everything", {
        **_healthy(PROD, "p"),
        _s("conveyor_http_requests_total", STAGING, route="/healthz", status="200"): "0+1x30",
    }, "15m", {"ConveyorMetricsAbsent": ({**STAGING, **W},),
               "ConveyorBeatNotTicking": ({**STAGING, **C},)}, needs_matchers=True),
    Case("prod's default tier saturated at max replicas; its high tier has room, although "
         "another HPA of the namespace named like a tier is at its maximum", {
        _s("conveyor_worker_active_jobs", PROD, queue="default"): "10x30",
        _s("conveyor_worker_concurrency", PROD, queue="default"): "10x30",
        _s(f"{_HPA}status_current_replicas", {"namespace": "prod"},
           horizontalpodautoscaler="keda-hpa-prod-conveyor-worker-default"): "5x30",
        _s(f"{_HPA}spec_max_replicas", {"namespace": "prod"},
           horizontalpodautoscaler="keda-hpa-prod-conveyor-worker-default"): "5x30",
        _s("conveyor_worker_active_jobs", PROD, queue="high"): "4x30",
        _s("conveyor_worker_concurrency", PROD, queue="high"): "4x30",
        _s(f"{_HPA}status_current_replicas", {"namespace": "prod"},
           horizontalpodautoscaler="keda-hpa-prod-conveyor-worker-high"): "2x30",
        _s(f"{_HPA}spec_max_replicas", {"namespace": "prod"},
           horizontalpodautoscaler="keda-hpa-prod-conveyor-worker-high"): "5x30",
        _s(f"{_HPA}status_current_replicas", {"namespace": "prod"},
           horizontalpodautoscaler="keda-hpa-batch-worker-high"): "3x30",
        _s(f"{_HPA}spec_max_replicas", {"namespace": "prod"},
           horizontalpodautoscaler="keda-hpa-batch-worker-high"): "3x30",
        # staging: idle, although its HPA is at its maximum
        _s("conveyor_worker_active_jobs", STAGING, queue="default"): "1x30",
        _s("conveyor_worker_concurrency", STAGING, queue="default"): "10x30",
        _s(f"{_HPA}status_current_replicas", {"namespace": "staging"},
           horizontalpodautoscaler="keda-hpa-staging-conveyor-worker-default"): "5x30",
        _s(f"{_HPA}spec_max_replicas", {"namespace": "staging"},
           horizontalpodautoscaler="keda-hpa-staging-conveyor-worker-default"): "5x30",
    }, "20m", {"ConveyorWorkersSaturatedAtMaxReplicas": ({**PROD, "queue": "default", **W},)},
        needs_matchers=True),
    Case("staging's default tier has no live worker; prod's has, and its low tier scaled to 0", {
        _s("conveyor_workers", PROD, queue="default"): "2x30",
        _s("conveyor_workers", PROD, queue="low"): "0x30",
        _s("conveyor_workers", STAGING, queue="default"): "0x30",
        _s("conveyor_workers", STAGING, queue="high"): "1x30",
    }, "10m", {"ConveyorTierWithoutWorkers": ({**STAGING, "queue": "default", **C},)}),
    Case("prod's default tier is saturated and its wait grows; staging's keeps up", {
        _s("conveyor_worker_active_jobs", PROD, queue="default"): "4x30",
        _s("conveyor_worker_concurrency", PROD, queue="default"): "4x30",
        _s("conveyor_queue_oldest_message_age_seconds", PROD, queue="default"): "0+60x30",
        _s("conveyor_worker_active_jobs", STAGING, queue="default"): "4x30",
        _s("conveyor_worker_concurrency", STAGING, queue="default"): "4x30",
        _s("conveyor_queue_oldest_message_age_seconds", STAGING, queue="default"): "5x30",
    }, "15m", {"ConveyorWorkersSaturated": ({**PROD, "queue": "default", **W},)}),
    Case("staging's API answers 503 to half its submissions; prod serves thousands", {
        _s("conveyor_http_requests_total", PROD, route="/v1/jobs", status="202"): "0+2000x30",
        _s("conveyor_api_submissions_total", PROD, outcome="accepted"): "0+2000x30",
        _s("conveyor_api_submissions_total", PROD, outcome="broker_error"): "0x30",
        _s("conveyor_http_requests_total", STAGING, route="/v1/jobs", status="503"): "0+10x30",
        _s("conveyor_http_requests_total", STAGING, route="/v1/jobs", status="202"): "0+10x30",
        _s("conveyor_api_submissions_total", STAGING, outcome="accepted"): "0+10x30",
        _s("conveyor_api_submissions_total", STAGING, outcome="broker_error"): "0+10x30",
    }, "10m", {"ConveyorApiErrorRatioHigh": ({**STAGING, **W},),
               "ConveyorSubmissionsFailing": ({**STAGING, **C},)}),
    Case("staging's keys file stopped loading; prod reloads its own fine", {
        _s("conveyor_api_keys_reloads_total", STAGING, outcome="failed"): "0x5 1+1x25",
        _s("conveyor_api_keys_reloads_total", PROD, outcome="failed"): "0x30",
        _s("conveyor_api_keys_reloads_total", PROD, outcome="loaded"): "0+1x30",
    }, "10m", {"ConveyorApiKeysReloadFailing": ({**STAGING, **W},)}),
    Case("accepting takes 300-500 ms in staging, 2 ms in prod", {
        **{_s("conveyor_api_accept_duration_seconds_bucket", PROD, le=le): v for le, v in
           (("0.005", "0+2000x30"), ("0.25", "0+2000x30"), ("0.5", "0+2000x30"),
            ("+Inf", "0+2000x30"))},
        _s("conveyor_api_accept_duration_seconds_count", PROD): "0+2000x30",
        **{_s("conveyor_api_accept_duration_seconds_bucket", STAGING, le=le): v for le, v in
           (("0.005", "0x30"), ("0.25", "0x30"), ("0.5", "0+100x30"), ("+Inf", "0+100x30"))},
        _s("conveyor_api_accept_duration_seconds_count", STAGING): "0+100x30",
    }, "10m", {"ConveyorAcceptLatencyHigh": ({**STAGING, **W},)}),
    Case("staging dead-letters jobs and keeps them; prod has none", {
        _s("conveyor_jobs_dead_lettered_total", PROD, queue="default", task="demo.fail"): "0x30",
        _s("conveyor_dead_letters", PROD): "0x30",
        _s("conveyor_jobs_dead_lettered_total", STAGING, queue="default", task="demo.fail"):
            "0 0 1 2x30",
        _s("conveyor_dead_letters", STAGING): "0 0 1 2x30",
    }, "10m", {"ConveyorDeadLettersGrowing":
                   ({**STAGING, "queue": "default", "task": "demo.fail", **W},),
               "ConveyorDeadLettersPresent": ({**STAGING, **W},)}),
    Case("staging's exporter cannot read Redis; prod's can", {
        _s("conveyor_exporter_up", PROD): "1x30", _s("conveyor_exporter_up", STAGING): "0x30",
    }, "10m", {"ConveyorRedisUnreachable": ({**STAGING, **C},)}),
    Case("staging's default jobs wait minutes and its low head is hours old; prod's do not", {
        **{_s("conveyor_job_queue_wait_seconds_bucket", PROD, queue="default", le=le): v
           for le, v in (("1", "0+1000x30"), ("300", "0+1000x30"), ("+Inf", "0+1000x30"))},
        **{_s("conveyor_job_queue_wait_seconds_bucket", STAGING, queue="default", le=le): v
           for le, v in (("1", "0x30"), ("300", "0+10x30"), ("+Inf", "0+10x30"))},
        _s("conveyor_queue_oldest_message_age_seconds", PROD, queue="low"): "10x30",
        _s("conveyor_queue_oldest_message_age_seconds", STAGING, queue="low"): "4000x30",
    }, "15m", {"ConveyorQueueWaitHigh": ({**STAGING, "queue": "default", **W},),
               "ConveyorOldestMessageTooOld": ({**STAGING, "queue": "low", **W},)}),
    Case("half of staging's demo.fail attempts fail; prod's busy demo.fail succeeds", {
        _s("conveyor_jobs_completed_total", PROD, queue="default", task="demo.fail",
           outcome="succeeded"): "0+1000x30",
        _s("conveyor_jobs_completed_total", PROD, queue="default", task="demo.fail",
           outcome="failed"): "0x30",
        _s("conveyor_jobs_completed_total", STAGING, queue="default", task="demo.fail",
           outcome="succeeded"): "0+10x30",
        _s("conveyor_jobs_completed_total", STAGING, queue="default", task="demo.fail",
           outcome="failed"): "0+10x30",
    }, "10m", {"ConveyorFailureRatioHigh":
                   ({**STAGING, "queue": "default", "task": "demo.fail", **W},)}),
    Case("a staging lease is near its visibility timeout; prod's are renewed", {
        _s("conveyor_unacked_oldest_age_seconds", PROD): "10x30",
        _s("conveyor_visibility_timeout_seconds", PROD): "60x30",
        _s("conveyor_unacked_oldest_age_seconds", STAGING): "55x30",
        _s("conveyor_visibility_timeout_seconds", STAGING): "60x30",
    }, "10m", {"ConveyorUnackedNearVisibilityTimeout": ({**STAGING, **W},)}),
    Case("prod's beat died at 5 minutes (its series went stale); staging's ticks", {
        _s("conveyor_beat_last_tick_timestamp_seconds", PROD): "0+60x5 stale",
        _s("conveyor_beat_last_tick_timestamp_seconds", STAGING): "0+60x30",
    }, "15m", {"ConveyorBeatNotTicking": ({**PROD, **C},)}),
)  # fmt: skip

_LABEL = re.compile(r"\{\{\s*\$labels\.(\w+)\s*\}\}")


def _expand(template: str, labels: dict[str, str]) -> str:
    """`{{ $labels.x }}` expanded as Prometheus does (the only templating the rules use)."""
    return _LABEL.sub(lambda match: labels[match.group(1)], template)


def promtool_test(case: Case, rule_files: dict[str, dict[str, Any]], tmp_path: Path) -> str:
    """Run `case` on `rule_files` (file name -> rules); '' when it passes, else the report."""
    alerts = {r["alert"]: r for spec in rule_files.values() for g in spec["groups"]
              for r in g["rules"] if "alert" in r}  # fmt: skip
    checks = []
    for alert, firing in case.alerts.items():
        expected = [{"exp_labels": labels,
                     "exp_annotations": {key: _expand(text, labels)
                                         for key, text in alerts[alert]["annotations"].items()}}
                    for labels in firing]  # fmt: skip
        checks.append({"eval_time": case.at, "alertname": alert, "exp_alerts": expected})
    tmp_path.mkdir(exist_ok=True)
    for name, spec in rule_files.items():
        (tmp_path / name).write_text(yaml.safe_dump(spec))
    document = {
        "rule_files": list(rule_files),
        "evaluation_interval": "30s",
        "tests": [{
            "name": case.name,
            "interval": "1m",
            "input_series": [{"series": s, "values": v} for s, v in case.series.items()],
            "alert_rule_test": checks,
        }],
    }  # fmt: skip
    (tmp_path / "test.yml").write_text(yaml.safe_dump(document, sort_keys=False))
    result = promtool("test", "rules", "test.yml", cwd=tmp_path)
    return "" if result.returncode == 0 else result.stdout + result.stderr


def _map_exprs(spec: dict[str, Any], change: Callable[[str], str]) -> dict[str, Any]:
    changed = copy.deepcopy(spec)
    for group in changed["groups"]:
        for rule in group["rules"]:
            rule["expr"] = change(rule["expr"])
    return changed


def _without_matchers(spec: dict[str, Any]) -> dict[str, Any]:
    """The rules with the release's matchers removed: observability/rules, in effect."""
    scope = r',?namespace="[^"]*",(conveyor_release="[^"]*"|horizontalpodautoscaler=~"[^"]*")'
    return _map_exprs(spec, lambda expr: re.sub(scope, "", expr))


def _unscoped(spec: dict[str, Any]) -> dict[str, Any]:
    """The rules as they were before releases were told apart: no matchers, and aggregations
    that drop namespace and conveyor_release."""

    def change(expr: str) -> str:
        for clause in ("namespace, conveyor_release, ", "namespace, conveyor_release",
                       "namespace, "):  # fmt: skip
            expr = expr.replace(clause, "")
        return expr

    return _map_exprs(_without_matchers(spec), change)


def _both(transform: Any = lambda spec: spec) -> dict[str, dict[str, Any]]:
    return {f"{release}.yml": transform(rendered_rules(release)) for release in RELEASES}


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_two_releases_alert_only_for_their_own_namespace(case: Case, tmp_path: Path) -> None:
    report = promtool_test(case, _both(), tmp_path)
    assert report == "", report


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_each_case_fails_on_rules_that_mix_releases(case: Case, tmp_path: Path) -> None:
    assert promtool_test(case, _both(_unscoped), tmp_path / "unscoped"), "cannot fail"
    if case.needs_matchers:  # aggregations keep the scope, but absent()/HPAs need the chart's
        assert promtool_test(case, _both(_without_matchers), tmp_path / "matchers"), "cannot fail"


def test_every_alert_is_in_a_two_release_case() -> None:
    covered = {alert for case in CASES for alert, firing in case.alerts.items() if firing}
    alerts = {r["alert"] for g in rendered_rules("prod")["groups"] for r in g["rules"]
              if "alert" in r}  # fmt: skip
    per_release = {"ConveyorBeatTwoLeaders", "ConveyorBacklogWithoutConsumers",
                   "ConveyorMetricsAbsent", "ConveyorBeatNotTicking",
                   "ConveyorWorkersSaturatedAtMaxReplicas", "ConveyorTierWithoutWorkers",
                   "ConveyorWorkersSaturated", "ConveyorApiErrorRatioHigh",
                   "ConveyorSubmissionsFailing", "ConveyorAcceptLatencyHigh",
                   "ConveyorApiKeysReloadFailing",
                   "ConveyorDeadLettersGrowing", "ConveyorDeadLettersPresent",
                   "ConveyorRedisUnreachable", "ConveyorQueueWaitHigh",
                   "ConveyorOldestMessageTooOld", "ConveyorFailureRatioHigh",
                   "ConveyorUnackedNearVisibilityTimeout"}  # fmt: skip
    # `up == 0` keeps every label of its target: scoped or not, it names its release (no
    # case of it could fail on rules that mix releases).
    assert alerts - covered == {"ConveyorScrapeTargetDown"}
    assert per_release <= covered <= alerts


def _tier_rule(docs: tuple[dict[str, Any], ...]) -> str:
    (rule,) = of_kind(docs, "PrometheusRule")
    (expr,) = [r["expr"] for g in rule["spec"]["groups"] for r in g["rules"]
               if r.get("alert") == "ConveyorTierWithoutWorkers"]  # fmt: skip
    return str(expr)


def test_tier_without_workers_watches_the_tiers_that_never_scale_to_zero() -> None:
    # The chart replaces this text of its copy; were it missing, it would silently not.
    source = (CHART / "files" / "conveyor-rules.yml").read_text()
    assert source.count(f"{ALWAYS_ON_TIERS},{SCOPE_PLACEHOLDER}") == 1
    scope = 'namespace="jobs",conveyor_release="conveyor"'
    monitoring = {"monitoring": {"prometheusRule": {"enabled": True}}}
    cases = {
        # KEDA: low scales to zero by default.
        'queue=~"default|high"': {**scenario_values("full")},
        # Without KEDA: the CPU HPAs keep at least one pod; fixed replicas, their count.
        'queue=~"default|high|low"': {**scenario_values("no-keda"), **monitoring},
        'queue=~"default|low"': {"keda": {"enabled": False}, **monitoring,
                                 "workers": {"high": {"replicas": 0,
                                                      "autoscaling": {"cpu": {"enabled": False}}}}},
        'queue=~"default"': {**scenario_values("full"),
                             "workers": {"high": {"autoscaling": {"minReplicas": 0}}}},
        'queue=~""': {**scenario_values("full"), "workers": {
            tier: {"autoscaling": {"minReplicas": 0}} for tier in ("high", "default", "low")}},
    }  # fmt: skip
    for tiers, values in cases.items():
        assert f"conveyor_workers{{{tiers},{scope}}}" in _tier_rule(render_values(values)), tiers


# --- KEDA's prometheus trigger --------------------------------------------------------------


def keda_queries(release: str) -> dict[str, str]:
    """Tier -> the query of its ScaledObject's prometheus trigger (scenario external-redis)."""
    found = {}
    for scaled in of_kind(render_release(release, "external-redis"), "ScaledObject"):
        (trigger,) = [t for t in scaled["spec"]["triggers"] if t["type"] == "prometheus"]
        found[scaled["spec"]["scaleTargetRef"]["name"].rsplit("-", 1)[1]] = trigger["metadata"][
            "query"
        ]
    return found


def keda_test(queries: dict[str, dict[str, str]], tmp_path: Path) -> str:
    """Prod's default tier has 7 jobs of demand over two exporter series (a rollout), staging's
    40 and another app's 1000 in prod: each release's query sees only its own. '' if it does."""
    demand = "conveyor_queue_demand"
    series = {
        _s(demand, PROD, queue="default", pod="exporter-a"): "3x10",
        _s(demand, PROD, queue="default", pod="exporter-b"): "4x10",
        _s(demand, PROD, queue="high"): "1x10",
        _s(demand, STAGING, queue="default"): "40x10",
        _s(demand, STAGING, queue="high"): "2x10",
        _s(demand, {"namespace": "prod", "conveyor_release": "other"}, queue="default"): "1000x10",
    }
    expected = {("prod", "default"): 7, ("prod", "high"): 1, ("staging", "default"): 40,
                ("staging", "high"): 2}  # fmt: skip
    tests = [{"expr": queries[release][queue], "eval_time": "5m",
              "exp_samples": [{"labels": "{}", "value": value}]}
             for (release, queue), value in expected.items()]  # fmt: skip
    tmp_path.mkdir(exist_ok=True)
    document = {"rule_files": [], "evaluation_interval": "1m", "tests": [{
        "interval": "1m", "input_series": [{"series": k, "values": v} for k, v in series.items()],
        "promql_expr_test": tests}]}  # fmt: skip
    (tmp_path / "keda.yml").write_text(yaml.safe_dump(document, sort_keys=False))
    result = promtool("test", "rules", "keda.yml", cwd=tmp_path)
    return "" if result.returncode == 0 else result.stdout + result.stderr


def test_keda_prometheus_queries_read_only_their_own_release(tmp_path: Path) -> None:
    queries = {release: keda_queries(release) for release in RELEASES}
    assert {"default", "high", "low"} <= set(queries["prod"])
    report = keda_test(queries, tmp_path / "rendered")
    assert report == "", report
    scope = r',?namespace="[^"]*",conveyor_release="[^"]*"'
    unscoped = {r: {q: re.sub(scope, "", e) for q, e in qs.items()} for r, qs in queries.items()}
    assert unscoped != queries
    assert keda_test(unscoped, tmp_path / "unscoped"), "cannot fail"


# --- dashboards ------------------------------------------------------------------------------


def test_two_releases_dashboards_never_collide() -> None:
    prod, staging = dashboards("prod"), dashboards("staging")
    assert len(prod) == len(staging) == len(list((CHART / "files" / "dashboards").glob("*.json")))
    assert not set(prod) & set(staging), "the Grafana sidecar writes each key as a file"
    uids = {d["uid"] for d in (*prod.values(), *staging.values())}
    assert len(uids) == 2 * len(prod)
    assert all(len(uid) <= 40 for uid in uids), "Grafana's limit"
    assert {f"{d['uid']}.json" for d in prod.values()} == set(prod)
    titles = {d["title"] for d in (*prod.values(), *staging.values())}
    assert len(titles) == 2 * len(prod)
    names = {c["metadata"]["name"] for r in RELEASES for c in of_kind(render_release(r),
             "ConfigMap") if c["metadata"]["labels"].get("grafana_dashboard") == "1"}  # fmt: skip
    assert len(names) == 2 * len(prod)


@pytest.mark.parametrize("release", RELEASES)
def test_every_panel_query_is_scoped_and_the_release_preselected(release: str) -> None:
    for dashboard in dashboards(release).values():
        assert dashboard["title"].endswith(f"({RELEASES[release]}/{release})")
        variables = {v["name"]: v for v in dashboard["templating"]["list"]}
        assert variables["namespace"]["current"]["value"] == RELEASES[release]
        assert variables["release"]["current"]["value"] == release
        assert "$namespace" in variables["release"]["query"]["query"]
        exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
        assert exprs
        for expr in exprs:
            assert "$namespace" in expr, expr
            assert "$release" in expr, expr
            for name, matchers in selectors(expr):
                assert 'namespace="$namespace"' in matchers, (dashboard["uid"], name)
                assert 'conveyor_release="$release"' in matchers, (dashboard["uid"], name)
