"""Security against real processes: request-size limits through the real HTTP server, key
rotation in a running API, `conveyor keys create`, refusing to start without keys; and the key
file and sanitizer themselves. Authentication, scopes, tenant isolation, rate limits,
backpressure, hostile bodies, event-stream rules and sanitized job errors are tested in
process in tests/fast/test_access.py."""

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
    TEST_KEYS,
    keys_document,
)
from tests.support.processes import (
    REPO,
    Platform,
    RedisServer,
    conveyor_argv,
    service_env,
    wait_until,
)


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


# The two size limits stay here as well as in tests/fast: they also show that the HTTP server
# in front of the app hands an oversized (or chunked) request on to its middleware.
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
