"""`create_celery`: a worker's Celery app, its services, tasks and bootsteps."""

from functools import partial

from celery import Celery
from celery.signals import worker_init, worker_process_init
from prometheus_client import CollectorRegistry

from conveyor.celery_config import attach_services, celery_config
from conveyor.core.catalog import TaskCatalog, catalog_for
from conveyor.core.heap import settle_heap
from conveyor.core.redis import sync_client
from conveyor.core.settings import Settings
from conveyor.jobstore.store import JobStore
from conveyor.telemetry.metrics import WorkerMetrics
from conveyor.worker import observability
from conveyor.worker.delayed import DelayedJobsPromoter
from conveyor.worker.health import WorkerHealth
from conveyor.worker.job_metrics import JobMetricsRecorder, MetricsServer
from conveyor.worker.leases import LeaseRenewer
from conveyor.worker.lifecycle import ConveyorTask, JobRunner
from conveyor.worker.liveness import LivenessBeat
from conveyor.worker.services import WorkerServices, unlock_pool_in_child
from conveyor.worker.shutdown import ShutdownDeadline


def create_celery(settings: Settings, catalog: TaskCatalog | None = None) -> Celery:
    """The Celery app with every catalogued task bound to the job lifecycle.

    Nothing connects here: redis-py and kombu connect lazily, after prefork.
    """
    catalog = catalog if catalog is not None else catalog_for(settings)
    app = Celery("conveyor", set_as_current=False)
    app.conf.update(celery_config(settings))

    store = JobStore(sync_client(settings), settings)
    registry = CollectorRegistry()
    metrics = WorkerMetrics(registry)
    services = WorkerServices(
        settings=settings,
        catalog=catalog,
        store=store,
        runner=JobRunner(store, catalog, settings),
        metrics=metrics,
        registry=registry,
        health=WorkerHealth(settings.worker.heartbeat_max_age_seconds),
    )
    attach_services(app, services)
    worker_process_init.connect(partial(unlock_pool_in_child, store.client), weak=False)
    JobMetricsRecorder(metrics).connect()
    observability.connect(settings)
    for spec in catalog.values():
        app.register_task(ConveyorTask(spec, services.runner))
    app.steps["worker"].update({DelayedJobsPromoter, LeaseRenewer, ShutdownDeadline, MetricsServer})
    app.steps["consumer"].add(LivenessBeat)
    # Once built, in the main process and in each child (core/heap.py).
    worker_init.connect(lambda **_: settle_heap(), weak=False, dispatch_uid="conveyor.heap")
    worker_process_init.connect(
        lambda **_: settle_heap(), weak=False, dispatch_uid="conveyor.heap.child"
    )
    return app
