"""RFC 9457 problem details: every error the API returns, with the offending field named."""

import copy
import json
import logging
from collections.abc import Awaitable, Callable, Iterator, Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from redis.exceptions import RedisError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import BaseRoute, Match

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


_UNKNOWN_TASK = ("union_tag_invalid", "union_tag_not_found")


def field_errors(errors: Sequence[Any], task_names: Sequence[str] = ()) -> list[FieldError]:
    """Pydantic errors of a request body as JSON pointers into it, in words a caller can act
    on (an unknown task is named with the valid ones; malformed JSON says where it breaks).
    """
    result = []
    for error in errors:
        loc = [str(part) for part in error.get("loc", ())]
        if loc and loc[0] == "body":
            loc = loc[1:]
        # A discriminated union adds the tag (the task name) to the path: it is not a field.
        if loc and loc[0] in task_names:
            loc = loc[1:]
        detail = str(error.get("msg", ""))
        kind = error.get("type")
        context = error.get("ctx") or {}
        if kind == "json_invalid":
            # loc is the character offset: not a field of the body.
            where = f" at character {loc[0]}" if loc and loc[0].isdigit() else ""
            loc = []
            detail = f"The body is not valid JSON{where}: {context.get('error', detail)}."
        elif kind == "union_tag_invalid":
            loc = ["task"]
            detail = f"Unknown task {context.get('tag')!r}; the tasks are: {', '.join(task_names)}."
        elif kind == "union_tag_not_found":
            loc = ["task"]
            detail = f"Field required: the task to run, one of: {', '.join(task_names)}."
        # "#" is the whole body (RFC 6901 in a URI fragment), "#/args/seconds" a field.
        pointer = "#/" + "/".join(loc) if loc else "#"
        result.append(FieldError(pointer=pointer, detail=detail))
    return result


# What each problem status means, for the OpenAPI descriptions.
PROBLEM_DESCRIPTIONS: dict[int, str] = {
    400: "The body cannot be parsed at all (not text, or nested past the parser's limits).",
    401: "No API key, or one the API does not know.",
    403: "The key lacks the scope this operation needs.",
    404: "No such job (another tenant's jobs are not found either).",
    408: "The request body did not arrive within `CONVEYOR_LIMITS__BODY_TIMEOUT_SECONDS`.",
    409: "A conflict with the job's state or an idempotency key (see `detail`).",
    413: "The request body is larger than the API accepts.",
    415: "The body is not JSON (`Content-Type: application/json`).",
    422: "A parameter or the body is invalid; `errors[].pointer` names each field.",
    429: "The tenant's rate limit; retry after `Retry-After` seconds.",
    431: "The request headers are larger than the API accepts.",
    503: "The job store is unreachable, or the job's queue is full; retry after `Retry-After`.",
}


def problem_statuses(method: str, path: str, operation: dict[str, Any]) -> list[int]:
    """The problem statuses an operation can answer with, from what it is: every `/v1` call
    401, 403, 429 and 503; a path parameter 404; a query or header parameter or a body 422;
    a POST 413 and 408 (its body is read within a time limit); a body 415 and 400; a header
    parameter 431; a write to a job (POST under /v1/jobs) 409.
    """
    if not path.startswith("/v1/"):
        return []
    parameters = operation.get("parameters", [])
    places = {parameter.get("in") for parameter in parameters}
    body = "requestBody" in operation
    statuses = {401, 403, 429, 503}
    if "path" in places:
        statuses.add(404)
    if places - {"path"} or body:  # a path parameter is any string: a wrong one is a 404
        statuses.add(422)
    if method == "post":
        statuses.update((408, 413))
        if path.startswith("/v1/jobs"):
            statuses.add(409)
    if body:
        statuses.update((400, 415))
    if "header" in places:
        statuses.add(431)
    return sorted(statuses)


