"""Every Prometheus metric Conveyor exports, declared once.

Labels are bounded: queue, task (catalogued names), outcome, allow-listed exception type,
route template, schedule name (from the schedule file), state. Never pod, host, pid or job id.
Metric objects are built by the classes below (no import-time registration), so a process
can switch prometheus-client to multiprocess mode first.
"""

from collections.abc import Iterable
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

# Seconds. Run time: from a 0.5 ms echo to a 2-hour report.
RUNTIME_BUCKETS = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120,
    300, 600, 1800, 3600, 7200,
)  # fmt: skip
# Queue wait: each tier's objective (QueueWaitHigh: high 10 s, default 2 min, low 30 min) is a
# bucket boundary with neighbours close on both sides, so a p95 near it is read accurately.
QUEUE_WAIT_BUCKETS = (
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 7.5, 10, 15, 20, 30, 45, 60, 90, 120,
    150, 180, 240, 300, 450, 600, 900, 1200, 1800, 2400, 3600,
)  # fmt: skip
HTTP_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)

# Exception types that get their own label value; anything else is "Other".
EXCEPTION_ALLOWLIST = frozenset(
    {
        "RetryableError",
        "PermanentError",
        "TimeLimitExceeded",
        "WorkerLost",
        "ValidationError",
        "TypeError",
        "ValueError",
        "KeyError",
        "ConnectionError",
        "TimeoutError",
        "OSError",
    }
)

# What a job attempt ended as (job_signals.job_finished's `outcome`).
OUTCOMES = ("succeeded", "failed", "retried", "cancelled", "superseded")
# What a POST /v1/jobs ended as.
SUBMISSION_OUTCOMES = (
    "accepted", "duplicate", "conflict", "rejected", "rate_limited", "queue_full",
    "quota_exceeded", "broker_error",
)  # fmt: skip
# What a reload of a changed API keys file ended as.
KEYS_RELOAD_OUTCOMES = ("loaded", "failed")


def exception_label(name: str | None) -> str:
    """The exception type as a bounded label value."""
    if name is None:
        return "none"
    return name if name in EXCEPTION_ALLOWLIST else "Other"


class WorkerMetrics:
    """Job metrics, recorded inside workers (prefork children write multiprocess files)."""

    def __init__(self, registry: CollectorRegistry | None) -> None:
        job = ("queue", "task")
        self.started = Counter(
            "conveyor_jobs_started", "Job attempts that started running.", job, registry=registry
        )
        self.completed = Counter(
            "conveyor_jobs_completed",
            "Job attempts that ended, by outcome (succeeded, failed, retried, cancelled, "
            "superseded).",
            (*job, "outcome"),
            registry=registry,
        )
        self.failures = Counter(
            "conveyor_job_failures",
            "Failed or retried attempts by exception type (allow-listed, else Other).",
            (*job, "exception"),
            registry=registry,
        )
        self.retries = Counter(
            "conveyor_job_retries", "Retries scheduled with backoff.", job, registry=registry
        )
        self.redeliveries = Counter(
            "conveyor_job_redeliveries",
            "Deliveries of a job whose previous delivery never finished (its worker died).",
            job,
            registry=registry,
        )
        self.dead_lettered = Counter(
            "conveyor_jobs_dead_lettered",
            "Jobs moved to the dead-letter set (worker deaths or exhausted retries).",
            job,
            registry=registry,
        )
        self.runtime = Histogram(
            "conveyor_job_runtime_seconds",
            "Run time of one attempt, for every outcome.",
            (*job, "outcome"),
            buckets=RUNTIME_BUCKETS,
            registry=registry,
        )
        self.queue_wait = Histogram(
            "conveyor_job_queue_wait_seconds",
            "Start of an attempt minus max(enqueue time, due time).",
            job,
            buckets=QUEUE_WAIT_BUCKETS,
            registry=registry,
        )
        self.active = Gauge(
            "conveyor_worker_active_jobs",
            "Jobs running now.",
            ("queue",),
            multiprocess_mode="livesum",
            registry=registry,
        )
        self.concurrency = Gauge(
            "conveyor_worker_concurrency",
            "Job slots (prefork children) of running workers.",
            ("queue",),
            multiprocess_mode="livesum",
            registry=registry,
        )
        self.workflows = WorkflowMetrics(registry)

    def count_from_zero(self, queues: Iterable[str], tasks: Iterable[str]) -> None:
        """Create every job counter of `queues` x `tasks` (every outcome) at 0, and the active
        jobs gauge of each queue at 0 in this process.

        Called in the worker's main process at start: the first failure, retry, redelivery or
        dead letter then shows in rate()/increase() (a series born at 1 shows as no increase),
        ratios read 0 instead of no data, and `conveyor_worker_active_jobs` stays while the
        tier's children are replaced (the main process's own 0 keeps the series alive).
        """
        tasks = tuple(tasks)
        self.workflows.count_from_zero()
        for queue in queues:
            self.active.labels(queue).set(0)
            for task in tasks:
                for counter in (self.started, self.retries, self.redeliveries,
                                self.dead_lettered):  # fmt: skip
                    counter.labels(queue, task)
                for outcome in OUTCOMES:
                    self.completed.labels(queue, task, outcome)


