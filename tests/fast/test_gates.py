"""The API's gates before a handler runs (credentials before the body, the body's time limit),
the keys file's reload, the sanitizer's view of the Redis URL, and the webhook signing secret
with its off switch (issue 18, items 2, 9 and 10)."""

import asyncio
import os
import stat
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel

from conveyor.api import auth
from conveyor.api.auth import KeySource, limits_for
from conveyor.api.body_gate import BodyGate
from conveyor.api.problems import ProblemError
from conveyor.api.state import ApiState
from conveyor.core.catalog import (
    JobContext,
    TaskArgs,
    TaskCatalog,
    TaskSpec,
    catalog_for,
    load_catalog,
)
from conveyor.core.queues import Queue
from conveyor.core.sanitize import Sanitizer
from conveyor.core.settings import AuthSettings, Settings, WebhookSettings
from conveyor.dev import dev_signing_secret
from tests.fast.harness import problem, serve, settings_for
from tests.support.auth import TEAM_A_KEY, TEST_KEYS, keys_document

Sent = list[dict[str, Any]]


async def _downstream(scope: Any, receive: Any, send: Any) -> None:
    message = await receive()
    body = message["body"]
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": body})


async def _refuse_unless_key(headers: Mapping[str, str], method: str) -> tuple[object, str]:
    if headers.get("x-api-key") != "good":
        raise ProblemError(401, "Unauthorized", "no", slug="unauthorized",
                           headers={"WWW-Authenticate": "Bearer"})  # fmt: skip
    return "good", "api"


async def _call(gate: BodyGate, headers: list[tuple[bytes, bytes]], receive: Any) -> Sent:
    sent: Sent = []

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {"type": "http", "method": "POST", "path": "/v1/jobs", "headers": headers}
    await gate(scope, receive, send)
    return sent


def _gate(timeout: float = 5.0) -> BodyGate:
    return BodyGate(_downstream, max_body_bytes=1024, max_header_bytes=4096,
                    body_timeout_seconds=timeout, authenticate=_refuse_unless_key)  # fmt: skip


async def test_no_body_is_read_before_the_key_is_checked() -> None:
    reads = 0

    async def receive() -> dict[str, Any]:
        nonlocal reads
        reads += 1
        return {"type": "http.request", "body": b"{}", "more_body": False}

    sent = await _call(_gate(), [(b"x-api-key", b"bad")], receive)
    assert reads == 0
    start = sent[0]
    assert start["status"] == 401
    headers = dict(start["headers"])
    assert headers[b"www-authenticate"] == b"Bearer"
    assert headers[b"connection"] == b"close"
    accepted = await _call(_gate(), [(b"x-api-key", b"good")], receive)
    assert reads == 1
    assert accepted[0]["status"] == 200
    assert accepted[1]["body"] == b"{}"


async def test_a_body_slower_than_the_limit_is_a_408() -> None:
    async def trickle() -> dict[str, Any]:
        await asyncio.sleep(0.05)
        return {"type": "http.request", "body": b" ", "more_body": True}

    sent = await _call(_gate(timeout=0.3), [(b"x-api-key", b"good")], trickle)
    assert sent[0]["status"] == 408
    assert b"did not arrive within 0.3 s" in sent[1]["body"]


async def test_an_anonymous_post_to_the_app_gets_401_without_its_body_parsed(
    redis_url: str,
) -> None:
    async with serve(settings_for(redis_url)) as api, api.client(key=None) as client:
        response = await client.post(
            "/v1/jobs", content=b"{not json", headers={"content-type": "application/json"}
        )
    assert problem(response, 401)["type"] == "urn:conveyor:problem:unauthorized"
    assert response.headers["connection"] == "close"


def _keys_source(tmp_path: Path) -> tuple[KeySource, Path, list[bool]]:
    path = tmp_path / "keys.yaml"
    path.write_text(keys_document(TEST_KEYS))
    told: list[bool] = []
    source = KeySource(AuthSettings(keys_file=path), told.append)
    return source, path, told


