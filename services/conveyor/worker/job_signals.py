"""Signals the job lifecycle sends, for cross-cutting concerns to subscribe to.

Metrics (`worker/job_metrics.py`) and log context (`worker/observability.py`) listen here instead of
being written into the lifecycle. Celery's dispatcher logs a failing receiver and carries on,
so an observability bug never fails a job.
"""

from celery.utils.dispatch import Signal

#: An attempt starts. Arguments: job_id, task, queue, attempt, wait_seconds (float | None),
#: redelivered (bool: the previous delivery never finished).
job_started = Signal(name="conveyor.job_started")

#: An attempt ends. Arguments: job_id, task, queue, outcome (one of telemetry.metrics.OUTCOMES:
#: "succeeded", "failed", "retried", "cancelled", or "superseded" when a newer attempt of the
#: job took over), runtime_seconds (float | None), exception (type name | None),
#: dead_lettered (bool).
job_finished = Signal(name="conveyor.job_finished")

#: A workflow ended with the step this process finished or skipped. Arguments: workflow_id,
#: outcome ("succeeded", "failed", "cancelled"), seconds (since it was accepted).
workflow_ended = Signal(name="conveyor.workflow_ended")
