"""Grafana dashboards as code: `python -m tools.observability.artifacts` writes them to
observability/dashboards/ (and the Helm chart's copies), and a test keeps them in sync.

Every dashboard has `namespace` and `release` variables, and every selector of every panel
query carries SCOPE, so one Grafana shows any release without mixing two. The chart gives each
release's copy its own uid and title (templates/monitoring.yaml).

No panel goes blank when its condition is happening: ratios read 0 when nothing failed (the
workers and the API create their counters at 0), a stat whose source is down shows 0 or a
growing age (`or` a 0 anchored on the release's `up` series, `last_over_time`), and the time to
drain says "no consumers" for a tier without workers.
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
# 0 while any target of the release is known to Prometheus (up or not): the fallback of a
# panel whose own series are gone with the process that exported them.
ZERO = f"(0 * sum(up{{{SCOPE}}}))"


@dataclass
class Panel:
    """One time series or stat panel."""

    title: str
    exprs: list[tuple[str, str]]  # (PromQL, legend)
    unit: str = "short"
    kind: str = "timeseries"
    description: str = ""
    width: int = 12
    # Value -> text shown instead (Grafana value mappings), e.g. a sentinel meaning "no data
    # because nothing consumes the queue".
    mappings: dict[str, str] = field(default_factory=dict)


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
        panels, x, y, row_height = [], 0, 0, 0
        for index, panel in enumerate(self.panels, start=1):
            height = 4 if panel.kind == "stat" else 8
            if x + panel.width > 24:
                x, y, row_height = 0, y + row_height, 0
            panels.append(_panel_model(index, panel, x, y, height))
            x += panel.width
            row_height = max(row_height, height)
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
    defaults: dict[str, Any] = {"unit": panel.unit}
    if panel.mappings:
        options = {value: {"text": text, "index": i}
                   for i, (value, text) in enumerate(panel.mappings.items())}  # fmt: skip
        defaults["mappings"] = [{"type": "value", "options": options}]
    return {
        "id": index,
        "type": panel.kind,
        "title": panel.title,
        "description": panel.description,
        "datasource": {"type": "prometheus", "uid": "${datasource}"},
        "gridPos": {"x": x, "y": y, "w": panel.width, "h": height},
        "fieldConfig": {"defaults": defaults, "overrides": []},
        "targets": [
            # A stat shows the latest value: one instant query, not a range.
            {
                "refId": chr(ord("A") + i),
                "expr": expr,
                "legendFormat": legend,
                **({"instant": True} if panel.kind == "stat" else {}),
            }
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


def _ratio(part: str, whole: str) -> str:
    """The ratio `part / whole`, and 0 (not "no data", not NaN) where the whole is 0."""
    return f"{part} / ({whole} > 0) or {part}"


# What a finished attempt is: retried attempts are not finished (the job goes on).
FINISHED = "succeeded|failed|cancelled"
_LENGTH = f"sum by (queue) (conveyor_queue_length{{{QUEUE}}})"
NO_CONSUMERS, NOT_DRAINING = -1, -2
# Backlog over the finishing rate; 0 when the queue is empty; the sentinels (shown as text)
# when no worker consumes the tier, or when workers do but nothing finishes.
TIME_TO_DRAIN = (
    f"(sum by (queue) (conveyor_workers{{{QUEUE}}}) == 0) - {-NO_CONSUMERS}"
    f" or {_LENGTH} / (sum by (queue) (rate(conveyor_jobs_completed_total{{{QUEUE}}}[5m])) > 0)"
    f" or ({_LENGTH} == 0)"
    f" or ({_LENGTH} > 0) * 0 - {-NOT_DRAINING}"
)


# fmt: off
OVERVIEW = Dashboard(
    "conveyor-overview",
    "Conveyor / Overview",
    "Per-tier rate, failures, wait and run time, depth, oldest message and time to drain.",
    [
        Panel("Jobs finished per second", [(_completed(FINISHED), "{{queue}}")], "ops",
              description="Attempts that ended the job: succeeded, failed or cancelled "
                          "(retried attempts are not finished)."),
        Panel("Failure ratio", [(_ratio(_completed("failed"), _completed("succeeded|failed")),
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
        Panel("Time to drain at the current rate", [(TIME_TO_DRAIN, "{{queue}}")], "s",
              kind="stat",
              mappings={str(NO_CONSUMERS): "no consumers", str(NOT_DRAINING): "not draining"},
              description="Backlog divided by the finishing rate of the last 5 minutes; "
                          "0 for an empty queue; \"no consumers\" when no live worker "
                          "consumes the tier, \"not draining\" when workers finish nothing."),
        Panel("Held by flow control",
              [(f"sum by (queue) (conveyor_queue_held{{{QUEUE}}})", "held {{queue}}"),
               (f"max by (queue) (conveyor_queue_paused{{{QUEUE}}})", "paused {{queue}}"),
               (f"max by (kind) (conveyor_paused{{{SCOPE}}})", "{{kind}}s paused")],
              description="Jobs waiting on a paused tier or tenant, or on their tenant's "
                          "concurrency limit (not in the scaling signal); what is paused "
                          "(GET /v1/admin/pauses names it)."),
        Panel("Delayed jobs and dead letters",
              [(f"sum(conveyor_delayed_jobs{{{SCOPE}}})", "delayed"),
               (f"sum(conveyor_dead_letters{{{SCOPE}}})", "dead letters")]),
        Panel("Job records by state",
              [(f"sum by (state) (conveyor_jobs{{{SCOPE}}})", "{{state}}")],
              description="Finished records count until their retention expires."),
        Panel("Exporter scrape time",
              [(f"max(conveyor_exporter_scrape_duration_seconds{{{SCOPE}}})", "scrape")], "s",
              description="One pipelined Redis round trip; flat whatever the queue length."),
        Panel("Workflows ended per second",
              [(f"sum by (outcome) (rate(conveyor_workflows_ended_total{{{SCOPE}}}[{RATE}]))",
                "{{outcome}}")], "ops",
              description="Counted by the worker whose step ended the workflow, or the API "
                          "that cancelled it (docs/workflows.md)."),
        Panel("Workflow duration",
              [(f"histogram_quantile({q}, sum by (le) "
                f"(rate(conveyor_workflow_duration_seconds_bucket{{{SCOPE}}}[{RATE}])))",
                f"p{int(q * 100)}") for q in (0.5, 0.95)], "s",
              description="From acceptance to the last step's end, every outcome."),
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
              [(f"sum by (task, exception) (rate(conveyor_job_failures_total{{{TASK}}}[{RATE}]))"
                f" or on (task) (0 * {_completed('failed', 'task', TASK)})",
                "{{task}} {{exception}}")], "ops",
              description="0 for a task that has not failed."),
        Panel("Retries per second",
              [(f"sum by (task) (rate(conveyor_job_retries_total{{{TASK}}}[{RATE}]))",
                "{{task}}")], "ops"),
        Panel("Queue wait p95",
              [(f"histogram_quantile(0.95, sum by (task, le) "
                f"(rate(conveyor_job_queue_wait_seconds_bucket{{{TASK}}}[{RATE}])))", "{{task}}")],
              "s"),
        Panel("Failure ratio",
              [(_ratio(_completed("failed", "task", TASK),
                       _completed("succeeded|failed", "task", TASK)), "{{task}}")],
              "percentunit"),
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
        Panel("Workflow submissions by outcome",
              [(f"sum by (outcome) "
                f"(rate(conveyor_api_workflow_submissions_total{{{SCOPE}}}[{RATE}]))",
                "{{outcome}}")], "reqps"),
        Panel("Accept latency (record + enqueue)",
              [(f"histogram_quantile({q}, sum by (le) "
                f"(rate(conveyor_api_accept_duration_seconds_bucket{{{SCOPE}}}[{RATE}])))",
                f"p{int(q*100)}")
               for q in (0.5, 0.99)], "s"),
        Panel("5xx ratio",
              [(_ratio(f'sum(rate(conveyor_http_requests_total{{{SCOPE},status=~"5.."}}[{RATE}])'
                       f" or 0 * rate(conveyor_http_requests_total{{{SCOPE}}}[{RATE}]))",
                       f"sum(rate(conveyor_http_requests_total{{{SCOPE}}}[{RATE}]))"), "5xx")],
              "percentunit"),
    ],
    variables=(),
)

BEAT = Dashboard(
    "conveyor-beat",
    "Conveyor / Beat",
    "Leader, ticks and periodic job submissions.",
    [
        Panel("Leaders", [(f"sum(conveyor_beat_leader{{{SCOPE}}}) or {ZERO}", "leaders")],
              kind="stat", width=8, description="Exactly 1 is healthy; 0 while beat is down."),
        Panel("Since the last tick",
              [(f"time() - max(last_over_time("
                f"conveyor_beat_last_tick_timestamp_seconds{{{SCOPE}}}[1d]))", "seconds")], "s",
              kind="stat", width=8,
              description="The leader ticks every few seconds; while beat is down this grows "
                          "from its last tick."),
        Panel("Dead letters", [(f"sum(conveyor_dead_letters{{{SCOPE}}})", "dead letters")],
              kind="stat", width=8),
        Panel("Submissions per minute, by schedule",
              [(f"60 * sum by (schedule) (rate(conveyor_beat_runs_total{{{SCOPE}}}[{RATE}]))"
                f" or on () {ZERO}", "{{schedule}}")], "opm",
              description="0 (one unnamed series) until a schedule has run."),
        Panel("Since each schedule's last run",
              [(f"time() - max by (schedule) (last_over_time("
                f"conveyor_beat_schedule_last_run_timestamp_seconds{{{SCOPE}}}[1d]))",
                "{{schedule}}")], "s",
              description="Grows from the last run while beat is down."),
        Panel("Schedule ticks per minute, by source and outcome",
              [(f"60 * sum by (source, outcome) ("
                f"rate(conveyor_beat_schedule_ticks_total{{{SCOPE}}}[{RATE}]))",
                "{{source}} {{outcome}}")], "opm",
              description="Every due tick of the schedule file's and the API's schedules: "
                          "ran, skipped_overlap (the previous run unfinished), missed "
                          "(catch-up skip after beat was down) or failed (could not submit: "
                          "see beat's log)."),
    ],
    variables=(),
)

# fmt: on

DASHBOARDS = (OVERVIEW, WORKERS, TASKS, API, BEAT)
