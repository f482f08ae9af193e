"""Per-process observability of a worker: log context from job events, and tracing set up in
each prefork child (`worker_process_init`) and flushed when the child exits.
"""

from typing import Any

from celery.signals import worker_process_init, worker_process_shutdown

from conveyor.core.settings import Settings
from conveyor.telemetry.logcontext import bind_job, unbind_job
from conveyor.telemetry.prometheus import mark_dead
from conveyor.worker.job_signals import job_finished, job_started


def connect(settings: Settings) -> None:
    """Subscribe the log-context and tracing hooks (once per worker process)."""
    job_started.connect(_bind_log_context, weak=False, dispatch_uid="conveyor.logcontext.bind")
    job_finished.connect(_unbind_log_context, weak=False, dispatch_uid="conveyor.logcontext.unbind")

    def init_child(**_: Any) -> None:
        from opentelemetry.instrumentation.celery import CeleryInstrumentor

        from conveyor.telemetry.tracing import setup_tracing

        provider = setup_tracing(settings, "conveyor-worker")
        if provider is not None:
            CeleryInstrumentor().instrument(tracer_provider=provider)  # type: ignore[no-untyped-call]

            def flush(**_: Any) -> None:
                provider.shutdown()

            worker_process_shutdown.connect(flush, weak=False, dispatch_uid="conveyor.flush")

    worker_process_init.connect(init_child, weak=False, dispatch_uid="conveyor.tracing")
    worker_process_shutdown.connect(_retire_metrics, weak=False, dispatch_uid="conveyor.metrics")


def _bind_log_context(job_id: str = "", task: str = "", queue: str = "", **_: Any) -> None:
    bind_job(job_id, task, str(queue))


def _unbind_log_context(**_: Any) -> None:
    unbind_job()


def _retire_metrics(pid: int | None = None, **_: Any) -> None:
    import os

    mark_dead(pid or os.getpid())
