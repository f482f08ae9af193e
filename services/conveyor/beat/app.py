"""`create_beat`: the Celery app beat runs with, carrying its services."""

from celery import Celery
from prometheus_client import CollectorRegistry

from conveyor.beat.schedule import load_schedule
from conveyor.beat.scheduler import BeatServices
from conveyor.celery_config import attach_services, celery_config
from conveyor.core.catalog import TaskCatalog, catalog_for
from conveyor.core.redis import (
    primary_credentials,
    sentinel_enabled,
    sentinel_kwargs,
    sync_client,
)
from conveyor.core.schedules import ScheduleSource, TickOutcome
from conveyor.core.settings import Settings
from conveyor.jobstore.keys import KeySpace
from conveyor.jobstore.schedule_store import ScheduleStore
from conveyor.jobstore.store import JobStore
from conveyor.telemetry.metrics import BeatMetrics


def create_beat(
    settings: Settings, catalog: TaskCatalog | None = None
) -> tuple[Celery, BeatServices]:
    """Beat's Celery app (schedule loaded from the schedule file) and its services, which
    `ConveyorScheduler` finds through the app (the caller serves their metrics registry).
    """
    catalog = catalog if catalog is not None else catalog_for(settings)
    schedule_file = settings.schedule_file
    jobs = load_schedule(schedule_file, catalog, settings) if schedule_file else []
    app = Celery("conveyor-beat", set_as_current=False)
    app.conf.update(celery_config(settings))
    keys = KeySpace(settings.key_prefix)
    app.conf.update(
        beat_schedule={},  # the leader runs the schedule store's schedules (scheduler.py)
        beat_max_loop_interval=settings.beat.max_interval_seconds,
        redbeat_redis_url=settings.redis_dsn(),
        redbeat_key_prefix=keys.beat,
        redbeat_lock_key=f"{keys.beat}:lock",
        redbeat_lock_timeout=settings.beat.lock_timeout_seconds,
        redbeat_redis_options={
            "socket_timeout": 5,
            "socket_connect_timeout": 5,
            "socket_keepalive": True,
            "health_check_interval": 10,
            "retry_period": 30,
        },
    )
    if sentinel_enabled(settings):
        # RedBeat's Sentinel mode: its leader lock and schedule follow the primary.
        primary = primary_credentials(settings)
        app.conf.redbeat_redis_url = "redis-sentinel://"
        app.conf.redbeat_redis_options = {
            **app.conf.redbeat_redis_options,
            "sentinels": settings.redis_sentinel.hosts(),
            "service_name": settings.redis_sentinel.master_name,
            "sentinel_kwargs": sentinel_kwargs(settings),
            "db": primary["db"],
            "password": primary.get("password"),
            **({"username": primary["username"]} if "username" in primary else {}),
        }
        if primary.get("ssl"):
            app.conf.redbeat_redis_use_ssl = settings.redis_tls_options() or {
                "ssl_cert_reqs": "required"
            }
    elif tls := settings.redis_tls_options():
        app.conf.redbeat_redis_use_ssl = tls
    registry = CollectorRegistry()
    client = sync_client(settings)
    services = BeatServices(
        settings=settings,
        catalog=catalog,
        store=JobStore(client, settings),
        metrics=BeatMetrics(registry),
        registry=registry,
        schedules=ScheduleStore(client, keys),
        file_schedules=jobs,
    )
    services.metrics.leader.set(0)
    for job in jobs:  # every schedule's counter exists from the start, at 0
        services.metrics.runs.labels(job.name)
    for source in ScheduleSource:
        for outcome in TickOutcome:
            services.metrics.ticks.labels(str(source), str(outcome))
    attach_services(app, services)
    return app, services
