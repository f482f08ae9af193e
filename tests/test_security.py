"""Authentication, tenant isolation, rate limits, backpressure and hostile input, against real
API processes sharing a private Redis."""

import json
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from conveyor.core.apikeys import KeyRing, parse_keys
from tests.conftest import fresh_db
from tests.support.auth import (
    KEYS_FILE,
    TEAM_A_KEY,
    TEAM_A_READER_KEY,
    TEAM_B_KEY,
    TEST_KEYS,
    bearer,
    keys_document,
)
from tests.support.processes import (
    REPO,
    TERMINAL,
    Platform,
    RedisServer,
    conveyor_argv,
    service_env,
    wait_for_job,
    wait_until,
)

ECHO = {"task": "demo.echo", "args": {"payload": 1}}


@pytest.fixture(scope="module")
def api(redis_server: RedisServer, module_logs: Path) -> Iterator[Platform]:
    platform = Platform(
        redis_server, fresh_db(redis_server), module_logs, CONVEYOR_LIMITS__MAX_BODY_BYTES="4096"
    )
    platform.start_api()
    yield platform
    platform.stop()


def problem(response: httpx.Response, status: int) -> dict:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json"
    body: dict = response.json()
    assert body["status"] == status
    return body


def test_the_committed_keys_file_holds_the_test_keys() -> None:
    ring = KeyRing(parse_keys(KEYS_FILE.read_text()))
    for key, key_id, tenant, scopes in TEST_KEYS:
        principal = ring.authenticate(key)
        assert principal is not None, key_id
        assert (principal.tenant, sorted(principal.scopes)) == (tenant, sorted(scopes))
    assert ring.authenticate(TEAM_A_KEY + "x") is None
    stored = KEYS_FILE.read_text()
    assert not [key for key, *_ in TEST_KEYS if key in stored]  # only hashes are stored


@pytest.mark.parametrize(
    "headers",
    [{}, bearer("cvk_not-a-real-key-000000000000000000000000000"), {"Authorization": "Basic eDp5"}],
    ids=["no key", "unknown key", "wrong scheme"],
)
def test_requests_without_a_valid_key_are_401(api: Platform, headers: dict[str, str]) -> None:
    with api.http(key=None) as client:
        for method, path in (("POST", "/v1/jobs"), ("GET", "/v1/jobs"), ("GET", "/v1/tasks")):
            response = client.request(method, path, headers=headers, json=ECHO)
            body = problem(response, 401)
            assert response.headers["www-authenticate"].startswith("Bearer")
            assert "cvk_not-a-real-key" not in response.text
            assert body["type"] == "urn:conveyor:problem:unauthorized"
    assert "cvk_not-a-real-key" not in api.services[0].log()


def test_the_x_api_key_header_works_too(api: Platform) -> None:
    with api.http(key=None) as client:
        response = client.post("/v1/jobs", json=ECHO, headers={"X-API-Key": TEAM_A_KEY})
    assert response.status_code == 202
    assert response.json()["tenant"] == "team-a"


def test_scopes_are_enforced(api: Platform) -> None:
    with api.http(TEAM_A_READER_KEY) as reader, api.http(TEAM_A_KEY) as writer:
        assert problem(reader.post("/v1/jobs", json=ECHO), 403)["detail"].endswith(
            "jobs:write scope."
        )
        assert reader.get("/v1/jobs").status_code == 200
        for method, path in (("GET", "/v1/dead-letters"), ("POST", "/v1/dead-letters/replay")):
            problem(writer.request(method, path), 403)
            problem(reader.request(method, path), 403)
        problem(writer.request("DELETE", "/v1/dead-letters"), 403)


