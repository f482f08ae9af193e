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

# The method label's values: any other token a client sends is `other` (methods are the
# client's to choose, and each new one would be a new series).
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


class MetricsMiddleware:
    """Counts and times requests; the route label is the template (`/v1/jobs/{job_id}`), the
    method one of METHODS or `other`, the status the answer's code (the labels are bounded by
    the app's routes).
    """

    def __init__(self, app: ASGIApp, metrics: ApiMetrics) -> None:
        self.app = app
        self.metrics = metrics
        # Each label set's children, found once: `labels()` (a lock, checks, a lookup) was
        # 3 µs of every request. Bounded as the labels are.
        self._counted: dict[tuple[str, str, int], Any] = {}
        self._timed: dict[tuple[str, str], Any] = {}

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
            method = scope["method"] if scope["method"] in METHODS else "other"
            counted = self._counted.get((method, template, status))
            if counted is None:
                counted = self.metrics.requests.labels(method, template, str(status))
                self._counted[method, template, status] = counted
            timed = self._timed.get((method, template))
            if timed is None:
                timed = self._timed[method, template] = self.metrics.latency.labels(
                    method, template
                )
            counted.inc()
            timed.observe(time.perf_counter() - started)


def count_submission(request: Request, outcome: str) -> None:
    """Count a POST /v1/jobs outcome (called where the outcome is decided)."""
    if request.method == "POST" and request.url.path == "/v1/jobs":
        metrics = state_of(request).metrics
        metrics.submitted[outcome].inc()
