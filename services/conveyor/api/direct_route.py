"""A route documented by FastAPI but read by hand: POST /v1/jobs, the hot path.

FastAPI's request handler (reading the body, then solving the route's dependencies and
parameters) was a fifth of a submission's CPU, far more than the work it does for this one
route: a content-type check, an API key, one header and one body. `DirectRoute` keeps
everything FastAPI derives from the endpoint's signature (OpenAPI, the route's name, the
included router's matching), but its requests go to a handler that reads the same inputs in
the same order and raises the same errors:

1. the body, read and parsed first (malformed JSON is a 422, an unreadable body a 400);
2. the route's own checks (`require_json`, 415; the caller's scope, 401/403), which raise at
   once, as FastAPI's dependencies do;
3. the header and the body's validation, whose faults are gathered into one
   `RequestValidationError` with FastAPI's locations (`("header", name)`, `("body", ...)`),
   answered 422 by the app's handler like any other.

`tests/fast/test_direct_route.py` sends the same requests through this and through FastAPI's own
handler and compares the answers.
"""

import email.message
import json
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

from fastapi import HTTPException, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute
from pydantic import TypeAdapter, ValidationError

from conveyor.api.auth import authorize
from conveyor.api.body_gate import GATED_BODY
from conveyor.api.limits import require_json
from conveyor.core.apikeys import Principal, Scope


def _is_json(content_type: str | None) -> bool:
    """Whether FastAPI parses a body of `content_type` as JSON: it reads the type as
    `email.message` does (`application/a/b+json` is no JSON type there, though it passes
    `require_json`).
    """
    if content_type == "application/json":
        return True  # the common case, without building a message
    if content_type is None:
        return False
    message = email.message.Message()
    message["content-type"] = content_type
    if message.get_content_maintype() != "application":
        return False
    subtype = message.get_content_subtype()
    return subtype == "json" or subtype.endswith("+json")


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
        body = await _body(request)  # FastAPI reads the body before solving dependencies
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
    when its type is JSON, the bytes as they came otherwise (validation refuses them).
    """
    raw = request.scope.get("state", {}).pop(GATED_BODY, None)  # the gate read it, in limits
    if raw is None:
        raw = await request.body()
    if not raw:
        return _EMPTY
    if not _is_json(request.headers.get("content-type")):
        return raw
    try:
        return json.loads(raw)
    except json.JSONDecodeError as exc:
        error = {"type": "json_invalid", "loc": ("body", exc.pos), "msg": "JSON decode error",
                 "input": {}, "ctx": {"error": exc.msg}}  # fmt: skip
        raise RequestValidationError([error], body=exc.doc) from exc
    except Exception as exc:  # what FastAPI answers for any other unreadable body
        raise HTTPException(400, "There was an error parsing the body") from exc