def test_tenants_cannot_see_each_others_jobs(api: Platform) -> None:
    with api.http(TEAM_A_KEY) as team_a, api.http(TEAM_B_KEY) as team_b, api.http() as admin:
        job = team_a.post("/v1/jobs", json=ECHO).json()
        other = team_b.post("/v1/jobs", json=ECHO).json()
        assert (job["tenant"], other["tenant"]) == ("team-a", "team-b")

        # Another tenant's job is indistinguishable from one that does not exist.
        missing = problem(team_b.get("/v1/jobs/00000000-0000-4000-8000-000000000000"), 404)
        foreign = problem(team_b.get(f"/v1/jobs/{job['id']}"), 404)
        assert foreign["title"] == missing["title"]
        problem(team_b.post(f"/v1/jobs/{job['id']}/cancel"), 404)
        assert team_a.get(f"/v1/jobs/{job['id']}").json()["state"] == "queued"

        listed_b = {j["id"] for j in team_b.get("/v1/jobs", params={"limit": 500}).json()["items"]}
        listed_a = {j["id"] for j in team_a.get("/v1/jobs", params={"limit": 500}).json()["items"]}
        assert other["id"] in listed_b
        assert job["id"] not in listed_b
        assert job["id"] in listed_a
        assert other["id"] not in listed_a
        problem(team_b.get("/v1/jobs", params={"tenant": "team-a"}), 403)

        # An admin reads every tenant's jobs, or one tenant's.
        assert admin.get(f"/v1/jobs/{job['id']}").status_code == 200
        only_a = admin.get("/v1/jobs", params={"tenant": "team-a", "limit": 500}).json()
        assert {j["tenant"] for j in only_a["items"]} == {"team-a"}


def test_idempotency_keys_are_per_tenant(api: Platform) -> None:
    headers = {"Idempotency-Key": "shared-key-1"}
    with api.http(TEAM_A_KEY) as team_a, api.http(TEAM_B_KEY) as team_b:
        first = team_a.post("/v1/jobs", json=ECHO, headers=headers)
        second = team_b.post("/v1/jobs", json={**ECHO, "args": {"payload": 2}}, headers=headers)
        assert (first.status_code, second.status_code) == (202, 202)
        assert first.json()["id"] != second.json()["id"]
        assert (
            team_a.post("/v1/jobs", json=ECHO, headers=headers).json()["id"] == first.json()["id"]
        )


def test_oversized_bodies_are_413_declared_or_streamed(api: Platform) -> None:
    big = {"task": "demo.echo", "args": {"payload": "x" * 5000}}
    with api.http() as client:
        problem(client.post("/v1/jobs", json=big), 413)

        def chunks() -> Iterator[bytes]:  # no Content-Length: chunked transfer
            yield json.dumps(big).encode()

        problem(
            client.post("/v1/jobs", content=chunks(), headers={"content-type": "application/json"}),
            413,
        )


def test_oversized_headers_are_431(api: Platform) -> None:
    with api.http() as client:
        problem(client.get("/v1/jobs", headers={"X-Padding": "a" * 20_000}), 431)


@pytest.mark.parametrize(
    ("args", "pointer"),
    [
        ({"payload": {"a": {"b": {"c": 1}}}}, None),
        ({"payload": json.loads("[" * 40 + "]" * 40)}, "#/args/payload" + "/0" * 31),
        ({"payload": {"text": "y" * 70_000}}, "#/args/payload/text"),
        ({"payload": {"k" * 70_000: 1}}, "#/args/payload"),
    ],
    ids=["fine", "too deep", "long string", "long key"],
)
def test_argument_shape_limits(
    redis_server: RedisServer, api: Platform, args: dict, pointer: str | None
) -> None:
    # The body limit of `api` is small; this uses a platform with the default 1 MiB.
    with api.http() as client:
        if pointer is None:
            assert (
                client.post("/v1/jobs", json={"task": "demo.echo", "args": args}).status_code == 202
            )
            return
    platform = _default_limits_api(redis_server, api.log_dir)
    with platform.http() as client:
        body = problem(client.post("/v1/jobs", json={"task": "demo.echo", "args": args}), 422)
    assert body["errors"][0]["pointer"] == pointer


_shared: dict[str, Platform] = {}


def _default_limits_api(redis_server: RedisServer, log_dir: Path) -> Platform:
    if "api" not in _shared:
        platform = Platform(redis_server, fresh_db(redis_server), log_dir)
        platform.start_api()
        _shared["api"] = platform
    return _shared["api"]


@pytest.fixture(scope="module", autouse=True)
def _stop_shared() -> Iterator[None]:
    yield
    for platform in _shared.values():
        platform.stop()
    _shared.clear()


