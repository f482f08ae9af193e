"""`create_app`: the FastAPI application."""

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.docs import (
    get_redoc_html,
    get_swagger_ui_html,
    get_swagger_ui_oauth2_redirect_html,
)
from fastapi.responses import HTMLResponse
from fastapi.routing import APIRoute
from fastapi.staticfiles import StaticFiles
from prometheus_client import CollectorRegistry

from conveyor import __version__
from conveyor.api import problems
from conveyor.api.audit import AuditMiddleware, AuditWriter, audit_router
from conveyor.api.auth import (
    KeySource,
    charge,
    charge_rejected,
    principal_for,
    security_schemes,
)
from conveyor.api.batch import batch_router
from conveyor.api.body_gate import BodyGate
from conveyor.api.dead_letters import dead_letters_router
from conveyor.api.events import BLOCK_SECONDS, events_router
from conveyor.api.jobs import add_submit_route, jobs_router
from conveyor.api.meta import meta_router
from conveyor.api.overview import overview_router
from conveyor.api.pauses import pauses_router
from conveyor.api.request_metrics import MetricsMiddleware
from conveyor.api.schedules import schedules_router
from conveyor.api.schemas import submission_model
from conveyor.api.state import ApiState
from conveyor.api.workflows import workflows_router
from conveyor.console.router import ConsoleHeaders, console_router
from conveyor.core.catalog import TaskCatalog, catalog_for
from conveyor.core.redis import async_client, stream_client
from conveyor.core.settings import Settings
from conveyor.telemetry.metrics import ApiMetrics
from conveyor.telemetry.tracing import setup_tracing

log = logging.getLogger(__name__)

# Swagger UI and ReDoc, vendored (static/README.md): the docs work without internet access.
STATIC_DIR = Path(__file__).with_name("static")
STATIC_URL = "/static/docs"

# `result` is whatever the task returned: say so, rather than leave it untyped.
RESULT_SCHEMA: dict[str, Any] = {
    "description": "The task's return value (any JSON value); set when the job succeeded.",
    "anyOf": [
        {"type": "object", "additionalProperties": True},
        {"type": "array", "items": {}},
        {"type": "string"},
        {"type": "number"},
        {"type": "boolean"},
        {"type": "null"},
    ],
}


def operation_id(route: APIRoute) -> str:
    """Operation ids are the route functions' names (`submit_job`), not FastAPI's
    path-and-method compounds (`submit_job_v1_jobs_post`): what generated clients call.
    """
    return route.name


