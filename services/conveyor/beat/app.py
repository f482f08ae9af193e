"""`create_beat`: the Celery app and scheduler class beat runs with."""

from celery import Celery
from prometheus_client import CollectorRegistry

from conveyor.beat.schedule import beat_schedule, load_schedule
from conveyor.beat.scheduler import ConveyorScheduler
from conveyor.core.catalog import TaskCatalog, load_catalog
from conveyor.core.redis import sync_client
from conveyor.core.settings import Settings
from conveyor.core.store import JobStore
from conveyor.telemetry.metrics import BeatMetrics
from conveyor.worker.app import celery_config


def create_beat(
    settings: Settings, catalog: TaskCatalog | None = None
) -> tuple[Celery, type[ConveyorScheduler]]:
    """Beat's Celery app (schedule loaded from the schedule file) and its scheduler class.

    The scheduler class carries its metrics `registry` for the caller to serve.
    """
    catalog = catalog if catalog is not None else load_catalog(settings.task_modules)
    jobs = load_schedule(settings.schedule_file, catalog) if settings.schedule_file else []
    app = Celery("conveyor-beat", set_as_current=False)
    app.conf.update(celery_config(settings))
    prefix = settings.key_prefix
    app.conf.update(
        beat_schedule=beat_schedule(jobs),
        beat_max_loop_interval=settings.beat.max_interval_seconds,
        redbeat_redis_url=settings.redis_dsn(),
        redbeat_key_prefix=f"{prefix}:beat",
        redbeat_lock_key=f"{prefix}:beat:lock",
        redbeat_lock_timeout=settings.beat.lock_timeout_seconds,
        redbeat_redis_options={
            "socket_timeout": 5,
            "socket_connect_timeout": 5,
            "socket_keepalive": True,
            "health_check_interval": 10,
            "retry_period": 30,
        },
    )
    if tls := settings.redis_tls_options():
        app.conf.redbeat_redis_use_ssl = tls
    store = JobStore(
        sync_client(settings),
        prefix,
        settings.jobs.retention_seconds,
        settings.jobs.dead_letter_retention_seconds,
    )
    registry = CollectorRegistry()
    metrics = BeatMetrics(registry)
    metrics.leader.set(0)
    attributes = {
        "store": store,
        "catalog": catalog,
        "settings": settings,
        "metrics": metrics,
        "registry": registry,
    }
    scheduler = type("BoundConveyorScheduler", (ConveyorScheduler,), attributes)
    return app, scheduler