# How a workflow ends (conveyor.jobstore.workflow.WorkflowState's terminal values).
WORKFLOW_OUTCOMES = ("succeeded", "failed", "cancelled")
# How a workflow submission is answered.
WORKFLOW_SUBMISSION_OUTCOMES = (
    *("accepted", "duplicate", "rejected", "rate_limited", "queue_full", "quota_exceeded"),
    *("conflict", "broker_error"),
)
WORKFLOW_DURATION_BUCKETS = (1, 5, 15, 60, 300, 900, 3600, 4 * 3600, 24 * 3600)


class WorkflowMetrics:
    """Workflows by outcome and duration, recorded where a workflow ends: the worker whose
    step ended it, or the API that cancelled it (both processes declare these).
    """

    def __init__(self, registry: CollectorRegistry | None) -> None:
        self.ended = Counter(
            "conveyor_workflows_ended",
            "Workflows that ended, by outcome: " + ", ".join(WORKFLOW_OUTCOMES) + ".",
            ("outcome",),
            registry=registry,
        )
        self.duration = Histogram(
            "conveyor_workflow_duration_seconds",
            "From a workflow's acceptance to its end, by outcome.",
            ("outcome",),
            buckets=WORKFLOW_DURATION_BUCKETS,
            registry=registry,
        )

    def workflow_ended(self, outcome: str, seconds: float) -> None:
        """Count one workflow's end."""
        self.ended.labels(outcome).inc()
        self.duration.labels(outcome).observe(seconds)

    def count_from_zero(self) -> None:
        """Every outcome's series at 0 (the duration's buckets too)."""
        for outcome in WORKFLOW_OUTCOMES:
            self.ended.labels(outcome)
            self.duration.labels(outcome)


class ApiMetrics:
    """HTTP and submission metrics of the API processes."""

    def __init__(self, registry: CollectorRegistry | None) -> None:
        self.requests = Counter(
            "conveyor_http_requests",
            "HTTP requests by method (other for a nonstandard one), route template and status "
            "code.",
            ("method", "route", "status"),
            registry=registry,
        )
        self.latency = Histogram(
            "conveyor_http_request_duration_seconds",
            "HTTP request latency by method and route template.",
            ("method", "route"),
            buckets=HTTP_BUCKETS,
            registry=registry,
        )
        self.submissions = Counter(
            "conveyor_api_submissions",
            "Job submissions by outcome: " + ", ".join(SUBMISSION_OUTCOMES) + ".",
            ("outcome",),
            registry=registry,
        )
        # Every outcome from 0 (see count_from_zero); its child found once, not per answer.
        self.submitted = {
            outcome: self.submissions.labels(outcome) for outcome in SUBMISSION_OUTCOMES
        }
        self.accept_latency = Histogram(
            "conveyor_api_accept_duration_seconds",
            "Time to record and enqueue one job (the accept script's round trip).",
            buckets=HTTP_BUCKETS,
            registry=registry,
        )
        self.keys_reloads = Counter(
            "conveyor_api_keys_reloads",
            "Reloads of a changed API keys file by outcome: loaded, or failed (the previous "
            "keys stay in use).",
            ("outcome",),
            registry=registry,
        )
        for outcome in KEYS_RELOAD_OUTCOMES:
            self.keys_reloads.labels(outcome)
        self.workflow_submissions = Counter(
            "conveyor_api_workflow_submissions",
            "Workflow submissions by outcome: " + ", ".join(WORKFLOW_SUBMISSION_OUTCOMES) + ".",
            ("outcome",),
            registry=registry,
        )
        for outcome in WORKFLOW_SUBMISSION_OUTCOMES:
            self.workflow_submissions.labels(outcome)
        self.workflows = WorkflowMetrics(registry)
        self.workflows.count_from_zero()

    def keys_reloaded(self, loaded: bool) -> None:
        """Count one reload of the keys file."""
        self.keys_reloads.labels("loaded" if loaded else "failed").inc()