@pytest.mark.parametrize(
    "text",
    # The last, found by review: YAML nested past the parser's recursion limit raised a
    # RecursionError, which killed the reload watcher for good.
    ["", "keys: []\n", "{}\n", "keys: [\n", "keys: " + "[" * 5000 + "]" * 5000],
    ids=["empty", "no keys", "empty mapping", "broken", "too deep"],
)
def test_a_keys_file_without_keys_keeps_the_previous_ones(tmp_path: Path, text: str) -> None:
    source, path, told = _keys_source(tmp_path)
    path.write_text(text)
    os.utime(path, ns=(1, 1))  # a new stamp even within the clock's resolution
    assert source.refresh() is False
    assert source.ring.authenticate(TEAM_A_KEY) is not None
    assert told == [False]
    assert source.refresh() is False  # retried (and counted) until mended
    assert told == [False, False]
    path.write_text(keys_document(TEST_KEYS[:1]))
    assert source.refresh() is True
    assert told == [False, False, True]
    assert source.ring.authenticate(TEAM_A_KEY) is None


def test_a_tenants_limits_are_built_once_per_key_ring_and_follow_a_reload(
    tmp_path: Path,
) -> None:
    """`limits_for` keeps each tenant's limits built for the ring in use: the same object
    while the ring stays, the new entry's numbers as soon as a reload brings a new ring.
    """
    source, path, _ = _keys_source(tmp_path)
    path.write_text(keys_document(TEST_KEYS, {"team-a": {"rate_per_second": 5, "burst": 7}}))
    os.utime(path, ns=(1, 1))
    assert source.refresh() is True
    settings = Settings()
    state = ApiState(settings, {}, None, source)  # type: ignore[arg-type]
    first = limits_for(state, "team-a")
    assert (first.rate_per_second, first.burst) == (5, 7)
    assert limits_for(state, "team-a") is first
    other = limits_for(state, "team-b")  # no entry of its own: the deployment's
    assert (other.rate_per_second, other.burst) == (
        settings.limits.rate_per_second,
        settings.limits.burst,
    )
    path.write_text(keys_document(TEST_KEYS, {"team-a": {"rate_per_second": 2, "burst": 3}}))
    os.utime(path, ns=(2, 2))
    assert source.refresh() is True
    again = limits_for(state, "team-a")
    assert (again.rate_per_second, again.burst) == (2, 3)


