"""`BodyGate`: what a request must pass before its body is read (header size, credentials,
declared length), and how the body is read (size and time limits).
"""

import asyncio
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import orjson
from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from conveyor.api.problems import PROBLEM_MEDIA_TYPE, Problem, ProblemError

BODYLESS_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "DELETE"})
# The request state's entry holding the body the gate read: a route that reads its body by
# hand (api/direct_route.py) takes it from there, without Starlette's stream over the replay
# (4.5 µs a request). The gate removes it once the request is answered.
GATED_BODY = "gated_body"

# Checks a request's credentials from its headers (and method) alone: (principal, how it
# came: `api` or `console`), or ProblemError (401, 403).
Authenticate = Callable[[Mapping[str, str], str], Awaitable[tuple[object, str]]]
# Takes a token from the principal's tenant for a request the gate refused (413, 408).
Charge = Callable[[Any], Awaitable[object]]


class BodyGate:
    """What a request must pass before its body is read, and how the body is read.

    431 for headers larger than `max_header_bytes`; for a request with a body, 401 unless
    `authenticate` accepts its headers (an anonymous client cannot make the API buffer or
    parse anything); 413 for a body larger than `max_body_bytes`, declared or streamed (an
    oversized body costs at most that much memory); 408 when the body takes longer than
    `body_timeout_seconds` to arrive (a slow body cannot hold a connection open). Every
    refusal closes the connection, since the rest of the body is never read.
    """

    def __init__(
        self,
        app: ASGIApp,
        max_body_bytes: int,
        max_header_bytes: int,
        body_timeout_seconds: float,
        authenticate: Authenticate | None = None,
        charge: Charge | None = None,
    ) -> None:
        self.app = app
        self.max_bytes = max_body_bytes
        self.max_header_bytes = max_header_bytes
        self.body_timeout = body_timeout_seconds
        self.authenticate = authenticate
        self.charge = charge

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Check the headers, the credentials and the declared length, then buffer the body
        up to the limit within the time limit.
        """
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = scope["headers"]
        if sum(len(name) + len(value) + 4 for name, value in headers) > self.max_header_bytes:
            await _refuse(
                scope,
                send,
                431,
                "Request headers too large",
                f"Request headers are limited to {self.max_header_bytes} bytes.",
                "headers-too-large",
            )
            return
        fields = dict(headers)
        declared = fields.get(b"content-length")
        has_body = declared not in (None, b"0") or b"transfer-encoding" in fields
        if scope["method"] in BODYLESS_METHODS and not has_body:
            await self.app(scope, receive, send)
            return
        # Any request with a body, whatever its method, is authenticated first and its body
        # read within the size and time limits: a GET or DELETE with a body trickled in would
        # otherwise hold the connection (uvicorn's keep-alive timer restarts with every byte).
        principal = None
        if self.authenticate is not None:
            try:
                principal, via = await self.authenticate(Headers(scope=scope), scope["method"])
                # Routes and error handlers know who it is without asking again (and charge
                # that tenant for a body that turns out to be unparsable).
                scope.setdefault("state", {}).update(principal=principal, via=via)
            except ProblemError as exc:
                problem = exc.problem
                await _refuse(
                    scope, send, problem.status, problem.title, problem.detail or "",
                    problem.type.rsplit(":", 1)[-1], exc.headers,
                )  # fmt: skip
                return
        if declared is not None and (not declared.isdigit() or int(declared) > self.max_bytes):
            await self._charge(scope, principal)
            await self._too_large(scope, send)
            return
        try:
            async with asyncio.timeout(self.body_timeout):
                body = await self._read(receive)
        except TimeoutError:
            await self._charge(scope, principal)
            await _refuse(
                scope,
                send,
                408,
                "Request timeout",
                f"The request body did not arrive within {self.body_timeout:g} s.",
                "body-timeout",
            )
            return
        except _TooLargeError:
            await self._charge(scope, principal)
            await self._too_large(scope, send)
            return
        if body is None:
            return  # the client went away
        scope.setdefault("state", {})[GATED_BODY] = body
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        try:
            await self.app(scope, replay, send)
        finally:
            # uvicorn keeps a connection's last scope until its next request or the end of
            # its keep-alive: the body must not stay in memory that long.
            scope["state"].pop(GATED_BODY, None)

    async def _charge(self, scope: Scope, principal: object) -> None:
        if principal is not None and self.charge is not None:
            await self.charge(principal)
            scope["state"]["charged"] = True

    async def _read(self, receive: Receive) -> bytes | None:
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return None
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_bytes:
                raise _TooLargeError
            chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks)

    async def _too_large(self, scope: Scope, send: Send) -> None:
        await _refuse(
            scope,
            send,
            413,
            "Request body too large",
            f"Request bodies are limited to {self.max_bytes} bytes.",
            "body-too-large",
        )


class _TooLargeError(Exception):
    """The streamed body passed the limit."""


async def _refuse(
    scope: Scope,
    send: Send,
    status: int,
    title: str,
    detail: str,
    slug: str,
    headers: dict[str, str] | None = None,
) -> None:
    problem = Problem(
        type=f"urn:conveyor:problem:{slug}",
        title=title,
        status=status,
        detail=detail,
        instance=scope.get("path"),
    )
    body = orjson.dumps(problem.model_dump(exclude_none=True))
    extra = [(name.lower().encode(), value.encode()) for name, value in (headers or {}).items()]
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", PROBLEM_MEDIA_TYPE.encode()),
                (b"content-length", str(len(body)).encode()),
                (b"connection", b"close"),
                *extra,
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})
