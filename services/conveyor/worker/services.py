"""`WorkerServices`: what every part of a worker shares, built once per Celery app and
reachable from it (Celery builds the bootsteps and the tasks run inside it: each finds its
collaborators through the app instead of class attributes bound per app).
"""

import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import redis
from celery import Celery
from prometheus_client import CollectorRegistry

from conveyor import celery_config
from conveyor.core.catalog import TaskCatalog
from conveyor.core.settings import Settings
from conveyor.jobstore.store import JobStore
from conveyor.telemetry.metrics import WorkerMetrics

if TYPE_CHECKING:  # both modules use this one
    from conveyor.worker.health import WorkerHealth
    from conveyor.worker.lifecycle import JobRunner


@dataclass(frozen=True)
class WorkerServices:
    """The settings, catalogue, job store, job runner, metrics and health of one worker."""

    settings: Settings
    catalog: TaskCatalog
    store: JobStore
    runner: "JobRunner"
    metrics: WorkerMetrics
    registry: CollectorRegistry
    health: "WorkerHealth"


def unlock_pool_in_child(client: "redis.Redis", **_: Any) -> None:
    """Give a forked prefork child fresh locks for `client`'s connection pool (connected to
    `worker_process_init`, before the child runs a job).

    redis-py resets a pool on its first use in a forked process, but its `reset` (redis-py 8)
    first takes the pool's `_lock`, inherited as the parent left it. The parent's lease renewer
    and delayed-jobs poller threads use the same client; a child forked while one of them held
    that lock blocked for ever on its first command, `start.lua` of its first job (caught with
    py-spy in `ConnectionPool.reset`: the hung pool child of issue 16, whose delivery the
    renewer kept leasing). The pool's lists are discarded by that reset anyway.
    """
    pool = client.connection_pool
    pool._lock = threading.RLock()
    pool._fork_lock = threading.RLock()


def services_of(app: Celery) -> WorkerServices:
    """The services of a Conveyor worker app (`create_celery` attaches them)."""
    return celery_config.services_of(app, WorkerServices)