def test_limits_built_while_a_reload_lands_never_enter_the_new_rings_cache(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Found by review: a caller building a tenant's limits from the old ring while another
    swaps the ring in and starts the new cache must not leave the old numbers in it. The
    swap is made inside the build, as an overlapping caller would make it.
    """
    source, path, _ = _keys_source(tmp_path)
    state = ApiState(Settings(), {}, None, source)  # type: ignore[arg-type]
    build, first_ring = auth._limits_of, source.ring

    def build_while_reloading(state: ApiState, ring: Any, tenant: str) -> Any:
        built = build(state, ring, tenant)
        if ring is not first_ring or source.ring is not first_ring:
            return built
        path.write_text(keys_document(TEST_KEYS, {"team-a": {"rate_per_second": 2, "burst": 3}}))
        os.utime(path, ns=(3, 3))
        assert source.refresh() is True
        limits_for(state, "team-b")  # another request starts the new ring's cache
        return built

    monkeypatch.setattr(auth, "_limits_of", build_while_reloading)
    stale = limits_for(state, "team-a")  # built from the old ring: the deployment's
    assert (stale.rate_per_second, stale.burst) != (2, 3)
    fresh = limits_for(state, "team-a")
    assert (fresh.rate_per_second, fresh.burst) == (2, 3)


def test_a_keys_file_without_keys_is_refused_at_start(tmp_path: Path) -> None:
    path = tmp_path / "keys.yaml"
    path.write_text("keys: []\n")
    with pytest.raises(ValueError, match="no keys"):
        KeySource(AuthSettings(keys_file=path))


async def test_a_truncated_keys_file_is_counted_and_the_api_keeps_serving(
    redis_url: str, tmp_path: Path
) -> None:
    path = tmp_path / "keys.yaml"
    path.write_text(keys_document(TEST_KEYS))
    auth = {"keys_file": str(path), "reload_interval_seconds": 0.02}
    async with serve(settings_for(redis_url, auth=auth)) as api, api.client(TEAM_A_KEY) as client:
        path.write_text("")  # a truncate-then-write caught halfway
        for _ in range(500):
            if _reloads(api.state.metrics, "failed") >= 1:
                break
            await asyncio.sleep(0.01)
        assert _reloads(api.state.metrics, "failed") >= 1
        assert (await client.get("/v1/jobs")).status_code == 200
        assert _reloads(api.state.metrics, "loaded") == 0


def _reloads(metrics: Any, outcome: str) -> float:
    value: float = metrics.keys_reloads.labels(outcome)._value.get()
    return value


@pytest.mark.parametrize(
    "url",
    ["redis://:Sup3r-s3cret%40x@10.0.0.5:6379/0", "rediss://user:Sup3r-s3cret%40x@redis:6380/1"],
)
def test_the_sanitizer_masks_the_password_of_the_redis_url(url: str) -> None:
    sanitizer = Sanitizer.for_settings(Settings(redis_url=url))
    for leaked in ("Sup3r-s3cret%40x", "Sup3r-s3cret@x"):
        text = sanitizer.text(f"AUTH failed for password {leaked} (WRONGPASS)")
        assert leaked not in text, text


def test_webhooks_need_a_long_enough_secret_unless_disabled() -> None:
    assert "not set" in (WebhookSettings().problem() or "")
    assert "9 characters" in (WebhookSettings(signing_secret="change-me").problem() or "")
    assert WebhookSettings(signing_secret="x" * 16).problem() is None
    assert WebhookSettings(enabled=False).problem() is None
    with pytest.raises(ValueError, match="not set"):
        WebhookSettings().secret()
    # Found by review: with webhooks off, secret() handed out any value, even "".
    for weak in ("", "x"):
        with pytest.raises(ValueError, match="SIGNING_SECRET"):
            WebhookSettings(enabled=False, signing_secret=weak).secret()


def test_webhooks_off_drops_the_task_even_when_task_modules_name_it() -> None:
    assert "webhook.deliver" not in load_catalog(["conveyor.tasks.webhook"], webhooks=False)
    assert "webhook.deliver" in load_catalog(["conveyor.tasks.webhook"])


def test_dev_makes_a_private_secret_once_and_keeps_it(tmp_path: Path) -> None:
    first = dev_signing_secret(tmp_path / "data")
    path = tmp_path / "data" / "webhook-signing-secret"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert len(first) == 64
    assert WebhookSettings(signing_secret=first).problem() is None
    assert dev_signing_secret(tmp_path / "data") == first
    assert dev_signing_secret(tmp_path / "other") != first


async def test_webhooks_off_drops_the_task_and_refuses_callbacks(redis_url: str) -> None:
    settings = settings_for(redis_url, webhook={"enabled": False, "signing_secret": None})
    assert "webhook.deliver" not in catalog_for(settings)
    assert "demo.echo" in catalog_for(settings)
    async with serve(settings) as api, api.client() as client:
        body = {"task": "demo.echo", "callback_url": "https://example.com/hook"}
        refused = problem(await client.post("/v1/jobs", json=body), 422)
    assert [e["pointer"] for e in refused["errors"]] == ["#/callback_url"]


class _LooseArgs(BaseModel):
    n: int = 0


class _StrictArgs(TaskArgs):
    n: int = 0


def _spec(model: type[BaseModel]) -> TaskSpec:
    def fn(ctx: JobContext, args: Any) -> None: ...

    return TaskSpec(name="loose.task", queue=Queue.LOW, args_model=model, fn=fn)


class _NestedLooseArgs(TaskArgs):
    # Found by review: only the top-level model was checked.
    inner: list[dict[str, _LooseArgs]] | None = None


def test_the_catalogue_refuses_a_model_that_allows_unknown_fields() -> None:
    with pytest.raises(ValueError, match=r"accepts unknown fields \(in _LooseArgs\)"):
        TaskCatalog([_spec(_LooseArgs)])
    with pytest.raises(ValueError, match=r"accepts unknown fields \(in _LooseArgs\)"):
        TaskCatalog([_spec(_NestedLooseArgs)])
    assert "loose.task" in TaskCatalog([_spec(_StrictArgs)])