class BeatMetrics:
    """Scheduler metrics."""

    def __init__(self, registry: CollectorRegistry | None) -> None:
        self.last_tick = Gauge(
            "conveyor_beat_last_tick_timestamp_seconds",
            "When this beat last ran a scheduler tick (only the leader ticks).",
            registry=registry,
        )
        self.leader = Gauge(
            "conveyor_beat_leader",
            "1 while this beat holds the scheduler lock, else 0.",
            registry=registry,
        )
        self.last_run = Gauge(
            "conveyor_beat_schedule_last_run_timestamp_seconds",
            "When each periodic job was last submitted.",
            ("schedule",),
            registry=registry,
        )
        self.runs = Counter(
            "conveyor_beat_runs",
            "Runs submitted by each schedule of the schedule file (API schedules are counted "
            "in conveyor_beat_schedule_ticks_total only: their names are the tenants').",
            ("schedule",),
            registry=registry,
        )
        self.ticks = Counter(
            "conveyor_beat_schedule_ticks",
            "Due schedule ticks, by the schedule's source (file, api) and what the tick did: "
            "ran, skipped_overlap, missed (catch-up skip) or failed (could not submit).",
            ("source", "outcome"),
            registry=registry,
        )


@dataclass(frozen=True)
class ExporterMetric:
    """A gauge the broker exporter computes at scrape time."""

    name: str
    help: str
    labels: tuple[str, ...] = ()


EXPORTER_METRICS = (
    ExporterMetric(
        "conveyor_queue_length",
        "Jobs ready to run on the queue (flow control's held jobs are conveyor_queue_held).",
        ("queue",),
    ),
    ExporterMetric(
        "conveyor_queue_oldest_message_age_seconds",
        "Age of the oldest waiting message (since enqueued, or since due when delayed).",
        ("queue",),
    ),
    ExporterMetric(
        "conveyor_queue_running",
        "Jobs of the queue whose record says running (a dead worker's count until redelivery).",
        ("queue",),
    ),
    ExporterMetric(
        "conveyor_queue_demand",
        "Waiting plus running jobs of the queue: the tier's autoscaling signal.",
        ("queue",),
    ),
    ExporterMetric(
        "conveyor_workers",
        "Live workers consuming the queue (a heartbeat within 2.5 heartbeat intervals).",
        ("queue",),
    ),
    ExporterMetric(
        "conveyor_queue_held",
        "Jobs of the queue held back by flow control (the tier or their tenant paused, or "
        "their tenant at its concurrency limit): waiting, but not in the scaling signal.",
        ("queue",),
    ),
    ExporterMetric("conveyor_queue_paused", "1 while the queue (tier) is paused.", ("queue",)),
    ExporterMetric(
        "conveyor_paused", "How many tiers, tasks and tenants are paused, by kind.", ("kind",)
    ),
    ExporterMetric(
        "conveyor_jobs", "Job records by state (finished ones until they expire).", ("state",)
    ),
    ExporterMetric("conveyor_unacked_deliveries", "Deliveries taken by workers, not yet acked."),
    ExporterMetric(
        "conveyor_unacked_oldest_age_seconds",
        "Age of the oldest unacked delivery's lease (redelivered past the visibility timeout).",
    ),
    ExporterMetric("conveyor_visibility_timeout_seconds", "The workers' visibility timeout."),
    ExporterMetric("conveyor_delayed_jobs", "Delayed jobs and retry backoffs waiting in Redis."),
    ExporterMetric("conveyor_dead_letters", "Jobs in the dead-letter set."),
    ExporterMetric(
        "conveyor_exporter_up",
        "1 if the exporter could read Redis on this scrape; 0: every gauge read from Redis is NaN.",
    ),
    ExporterMetric(
        "conveyor_exporter_scrape_duration_seconds", "Time spent reading Redis on this scrape."
    ),
)
