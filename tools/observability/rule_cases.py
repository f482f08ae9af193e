"""The promtool unit tests of the rules (observability/rules/conveyor-rules.test.yml).

Inputs and expected labels are written here; expected annotations are expanded from the rules
themselves, so the two cannot drift. Every alert has a firing and a non-firing case (a test
checks it).
"""

import re
from dataclasses import dataclass

import yaml

from tools.observability.rules import alert_rules


@dataclass(frozen=True)
class AlertCase:
    """At `at`, `alert` fires exactly for `firing` (label sets; empty: it must not fire)."""

    at: str
    alert: str
    firing: tuple[dict[str, str], ...] = ()


@dataclass(frozen=True)
class RuleTest:
    """A promtool test group: input series (1-minute steps) and alert expectations."""

    name: str
    series: dict[str, str]
    cases: tuple[AlertCase, ...]


W, C = {"severity": "warning"}, {"severity": "critical"}
# Inputs are scraped from release `conveyor` in namespace `jobs` unless they name a namespace
# (the generator adds these labels); alerts then carry them.
J = {"namespace": "jobs", "conveyor_release": "conveyor"}
S = {"namespace": "staging", "conveyor_release": "staging"}
_STAGING = 'namespace="staging",conveyor_release="staging"'
_HPA = ('kube_horizontalpodautoscaler_{}{{namespace="jobs",'
        'horizontalpodautoscaler="keda-hpa-conveyor-worker-{}"}}')  # fmt: skip
_HTTP = 'conveyor_http_requests_total{{method="{}",route="{}",status="{}"}}'
_SUBMISSIONS = 'conveyor_api_submissions_total{{outcome="{}"}}'
_ACCEPT = 'conveyor_api_accept_duration_seconds_bucket{{le="{}"}}'
_DEAD = 'conveyor_jobs_dead_lettered_total{{queue="default",task="{}"}}'