def test_hostile_bodies_get_clear_4xx(redis_server: RedisServer, api: Platform) -> None:
    platform = _default_limits_api(redis_server, api.log_dir)
    with platform.http() as client:
        nested = (
            b'{"task": "demo.echo", "args": {"payload": ' + b"[" * 200_000 + b"]" * 200_000 + b"}}"
        )
        problem(
            client.post("/v1/jobs", content=nested, headers={"content-type": "application/json"}),
            400,
        )
        problem(
            client.post(
                "/v1/jobs", content=b"\xff\xfe", headers={"content-type": "application/json"}
            ),
            422,
        )
        problem(
            client.post("/v1/jobs", content=b"{nope", headers={"content-type": "application/json"}),
            422,
        )
        problem(
            client.post(
                "/v1/jobs",
                content=b"task=demo.echo",
                headers={"content-type": "application/x-www-form-urlencoded"},
            ),
            415,
        )
        problem(client.post("/v1/jobs", json={**ECHO, "delay_seconds": 10**9}), 422)
        problem(client.get("/v1/jobs", params={"limit": 100_000}), 422)
        problem(client.get("/v1/jobs", params={"cursor": "%%%"}), 422)
        problem(client.get("/v1/jobs", params={"cursor": "bm90LWEtY3Vyc29y"}), 422)
        problem(client.get("/v1/jobs/..%2F..%2Fetc%2Fpasswd"), 404)
        problem(client.get("/v1/jobs/" + "a" * 5000), 404)
        problem(client.post("/v1/jobs", json={"task": "no.such.task"}), 422)
        problem(client.put("/v1/jobs"), 405)
    log = platform.services[0].log()
    assert "Traceback" not in log


def test_keys_rotate_without_a_restart(
    redis_server: RedisServer, tmp_path: Path, module_logs: Path
) -> None:
    keys_file = tmp_path / "keys.yaml"
    old = ("cvk_rotation-old-000000000000000000000000000000", "old", "team-r", ["jobs:read"])
    new = ("cvk_rotation-new-000000000000000000000000000000", "new", "team-r", ["jobs:read"])
    keys_file.write_text(keys_document([old]))
    platform = Platform(
        redis_server, fresh_db(redis_server), module_logs, CONVEYOR_AUTH__KEYS_FILE=str(keys_file)
    )
    platform.start_api()
    try:
        with platform.http(old[0]) as old_client, platform.http(new[0]) as new_client:
            assert old_client.get("/v1/jobs").status_code == 200
            assert new_client.get("/v1/jobs").status_code == 401
            # Both keys during the rollover, then only the new one.
            keys_file.write_text(keys_document([old, new]))
            wait_until(lambda: new_client.get("/v1/jobs").status_code == 200, 10, "the new key")
            assert old_client.get("/v1/jobs").status_code == 200
            keys_file.write_text(keys_document([new]))
            wait_until(lambda: old_client.get("/v1/jobs").status_code == 401, 10, "revocation")
            # A broken file keeps the keys in force.
            keys_file.write_text("keys: [{id: x}]\n")
            time.sleep(1.0)
            assert new_client.get("/v1/jobs").status_code == 200
        log = platform.services[0].log()
        assert "not reloaded, keeping the previous keys" in log
        assert old[0] not in log
        assert new[0] not in log
    finally:
        platform.stop()


