"""Serving the broker collector."""

import signal
import threading
from typing import Any

from prometheus_client import CollectorRegistry

from conveyor.core.keys import Keys
from conveyor.core.redis import sync_client
from conveyor.core.settings import Settings
from conveyor.exporter.collector import BrokerCollector
from conveyor.telemetry.prometheus import serve


def create_registry(settings: Settings) -> CollectorRegistry:
    """A registry holding the broker collector for `settings`' Redis."""
    registry = CollectorRegistry()
    lease = settings.worker.visibility_timeout_seconds
    client = sync_client(settings, quick=True)
    collector = BrokerCollector(client, Keys(settings.key_prefix), lease, lease)
    registry.register(collector)
    return registry


def run_exporter(settings: Settings) -> None:
    """Serve /metrics on `metrics.exporter_port` until SIGTERM or SIGINT."""
    stop = threading.Event()

    def on_signal(*_: Any) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    serve(settings.metrics.exporter_port, create_registry(settings))
    stop.wait()