def create_app(settings: Settings, catalog: TaskCatalog | None = None) -> FastAPI:
    """The API for `settings`; connects to Redis lazily, on the first request."""
    catalog = catalog if catalog is not None else catalog_for(settings)
    registry = CollectorRegistry()
    metrics = ApiMetrics(registry)
    keys = KeySource(settings.auth, metrics.keys_reloaded)  # fails fast without keys
    if settings.auth.disabled:
        log.warning(
            "AUTHENTICATION IS DISABLED (CONVEYOR_AUTH__DISABLED=true): every caller acts as "
            "tenant 'default' with every scope. Never run this way outside local development."
        )
    tracing = setup_tracing(settings, "conveyor-api")
    state = ApiState(settings, catalog, metrics, keys, traced=tracing is not None)
    audit = AuditWriter(state)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        client = async_client(settings)
        streams = stream_client(settings, BLOCK_SECONDS, settings.api.max_event_streams + 8)
        state.connect(client, streams)
        watcher = asyncio.create_task(keys.watch(), name="conveyor-keys-watch")
        audit.start(async_client(settings))
        try:
            yield
        finally:
            watcher.cancel()
            await audit.close()
            await client.aclose()
            await streams.aclose()
            if tracing is not None:
                tracing.shutdown()

    app = FastAPI(
        title="Conveyor",
        version=__version__,
        description="Submit jobs and workflows, follow their progress, read their results, "
        "cancel them.",
        lifespan=lifespan,
        docs_url=None,  # served below, from the package's own copies of the UIs
        redoc_url=None,
        generate_unique_id_function=operation_id,
        # Traces come from the OpenTelemetry instrumentor below, configured from Settings.
        # FastAPI's own telemetry would look the global providers up on every request (an
        # environment read each: 3 % of a submission's CPU), to find them unset.
        telemetry={"tracing": False, "metrics": False, "logs": False},
    )
    app.state.conveyor = state
    app.add_middleware(
        BodyGate,
        max_body_bytes=settings.limits.max_body_bytes,
        max_header_bytes=settings.limits.max_header_bytes,
        body_timeout_seconds=settings.limits.body_timeout_seconds,
        authenticate=lambda headers, method: principal_for(state, headers, method),
        charge=lambda principal: charge(state, principal),
    )
    app.add_middleware(AuditMiddleware, state=state, writer=audit)
    app.add_middleware(MetricsMiddleware, metrics=metrics)
    problems.install(app, list(catalog), charge_rejected)
    body = submission_model(catalog, settings.jobs.max_delay_seconds)
    add_submit_route(app.router, body)  # first: the hot path, matched once (api/jobs.py)
    app.include_router(batch_router(catalog, body, settings.limits.max_batch_jobs))
    app.include_router(jobs_router())
    app.include_router(events_router())
    app.include_router(workflows_router())
    app.include_router(dead_letters_router())
    app.include_router(pauses_router())
    app.include_router(schedules_router())
    app.include_router(meta_router())
    app.include_router(audit_router())
    app.include_router(overview_router())
    if settings.console.enabled:
        app.include_router(console_router())
        app.add_middleware(ConsoleHeaders)
    _serve_docs(app)
    default_openapi = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = problems.document_problems(security_schemes(default_openapi()))
            job = schema["components"]["schemas"].get("Job", {}).get("properties", {})
            if "result" in job:
                job["result"] = RESULT_SCHEMA
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
    if tracing is not None:
        from opentelemetry.instrumentation.fastapi import FastAPIInstrumentor

        FastAPIInstrumentor.instrument_app(
            app, tracer_provider=tracing, excluded_urls="healthz,readyz"
        )
    return app


def _serve_docs(app: FastAPI) -> None:
    """`/docs` (Swagger UI) and `/redoc` with their scripts and styles served from the package
    under /static/docs: no page loads anything from another host.
    """
    app.mount(STATIC_URL, StaticFiles(directory=STATIC_DIR), name="docs-static")
    openapi_url = app.openapi_url or "/openapi.json"
    oauth2_redirect = "/docs/oauth2-redirect"

    @app.get("/docs", include_in_schema=False)
    async def swagger_ui() -> HTMLResponse:
        return get_swagger_ui_html(
            openapi_url=openapi_url,
            title=f"{app.title} - Swagger UI",
            oauth2_redirect_url=oauth2_redirect,
            swagger_js_url=f"{STATIC_URL}/swagger-ui/swagger-ui-bundle.js",
            swagger_css_url=f"{STATIC_URL}/swagger-ui/swagger-ui.css",
            swagger_favicon_url=f"{STATIC_URL}/swagger-ui/favicon-32x32.png",
        )

    @app.get(oauth2_redirect, include_in_schema=False)
    async def swagger_ui_redirect() -> HTMLResponse:
        return get_swagger_ui_oauth2_redirect_html()

    @app.get("/redoc", include_in_schema=False)
    async def redoc() -> HTMLResponse:
        return get_redoc_html(
            openapi_url=openapi_url,
            title=f"{app.title} - ReDoc",
            redoc_js_url=f"{STATIC_URL}/redoc/redoc.standalone.js",
            redoc_favicon_url=f"{STATIC_URL}/swagger-ui/favicon-32x32.png",
            with_google_fonts=False,
        )
