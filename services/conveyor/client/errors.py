"""Typed exceptions, mapped from the API's problem+json responses."""

from typing import Any

import httpx


class ConveyorError(Exception):
    """Base of every error the client raises."""


class TransportError(ConveyorError):
    """The API could not be reached (after the retries allowed)."""


class WaitTimeout(ConveyorError):
    """`wait()` gave up before the job reached a terminal state."""

    def __init__(self, job_id: str) -> None:
        super().__init__(f"job {job_id} did not finish before the wait timed out")
        self.job_id = job_id


class ApiError(ConveyorError):
    """An error response; the fields are those of the RFC 9457 problem document."""

    status: int

    def __init__(self, response: httpx.Response, problem: dict[str, Any]) -> None:
        self.status = response.status_code
        self.problem = problem
        self.type: str = problem.get("type", "about:blank")
        self.title: str = problem.get("title") or response.reason_phrase
        self.detail: str | None = problem.get("detail")
        self.errors: list[dict[str, str]] = problem.get("errors") or []
        self.retry_after: float | None = retry_after(response)
        message = f"{self.status} {self.title}"
        if self.detail:
            message += f": {self.detail}"
        for error in self.errors:
            message += f"\n  {error.get('pointer')}: {error.get('detail')}"
        super().__init__(message)


class BadRequest(ApiError):
    """400: the body could not be parsed."""


class Unauthorized(ApiError):
    """401: no API key, or one the API does not know."""


class Forbidden(ApiError):
    """403: the key lacks the scope the operation needs."""


class NotFound(ApiError):
    """404: no such job (or one of another tenant's)."""


class Conflict(ApiError):
    """409: an idempotency key reused with another body, a finished job cancelled, a
    schedule name taken; or 412: a schedule changed since the version given (If-Match).
    """


class PayloadTooLarge(ApiError):
    """413: the request body is over the API's limit."""


class ValidationFailed(ApiError):
    """422: the request does not match the schema; `errors` point at the fields."""


class RateLimited(ApiError):
    """429: the tenant's rate limit; `retry_after` says when to come back."""


class ServiceUnavailable(ApiError):
    """503: the job store is unreachable, or the job's queue is full."""


class ServerError(ApiError):
    """Any other 5xx."""


_BY_STATUS: dict[int, type[ApiError]] = {
    400: BadRequest,
    401: Unauthorized,
    403: Forbidden,
    404: NotFound,
    409: Conflict,
    412: Conflict,  # a schedule changed since the version given (If-Match)
    413: PayloadTooLarge,
    422: ValidationFailed,
    429: RateLimited,
    503: ServiceUnavailable,
}


def error_for(response: httpx.Response) -> ApiError:
    """The typed exception for an error response (its body read already)."""
    try:
        problem = response.json()
    except ValueError:
        problem = {}
    if not isinstance(problem, dict):
        problem = {}
    default = ServerError if response.status_code >= 500 else ApiError
    return _BY_STATUS.get(response.status_code, default)(response, problem)


def retry_after(response: httpx.Response) -> float | None:
    """The Retry-After header in seconds (the delta-seconds form), if any."""
    value = response.headers.get("retry-after")
    try:
        return max(0.0, float(value)) if value is not None else None
    except ValueError:
        return None
