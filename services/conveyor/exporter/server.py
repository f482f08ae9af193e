"""Serving the broker collector and each tier's scaling signal."""

import logging
import signal
import threading
from typing import Any

import orjson
import redis
from prometheus_client import CollectorRegistry
from redis.exceptions import RedisError

from conveyor.core.queues import Queue
from conveyor.core.redis import sync_client
from conveyor.core.settings import Settings
from conveyor.exporter.collector import BrokerCollector, read_demand
from conveyor.jobstore.keys import KeySpace
from conveyor.telemetry.prometheus import Response, Route, serve

log = logging.getLogger(__name__)

JSON = "application/json"


def create_registry(settings: Settings, client: "redis.Redis") -> CollectorRegistry:
    """A registry holding the broker collector for `settings`' Redis."""
    registry = CollectorRegistry()
    lease = settings.worker.visibility_timeout_seconds
    registry.register(BrokerCollector(client, KeySpace(settings.key_prefix), lease))
    return registry


def scaling_route(client: "redis.Redis", keys: KeySpace) -> Route:
    """`GET /scaling/<queue>`: the tier's demand as JSON, for KEDA's metrics-api trigger.

    A Redis failure is a 503, never a zero: KEDA then counts a failed poll and, after its
    failure threshold, applies the ScaledObject's fallback replicas instead of scaling in.
    """

    def route(queue: str) -> Response:
        if queue not in {str(q) for q in Queue}:
            return 404, JSON, orjson.dumps({"error": f"unknown queue {queue!r}"})
        try:
            return 200, JSON, read_demand(client, keys, queue).as_json()
        except RedisError as exc:
            log.warning("scaling signal of %s unavailable: %s", queue, exc)
            return 503, JSON, orjson.dumps({"error": "Redis unavailable"})

    return route


def run_exporter(settings: Settings) -> None:
    """Serve /metrics and /scaling/<queue> on `metrics.exporter_port` until SIGTERM or
    SIGINT.
    """
    stop = threading.Event()

    def on_signal(*_: Any) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    client = sync_client(settings, quick=True)
    routes = {"/scaling/": scaling_route(client, KeySpace(settings.key_prefix))}
    serve(settings.metrics.exporter_port, create_registry(settings, client), routes=routes)
    stop.wait()
