"""`celery_config`: the Celery settings every Conveyor Celery app shares (workers, beat, and
the API's revoke client), importable without the worker package.
"""

from typing import TypeVar

from celery import Celery
from kombu import Queue as KombuQueue
from kombu import transport as kombu_transport

from conveyor.core.queues import Queue
from conveyor.core.redis import sentinel_broker_url, sentinel_enabled, sentinel_kwargs
from conveyor.core.settings import Settings

T = TypeVar("T")

# Where a Conveyor Celery app carries its services object (worker or beat).
_SERVICES = "conveyor_services"

# Conveyor's reliable transport (worker/transport.py), by name; its Sentinel variant.
TRANSPORT = "conveyor.worker.transport:ReliableTransport"
SENTINEL_TRANSPORT = "conveyor.worker.transport:ReliableSentinelTransport"


def celery_config(settings: Settings) -> dict[str, object]:
    """Celery settings: JSON only, acks-late, prefetch 1, no result backend."""
    config = _celery_config(settings)
    if sentinel_enabled(settings):
        # The primary found through the Sentinels; it is looked up again on every reconnect.
        config["broker_url"] = sentinel_broker_url(settings)
        config["broker_transport"] = SENTINEL_TRANSPORT
        options = config["broker_transport_options"]
        assert isinstance(options, dict)
        options["master_name"] = settings.redis_sentinel.master_name
        options["sentinel_kwargs"] = sentinel_kwargs(settings)
        keep_sentinel_transport_on_failover()
    return config


def keep_sentinel_transport_on_failover() -> None:
    """Make `sentinel://` name the reliable Sentinel transport in this process.

    kombu takes the `;`-separated Sentinel URLs as failover alternates too: on a reconnect it
    switches to the next one (`Connection.switch`) and takes the transport from that URL's
    scheme, dropping `broker_transport`. A worker then consumed with kombu's stock BRPOP from
    its first reconnect on, and a failover lost any message whose BRPOP had moved it off the
    old primary (replicated) but whose reply died with it: a job `queued` with its message
    nowhere (issue 16).
    """
    kombu_transport.TRANSPORT_ALIASES["sentinel"] = SENTINEL_TRANSPORT
    # kombu caches transport classes by name: forget a stock one resolved before this.
    getattr(kombu_transport, "_transport_cache", {}).pop("sentinel", None)


def _celery_config(settings: Settings) -> dict[str, object]:
    return {
        "broker_url": settings.redis_dsn(),
        # A private CA for rediss:// (kombu passes these to redis-py's SSL connection).
        "broker_use_ssl": settings.redis_tls_options() or None,
        "broker_connection_retry_on_startup": True,
        # kombu's Redis transport, consuming with BLMOVE so no message is lost (named, not
        # imported: beat and the API's revoke need no worker code).
        "broker_transport": TRANSPORT,
        "broker_transport_options": {
            "conveyor_key_prefix": settings.key_prefix,
            "conveyor_tenant_limit": settings.flow.tenant_concurrency_per_tier,
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
        # A broker blip must not kill running jobs: their record and fence make a late ack
        # harmless, and their leases outlive a short outage (a cancelled job re-ran from the
        # start and counted a death).
        "worker_cancel_long_running_tasks_on_connection_loss": False,
        "task_queues": [KombuQueue(str(q), routing_key=str(q)) for q in Queue],
        "task_default_queue": str(Queue.DEFAULT),
        "task_create_missing_queues": False,
        # Celery task events, for Flower; Conveyor's own job events need none of them.
        "worker_send_task_events": settings.worker.send_task_events,
        "worker_hijack_root_logger": False,
        "enable_utc": True,
        "timezone": "UTC",
    }


def control_app(settings: Settings) -> Celery:
    """A bare Celery client for remote control (revoke) from the API: no tasks, no store."""
    app = Celery("conveyor-control", set_as_current=False)
    app.conf.update(celery_config(settings))
    return app


def attach_services(app: Celery, services: object) -> None:
    """Make `services` reachable from `app` (by bootsteps, tasks and the beat scheduler,
    which Celery builds itself).
    """
    setattr(app, _SERVICES, services)


def services_of(app: Celery, kind: type[T]) -> T:
    """The services of `kind` that `app` carries."""
    services = getattr(app, _SERVICES, None)
    if not isinstance(services, kind):
        raise RuntimeError(f"{app.main!r} carries no {kind.__name__}")
    return services
