"""A route documented by FastAPI but read by hand: POST /v1/jobs, the hot path.

FastAPI's request handler (reading the body, then solving the route's dependencies and
parameters) was a fifth of a submission's CPU, far more than the work it does for this one
route: a content-type check, an API key, one header and one body. `DirectRoute` keeps
everything FastAPI derives from the endpoint's signature (OpenAPI, the route's name, the
included router's matching), but its requests go to a handler that reads the same inputs in
the same order and raises the same errors:

1. the route's own checks (`require_json`, 415; the caller's scope, 401/403), which raise at
   once, as FastAPI's dependencies do;
2. the header and the body, whose faults are gathered into one `RequestValidationError`
   with FastAPI's locations (`("header", name)`, `("body", ...)`), answered 422 by the
   app's handler like any other.

`tests/test_direct_route.py` sends the same requests through this and through FastAPI's own
handler and compares the answers.
"""

import json
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

from fastapi import HTTPException, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute
from pydantic import TypeAdapter, ValidationError

from conveyor.api.auth import authorize
from conveyor.api.limits import require_json
from conveyor.core.apikeys import Principal, Scope

# An empty body: missing, where a body of `null` is validated (and refused) as FastAPI does.
_EMPTY = object()
Handler = Callable[[Request], Coroutine[Any, Any, Response]]
# What the route hands on: the request, its caller, the validated body and header value.
Accept = Callable[[Request, Principal, Any, str | None], Awaitable[Response]]


def direct_route(handler: Handler) -> type[APIRoute]:
    """An APIRoute class whose requests go to `handler` (the endpoint documents it)."""

    class DirectRoute(APIRoute):
        def get_route_handler(self) -> Handler:
            return handler

    return DirectRoute


def submission_handler(
    body_model: Any, header: str, max_header_length: int, scope: Scope, accept: Accept
) -> Handler:
    """The handler of a route taking a JSON body of `body_model` and an optional `header` of
    at most `max_header_length` characters, for callers holding `scope`; `accept` answers.
    """
    body_adapter: TypeAdapter[Any] = TypeAdapter(body_model)
    header_key = header.lower()

    async def handle(request: Request) -> Response:
        await require_json(request)
        principal = await authorize(request, scope)
        errors: list[dict[str, Any]] = []
        value = request.headers.get(header_key)
        if value is not None and len(value) > max_header_length:
            errors.append(
                {
                    "type": "string_too_long",
                    "loc": ("header", header),
                    "msg": f"String should have at most {max_header_length} characters",
                    "input": value,
                    "ctx": {"max_length": max_header_length},
                }
            )
        body = await _body(request)
        validated: Any = None
        if body is _EMPTY:
            errors.append({"type": "missing", "loc": ("body",), "msg": "Field required",
                           "input": None})  # fmt: skip
        else:
            try:
                validated = body_adapter.validate_python(body, from_attributes=True)
            except ValidationError as exc:
                errors.extend(
                    {**error, "loc": ("body", *error["loc"])}
                    for error in exc.errors(include_url=False)
                )
        if errors:
            raise RequestValidationError(errors, body=None if body is _EMPTY else body)
        return await accept(request, principal, validated, value)

    return handle


async def _body(request: Request) -> Any:
    """The body as FastAPI reads it: `_EMPTY` when empty (JSON's null is a body), parsed
    when its type is JSON (the route's `require_json` has refused other types), the bytes as
    they came without a type.
    """
    raw = await request.body()
    if not raw:
        return _EMPTY
    if request.headers.get("content-type") is None:
        return raw
    try:
        return json.loads(raw)
    except json.JSONDecodeError as exc:
        error = {"type": "json_invalid", "loc": ("body", exc.pos), "msg": "JSON decode error",
                 "input": {}, "ctx": {"error": exc.msg}}  # fmt: skip
        raise RequestValidationError([error], body=exc.doc) from exc
    except Exception as exc:  # what FastAPI answers for any other unreadable body
        raise HTTPException(400, "There was an error parsing the body") from exc
