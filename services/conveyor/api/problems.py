"""RFC 9457 problem details: every error the API returns, with the offending field named."""

import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from redis.exceptions import RedisError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

from conveyor.api.request_metrics import count_submission

log = logging.getLogger(__name__)

PROBLEM_MEDIA_TYPE = "application/problem+json"
BROKER_RETRY_AFTER_SECONDS = 2


class FieldError(BaseModel):
    """One invalid field: a JSON pointer into the request body and what is wrong with it."""

    pointer: str = Field(..., examples=["#/args/seconds"])
    detail: str


class Problem(BaseModel):
    """An error response (RFC 9457)."""

    type: str = "about:blank"
    title: str
    status: int
    detail: str | None = None
    instance: str | None = None
    errors: list[FieldError] | None = None
    valid_tasks: list[str] | None = Field(None, description="Set when the task is unknown.")


class ProblemError(Exception):
    """Raise to answer with a problem document."""

    def __init__(
        self,
        status: int,
        title: str,
        detail: str | None = None,
        *,
        slug: str | None = None,
        headers: dict[str, str] | None = None,
        **extra: Any,
    ) -> None:
        super().__init__(detail or title)
        self.problem = Problem(
            type=f"urn:conveyor:problem:{slug}" if slug else "about:blank",
            title=title,
            status=status,
            detail=detail,
            **extra,
        )
        self.headers = headers


def problem_response(
    problem: Problem, request: Request, headers: dict[str, str] | None = None
) -> JSONResponse:
    """Serialize a problem for `request`."""
    problem.instance = request.url.path
    return JSONResponse(
        problem.model_dump(exclude_none=True),
        status_code=problem.status,
        media_type=PROBLEM_MEDIA_TYPE,
        headers=headers,
    )


def field_errors(errors: Sequence[Any], task_names: Sequence[str] = ()) -> list[FieldError]:
    """Pydantic errors of a request body as JSON pointers into it."""
    result = []
    for error in errors:
        loc = [str(part) for part in error.get("loc", ())]
        if loc and loc[0] == "body":
            loc = loc[1:]
        # A discriminated union adds the tag (the task name) to the path: it is not a field.
        if loc and loc[0] in task_names:
            loc = loc[1:]
        if error.get("type") in ("union_tag_invalid", "union_tag_not_found"):
            loc = ["task"]
        result.append(FieldError(pointer="#/" + "/".join(loc), detail=str(error.get("msg", ""))))
    return result


def install(
    app: FastAPI,
    task_names: Sequence[str],
    charge: Callable[[Request], Awaitable["ProblemError | None"]] | None = None,
) -> None:
    """Route every error through problem+json. `charge` is awaited for a request whose body
    failed validation; it may answer with another problem instead (the rate limit).
    """

    async def on_problem(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, ProblemError)
        return problem_response(exc.problem.model_copy(), request, exc.headers)

    async def on_validation(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError)
        count_submission(request, "rejected")
        if charge is not None:
            refusal = await charge(request)
            if refusal is not None:
                return problem_response(refusal.problem.model_copy(), request, refusal.headers)
        errors = exc.errors()
        unknown_task = any(
            e.get("type") in ("union_tag_invalid", "union_tag_not_found") for e in errors
        )
        problem = Problem(
            type="urn:conveyor:problem:" + ("unknown-task" if unknown_task else "validation-error"),
            title="Unknown task" if unknown_task else "Invalid request",
            status=422,
            detail=(
                "task must be one of: " + ", ".join(task_names)
                if unknown_task
                else "The request does not match the schema; see errors."
            ),
            errors=field_errors(errors, task_names),
            valid_tasks=list(task_names) if unknown_task else None,
        )
        return problem_response(problem, request)

    async def on_http(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, StarletteHTTPException)
        problem = Problem(title=str(exc.detail), status=exc.status_code)
        headers = dict(exc.headers or {})
        if exc.status_code == 405:
            # Starlette names only the first route's methods; a path served by several
            # routes (GET and POST /v1/jobs) must list them all.
            headers["Allow"] = ", ".join(_allowed_methods(app, request))
        return problem_response(problem, request, headers)

    async def on_redis(request: Request, exc: Exception) -> JSONResponse:
        count_submission(request, "broker_error")
        problem = Problem(
            type="urn:conveyor:problem:broker-unavailable",
            title="Broker unavailable",
            status=503,
            detail="The job store is unreachable; nothing was accepted. Retry later.",
        )
        return problem_response(problem, request, {"Retry-After": str(BROKER_RETRY_AFTER_SECONDS)})

    async def on_unexpected(request: Request, exc: Exception) -> JSONResponse:
        # The traceback goes to the log; the client learns nothing about the internals.
        log.error("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
        problem = Problem(
            type="urn:conveyor:problem:internal-error",
            title="Internal error",
            status=500,
            detail="The request failed on the server; it has been logged.",
        )
        return problem_response(problem, request)

    app.add_exception_handler(ProblemError, on_problem)
    app.add_exception_handler(Exception, on_unexpected)
    app.add_exception_handler(RequestValidationError, on_validation)
    app.add_exception_handler(StarletteHTTPException, on_http)
    app.add_exception_handler(RedisError, on_redis)


def _allowed_methods(app: FastAPI, request: Request) -> list[str]:
    methods: set[str] = set()
    for route in app.router.routes:
        match, _ = route.matches(request.scope)
        if match is not Match.NONE:
            methods.update(getattr(route, "methods", None) or ())
    return sorted(methods)