def document_problems(schema: dict[str, Any]) -> dict[str, Any]:
    """Make the OpenAPI document say what is sent: every error response is
    `application/problem+json` with the `Problem` schema (never `application/json`), and
    each operation lists only the problem statuses it can answer with.
    """
    components = schema.setdefault("components", {}).setdefault("schemas", {})
    if "Problem" not in components:
        generated = Problem.model_json_schema(ref_template="#/components/schemas/{model}")
        components.update(generated.pop("$defs", {}))
        components["Problem"] = generated
    problem = {PROBLEM_MEDIA_TYPE: {"schema": {"$ref": "#/components/schemas/Problem"}}}
    for path, item in schema.get("paths", {}).items():
        for method, operation in item.items():
            responses = operation.get("responses", {})
            for status in list(responses):
                content = responses[status].get("content", {})
                if int(status) >= 400 and _is_problem(content):
                    del responses[status]
            for status in problem_statuses(method, path, operation):
                responses.setdefault(
                    str(status),
                    {
                        "description": PROBLEM_DESCRIPTIONS[status],
                        "content": copy.deepcopy(problem),
                    },
                )
    # FastAPI's validation-error models, no longer referenced by any response.
    removed = {name: components.pop(name) for name in _FASTAPI_ERRORS if name in components}
    text = json.dumps(schema)
    for name, definition in removed.items():
        if f'/{name}"' in text:
            components[name] = definition
    return schema


_FASTAPI_ERRORS = ("HTTPValidationError", "ValidationError")


def _is_problem(content: dict[str, Any]) -> bool:
    """An error response documented as a Problem, or as FastAPI's own validation error
    (which this API never sends: its 422 is a Problem too).
    """
    refs = [media.get("schema", {}).get("$ref", "") for media in content.values()]
    return not content or any(
        not ref or ref.endswith(("/Problem", "/HTTPValidationError")) for ref in refs
    )


def install(
    app: FastAPI,
    task_names: Sequence[str],
    charge: Callable[[Request], Awaitable["ProblemError | None"]] | None = None,
) -> None:
    """Route every error through problem+json. `charge` is awaited for every failed request
    (it charges an authenticated one that took no token yet); it may answer with another
    problem instead (the rate limit).
    """

    async def charged(request: Request) -> JSONResponse | None:
        # Every authenticated failure takes a token (once): refusals are not free to repeat.
        refusal = await charge(request) if charge is not None else None
        if refusal is None:
            return None
        return problem_response(refusal.problem.model_copy(), request, refusal.headers)

    async def on_problem(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, ProblemError)
        if exc.problem.status != 429 and (refusal := await charged(request)) is not None:
            return refusal
        return problem_response(exc.problem.model_copy(), request, exc.headers)

    async def on_validation(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError)
        count_submission(request, "rejected")
        if (refusal := await charged(request)) is not None:
            return refusal
        errors = exc.errors()
        unknown_task = any(e.get("type") in _UNKNOWN_TASK for e in errors)
        malformed = any(e.get("type") == "json_invalid" for e in errors)
        if unknown_task:
            slug, title, detail = (
                "unknown-task",
                "Unknown task",
                "task must be one of: " + ", ".join(task_names),
            )
        elif malformed:
            slug, title, detail = "malformed-json", "Malformed JSON", "The body is not valid JSON."
        else:
            slug, title, detail = (
                "validation-error",
                "Invalid request",
                "The request does not match the schema; see errors.",
            )
        problem = Problem(
            type=f"urn:conveyor:problem:{slug}",
            title=title,
            status=422,
            detail=detail,
            errors=field_errors(errors, task_names),
            valid_tasks=list(task_names) if unknown_task else None,
        )
        return problem_response(problem, request)

    async def on_http(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, StarletteHTTPException)
        if exc.status_code not in (401, 429) and (refusal := await charged(request)) is not None:
            return refusal
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
        try:
            await charged(request)
        except Exception:
            log.warning("could not charge the failed request to its tenant", exc_info=True)
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
    """A 405's `Allow`: the methods of the path template the request's path reaches first
    (the route routing would pick but for the method, and every route of the same template),
    as its OpenAPI path item documents them.
    """
    routes = list(_leaf_routes(app.router.routes))
    template = next(
        (getattr(route, "path", None) for route in routes
         if route.matches(request.scope)[0] is not Match.NONE),
        None,
    )  # fmt: skip
    methods: set[str] = set()
    for route in routes:
        if template is not None and getattr(route, "path", None) == template:
            methods.update(getattr(route, "methods", None) or ())
    return sorted(methods)


def _leaf_routes(routes: Sequence[BaseRoute]) -> Iterator[BaseRoute]:
    """The routes, those of included routers too: FastAPI (0.165) keeps an included router
    whole (`original_router`, its routes carrying their full paths) instead of copying its
    routes into the app's, and the router itself names no methods.
    """
    for route in routes:
        included = getattr(route, "original_router", None)
        if included is not None:
            yield from _leaf_routes(included.routes)
        else:
            yield route
