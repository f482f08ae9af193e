"""The beat scheduler: RedBeat's leader lock, and the schedule store's schedules (the
schedule file's and the API's alike) run by the leader: each due tick (Redis' clock) is
submitted through the job store with the tick in its idempotency key, so a tick runs once
across failovers, and a periodic run is a job like any other (record, progress, result).
Changes made through the API are read from Redis each tick: no restart, no reload.

The leader also does housekeeping between ticks: it moves due delayed jobs onto their queues
(so they run even while every worker of a tier is scaled to zero) and prunes listing indexes
of jobs whose records have expired.
"""

import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from celery import Celery
from kombu.transport.redis import Channel
from prometheus_client import CollectorRegistry
from redbeat import RedBeatScheduler  # type: ignore[import-untyped]
from redbeat.schedulers import LUA_EXTEND_TO_SCRIPT, get_redis  # type: ignore[import-untyped]
from redis.exceptions import LockError, RedisError

from conveyor import celery_config
from conveyor.beat.schedule import FileSchedule
from conveyor.core.callbacks import callback_submission
from conveyor.core.catalog import TaskCatalog
from conveyor.core.queues import Queue
from conveyor.core.schedule_runs import run_key, schedule_run
from conveyor.core.schedules import (
    OverlapPolicy,
    ScheduleSource,
    TickOutcome,
    iso,
    plan_tick,
)
from conveyor.core.settings import Settings
from conveyor.jobstore.results import AcceptVerdict
from conveyor.jobstore.schedule_store import (
    FILE_ID,
    ScheduleStore,
    StoredSchedule,
    timing_changed,
)
from conveyor.jobstore.store import JobStore
from conveyor.jobstore.submission import message_for
from conveyor.telemetry.metrics import BeatMetrics

log = logging.getLogger(__name__)

PRUNE_INTERVAL_SECONDS = 60.0
# Due schedules started per tick at most (the rest are due still, next tick).
DUE_BATCH = 200
# A run not renewed for this many visibility timeouts, with no delivery unacked, is abandoned.
STUCK_AFTER_LEASES = 3


