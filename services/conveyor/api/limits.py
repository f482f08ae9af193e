"""Request-size limits: body size, content type, and the shape of a job's arguments."""

from collections.abc import Iterator
from typing import Any

import orjson
from fastapi import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from conveyor.api.problems import PROBLEM_MEDIA_TYPE, Problem, ProblemError


class RequestSizeLimitMiddleware:
    """Answers 431 for headers larger than `max_header_bytes` and 413 for a body larger than
    `max_body_bytes`, declared or streamed, before any handler sees them: an oversized body
    costs at most `max_body_bytes` of memory.
    """

    def __init__(self, app: ASGIApp, max_body_bytes: int, max_header_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_body_bytes
        self.max_header_bytes = max_header_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Check the headers and the declared length, then buffer the body up to the limit."""
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
        if scope["method"] in ("GET", "HEAD", "OPTIONS", "DELETE"):
            await self.app(scope, receive, send)
            return
        declared = dict(headers).get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > self.max_bytes):
            await self._too_large(scope, send)
            return
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_bytes:
                await self._too_large(scope, send)
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

    async def _too_large(self, scope: Scope, send: Send) -> None:
        await _refuse(
            scope,
            send,
            413,
            "Request body too large",
            f"Request bodies are limited to {self.max_bytes} bytes.",
            "body-too-large",
        )


async def _refuse(
    scope: Scope, send: Send, status: int, title: str, detail: str, slug: str
) -> None:
    problem = Problem(
        type=f"urn:conveyor:problem:{slug}",
        title=title,
        status=status,
        detail=detail,
        instance=scope.get("path"),
    )
    body = orjson.dumps(problem.model_dump(exclude_none=True))
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", PROBLEM_MEDIA_TYPE.encode()),
                (b"content-length", str(len(body)).encode()),
                (b"connection", b"close"),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


def require_json(request: Request) -> None:
    """A body sent with a content type other than JSON is a 415."""
    content_type = request.headers.get("content-type")
    if content_type is None:
        return  # like FastAPI itself: a body without a type is read as JSON
    media = content_type.split(";", 1)[0].strip().lower()
    if media == "application/json" or (
        media.startswith("application/") and media.endswith("+json")
    ):
        return
    raise ProblemError(
        415,
        "Unsupported media type",
        f"Send the body as application/json, not {media or 'an empty type'}.",
        slug="unsupported-media-type",
    )


def check_args_shape(args: Any, max_depth: int, max_string_length: int) -> None:
    """422 when the arguments nest deeper than `max_depth` or hold a string (or key) longer
    than `max_string_length`; the pointer names the first offending place.
    """
    for pointer, problem in _shape_faults(args, max_depth, max_string_length):
        raise ProblemError(
            422,
            "Invalid request",
            "The arguments exceed a size limit; see errors.",
            slug="validation-error",
            errors=[{"pointer": "#/args" + pointer, "detail": problem}],
        )


def _shape_faults(value: Any, max_depth: int, max_len: int) -> Iterator[tuple[str, str]]:
    # Iterative, so a hostile depth cannot exhaust the interpreter's stack.
    stack: list[tuple[Any, str, int]] = [(value, "", 0)]
    while stack:
        item, pointer, depth = stack.pop()
        if isinstance(item, dict | list):
            if depth >= max_depth:
                yield pointer, f"nested deeper than {max_depth} levels"
                return
            pairs = item.items() if isinstance(item, dict) else enumerate(item)
            for key, child in pairs:
                key_text = str(key)
                if len(key_text) > max_len:
                    yield pointer, f"has a key longer than {max_len} characters"
                    return
                escaped = key_text.replace("~", "~0").replace("/", "~1")
                stack.append((child, f"{pointer}/{escaped}", depth + 1))
        elif isinstance(item, str) and len(item) > max_len:
            yield pointer, f"longer than {max_len} characters"
            return
