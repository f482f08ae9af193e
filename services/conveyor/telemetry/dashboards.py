"""Grafana dashboards as code: `python -m conveyor.telemetry.artifacts` writes them to
observability/dashboards/ (and the Helm chart's copies), and a test keeps them in sync.

Every dashboard has `namespace` and `release` variables, and every selector of every panel
query carries SCOPE, so one Grafana shows any release without mixing two. The chart gives each
release's copy its own uid and title (templates/monitoring.yaml).
"""

from dataclasses import dataclass, field
from typing import Any

RATE = "$__rate_interval"
SCOPE = 'namespace="$namespace",conveyor_release="$release"'
QUEUE = f'{SCOPE},queue=~"$queue"'
TASK = f'{SCOPE},task=~"$task"'
# The series the namespace and release variables list: the exporter reports it once per
# release, whatever the release runs.
ANCHOR = "conveyor_exporter_up"


@dataclass
class Panel:
    """One time series or stat panel."""

    title: str
    exprs: list[tuple[str, str]]  # (PromQL, legend)
    unit: str = "short"
    kind: str = "timeseries"
    description: str = ""
    width: int = 12


@dataclass
class Dashboard:
    """A dashboard: panels laid out two to a row, with scope and queue/task variables."""

    uid: str
    title: str
    description: str
    panels: list[Panel] = field(default_factory=list)
    variables: tuple[str, ...] = ("queue",)

    def model(self) -> dict[str, Any]:
        """The Grafana JSON model."""
        panels, x, y = [], 0, 0
        for index, panel in enumerate(self.panels, start=1):
            height = 4 if panel.kind == "stat" else 8
            if x + panel.width > 24:
                x, y = 0, y + height
            panels.append(_panel_model(index, panel, x, y, height))
            x += panel.width
        variables = [_datasource(), _namespace(), _release(), *map(_variable, self.variables)]
        return {
            "uid": self.uid,
            "title": self.title,
            "description": self.description,
            "tags": ["conveyor"],
            "timezone": "utc",
            "schemaVersion": 39,
            "version": 1,
            "editable": False,
            "refresh": "30s",
            "time": {"from": "now-3h", "to": "now"},
            "templating": {"list": variables},
            "panels": panels,
        }

    def queries(self) -> list[str]:
        """Every PromQL expression of the dashboard."""
        return [expr for panel in self.panels for expr, _ in panel.exprs]


def _datasource() -> dict[str, Any]:
    return {
        "name": "datasource",
        "type": "datasource",
        "query": "prometheus",
        "hide": 0,
        "label": "Prometheus",
    }


def _query_variable(name: str, label: str, query: str) -> dict[str, Any]:
    """A single-valued variable listing `query`'s values (Grafana's label_values)."""
    return {
        "name": name,
        "label": label,
        "type": "query",
        "datasource": {"type": "prometheus", "uid": "${datasource}"},
        "query": {"query": query, "refId": name},
        "includeAll": False,
        "multi": False,
        "current": {},
        "refresh": 2,
        "sort": 1,
    }


def _namespace() -> dict[str, Any]:
    return _query_variable("namespace", "Namespace", f"label_values({ANCHOR}, namespace)")


def _release() -> dict[str, Any]:
    query = f'label_values({ANCHOR}{{namespace="$namespace"}}, conveyor_release)'
    return _query_variable("release", "Release", query)


def _variable(name: str) -> dict[str, Any]:
    source = {"queue": "conveyor_queue_length", "task": "conveyor_jobs_started_total"}[name]
    return {
        "name": name,
        "type": "query",
        "datasource": {"type": "prometheus", "uid": "${datasource}"},
        "query": {"query": f"label_values({source}{{{SCOPE}}}, {name})", "refId": name},
        "includeAll": True,
        "multi": True,
        "allValue": ".*",
        "current": {"text": "All", "value": "$__all"},
        "refresh": 2,
    }


def _panel_model(index: int, panel: Panel, x: int, y: int, height: int) -> dict[str, Any]:
    return {
        "id": index,
        "type": panel.kind,
        "title": panel.title,
        "description": panel.description,
        "datasource": {"type": "prometheus", "uid": "${datasource}"},
        "gridPos": {"x": x, "y": y, "w": panel.width, "h": height},
        "fieldConfig": {"defaults": {"unit": panel.unit}, "overrides": []},
        "targets": [
            {"refId": chr(ord("A") + i), "expr": expr, "legendFormat": legend}
            for i, (expr, legend) in enumerate(panel.exprs)
        ],
    }