def test_rate_limit_is_shared_by_api_processes(
    redis_server: RedisServer, tmp_path: Path, module_logs: Path
) -> None:
    keys_file = tmp_path / "keys.yaml"
    # team-a: a bucket of 5 refilled at one token per 20 s; team-b: the deployment's default.
    keys_file.write_text(
        keys_document(TEST_KEYS, tenants={"team-a": {"rate_per_second": 0.05, "burst": 5}})
    )
    db = fresh_db(redis_server)
    env = {"CONVEYOR_AUTH__KEYS_FILE": str(keys_file), "CONVEYOR_LIMITS__RATE_PER_SECOND": "100"}
    first = Platform(redis_server, db, module_logs, **env)
    second = Platform(redis_server, db, module_logs, **env)
    try:
        first.start_api()
        second.start_api()
        with (
            first.http(TEAM_A_KEY) as a1,
            second.http(TEAM_A_KEY) as a2,
            second.http(TEAM_B_KEY) as b,
        ):
            responses = [(a1 if i % 2 else a2).post("/v1/jobs", json=ECHO) for i in range(10)]
            statuses = [r.status_code for r in responses]
            assert statuses.count(202) == 5, statuses
            limited = [r for r in responses if r.status_code == 429]
            assert {r.url.port for r in limited} == {first.api_port, second.api_port}
            for response in limited:
                body = problem(response, 429)
                assert body["type"] == "urn:conveyor:problem:rate-limited"
                assert 1 <= int(response.headers["retry-after"]) <= 20
                assert response.headers["ratelimit-limit"] == "5"
                assert response.headers["ratelimit-remaining"] == "0"
            accepted = [r for r in responses if r.status_code == 202]
            assert [r.headers["ratelimit-remaining"] for r in accepted] == ["4", "3", "2", "1", "0"]
            # Reads and invalid submissions draw from the same bucket; another tenant is not
            # affected.
            problem(a1.get("/v1/jobs"), 429)
            problem(a2.post("/v1/jobs", json={"task": "demo.sleep", "args": {"seconds": -1}}), 429)
            assert b.post("/v1/jobs", json=ECHO).status_code == 202
            assert b.get("/v1/jobs").status_code == 200
    finally:
        first.stop()
        second.stop()


def test_full_queues_push_back(redis_server: RedisServer, module_logs: Path) -> None:
    db = fresh_db(redis_server)
    env = {"CONVEYOR_LIMITS__MAX_QUEUE_DEPTH__LOW": "3", "CONVEYOR_LIMITS__MAX_DELAYED_JOBS": "2",
           "CONVEYOR_LIMITS__BACKPRESSURE_RETRY_AFTER_SECONDS": "7"}  # fmt: skip
    first = Platform(redis_server, db, module_logs, **env)
    second = Platform(redis_server, db, module_logs, **env)
    low = {**ECHO, "priority": "low"}
    try:
        first.start_api()
        second.start_api()
        with first.http() as c1, second.http() as c2:
            keyed = c1.post("/v1/jobs", json=low, headers={"Idempotency-Key": "k1"})
            assert keyed.status_code == 202
            assert c2.post("/v1/jobs", json=low).status_code == 202
            assert c1.post("/v1/jobs", json=low).status_code == 202
            for client in (c1, c2):
                response = client.post("/v1/jobs", json=low)
                body = problem(response, 503)
                assert body["type"] == "urn:conveyor:problem:queue-full"
                assert response.headers["retry-after"] == "7"
            assert first.redis.llen("low") == 3
            # A replay of an accepted request still finds its job; other queues still accept.
            replay = c2.post("/v1/jobs", json=low, headers={"Idempotency-Key": "k1"})
            assert (replay.status_code, replay.json()["id"]) == (200, keyed.json()["id"])
            assert c2.post("/v1/jobs", json=ECHO).status_code == 202
            delayed = {**ECHO, "delay_seconds": 3600}
            assert [c1.post("/v1/jobs", json=delayed).status_code for _ in range(3)] == [
                202,
                202,
                503,
            ]
    finally:
        first.stop()
        second.stop()


def test_job_errors_are_sanitized(redis_server: RedisServer, module_logs: Path) -> None:
    platform = Platform(redis_server, fresh_db(redis_server), module_logs)
    try:
        platform.start_api()
        platform.start_worker("high")
        leak = (
            "cannot reach redis://worker:hunter2@10.0.0.5:6379/0 with password=opensesame "
            "signed with test-secret in /srv/app/.venv/lib/python3.11/site-packages/lib/db.py "
            "using Bearer cvk_team-a-writer-00000000000000000000000000000"
        )
        with platform.http() as client:
            job = client.post(
                "/v1/jobs", json={"task": "tests.leak", "args": {"message": leak}}
            ).json()
            done = wait_for_job(client, job["id"], TERMINAL)
        message = done["error"]["message"]  # type: ignore[index]
        for secret in ("hunter2", "opensesame", "test-secret", "/srv/app", "cvk_team-a"):
            assert secret not in message, message
        assert "redis://***@10.0.0.5" in message
        assert ".../db.py" in message
    finally:
        platform.stop()


