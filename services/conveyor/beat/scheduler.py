"""The beat scheduler: RedBeat's leader lock and schedule storage, with each run submitted
through the job store, so a periodic run is a job like any other (record, progress, result).

The leader also does housekeeping between ticks: it moves due delayed jobs onto their queues
(so they run even while every worker of a tier is scaled to zero) and prunes listing indexes
of jobs whose records have expired.
"""

import logging
import time
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from celery import Celery
from prometheus_client import CollectorRegistry
from redbeat import RedBeatScheduler  # type: ignore[import-untyped]

from conveyor.core.apikeys import SYSTEM_TENANT
from conveyor.core.callbacks import callback_submission
from conveyor.core.catalog import TaskCatalog
from conveyor.core.queues import Queue
from conveyor.core.settings import Settings
from conveyor.jobstore.store import JobStore
from conveyor.jobstore.submission import Submission
from conveyor.telemetry.metrics import BeatMetrics

log = logging.getLogger(__name__)

PRUNE_INTERVAL_SECONDS = 60.0
# A completion callback still pending this long after its job finished is enqueued by beat.
CALLBACK_SWEEP_AFTER_SECONDS = 30.0


class SubmittedRun:
    """What `apply_async` returns: Celery beat only logs its `id`."""

    def __init__(self, job_id: str) -> None:
        self.id = job_id


_ATTRIBUTE = "conveyor_services"


@dataclass(frozen=True)
class BeatServices:
    """What the scheduler works with, reachable from beat's Celery app."""

    settings: Settings
    catalog: TaskCatalog
    store: JobStore
    metrics: BeatMetrics
    registry: CollectorRegistry

    def attach(self, app: Celery) -> None:
        """Make these the services of `app`."""
        setattr(app, _ATTRIBUTE, self)


def services_of(app: Celery) -> BeatServices:
    """The services of a Conveyor beat app."""
    services = getattr(app, _ATTRIBUTE, None)
    if not isinstance(services, BeatServices):
        raise RuntimeError("not a Conveyor beat app (create it with create_beat)")
    return services


class ConveyorScheduler(RedBeatScheduler):  # type: ignore[misc]
    """RedBeat with submissions through the job store (its services come from the app)."""

    def __init__(self, app: Celery, *args: Any, **kwargs: Any) -> None:
        services = services_of(app)
        self.store = services.store
        self.catalog = services.catalog
        self.settings = services.settings
        self.metrics = services.metrics
        self._next_prune = 0.0
        super().__init__(app, *args, **kwargs)

    def apply_async(
        self, entry: Any, producer: Any = None, advance: bool = True, **kwargs: Any
    ) -> SubmittedRun:
        """Submit one run. The idempotency key names the tick, so it is enqueued once."""
        due_at: datetime = entry.due_at
        entry = self.reserve(entry) if advance else entry
        spec = self.catalog[entry.task]
        queue = entry.options.get("queue")
        submission = Submission.of(
            spec,
            tenant=entry.options.get("tenant") or SYSTEM_TENANT,
            args=dict(entry.kwargs),
            priority=Queue(queue) if queue else None,
            idempotency_key=f"schedule:{entry.name}:{int(due_at.timestamp())}",
        )
        outcome = self.store.submit(spec, submission)
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

    def _enqueue_pending_callbacks(self) -> None:
        """Completion callbacks still pending well after their job finished: the party that
        finished it died, or Redis refused the enqueue. Enqueue them (their idempotency key
        makes a second enqueue a no-op).
        """
        for job_id in self.store.pending_callbacks(CALLBACK_SWEEP_AFTER_SECONDS):
            job = self.store.get(job_id)
            callback = callback_submission(job, self.catalog) if job else None
            if callback is not None:
                self.store.submit(*callback)
                log.warning("enqueued the pending completion callback of job %s", job_id)
            self.store.callback_enqueued(job_id)

    def _housekeeping(self) -> None:
        try:
            self.store.promote_due()
            self.store.recover_inflight(self.settings.worker.visibility_timeout_seconds)
            self._enqueue_pending_callbacks()
            if time.monotonic() >= self._next_prune:
                self._next_prune = time.monotonic() + PRUNE_INTERVAL_SECONDS
                now = time.time()
                for key in self.store.index_keys():
                    self.store.prune_index(key, now - self.store.retention_seconds)
                self.store.prune_dead_letters(now - self.store.dead_letter_retention_seconds)
        except Exception:
            log.exception("beat housekeeping failed; retrying next tick")
