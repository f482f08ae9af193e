"""The beat scheduler: RedBeat's leader lock and schedule storage, with each run submitted
through the job store, so a periodic run is a job like any other (record, progress, result).

The leader also does housekeeping between ticks: it moves due delayed jobs onto their queues
(so they run even while every worker of a tier is scaled to zero) and prunes listing indexes
of jobs whose records have expired.
"""

import logging
import time
from datetime import datetime
from typing import Any, ClassVar

from prometheus_client import CollectorRegistry
from redbeat import RedBeatScheduler  # type: ignore[import-untyped]

from conveyor.core.apikeys import SYSTEM_TENANT
from conveyor.core.catalog import TaskCatalog
from conveyor.core.queues import Queue
from conveyor.core.settings import Settings
from conveyor.core.store import JobStore
from conveyor.core.submit import Submission, prepare
from conveyor.telemetry.metrics import BeatMetrics

log = logging.getLogger(__name__)

PRUNE_INTERVAL_SECONDS = 60.0


class SubmittedRun:
    """What `apply_async` returns: Celery beat only logs its `id`."""

    def __init__(self, job_id: str) -> None:
        self.id = job_id


class ConveyorScheduler(RedBeatScheduler):  # type: ignore[misc]
    """RedBeat with submissions through the job store; `create_beat` subclasses it."""

    store: ClassVar[JobStore]
    catalog: ClassVar[TaskCatalog]
    settings: ClassVar[Settings]
    metrics: ClassVar[BeatMetrics]
    registry: ClassVar[CollectorRegistry]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._next_prune = 0.0

    def apply_async(
        self, entry: Any, producer: Any = None, advance: bool = True, **kwargs: Any
    ) -> SubmittedRun:
        """Submit one run. The idempotency key names the tick, so it is enqueued once."""
        due_at: datetime = entry.due_at
        entry = self.reserve(entry) if advance else entry
        spec = self.catalog[entry.task]
        queue = entry.options.get("queue")
        submission = Submission(
            tenant=entry.options.get("tenant") or SYSTEM_TENANT,
            task=spec.name,
            args=dict(entry.kwargs),
            queue=Queue(queue) if queue else spec.queue,
            max_retries=spec.retry.max_retries,
            idempotency_key=f"schedule:{entry.name}:{int(due_at.timestamp())}",
        )
        job, message = prepare(spec, submission, self.settings)
        outcome = self.store.accept(job, message)
        self.metrics.runs.labels(entry.name).inc()
        self.metrics.last_run.labels(entry.name).set(time.time())
        log.info("scheduled run of %s: job %s", entry.name, outcome.job_id)
        return SubmittedRun(outcome.job_id)

    def tick(self, *args: Any, **kwargs: Any) -> float:
        """One scheduler tick, then housekeeping; never sleeps past the promotion interval."""
        interval: float = super().tick(*args, **kwargs)
        # Only the lock holder ticks: a standby blocks on the lock before its first tick.
        self.metrics.leader.set(1)
        self.metrics.last_tick.set(time.time())
        self._housekeeping()
        return min(interval, self.settings.worker.delayed_poll_seconds)

    def close(self) -> None:
        """Release the lock (RedBeat) and stop claiming leadership."""
        self.metrics.leader.set(0)
        super().close()

    def _housekeeping(self) -> None:
        try:
            self.store.promote_due(time.time())
            self.store.recover_inflight(
                time.time(), self.settings.worker.visibility_timeout_seconds
            )
            if time.monotonic() >= self._next_prune:
                self._next_prune = time.monotonic() + PRUNE_INTERVAL_SECONDS
                now = time.time()
                for key in self.store.index_keys():
                    self.store.prune_index(key, now - self.store.retention_seconds)
                self.store.prune_dead_letters(now - self.store.dead_letter_retention_seconds)
        except Exception:
            log.exception("beat housekeeping failed; retrying next tick")