def test_keys_create_prints_a_key_and_its_entry(tmp_path: Path) -> None:
    result = subprocess.run(
        [*conveyor_argv("keys", "create", "--tenant", "team-z", "-s", "jobs:read", "--id", "z1")],
        capture_output=True, text=True, timeout=60, check=True, cwd=REPO,
    )  # fmt: skip
    key = result.stderr.rsplit(": ", 1)[1].strip()
    assert key.startswith("cvk_")
    assert len(key) >= 40
    assert key not in result.stdout  # stdout is the file entry: safe to paste and commit
    ring = KeyRing(parse_keys("keys:\n" + result.stdout))
    principal = ring.authenticate(key)
    assert principal is not None
    assert (principal.key_id, principal.tenant, sorted(principal.scopes)) == (
        "z1",
        "team-z",
        ["jobs:read"],
    )


def test_the_api_refuses_to_start_without_keys(redis_server: RedisServer) -> None:
    env = service_env(redis_server.url(0))
    del env["CONVEYOR_AUTH__KEYS_FILE"]
    result = subprocess.run(
        conveyor_argv("api"),
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=REPO,
    )
    assert result.returncode == 78
    assert "API keys are required" in result.stderr


def test_event_streams_follow_the_tenant_rules(api: Platform) -> None:
    with api.http(TEAM_A_KEY) as team_a, api.http(TEAM_B_KEY) as team_b:
        job = team_a.post("/v1/jobs", json=ECHO).json()
        problem(team_b.get(f"/v1/jobs/{job['id']}/events"), 404)
        with api.http(key=None) as anonymous:
            problem(anonymous.get(f"/v1/jobs/{job['id']}/events"), 401)
        with team_a.stream("GET", f"/v1/jobs/{job['id']}/events") as stream:
            assert stream.status_code == 200
            assert stream.headers["content-type"].startswith("text/event-stream")
            lines = stream.iter_lines()
            assert next(lines) == "event: job"
            assert json.loads(next(lines).removeprefix("data: "))["id"] == job["id"]


def test_event_streams_are_capped_per_process(redis_server: RedisServer, module_logs: Path) -> None:
    platform = Platform(redis_server, fresh_db(redis_server), module_logs,
                        CONVEYOR_API__MAX_EVENT_STREAMS="1")  # fmt: skip
    platform.start_api()
    try:
        with platform.http() as client:
            job = client.post("/v1/jobs", json=ECHO).json()
            with client.stream("GET", f"/v1/jobs/{job['id']}/events") as first:
                assert first.status_code == 200
                lines = first.iter_lines()  # kept: a dropped iterator closes the stream
                assert next(lines) == "event: job"
                second = client.get(f"/v1/jobs/{job['id']}/events")
                assert problem(second, 503)["type"] == "urn:conveyor:problem:streams-exhausted"
                assert second.headers["retry-after"]
    finally:
        platform.stop()


@pytest.mark.parametrize(
    ("message", "secret"),
    [
        ('{"password": "hunter2"}', "hunter2"),
        ("{'api_key': 'k-12345'}", "k-12345"),
        ("DB_PASSWORD=s3cr3t-v4lue", "s3cr3t-v4lue"),
        ("AWS_SECRET_ACCESS_KEY=AKIAEXAMPLE", "AKIAEXAMPLE"),
        ("redis://:p@ss@10.0.0.5:6379/0", "p@ss"),
        ("Authorization: Bearer abcdefghijkl", "abcdefghijkl"),
        ("token=xyz987", "xyz987"),
    ],
)
def test_the_sanitizer_masks_common_secret_shapes(message: str, secret: str) -> None:
    from conveyor.core.sanitize import Sanitizer

    assert secret not in Sanitizer().text(message)
    assert Sanitizer().text("tokenizer failed on word 3") == "tokenizer failed on word 3"


def test_the_system_tenant_cannot_have_keys() -> None:
    with pytest.raises(ValueError, match="reserved"):
        parse_keys(
            keys_document(
                [("cvk_x-00000000000000000000000000000000000000000", "s", "system", ["admin"])]
            )
        )
