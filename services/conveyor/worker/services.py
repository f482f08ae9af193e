"""`WorkerServices`: what every part of a worker shares, built once per Celery app and
reachable from it (Celery builds the bootsteps and the tasks run inside it: each finds its
collaborators through the app instead of class attributes bound per app).
"""

from dataclasses import dataclass
from typing import TYPE_CHECKING

from celery import Celery
from prometheus_client import CollectorRegistry

from conveyor.core.catalog import TaskCatalog
from conveyor.core.settings import Settings
from conveyor.jobstore.store import JobStore
from conveyor.telemetry.metrics import WorkerMetrics

if TYPE_CHECKING:  # both modules use this one
    from conveyor.worker.lifecycle import JobRunner
    from conveyor.worker.liveness import WorkerHealth

_ATTRIBUTE = "conveyor_services"


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

    def attach(self, app: Celery) -> None:
        """Make these the services of `app`."""
        setattr(app, _ATTRIBUTE, self)


def services_of(app: Celery) -> WorkerServices:
    """The services of a Conveyor worker app."""
    services = getattr(app, _ATTRIBUTE, None)
    if not isinstance(services, WorkerServices):
        raise RuntimeError("not a Conveyor worker app (create it with create_celery)")
    return services
