"""API metrics: an ASGI middleware timing every request by route template, and /metrics."""

import time
from typing import Any

from fastapi import APIRouter, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from conveyor.telemetry.metrics import ApiMetrics
from conveyor.telemetry.prometheus import scrape_registry


class MetricsMiddleware:
    """Counts and times requests; the route label is the template (`/v1/jobs/{job_id}`)."""

    def __init__(self, app: ASGIApp, metrics: ApiMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Wrap one request."""
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def send_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            route: Any = scope.get("route")
            template = getattr(route, "path", None) or "unmatched"
            method = scope["method"]
            self.metrics.requests.labels(method, template, str(status)).inc()
            self.metrics.latency.labels(method, template).observe(time.perf_counter() - started)


def metrics_router(registry: CollectorRegistry) -> APIRouter:
    """GET /metrics: every API process's metrics (aggregated in multiprocess mode)."""
    router = APIRouter()
    served = scrape_registry(registry)

    @router.get("/metrics", include_in_schema=False)
    async def metrics() -> Response:
        return Response(generate_latest(served), media_type=CONTENT_TYPE_LATEST)

    return router


def count_submission(request: Request, outcome: str) -> None:
    """Count a POST /v1/jobs outcome (called where the outcome is decided)."""
    if request.method == "POST" and request.url.path == "/v1/jobs":
        metrics: ApiMetrics = request.app.state.metrics
        metrics.submissions.labels(outcome).inc()
