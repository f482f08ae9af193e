"""API metrics: an ASGI middleware timing every request by route template.

Every API process records into the multiprocess directory; the gunicorn master serves the
aggregate on its own port (`api/server.py`), so /metrics is not a route of the app.
"""

import time
from typing import Any

from fastapi import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from conveyor.api.state import state_of
from conveyor.telemetry.metrics import ApiMetrics


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


def count_submission(request: Request, outcome: str) -> None:
    """Count a POST /v1/jobs outcome (called where the outcome is decided)."""
    if request.method == "POST" and request.url.path == "/v1/jobs":
        metrics = state_of(request).metrics
        metrics.submissions.labels(outcome).inc()