def _quantiles(metric: str, by: str, selector: str) -> list[tuple[str, str]]:
    rate = f"rate({metric}_bucket{{{selector}}}[{RATE}])"
    return [
        (f"histogram_quantile({q}, sum by ({by}, le) ({rate}))", f"p{int(q * 100)} {{{{{by}}}}}")
        for q in (0.5, 0.95, 0.99)
    ]


def _completed(outcome: str, by: str = "queue", selector: str = QUEUE) -> str:
    return (
        f"sum by ({by}) (rate(conveyor_jobs_completed_total{{{selector},"
        f'outcome=~"{outcome}"}}[{RATE}]))'
    )


# fmt: off
OVERVIEW = Dashboard(
    "conveyor-overview",
    "Conveyor / Overview",
    "Per-tier rate, failures, wait and run time, depth, oldest message and time to drain.",
    [
        Panel("Jobs finished per second", [(_completed(".+"), "{{queue}}")], "ops"),
        Panel("Failure ratio", [(f"{_completed('failed')} / {_completed('succeeded|failed')}",
                                 "{{queue}}")], "percentunit"),
        Panel("Queue wait", _quantiles("conveyor_job_queue_wait_seconds", "queue", QUEUE), "s",
              description="Start of an attempt minus max(enqueue time, due time)."),
        Panel("Run time", _quantiles("conveyor_job_runtime_seconds", "queue", QUEUE), "s"),
        Panel("Queue depth", [(f"sum by (queue) (conveyor_queue_length{{{QUEUE}}})", "{{queue}}")]),
        Panel("Oldest waiting message",
              [(f"max by (queue) (conveyor_queue_oldest_message_age_seconds{{{QUEUE}}})",
                "{{queue}}")], "s"),
        Panel("Demand: waiting + running",
              [(f"sum by (queue) (conveyor_queue_demand{{{QUEUE}}})", "demand {{queue}}"),
               (f"sum by (queue) (conveyor_queue_running{{{QUEUE}}})", "running {{queue}}")],
              description="The tiers' autoscaling signal: jobs waiting plus jobs running."),
        Panel("Time to drain at the current rate",
              [(f"sum by (queue) (conveyor_queue_length{{{QUEUE}}}) / "
                f"(sum by (queue) (rate(conveyor_jobs_completed_total{{{QUEUE}}}[5m])) > 0)",
                "{{queue}}")], "s",
              description="Backlog divided by the finishing rate; empty when nothing finishes."),
        Panel("Delayed jobs and dead letters",
              [(f"sum(conveyor_delayed_jobs{{{SCOPE}}})", "delayed"),
               (f"sum(conveyor_dead_letters{{{SCOPE}}})", "dead letters")]),
        Panel("Job records by state",
              [(f"sum by (state) (conveyor_jobs{{{SCOPE}}})", "{{state}}")],
              description="Finished records count until their retention expires."),
        Panel("Exporter scrape time",
              [(f"max(conveyor_exporter_scrape_duration_seconds{{{SCOPE}}})", "scrape")], "s",
              description="One pipelined Redis round trip; flat whatever the queue length."),
    ],
)

WORKERS = Dashboard(
    "conveyor-workers",
    "Conveyor / Workers and saturation",
    "Busy slots against concurrency, live workers, unacked leases, redeliveries.",
    [
        Panel("Active jobs vs job slots",
              [(f"sum by (queue) (conveyor_worker_active_jobs{{{QUEUE}}})", "active {{queue}}"),
               (f"sum by (queue) (conveyor_worker_concurrency{{{QUEUE}}})", "slots {{queue}}")]),
        Panel("Saturation",
              [(f"sum by (queue) (conveyor_worker_active_jobs{{{QUEUE}}}) / "
                f"sum by (queue) (conveyor_worker_concurrency{{{QUEUE}}})", "{{queue}}")],
              "percentunit"),
        Panel("Live workers", [(f"sum by (queue) (conveyor_workers{{{QUEUE}}})", "{{queue}}")]),
        Panel("Unacked deliveries",
              [(f"sum(conveyor_unacked_deliveries{{{SCOPE}}})", "unacked")]),
        Panel("Oldest lease vs visibility timeout",
              [(f"max(conveyor_unacked_oldest_age_seconds{{{SCOPE}}})", "oldest lease"),
               (f"max(conveyor_visibility_timeout_seconds{{{SCOPE}}})", "visibility timeout")],
              "s",
              description="Running jobs renew their lease; one near the timeout is about to be "
                          "redelivered (its worker died, or renewals fail)."),
        Panel("Redeliveries and dead letters per second",
              [(f"sum by (queue) (rate(conveyor_job_redeliveries_total{{{QUEUE}}}[{RATE}]))",
                "redelivered {{queue}}"),
               (f"sum by (queue) (rate(conveyor_jobs_dead_lettered_total{{{QUEUE}}}[{RATE}]))",
                "dead-lettered {{queue}}")], "ops"),
    ],
)

