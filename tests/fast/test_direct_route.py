"""POST /v1/jobs is read by hand (api/direct_route.py), not by FastAPI's request handler: the
same requests sent through both must get the same answers (status, problem, headers), and
the route must still be documented from its endpoint's signature.
"""

import functools
import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
import redis
from fastapi import FastAPI

import conveyor.api.app as app_module
from conveyor.api.app import create_app
from conveyor.api.body_gate import GATED_BODY
from conveyor.api.jobs import add_submit_route
from conveyor.core.settings import Settings
from tests.fast.harness import CATALOG, serve
from tests.support.auth import ADMIN_KEY, TEAM_A_KEY, TEAM_A_READER_KEY, bearer

JSON = {"Content-Type": "application/json"}
ECHO = {"task": "demo.echo", "args": {"payload": {"n": 1}}}

# (name, key, headers, body): every way the route's inputs can be wrong, and right.
CASES: list[tuple[str, str | None, dict[str, str], bytes]] = [
    ("valid", TEAM_A_KEY, JSON, json.dumps(ECHO).encode()),
    ("valid with a charset", TEAM_A_KEY, {"Content-Type": "application/json; charset=utf-8"},
     json.dumps(ECHO).encode()),
    ("a +json type", TEAM_A_KEY, {"Content-Type": "application/vnd.api+json"},
     json.dumps(ECHO).encode()),
    ("no content type", TEAM_A_KEY, {}, json.dumps(ECHO).encode()),
    ("text/plain", TEAM_A_KEY, {"Content-Type": "text/plain"}, json.dumps(ECHO).encode()),
    ("empty body", TEAM_A_KEY, JSON, b""),
    ("malformed JSON", TEAM_A_KEY, JSON, b'{"task": "demo.echo", '),
    ("not UTF-8", TEAM_A_KEY, JSON, b'{"task": "\xff\xfe"}'),
    ("an array", TEAM_A_KEY, JSON, b"[1, 2]"),
    ("a string", TEAM_A_KEY, JSON, b'"demo.echo"'),
    ("null", TEAM_A_KEY, JSON, b"null"),
    ("unknown task", TEAM_A_KEY, JSON, b'{"task": "no.such", "args": {}}'),
    ("no task", TEAM_A_KEY, JSON, b'{"args": {}}'),
    ("wrong argument type", TEAM_A_KEY, JSON,
     b'{"task": "demo.sleep", "args": {"seconds": "long"}}'),
    ("an extra field", TEAM_A_KEY, JSON, b'{"task": "demo.echo", "args": {}, "colour": 1}'),
    ("a bad priority", TEAM_A_KEY, JSON,
     b'{"task": "demo.echo", "args": {"payload": 1}, "priority": "urgent"}'),
    ("idempotency key too long", TEAM_A_KEY, {**JSON, "Idempotency-Key": "k" * 201},
     json.dumps(ECHO).encode()),
    ("idempotency key at the limit", TEAM_A_KEY, {**JSON, "Idempotency-Key": "k" * 200},
     json.dumps(ECHO).encode()),
    ("idempotency key too long and a bad body", TEAM_A_KEY,
     {**JSON, "Idempotency-Key": "k" * 201}, b'{"task": "no.such"}'),
    ("idempotency keys that disagree", TEAM_A_KEY, {**JSON, "Idempotency-Key": "one"},
     json.dumps({**ECHO, "idempotency_key": "two"}).encode()),
    ("an idempotency key that is not printable", TEAM_A_KEY,
     {**JSON, "Idempotency-Key": "a b\tc"}, json.dumps(ECHO).encode()),
    ("no API key", None, JSON, json.dumps(ECHO).encode()),
    ("no API key and malformed JSON", None, JSON, b"{"),
    ("a reader's key", TEAM_A_READER_KEY, JSON, json.dumps(ECHO).encode()),
    ("a reader's key and text/plain", TEAM_A_READER_KEY, {"Content-Type": "text/plain"},
     b"x"),
    ("a deep body", TEAM_A_KEY, JSON, b"[" * 5000 + b"]" * 5000),
    # FastAPI reads the body before its dependencies: a malformed body is answered first.
    ("a reader's key and malformed JSON", TEAM_A_READER_KEY, JSON, b"{"),
    ("a reader's key and not UTF-8", TEAM_A_READER_KEY, JSON, b'{"task": "\xff"}'),
    ("a reader's key and a deep body", TEAM_A_READER_KEY, JSON, b"[" * 5000 + b"]" * 5000),
    # A type require_json lets through but FastAPI does not parse as JSON.
    ("two slashes", TEAM_A_KEY, {"Content-Type": "application/a/b+json"},
     json.dumps(ECHO).encode()),
    ("two slashes and malformed JSON", TEAM_A_KEY, {"Content-Type": "application/a/b+json"},
     b"{"),
    ("an upper-case type", TEAM_A_KEY, {"Content-Type": "APPLICATION/JSON"},
     json.dumps(ECHO).encode()),
]  # fmt: skip


# The two apps, built once for the module's settings (create_app is most of a case's time).
_apps: dict[str, tuple[FastAPI, FastAPI]] = {}


