"""`WorkerServices`: what every part of a worker shares, built once per Celery app and
reachable from it (Celery builds the bootsteps and the tasks run inside it: each finds its
collaborators through the app instead of class attributes bound per app).
"""

from dataclasses import dataclass
from typing import TYPE_CHECKING

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


def services_of(app: Celery) -> WorkerServices:
    """The services of a Conveyor worker app (`create_celery` attaches them)."""
    return celery_config.services_of(app, WorkerServices)
