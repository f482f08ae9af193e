"""Worker metrics: recorded from job events (in the prefork children), served by the main
process from the multiprocess directory.
"""

import logging
from typing import Any

from celery import bootsteps

from conveyor.telemetry.metrics import WorkerMetrics, exception_label
from conveyor.telemetry.prometheus import scrape_registry, serve
from conveyor.worker.job_signals import job_finished, job_started, workflow_ended
from conveyor.worker.services import services_of

log = logging.getLogger(__name__)


class JobMetricsRecorder:
    """Receives `job_started`/`job_finished` and updates the worker metrics."""

    def __init__(self, metrics: WorkerMetrics) -> None:
        self.metrics = metrics

    def connect(self) -> None:
        """Subscribe to the job events (inherited by the children forked afterwards)."""
        job_started.connect(self.on_started, weak=False)
        job_finished.connect(self.on_finished, weak=False)
        workflow_ended.connect(self.on_workflow_ended, weak=False)

    def on_started(
        self,
        sender: Any = None,
        task: str = "",
        queue: str = "",
        wait_seconds: float | None = None,
        redelivered: bool = False,
        **_: Any,
    ) -> None:
        """An attempt started."""
        m = self.metrics
        m.started.labels(queue, task).inc()
        m.active.labels(queue).inc()
        if redelivered:
            m.redeliveries.labels(queue, task).inc()
        if wait_seconds is not None:
            m.queue_wait.labels(queue, task).observe(wait_seconds)

    def on_finished(
        self,
        sender: Any = None,
        task: str = "",
        queue: str = "",
        outcome: str = "",
        runtime_seconds: float | None = None,
        exception: str | None = None,
        dead_lettered: bool = False,
        **_: Any,
    ) -> None:
        """An attempt ended (runtime is None when it did not run in this process)."""
        m = self.metrics
        m.completed.labels(queue, task, outcome).inc()
        if exception is not None:
            m.failures.labels(queue, task, exception_label(exception)).inc()
        if outcome == "retried":
            m.retries.labels(queue, task).inc()
        if dead_lettered:
            m.dead_lettered.labels(queue, task).inc()
        if runtime_seconds is not None:
            m.active.labels(queue).dec()
            m.runtime.labels(queue, task, outcome).observe(runtime_seconds)

    def on_workflow_ended(
        self, sender: Any = None, outcome: str = "", seconds: float = 0.0, **_: Any
    ) -> None:
        """A workflow ended with a step of this process."""
        self.metrics.workflows.workflow_ended(outcome, seconds)


class MetricsServer(bootsteps.StartStopStep):
    """Worker step: publishes concurrency and serves /metrics, /livez and /readyz from the
    main process.
    """

    def __init__(self, parent: Any, **kwargs: Any) -> None:
        super().__init__(parent, **kwargs)
        services = services_of(parent.app)
        self.metrics = services.metrics
        self.tasks = tuple(services.catalog)
        self.registry = services.registry
        self.health = services.health
        self.port = services.settings.metrics.worker_port

    def start(self, parent: Any) -> None:
        """Set the concurrency gauge, create every job counter of this worker's queues at 0,
        and start the HTTP endpoint (a failure is only logged).
        """
        amqp = parent.app.amqp
        queues = [str(queue) for queue in amqp.queues.consume_from or amqp.queues]
        for queue in queues:
            self.metrics.concurrency.labels(queue).set(parent.concurrency)
        self.metrics.count_from_zero(queues, self.tasks)
        try:
            serve(self.port, scrape_registry(self.registry), routes=self.health.routes())
        except OSError:
            log.exception("cannot serve worker metrics on port %d", self.port)