RULE_CASES = (
    RuleTest("a backlog on low, scaled to zero; default idle with a worker; high busy", {
        'conveyor_queue_length{queue="low"}': "5x30", 'conveyor_workers{queue="low"}': "0x30",
        'conveyor_queue_length{queue="default"}': "0x30",
        'conveyor_workers{queue="default"}': "1x30",
        'conveyor_queue_length{queue="high"}': "7x30", 'conveyor_workers{queue="high"}': "2x30",
    }, (AlertCase("15m", "ConveyorBacklogWithoutConsumers", ({"queue": "low", **J, **C},)),
        AlertCase("4m", "ConveyorBacklogWithoutConsumers"),
        AlertCase("15m", "ConveyorTierWithoutWorkers"))),
    RuleTest("two releases: staging's low backlog has no workers, this release's has", {
        'conveyor_queue_length{queue="low"}': "5x30", 'conveyor_workers{queue="low"}': "1x30",
        f'conveyor_queue_length{{queue="low",{_STAGING}}}': "5x30",
        f'conveyor_workers{{queue="low",{_STAGING}}}': "0x30",
    }, (AlertCase("15m", "ConveyorBacklogWithoutConsumers", ({"queue": "low", **S, **C},)),)),
    RuleTest("the default tier lost its workers at 5m with an empty queue; low scaled to zero", {
        'conveyor_workers{queue="default"}': "2x4 0x25",
        'conveyor_queue_length{queue="default"}': "0x30",
        'conveyor_workers{queue="high"}': "1x30", 'conveyor_workers{queue="low"}': "0x30",
    }, (AlertCase("6m", "ConveyorTierWithoutWorkers"),
        AlertCase("8m", "ConveyorTierWithoutWorkers", ({"queue": "default", **J, **C},)),
        AlertCase("20m", "ConveyorBacklogWithoutConsumers"))),
    RuleTest("Redis unreachable: the exporter serves NaN, no tier alert fires or resolves", {
        'conveyor_workers{queue="default"}': " ".join(["NaN"] * 11),
        'conveyor_queue_length{queue="default"}': " ".join(["NaN"] * 11),
        "conveyor_exporter_up": "0x10",
    }, (AlertCase("8m", "ConveyorTierWithoutWorkers"),
        AlertCase("8m", "ConveyorBacklogWithoutConsumers"),
        AlertCase("8m", "ConveyorRedisUnreachable", ({**J, **C},)))),
    RuleTest("default waits minutes, high waits milliseconds", {
        'conveyor_job_queue_wait_seconds_bucket{queue="default",le="60"}': "0x30",
        'conveyor_job_queue_wait_seconds_bucket{queue="default",le="300"}': "0+10x30",
        'conveyor_job_queue_wait_seconds_bucket{queue="default",le="+Inf"}': "0+10x30",
        'conveyor_job_queue_wait_seconds_bucket{queue="high",le="0.1"}': "0+10x30",
        'conveyor_job_queue_wait_seconds_bucket{queue="high",le="+Inf"}': "0+10x30",
    }, (AlertCase("10m", "ConveyorQueueWaitHigh", ({"queue": "default", **J, **W},)),
        AlertCase("4m", "ConveyorQueueWaitHigh"))),
    RuleTest("the low tier's head is an hour old; high's is 30 s", {
        'conveyor_queue_oldest_message_age_seconds{queue="low"}': "4000x20",
        'conveyor_queue_oldest_message_age_seconds{queue="high"}': "30x20",
    }, (AlertCase("10m", "ConveyorOldestMessageTooOld", ({"queue": "low", **J, **W},)),
        AlertCase("2m", "ConveyorOldestMessageTooOld"))),
    RuleTest("half of a busy task fails; a rare task fails every time", {
        'conveyor_jobs_completed_total{queue="default",task="demo.fail",outcome="failed"}':
            "0+5x30",
        'conveyor_jobs_completed_total{queue="default",task="demo.fail",outcome="succeeded"}':
            "0+5x30",
        'conveyor_jobs_completed_total{queue="low",task="rare",outcome="failed"}': "0+1x30",
    }, (AlertCase("5m", "ConveyorFailureRatioHigh",
                  ({"queue": "default", "task": "demo.fail", **J, **W},)),
        AlertCase("2m", "ConveyorFailureRatioHigh"))),
    RuleTest("default saturated, its oldest message ageing 1 s/s; high saturated and keeping up;"
             " low idle while its head ages", {
        'conveyor_worker_active_jobs{queue="default"}': "4x30",
        'conveyor_worker_concurrency{queue="default"}': "4x30",
        'conveyor_queue_oldest_message_age_seconds{queue="default"}': "0+60x30",
        'conveyor_worker_active_jobs{queue="high"}': "4x30",
        'conveyor_worker_concurrency{queue="high"}': "4x30",
        'conveyor_queue_oldest_message_age_seconds{queue="high"}': "3 5 2 4 3 6 2 5 3 4 2 5 3 6 2"
                                                                   " 4 3 5 2 4 3 6 2 5 3 4 2 5 3",
        'conveyor_worker_active_jobs{queue="low"}': "0x30",
        'conveyor_worker_concurrency{queue="low"}': "2x30",
        'conveyor_queue_oldest_message_age_seconds{queue="low"}': "0+60x30",
    }, (AlertCase("15m", "ConveyorWorkersSaturated", ({"queue": "default", **J, **W},)),
        AlertCase("4m", "ConveyorWorkersSaturated"))),
    RuleTest("a lease at 55 s of a 60 s visibility timeout", {
        "conveyor_unacked_oldest_age_seconds": "55x10",
        "conveyor_visibility_timeout_seconds": "60x10",
    }, (AlertCase("5m", "ConveyorUnackedNearVisibilityTimeout", ({**J, **W},)),)),
    RuleTest("leases renewed on time", {
        "conveyor_unacked_oldest_age_seconds": "10x10",
        "conveyor_visibility_timeout_seconds": "60x10",
    }, (AlertCase("5m", "ConveyorUnackedNearVisibilityTimeout"),)),
    RuleTest("two jobs dead-lettered at 3m and 4m, kept for 40 minutes", {
        _DEAD.format("demo.fail"): "0 0 0 1 2x40",
        _DEAD.format("demo.echo"): "0x45",
        "conveyor_dead_letters": "0 0 0 1 2x40",
    }, (AlertCase("5m", "ConveyorDeadLettersGrowing",
                  ({"queue": "default", "task": "demo.fail", **J, **W},)),
        AlertCase("7m", "ConveyorDeadLettersPresent"),
        AlertCase("10m", "ConveyorDeadLettersPresent", ({**J, **W},)),
        # The growth is over, the dead letters are not: only Present still fires.
        AlertCase("30m", "ConveyorDeadLettersGrowing"),
        AlertCase("30m", "ConveyorDeadLettersPresent", ({**J, **W},)))),
    RuleTest("old dead letters, none new; then all replayed", {
        _DEAD.format("demo.fail"): "3x20", "conveyor_dead_letters": "3x10 0x10",
    }, (AlertCase("16m", "ConveyorDeadLettersGrowing"),
        AlertCase("18m", "ConveyorDeadLettersPresent"))),
    RuleTest("a dead-letter counter born at 1 (not created at 0) shows no increase", {
        _DEAD.format("demo.fail"): "_ _ _ 1x20",
    }, (AlertCase("5m", "ConveyorDeadLettersGrowing"),)),
    RuleTest("a healthy beat: one leader ticking every minute", {
        "conveyor_beat_last_tick_timestamp_seconds": "0+60x30",
        'conveyor_beat_leader{instance="a"}': "1x30",
        'conveyor_beat_leader{instance="b"}': "0x30",
    }, (AlertCase("10m", "ConveyorBeatNotTicking"), AlertCase("10m", "ConveyorBeatTwoLeaders"))),
    RuleTest("a beat stuck since the first minute, and two leaders", {
        "conveyor_beat_last_tick_timestamp_seconds": "60x30",
        'conveyor_beat_leader{instance="a"}': "1x30",
        'conveyor_beat_leader{instance="b"}': "1x30",
    }, (AlertCase("10m", "ConveyorBeatNotTicking", ({**J, **C},)),
        AlertCase("10m", "ConveyorBeatTwoLeaders", ({**J, **C},)))),
    RuleTest("this release's beat died at 5m (its series went stale); staging's ticks", {
        "conveyor_beat_last_tick_timestamp_seconds": "0+60x5 stale",
        f"conveyor_beat_last_tick_timestamp_seconds{{{_STAGING}}}": "0+60x30",
    }, (AlertCase("6m", "ConveyorBeatNotTicking"),
        AlertCase("15m", "ConveyorBeatNotTicking", ({**J, **C},)))),
    RuleTest("two releases with one leader each", {
        'conveyor_beat_leader{instance="a"}': "1x30",
        f'conveyor_beat_leader{{instance="b",{_STAGING}}}': "1x30",
    }, (AlertCase("10m", "ConveyorBeatTwoLeaders"),)),
    RuleTest("two releases: two leaders in staging, one here", {
        'conveyor_beat_leader{instance="a"}': "1x30",
        f'conveyor_beat_leader{{instance="b",{_STAGING}}}': "1x30",
        f'conveyor_beat_leader{{instance="c",{_STAGING}}}': "1x30",
    }, (AlertCase("10m", "ConveyorBeatTwoLeaders", ({**S, **C},)),)),
    RuleTest("the exporter is gone; the API reports", {
        _HTTP.format("GET", "/healthz", "200"): "0+1x30",
    }, (AlertCase("15m", "ConveyorMetricsAbsent", (W,)),)),
    RuleTest("the exporter stopped at 5m: its series went stale", {
        "conveyor_exporter_up": "1x5 stale",
        _HTTP.format("GET", "/healthz", "200"): "0+1x30",
    }, (AlertCase("7m", "ConveyorMetricsAbsent"),
        AlertCase("8m30s", "ConveyorMetricsAbsent", (W,)))),
    RuleTest("everything reports; Redis is up", {
        "conveyor_exporter_up": "1x30",
        _HTTP.format("GET", "/healthz", "200"): "0+1x30",
        'up{job="conveyor-exporter",instance="10.0.0.7:9810"}': "1x30",
    }, (AlertCase("15m", "ConveyorMetricsAbsent"), AlertCase("15m", "ConveyorRedisUnreachable"),
        AlertCase("15m", "ConveyorScrapeTargetDown"))),
    RuleTest("the exporter cannot read Redis from 2m", {"conveyor_exporter_up": "1 1 0x10"},
             (AlertCase("2m30s", "ConveyorRedisUnreachable"),
              AlertCase("4m", "ConveyorRedisUnreachable", ({**J, **C},)))),
    RuleTest("an API pod does not answer scrapes; another target outside Conveyor is down", {
        'up{job="conveyor-api",instance="10.0.0.8:9811"}': "0x10",
        'up{job="conveyor-api",instance="10.0.0.9:9811"}': "1x10",
        'up{namespace="kube-system",job="node-exporter",instance="10.0.1.1:9100"}': "0x10",
    }, (AlertCase("3m", "ConveyorScrapeTargetDown",
                  ({"job": "conveyor-api", "instance": "10.0.0.8:9811", **J, **W},)),
        AlertCase("1m", "ConveyorScrapeTargetDown"))),
    RuleTest("one request in ten fails with 500; submissions fail while Redis is down", {
        _HTTP.format("GET", "/v1/jobs/{job_id}", "200"): "0+90x30",
        _HTTP.format("GET", "/v1/jobs/{job_id}", "500"): "0+10x30",
        _SUBMISSIONS.format("accepted"): "0+30x10 300x20",
        _SUBMISSIONS.format("broker_error"): "0x10 0+30x20",
    }, (AlertCase("3m", "ConveyorApiErrorRatioHigh", ({**J, **W},)),
        AlertCase("1m", "ConveyorApiErrorRatioHigh"),
        AlertCase("5m", "ConveyorSubmissionsFailing"),
        AlertCase("14m", "ConveyorSubmissionsFailing", ({**J, **C},)))),
    RuleTest("a healthy API: a rare 503, a rare broker error among thousands, a quiet API "
             "whose only request failed", {
        _HTTP.format("POST", "/v1/jobs", "202"): "0+1000x30",
        _HTTP.format("POST", "/v1/jobs", "503"): "0+1x30",
        _SUBMISSIONS.format("accepted"): "0+1000x30",
        _SUBMISSIONS.format("broker_error"): "0+1x30",
        f'conveyor_http_requests_total{{route="/healthz",status="500",{_STAGING}}}': "0 1x30",
    }, (AlertCase("10m", "ConveyorApiErrorRatioHigh"),
        AlertCase("10m", "ConveyorSubmissionsFailing"))),
    RuleTest("a keys file that stopped loading at 5m; staging reloads fine", {
        'conveyor_api_keys_reloads_total{outcome="failed"}': "0x5 1+1x20",
        'conveyor_api_keys_reloads_total{outcome="loaded"}': "1x25",
        f'conveyor_api_keys_reloads_total{{outcome="failed",{_STAGING}}}': "0x25",
        f'conveyor_api_keys_reloads_total{{outcome="loaded",{_STAGING}}}': "0+1x25",
    }, (AlertCase("4m", "ConveyorApiKeysReloadFailing"),
        AlertCase("9m", "ConveyorApiKeysReloadFailing", ({**J, **W},)))),
    RuleTest("accepting a job takes 300-500 ms", {
        _ACCEPT.format("0.005"): "0x20", _ACCEPT.format("0.25"): "0x20",
        _ACCEPT.format("0.5"): "0+100x20", _ACCEPT.format("+Inf"): "0+100x20",
        "conveyor_api_accept_duration_seconds_count": "0+100x20",
    }, (AlertCase("4m", "ConveyorAcceptLatencyHigh"),
        AlertCase("10m", "ConveyorAcceptLatencyHigh", ({**J, **W},)))),
    RuleTest("accepting takes 2 ms; a quiet release's only two accepts were slow", {
        _ACCEPT.format("0.005"): "0+100x20", _ACCEPT.format("+Inf"): "0+100x20",
        "conveyor_api_accept_duration_seconds_count": "0+100x20",
        f'conveyor_api_accept_duration_seconds_bucket{{le="0.5",{_STAGING}}}': "0 2x20",
        f'conveyor_api_accept_duration_seconds_bucket{{le="+Inf",{_STAGING}}}': "0 2x20",
        f"conveyor_api_accept_duration_seconds_count{{{_STAGING}}}": "0 2x20",
    }, (AlertCase("10m", "ConveyorAcceptLatencyHigh"),)),
    RuleTest("default saturated at max replicas; high saturated with room to grow", {
        'conveyor_worker_active_jobs{queue="default"}': "10x30",
        'conveyor_worker_concurrency{queue="default"}': "10x30",
        _HPA.format("status_current_replicas", "default"): "5x30",
        _HPA.format("spec_max_replicas", "default"): "5x30",
        'conveyor_worker_active_jobs{queue="high"}': "4x30",
        'conveyor_worker_concurrency{queue="high"}': "4x30",
        _HPA.format("status_current_replicas", "high"): "2x30",
        _HPA.format("spec_max_replicas", "high"): "5x30",
    }, (AlertCase("20m", "ConveyorWorkersSaturatedAtMaxReplicas",
                  ({"queue": "default", **J, **W},)),
        AlertCase("5m", "ConveyorWorkersSaturatedAtMaxReplicas"))),
)  # fmt: skip