@pytest.fixture
async def both(settings: Settings) -> AsyncIterator[tuple[FastAPI, FastAPI]]:
    """The app as it runs (direct) and one whose submissions FastAPI reads."""
    key = settings.model_dump_json()
    if key not in _apps:
        reference_route = functools.partial(add_submit_route, direct=False)
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(app_module, "add_submit_route", reference_route)
            reference = create_app(settings, CATALOG)
        _apps[key] = (create_app(settings, CATALOG), reference)
    direct, reference = _apps[key]
    async with serve(settings, app=direct), serve(settings, app=reference):
        yield direct, reference


async def _post(app: FastAPI, key: str | None, headers: dict[str, str], body: bytes) -> Any:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://api.test") as http:
        headers = {**headers, **(bearer(key) if key else {})}
        return await http.post("/v1/jobs", content=body, headers=headers)


def _comparable(response: httpx.Response) -> dict[str, Any]:
    """What must match: the status, the problem (or the job's stable fields), the headers
    a client acts on.
    """
    body = response.json()
    if response.status_code < 300:
        body = {k: body[k] for k in ("task", "args", "queue", "state", "max_retries", "tenant")}
    headers = {
        name: response.headers.get(name)
        for name in ("content-type", "retry-after", "www-authenticate", "ratelimit-limit")
    }
    return {"status": response.status_code, "body": body, "headers": headers}


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
async def test_direct_route_answers_as_fastapi_does(
    both: tuple[FastAPI, FastAPI],
    case: tuple[str, str | None, dict[str, str], bytes],
    redis_client: "redis.Redis",
) -> None:
    _, key, headers, body = case
    direct, reference = both
    expected = _comparable(await _post(reference, key, headers, body))
    redis_client.flushdb()  # the same idempotency key again is a new job
    assert _comparable(await _post(direct, key, headers, body)) == expected


async def test_direct_route_covers_every_failure_kind(both: tuple[FastAPI, FastAPI]) -> None:
    """The cases above reach every answer the route's reading can give (so the comparison
    is not between two identical successes).
    """
    _, reference = both
    statuses = set()
    for _, key, headers, body in CASES:
        statuses.add((await _post(reference, key, headers, body)).status_code)
    assert {202, 400, 401, 403, 415, 422} <= statuses


async def test_direct_route_replays_an_idempotent_submission(
    both: tuple[FastAPI, FastAPI],
) -> None:
    direct, _ = both
    headers = {**JSON, "Idempotency-Key": "replay-me"}
    first = await _post(direct, TEAM_A_KEY, headers, json.dumps(ECHO).encode())
    again = await _post(direct, TEAM_A_KEY, headers, json.dumps(ECHO).encode())
    assert (first.status_code, again.status_code) == (202, 200)
    assert again.json()["id"] == first.json()["id"]


def test_openapi_still_documents_the_submission(both: tuple[FastAPI, FastAPI]) -> None:
    """The route is documented from submit_job's signature: its body, its header, its
    security, its answers; as FastAPI documents it when it reads the route itself.
    """
    direct, reference = both
    operation = direct.openapi()["paths"]["/v1/jobs"]["post"]
    assert operation == reference.openapi()["paths"]["/v1/jobs"]["post"]
    assert operation["operationId"] == "submit_job"
    body = operation["requestBody"]
    assert body["required"] is True
    assert "application/json" in body["content"]
    header = next(p for p in operation["parameters"] if p["name"] == "Idempotency-Key")
    assert header["in"] == "header"
    assert {"200", "202", "415", "422"} <= set(operation["responses"])
    assert operation["security"] == [{"bearer": []}, {"apiKey": []}]


@pytest.mark.parametrize(
    ("path", "body", "status"),
    [
        ("/v1/jobs", {"task": "demo.echo", "args": {}}, 202),  # read by the direct route
        ("/v1/jobs/batch", {"jobs": [{"task": "demo.echo", "args": {}}]}, 200),  # by FastAPI
        ("/v1/jobs", {"task": "no.such.task", "args": {}}, 422),  # refused
    ],
    ids=["direct", "batch", "refused"],
)
async def test_the_gated_body_does_not_outlive_its_request(
    settings: Settings, path: str, body: dict[str, Any], status: int
) -> None:
    """uvicorn keeps a connection's last scope until its next request or the keep-alive's
    end: a body left in its state would stay in memory that long (a review found 1 MiB per
    idle connection)."""
    raw = json.dumps(body).encode()
    async with serve(settings) as api:
        scope: dict[str, Any] = {
            "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1",
            "method": "POST", "scheme": "http", "path": path, "raw_path": path.encode(),
            "query_string": b"", "root_path": "", "client": ("127.0.0.1", 5000),
            "server": ("api.test", 80), "state": {},
            "headers": [(b"host", b"api.test"), (b"content-type", b"application/json"),
                        (b"content-length", str(len(raw)).encode()),
                        (b"authorization", f"Bearer {ADMIN_KEY}".encode())],
        }  # fmt: skip
        statuses: list[int] = []

        async def receive() -> dict[str, Any]:
            return {"type": "http.request", "body": raw, "more_body": False}

        async def send(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                statuses.append(message["status"])

        await api.app(scope, receive, send)
    assert statuses == [status]
    assert scope["state"]["principal"].key_id  # the gate did run and record the caller
    assert GATED_BODY not in scope["state"]
