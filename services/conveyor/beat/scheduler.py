"""The beat scheduler: RedBeat's leader lock and schedule storage, with each run submitted
through the job store, so a periodic run is a job like any other (record, progress, result).

The leader also does housekeeping between ticks: it moves due delayed jobs onto their queues
(so they run even while every worker of a tier is scaled to zero) and prunes listing indexes
of jobs whose records have expired.
"""

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from celery import Celery
from kombu.transport.redis import Channel
from prometheus_client import CollectorRegistry
from redbeat import RedBeatScheduler  # type: ignore[import-untyped]
from redbeat.schedulers import LUA_EXTEND_TO_SCRIPT, get_redis  # type: ignore[import-untyped]
from redis.exceptions import LockError, RedisError

from conveyor import celery_config
from conveyor.beat.schedule import WORKFLOW_ENTRY
from conveyor.core.apikeys import SYSTEM_TENANT
from conveyor.core.callbacks import callback_submission
from conveyor.core.catalog import TaskCatalog
from conveyor.core.queues import Queue
from conveyor.core.settings import Settings
from conveyor.core.workflow_plan import WorkflowRequest, plan_of
from conveyor.jobstore.store import JobStore
from conveyor.jobstore.submission import Submission, message_for
from conveyor.telemetry.metrics import BeatMetrics

log = logging.getLogger(__name__)

PRUNE_INTERVAL_SECONDS = 60.0
# A run not renewed for this many visibility timeouts, with no delivery unacked, is abandoned.
STUCK_AFTER_LEASES = 3


class SubmittedRun:
    """What `apply_async` returns: Celery beat only logs its `id`."""

    def __init__(self, job_id: str) -> None:
        self.id = job_id


@dataclass(frozen=True)
class BeatServices:
    """What the scheduler works with, reachable from beat's Celery app."""

    settings: Settings
    catalog: TaskCatalog
    store: JobStore
    metrics: BeatMetrics
    registry: CollectorRegistry


def services_of(app: Celery) -> BeatServices:
    """The services of a Conveyor beat app (`create_beat` attaches them)."""
    return celery_config.services_of(app, BeatServices)