def scoped_series(series: str, scope: dict[str, str] = J) -> str:
    """`series` with the scope labels, unless it names a namespace already."""
    if "namespace=" in series:
        return series
    name, _, rest = series.partition("{")
    matchers = ",".join(f'{k}="{v}"' for k, v in scope.items())
    return f"{name}{{{matchers}}}" if not rest else f"{name}{{{rest[:-1]},{matchers}}}"


_LABEL = re.compile(r"\{\{\s*\$labels\.(\w+)\s*\}\}")


def expand(template: str, labels: dict[str, str]) -> str:
    """Expand `{{ $labels.x }}` as Prometheus does (the only templating the rules use)."""
    return _LABEL.sub(lambda match: labels[match.group(1)], template)


def rule_tests_yaml(rules_file: str) -> str:
    """The promtool test file, for the rules file named `rules_file` (beside it)."""
    rules = alert_rules()
    tests = []
    for case in RULE_CASES:
        alert_tests = []
        for check in case.cases:
            expected = []
            for labels in check.firing:
                annotations = {
                    key: expand(text, labels)
                    for key, text in rules[check.alert]["annotations"].items()
                }
                expected.append({"exp_labels": labels, "exp_annotations": annotations})
            alert_tests.append(
                {"eval_time": check.at, "alertname": check.alert, "exp_alerts": expected}
            )
        tests.append({
            "name": case.name,
            "interval": "1m",
            "input_series": [{"series": scoped_series(s), "values": v}
                             for s, v in case.series.items()],
            "alert_rule_test": alert_tests,
        })  # fmt: skip
    document = {"rule_files": [rules_file], "evaluation_interval": "30s", "tests": tests}
    header = "# Generated by `python -m tools.observability.artifacts` from rule_cases.py there.\n"
    return header + yaml.safe_dump(document, sort_keys=False, width=100)
