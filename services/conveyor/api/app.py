"""`create_app`: the FastAPI application."""

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI
from prometheus_client import CollectorRegistry

from conveyor import __version__
from conveyor.api import problems
from conveyor.api.auth import KeySource, charge_rejected, security_schemes
from conveyor.api.dead_letters import dead_letters_router
from conveyor.api.events import BLOCK_SECONDS, events_router
from conveyor.api.jobs import jobs_router
from conveyor.api.limits import RequestSizeLimitMiddleware
from conveyor.api.meta import meta_router
from conveyor.api.request_metrics import MetricsMiddleware
from conveyor.api.schemas import submission_model
from conveyor.api.state import ApiState
from conveyor.core.catalog import TaskCatalog, load_catalog
from conveyor.core.redis import async_client, stream_client
from conveyor.core.settings import Settings
from conveyor.telemetry.metrics import ApiMetrics
from conveyor.telemetry.tracing import setup_tracing

log = logging.getLogger(__name__)


def create_app(settings: Settings, catalog: TaskCatalog | None = None) -> FastAPI:
    """The API for `settings`; connects to Redis lazily, on the first request."""
    catalog = catalog if catalog is not None else load_catalog(settings.task_modules)
    keys = KeySource(settings.auth)  # fails fast when authentication has no keys
    if settings.auth.disabled:
        log.warning(
            "AUTHENTICATION IS DISABLED (CONVEYOR_AUTH__DISABLED=true): every caller acts as "
            "tenant 'default' with every scope. Never run this way outside local development."
        )
    registry = CollectorRegistry()
    metrics = ApiMetrics(registry)
    tracing = setup_tracing(settings, "conveyor-api")
    state = ApiState(settings, catalog, metrics, keys)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        client = async_client(settings)
        streams = stream_client(settings, BLOCK_SECONDS, settings.api.max_event_streams + 8)
        state.connect(client, streams)
        watcher = asyncio.create_task(keys.watch(), name="conveyor-keys-watch")
        try:
            yield
        finally:
            watcher.cancel()
            await client.aclose()
            await streams.aclose()
            if tracing is not None:
                tracing.shutdown()

    app = FastAPI(
        title="Conveyor",
        version=__version__,
        description="Submit jobs, follow their progress, read their results, cancel them.",
        lifespan=lifespan,
    )
    app.state.conveyor = state
    app.add_middleware(
        RequestSizeLimitMiddleware,
        max_body_bytes=settings.limits.max_body_bytes,
        max_header_bytes=settings.limits.max_header_bytes,
    )
    app.add_middleware(MetricsMiddleware, metrics=metrics)
    problems.install(app, list(catalog), charge_rejected)
    body = submission_model(catalog, settings.jobs.max_delay_seconds)
    app.include_router(jobs_router(catalog, body))
    app.include_router(events_router())
    app.include_router(dead_letters_router())
    app.include_router(meta_router())
    default_openapi = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = security_schemes(default_openapi())
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
    if tracing is not None:
        from opentelemetry.instrumentation.fastapi import FastAPIInstrumentor

        FastAPIInstrumentor.instrument_app(
            app, tracer_provider=tracing, excluded_urls="healthz,readyz"
        )
    return app