@dataclass(frozen=True)
class BeatServices:
    """What the scheduler works with, reachable from beat's Celery app."""

    settings: Settings
    catalog: TaskCatalog
    store: JobStore
    metrics: BeatMetrics
    registry: CollectorRegistry
    schedules: ScheduleStore
    file_schedules: list[FileSchedule]


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
        self.schedules = services.schedules
        self.file_schedules = services.file_schedules
        self._next_prune = 0.0
        self._next_repair = 0.0
        # Set once this beat holds the lock (RedBeat takes it at start, in beat_init).
        self._leading = True
        self._schedule_written = False
        super().__init__(app, *args, **kwargs)

    def _run_due_schedules(self) -> None:
        """Start the run of every schedule whose next tick is due by Redis' clock."""
        now_ms, due = self.schedules.due(DUE_BATCH)
        for schedule_id, _ in due:
            schedule = self.schedules.get(schedule_id)
            if schedule is None or schedule.next_tick_ms is None or schedule.definition.paused:
                continue  # deleted or paused meanwhile (its change took it off the due set)
            self._run_tick(schedule, now_ms)

    def _run_tick(self, schedule: StoredSchedule, now_ms: int) -> None:
        """One due tick: run it (once: the tick is in the run's idempotency key), skip it
        (overlap) or drop it (missed, catch-up `skip`); then move the schedule on, fenced on
        the version and due time read, so an edit made meanwhile stands.
        """
        assert schedule.next_tick_ms is not None
        definition = schedule.definition
        grace = self.settings.schedules.catch_up_grace_seconds + definition.jitter_seconds
        plan = plan_tick(definition.timing(), schedule.next_tick_ms / 1000, now_ms / 1000,
                         schedule.anchor_ms / 1000, definition.catch_up, grace)  # fmt: skip
        tick_ms = round((plan.tick or schedule.next_tick_ms / 1000) * 1000)
        run_id: str | None = None
        kind = "workflow" if definition.workflow is not None else "job"
        if plan.tick is None:
            outcome = TickOutcome.MISSED
        elif (definition.overlap is OverlapPolicy.SKIP and schedule.last_run_id
              and not self.store.run_finished(schedule.last_run_id,
                                              schedule.last_run_kind or "job")):  # fmt: skip
            outcome = TickOutcome.SKIPPED_OVERLAP
        else:
            run_id, outcome = self._submit(schedule, tick_ms)
        next_tick_ms = round(plan.next_tick * 1000)
        jitter = random.uniform(0, definition.jitter_seconds)  # noqa: S311 - spreads load
        next_due_ms = next_tick_ms + round(jitter * 1000)
        if not self.schedules.advance(schedule, next_tick_ms, next_due_ms, tick_ms,
                                      str(outcome), run_id, kind):  # fmt: skip
            log.info("schedule %s changed while its tick ran; keeping the change", schedule.id)
        self.metrics.ticks.labels(str(schedule.source), str(outcome)).inc()
        if schedule.source is ScheduleSource.FILE and run_id is not None:
            self.metrics.runs.labels(definition.name).inc()
            self.metrics.last_run.labels(definition.name).set(time.time())
        if outcome is not TickOutcome.RAN:
            log.warning("schedule %s (%s): tick %s %s", schedule.id, definition.name,
                        iso(tick_ms / 1000), outcome)  # fmt: skip

    def _submit(self, schedule: StoredSchedule, tick_ms: int) -> tuple[str | None, TickOutcome]:
        """Submit the tick's run; a run that cannot be built or is refused is logged (and
        counted `failed`) rather than retried for ever. Redis errors end the tick.
        """
        definition = schedule.definition
        key = run_key(schedule.id, tick_ms)
        try:
            run = schedule_run(definition, schedule.tenant, self.catalog, self.settings, key)
            if run.plan is not None:
                accepted = self.store.submit_workflow(run.plan)
                run_id, verdict = accepted.workflow_id, accepted.verdict
            else:
                assert run.spec is not None
                assert run.submission is not None
                outcome = self.store.submit(run.spec, run.submission)
                run_id, verdict = outcome.job_id, outcome.verdict
            if verdict not in (AcceptVerdict.CREATED, AcceptVerdict.EXISTING):
                # EXISTING is this tick's own run (a failover's second try); anything else
                # (a conflicting key) is no run of this schedule.
                log.error("schedule %s (%s): its run was refused (%s)", schedule.id,
                          definition.name, verdict)  # fmt: skip
                return None, TickOutcome.FAILED
        except RedisError:
            raise
        except Exception:  # a broken schedule never stops beat nor the other schedules
            log.exception("schedule %s (%s): could not submit its run", schedule.id,
                          definition.name)  # fmt: skip
            return None, TickOutcome.FAILED
        log.info("scheduled run of %s: %s %s", definition.name,
                 "workflow" if definition.workflow else "job", run_id)  # fmt: skip
        return run_id, TickOutcome.RAN

    def _sync_file_entry(self, entry: FileSchedule) -> None:
        definition = entry.definition()
        current = self.schedules.get(entry.id)
        if current and current.tenant == entry.tenant and current.definition == definition:
            return
        keep_anchor = current and not timing_changed(current.definition, definition)
        jitter = random.uniform(0, definition.jitter_seconds)  # noqa: S311 - spreads load
        self.schedules.put(entry.id, entry.tenant, ScheduleSource.FILE, definition, "*",
                           anchor_ms=current.anchor_ms if current and keep_anchor else None,
                           jitter=jitter)  # fmt: skip

    def _sync_file_schedules(self) -> None:
        """Write the schedule file's entries into the store as `file` schedules (an entry
        left unchanged keeps its next tick), and delete those the file no longer has.
        """
        wanted = {entry.id: entry for entry in self.file_schedules}
        for entry in self.file_schedules:
            try:
                self._sync_file_entry(entry)
            except RedisError:
                raise
            except Exception:  # one broken entry never keeps the others out, nor beat
                log.exception("schedule file entry %s not loaded", entry.name)
        for schedule_id in self.schedules.ids():
            if schedule_id.startswith(FILE_ID.format(name="")) and schedule_id not in wanted:
                self.schedules.delete(schedule_id)
                log.info("schedule %s left the schedule file: deleted", schedule_id)

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
            self._run_due_schedules()
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
            self._sync_file_schedules()
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
