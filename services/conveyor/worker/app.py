"""`create_celery`: the Celery application shared by workers and beat."""

from typing import TypeVar

from celery import Celery
from kombu import Queue as KombuQueue
from prometheus_client import CollectorRegistry

from conveyor.core.catalog import TaskCatalog, load_catalog
from conveyor.core.keys import Keys
from conveyor.core.queues import Queue
from conveyor.core.redis import sync_client
from conveyor.core.settings import Settings
from conveyor.core.store import JobStore
from conveyor.telemetry.metrics import WorkerMetrics
from conveyor.worker import observability
from conveyor.worker.delayed import DelayedJobsPromoter
from conveyor.worker.leases import LeaseRenewer
from conveyor.worker.lifecycle import ConveyorTask, JobRunner
from conveyor.worker.liveness import Heartbeat, WorkerHealth
from conveyor.worker.metrics import JobMetricsRecorder, MetricsServer
from conveyor.worker.shutdown import ShutdownDeadline
from conveyor.worker.transport import bind_transport

T = TypeVar("T")


def celery_config(settings: Settings) -> dict[str, object]:
    """Celery settings: JSON only, acks-late, prefetch 1, no result backend."""
    return {
        "broker_url": settings.redis_dsn(),
        # A private CA for rediss:// (kombu passes these to redis-py's SSL connection).
        "broker_use_ssl": settings.redis_tls_options() or None,
        "broker_connection_retry_on_startup": True,
        # kombu's Redis transport, consuming with BLMOVE so no message is lost (transport.py).
        "broker_transport": bind_transport(Keys(settings.key_prefix)),
        "broker_transport_options": {
            "visibility_timeout": settings.worker.visibility_timeout_seconds,
            # One list per queue: the tiers are Conveyor's priorities.
            "priority_steps": [0],
            # Sweep for expired deliveries every interval (kombu's default is 10 s x 10).
            "unacked_restore_interval": settings.worker.restore_interval_seconds,
            "unacked_restore_throttle": 1,
            "unacked_mutex_expire": 60,
            # Never hang on a dead or silent connection: time out, reconnect.
            "socket_timeout": 15,
            "socket_connect_timeout": 5,
            "socket_keepalive": True,
            "health_check_interval": 10,
            "retry_on_timeout": True,
        },
        "broker_connection_max_retries": None,
        "task_serializer": "json",
        "result_serializer": "json",
        "accept_content": ["json"],
        "event_serializer": "json",
        # Results live in the job record; Celery's result backend would be a second copy.
        "task_ignore_result": True,
        "result_backend": None,
        # At-least-once: ack after the job ran; a dead child's message goes back to the queue.
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        "worker_prefetch_multiplier": 1,
        "worker_cancel_long_running_tasks_on_connection_loss": True,
        "task_queues": [KombuQueue(str(q), routing_key=str(q)) for q in Queue],
        "task_default_queue": str(Queue.DEFAULT),
        "task_create_missing_queues": False,
        # Celery task events, for Flower; Conveyor's own job events need none of them.
        "worker_send_task_events": settings.worker.send_task_events,
        "worker_hijack_root_logger": False,
        "enable_utc": True,
        "timezone": "UTC",
    }


def create_celery(settings: Settings, catalog: TaskCatalog | None = None) -> Celery:
    """The Celery app with every catalogued task bound to the job lifecycle.

    Nothing connects here: redis-py and kombu connect lazily, after prefork.
    """
    catalog = catalog if catalog is not None else load_catalog(settings.task_modules)
    app = Celery("conveyor", set_as_current=False)
    app.conf.update(celery_config(settings))

    store = JobStore(
        sync_client(settings),
        settings.key_prefix,
        settings.jobs.retention_seconds,
        settings.jobs.dead_letter_retention_seconds,
    )
    runner = JobRunner(store, catalog, settings)
    registry = CollectorRegistry()
    metrics = WorkerMetrics(registry)
    JobMetricsRecorder(metrics).connect()
    observability.connect(settings)
    bound_task = type("BoundConveyorTask", (ConveyorTask,), {"runner": runner})
    for spec in catalog.values():
        task_class = type(f"Task[{spec.name}]", (bound_task,), {"spec": spec, "name": spec.name})
        app.register_task(task_class())

    worker = settings.worker
    health = WorkerHealth(worker.heartbeat_max_age_seconds)
    app.steps["worker"].update(
        {
            _bind(DelayedJobsPromoter, store=store, interval=worker.delayed_poll_seconds),
            _bind(LeaseRenewer, store=store, lease_seconds=worker.visibility_timeout_seconds),
            _bind(
                ShutdownDeadline,
                store=store,
                timeout=worker.shutdown_timeout_seconds,
                health=health,
            ),
            _bind(
                MetricsServer,
                metrics=metrics,
                registry=registry,
                port=settings.metrics.worker_port,
                health=health,
            ),
        }
    )
    app.steps["consumer"].add(
        _bind(
            Heartbeat,
            base_path=worker.heartbeat_file,
            interval=worker.heartbeat_interval_seconds,
            health=health,
        )
    )
    return app


def _bind(step: type[T], **attributes: object) -> type[T]:
    """A subclass of a bootstep carrying this app's objects (bootsteps are built by Celery)."""
    return type(f"Bound{step.__name__}", (step,), attributes)


def control_app(settings: Settings) -> Celery:
    """A bare Celery client for remote control (revoke) from the API: no tasks, no store."""
    app = Celery("conveyor-control", set_as_current=False)
    app.conf.update(celery_config(settings))
    return app