TASKS = Dashboard(
    "conveyor-tasks",
    "Conveyor / Tasks",
    "Per-task outcomes, run time, failures by exception and retries.",
    [
        Panel("Attempts started per second",
              [(f"sum by (task) (rate(conveyor_jobs_started_total{{{TASK}}}[{RATE}]))",
                "{{task}}")], "ops"),
        Panel("Outcomes per second",
              [(f"sum by (task, outcome) (rate(conveyor_jobs_completed_total{{{TASK}}}[{RATE}]))",
                "{{task}} {{outcome}}")], "ops"),
        Panel("Run time p95",
              [(f"histogram_quantile(0.95, sum by (task, le) "
                f"(rate(conveyor_job_runtime_seconds_bucket{{{TASK}}}[{RATE}])))", "{{task}}")],
              "s"),
        Panel("Failures by exception",
              [(f"sum by (task, exception) (rate(conveyor_job_failures_total{{{TASK}}}[{RATE}]))",
                "{{task}} {{exception}}")], "ops"),
        Panel("Retries per second",
              [(f"sum by (task) (rate(conveyor_job_retries_total{{{TASK}}}[{RATE}]))",
                "{{task}}")], "ops"),
        Panel("Queue wait p95",
              [(f"histogram_quantile(0.95, sum by (task, le) "
                f"(rate(conveyor_job_queue_wait_seconds_bucket{{{TASK}}}[{RATE}])))", "{{task}}")],
              "s"),
        Panel("Failure ratio",
              [(_completed("failed", "task", TASK) + " / "
                + _completed("succeeded|failed", "task", TASK), "{{task}}")], "percentunit"),
    ],
    variables=("task",),
)

API = Dashboard(
    "conveyor-api",
    "Conveyor / API",
    "Requests by route and status, latency, submissions by outcome, accept latency.",
    [
        Panel("Requests per second",
              [(f"sum by (route, status) (rate(conveyor_http_requests_total{{{SCOPE}}}[{RATE}]))",
                "{{route}} {{status}}")], "reqps"),
        Panel("Latency p95 by route",
              [(f"histogram_quantile(0.95, sum by (route, le) "
                f"(rate(conveyor_http_request_duration_seconds_bucket{{{SCOPE}}}[{RATE}])))",
                "{{route}}")], "s"),
        Panel("Submissions by outcome",
              [(f"sum by (outcome) (rate(conveyor_api_submissions_total{{{SCOPE}}}[{RATE}]))",
                "{{outcome}}")], "reqps"),
        Panel("Accept latency (record + enqueue)",
              [(f"histogram_quantile({q}, sum by (le) "
                f"(rate(conveyor_api_accept_duration_seconds_bucket{{{SCOPE}}}[{RATE}])))",
                f"p{int(q*100)}")
               for q in (0.5, 0.99)], "s"),
        Panel("5xx ratio",
              [(f'sum(rate(conveyor_http_requests_total{{{SCOPE},status=~"5.."}}[{RATE}])) / '
                f"sum(rate(conveyor_http_requests_total{{{SCOPE}}}[{RATE}]))", "5xx")],
              "percentunit"),
    ],
    variables=(),
)

BEAT = Dashboard(
    "conveyor-beat",
    "Conveyor / Beat",
    "Leader, ticks and periodic job submissions.",
    [
        Panel("Leaders", [(f"sum(conveyor_beat_leader{{{SCOPE}}})", "leaders")], kind="stat",
              width=8, description="Exactly 1 is healthy."),
        Panel("Since the last tick",
              [(f"time() - max(conveyor_beat_last_tick_timestamp_seconds{{{SCOPE}}})",
                "seconds")], "s", kind="stat", width=8),
        Panel("Dead letters", [(f"sum(conveyor_dead_letters{{{SCOPE}}})", "dead letters")],
              kind="stat", width=8),
        Panel("Submissions per schedule",
              [(f"sum by (schedule) (increase(conveyor_beat_runs_total{{{SCOPE}}}[{RATE}]))",
                "{{schedule}}")]),
        Panel("Since each schedule's last run",
              [(f"time() - max by (schedule) "
                f"(conveyor_beat_schedule_last_run_timestamp_seconds{{{SCOPE}}})",
                "{{schedule}}")], "s"),
    ],
    variables=(),
)

# fmt: on

DASHBOARDS = (OVERVIEW, WORKERS, TASKS, API, BEAT)