class ConveyorScheduler(RedBeatScheduler):  # type: ignore[misc]
    """RedBeat with submissions through the job store (its services come from the app)."""

    lock: Any  # RedBeat's leader lock (a redis-py Lock), or None until one is taken

    def __init__(self, app: Celery, *args: Any, **kwargs: Any) -> None:
        services = services_of(app)
        self.store = services.store
        self.catalog = services.catalog
        self.settings = services.settings
        self.metrics = services.metrics
        self._next_prune = 0.0
        self._next_repair = 0.0
        # Set once this beat holds the lock (RedBeat takes it at start, in beat_init).
        self._leading = True
        self._schedule_written = False
        super().__init__(app, *args, **kwargs)

    def apply_async(
        self, entry: Any, producer: Any = None, advance: bool = True, **kwargs: Any
    ) -> SubmittedRun:
        """Submit one run. The idempotency key names the tick, so it is enqueued once."""
        due_at: datetime = entry.due_at
        entry = self.reserve(entry) if advance else entry
        key = f"schedule:{entry.name}:{int(due_at.timestamp())}"
        if entry.task == WORKFLOW_ENTRY:
            return self._start_workflow(entry, key)
        spec = self.catalog[entry.task]
        queue = entry.options.get("queue")
        submission = Submission.of(
            spec,
            tenant=entry.options.get("tenant") or SYSTEM_TENANT,
            args=dict(entry.kwargs),
            priority=Queue(queue) if queue else None,
            idempotency_key=key,
        )
        outcome = self.store.submit(spec, submission)
        self.metrics.runs.labels(entry.name).inc()
        self.metrics.last_run.labels(entry.name).set(time.time())
        log.info("scheduled run of %s: job %s", entry.name, outcome.job_id)
        return SubmittedRun(outcome.job_id)

    def _start_workflow(self, entry: Any, key: str) -> SubmittedRun:
        """Start one run of a scheduled workflow, once per tick (its idempotency key)."""
        request = WorkflowRequest.model_validate(dict(entry.kwargs))
        tenant = entry.options.get("tenant") or SYSTEM_TENANT
        plan = plan_of(request, self.catalog, self.settings, tenant, key)
        outcome = self.store.submit_workflow(plan)
        self.metrics.runs.labels(entry.name).inc()
        self.metrics.last_run.labels(entry.name).set(time.time())
        log.info("scheduled run of %s: workflow %s", entry.name, outcome.workflow_id)
        return SubmittedRun(outcome.workflow_id)

    def tick(self, *args: Any, **kwargs: Any) -> float:
        """One scheduler tick, then housekeeping; never sleeps past the promotion interval.

        Rides out Redis: an outage (a ConnectionError while extending the lock or reading the
        schedule) is retried next tick; a lost lock (its key gone with an emptied or
        failed-over Redis, or taken by another beat after an outage) makes this beat a
        standby that takes the lock again as soon as it is free, and then re-writes the
        schedule, which an emptied Redis lost too.
        """
        retry = self.settings.worker.delayed_poll_seconds
        try:
            if not self._lead():
                return retry
            if not self._schedule_written:
                self.setup_schedule()
            interval: float = super().tick(*args, **kwargs)
        except LockError as exc:
            self._leading = False
            self.metrics.leader.set(0)
            log.warning("beat: leader lock lost (%s); standing by to take it again", exc)
            return retry
        except RedisError as exc:
            log.warning("beat: Redis unavailable (%s); retrying", exc)
            self._drop_lock_connections()
            return retry
        self.metrics.leader.set(1)
        self.metrics.last_tick.set(time.time())
        self._housekeeping()
        return min(interval, retry)

    def _drop_lock_connections(self) -> None:
        """Close the leader lock's connections, so that the next tick connects afresh (with
        Sentinel: to the primary the Sentinels name now). RedBeat's client does not leave an
        isolated old primary on its refusal (NOREPLICAS), so beat kept extending, and then
        retaking, its lock on that node for as long as the partition lasted.
        """
        if self.lock is None:
            return
        try:
            self.lock.redis.connection_pool.disconnect()
        except Exception:  # a failing hook is logged, never ends beat
            log.exception("beat: could not close the leader lock's connections")

    def _lead(self) -> bool:
        """Whether this beat holds the leader lock, taking it if it is free."""
        if self._leading and self.lock is not None:
            return True
        if self.lock is None:  # taking it at start failed (Redis was down): RedBeat's lock
            client = get_redis(self.app)
            self.lock = client.lock(self.lock_key, timeout=self.lock_timeout,
                                    sleep=self.max_interval)  # fmt: skip
            self.lock.lua_extend = client.register_script(LUA_EXTEND_TO_SCRIPT)
        if not self.lock.acquire(blocking=False):
            self.metrics.leader.set(0)
            return False
        log.info("beat: acquired the leader lock")
        self._leading = True
        self.setup_schedule()
        return True

    def setup_schedule(self) -> None:
        """RedBeat's, but a Redis error leaves it to a later tick: at start it runs before the
        loop (outside `tick`), where an error would end the beat process.
        """
        try:
            super().setup_schedule()
        except RedisError as exc:
            self._schedule_written = False
            log.warning("beat: could not write the schedule (%s); retrying next tick", exc)
        else:
            self._schedule_written = True

    def close(self) -> None:
        """Release the lock (RedBeat) and stop claiming leadership."""
        self.metrics.leader.set(0)
        super().close()

    def _enqueue_pending_callbacks(self) -> None:
        """Completion callbacks still pending well after their job finished: the party that
        finished it died, or Redis refused the enqueue. Enqueue them (their idempotency key
        makes a second enqueue a no-op).
        """
        after = self.settings.beat.callback_sweep_after_seconds
        for job_id in self.store.pending_callbacks(after):
            try:
                job = self.store.get(job_id)
                callback = callback_submission(job, self.catalog) if job else None
                if callback is not None:
                    self.store.submit(*callback)
                    log.warning("enqueued the pending completion callback of job %s", job_id)
                self.store.callback_enqueued(job_id)
            except Exception:  # one bad callback never holds up the others
                log.exception("could not enqueue the pending callback of job %s", job_id)

    def _repair_stuck(self) -> None:
        """Queue again the runs nobody renews (their worker acked without an outcome, or the
        message was lost) whose delivery is gone: a job never stays `running` for ever.
        """
        lease = self.settings.worker.visibility_timeout_seconds
        claimed: set[str] | None = None
        for queue in Queue:
            for job_id, score in self.store.stuck_runs(str(queue), STUCK_AFTER_LEASES * lease):
                if claimed is None:
                    claimed = self.store.unacked_job_ids(Channel.unacked_key)
                job = None if job_id in claimed else self.store.get(job_id)
                spec = self.catalog.get(job.task) if job else None
                if job is None or spec is None:
                    continue  # kombu restores an unacked delivery itself
                generation = self.store.generation(job_id) + 1
                message = message_for(job, spec, self.settings.worker, generation=generation)
                if self.store.repair(job_id, message, score, generation, job.attempts):
                    log.warning("job %s was running with no live run: queued again", job_id)

    def _housekeeping(self) -> None:
        """The leader's chores, each on its own: one that keeps failing stops no other."""
        lease = self.settings.worker.visibility_timeout_seconds
        chores: list[tuple[str, Callable[[], object]]] = [
            ("promote", self.store.promote_due),
            ("recover in-flight", lambda: self.store.recover_inflight(lease)),
            ("pending callbacks", self._enqueue_pending_callbacks),
            (
                "flow control",
                lambda: self.store.sweep_flow(
                    Channel.unacked_key, self.settings.flow.tenant_concurrency_per_tier
                ),
            ),
        ]
        if time.monotonic() >= self._next_repair:
            self._next_repair = time.monotonic() + lease
            chores += [("repair", self._repair_stuck),
                       ("prune nodes", lambda: self.store.prune_dead_nodes(lease))]  # fmt: skip
        if time.monotonic() >= self._next_prune:
            self._next_prune = time.monotonic() + PRUNE_INTERVAL_SECONDS
            chores += [("prune indexes", self._prune_indexes),
                       ("prune dead letters", self.store.prune_dead_letters)]  # fmt: skip
        for name, chore in chores:
            try:
                chore()
            except Exception:  # a failing chore is logged, never stops the others or beat
                log.exception("beat housekeeping (%s) failed; retrying next tick", name)

    def _prune_indexes(self) -> None:
        older_than = time.time() - self.store.retention_seconds
        for key in self.store.index_keys():
            self.store.prune_index(key, older_than)
