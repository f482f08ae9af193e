"""SSRF: webhooks and callbacks reach only public addresses unless allow-listed, after DNS
resolution and across redirects; refused URLs are a 422 at submission when they can be."""

import ipaddress
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler
from pathlib import Path

import httpx
import pytest

from conveyor.core.netguard import NetGuard, UnsafeUrlError
from conveyor.tasks.webhook import post_guarded
from tests.conftest import fresh_db
from tests.support.http import serve
from tests.support.processes import TERMINAL, Platform, RedisServer, wait_for_job
from tests.support.receiver import receiver

PUBLIC = NetGuard()


@pytest.mark.parametrize(
    "host",
    [
        "127.0.0.1", "127.8.9.10", "10.1.2.3", "172.16.0.1", "192.168.1.1", "169.254.169.254",
        "100.64.0.1", "0.0.0.0", "::1", "fe80::1", "fd00:ec2::254", "::ffff:127.0.0.1",
        "224.0.0.1", "[::1]", "64:ff9b::a00:5", "2002:a00:5::1", "::7f00:1",
        "::ffff:169.254.169.254",
    ],
)  # fmt: skip
def test_non_public_literal_addresses_are_refused(host: str) -> None:
    with pytest.raises(UnsafeUrlError):
        PUBLIC.check_literal("https", host)


def test_public_addresses_and_allow_listed_networks_pass() -> None:
    PUBLIC.check_literal("https", "93.184.215.14")
    PUBLIC.check_literal("http", "2606:4700::6810:84e5")
    PUBLIC.check_literal("http", "hooks.example.com")  # a name is checked when resolved
    NetGuard([ipaddress.ip_network("10.0.0.0/8")]).check_literal("http", "10.1.2.3")


@pytest.mark.parametrize("scheme", ["file", "gopher", "ftp", "redis", "dict"])
def test_only_http_schemes(scheme: str) -> None:
    with pytest.raises(UnsafeUrlError, match="scheme"):
        PUBLIC.check_literal(scheme, "93.184.215.14")


def test_names_are_checked_after_resolution() -> None:
    with pytest.raises(UnsafeUrlError, match="non-public"):
        PUBLIC.resolve("localhost", 80)
    allowed = NetGuard([ipaddress.ip_network("127.0.0.0/8"), ipaddress.ip_network("::1/128")])
    assert all(address.is_loopback for address in allowed.resolve("localhost", 80))


@contextmanager
def redirecting(status: int, location: str, host: str = "127.0.0.1") -> Iterator[str]:
    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            self.rfile.read(int(self.headers.get("Content-Length", "0")))
            self.send_response(status)
            self.send_header("Location", location)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    with serve(Handler, host) as url:
        yield url


def _post(guard: NetGuard, url: str) -> httpx.Response:
    with httpx.Client(timeout=5) as client:
        return post_guarded(client, guard, url, b"{}", {"Content-Type": "application/json"}, 3)


def test_redirects_are_checked_at_every_hop() -> None:
    only_127_0_0_1 = NetGuard([ipaddress.ip_network("127.0.0.1/32")])
    with receiver([204]) as final:
        # Allowed target: followed, method and body kept.
        with redirecting(307, final.url) as start:
            assert _post(only_127_0_0_1, start).status_code == 204
        assert len(final.requests) == 1
    # 127.0.0.2 is loopback too, but outside the allow-list: never contacted.
    with receiver([204]) as hidden:
        hidden_url = hidden.url.replace("127.0.0.1", "127.0.0.2")
        with redirecting(308, hidden_url) as start, pytest.raises(UnsafeUrlError):
            _post(only_127_0_0_1, start)
        assert hidden.requests == []
    # Redirects that would turn the POST into a GET are not followed at all.
    with redirecting(302, "http://127.0.0.1:9/") as start:
        assert _post(only_127_0_0_1, start).status_code == 302


def test_the_connection_goes_to_the_checked_address() -> None:
    with receiver([200]) as hook:
        port = httpx.URL(hook.url).port
        allowed = NetGuard([ipaddress.ip_network("127.0.0.0/8"), ipaddress.ip_network("::1/128")])
        _post(allowed, f"http://localhost:{port}/hook")
    # The request went to the pinned address with the original Host header.
    assert hook.requests[0].headers["Host"] == f"localhost:{port}"


@pytest.fixture(scope="module")
def public_only(redis_server: RedisServer, module_logs: Path) -> Iterator[Platform]:
    """API and default-tier worker with no allow-list, as in production."""
    platform = Platform(
        redis_server, fresh_db(redis_server), module_logs, CONVEYOR_WEBHOOK__ALLOWED_NETWORKS="[]"
    )
    platform.start_api()
    platform.start_worker("default")
    yield platform
    platform.stop()


@pytest.mark.parametrize(
    ("field", "url"),
    [
        ("callback_url", "http://169.254.169.254/latest/meta-data/"),
        ("callback_url", "http://[::1]:8080/"),
        ("args/url", "http://10.0.0.7/internal"),
        ("args/url", "file:///etc/passwd"),
    ],
)
def test_unreachable_urls_are_refused_at_submission(
    public_only: Platform, field: str, url: str
) -> None:
    body: dict = {"task": "webhook.deliver", "args": {"url": "https://example.com/", "payload": 1}}
    if field == "callback_url":
        body["callback_url"] = url
    else:
        body["args"]["url"] = url
    with public_only.http() as client:
        response = client.post("/v1/jobs", json=body)
    assert response.status_code == 422, response.text
    assert response.json()["errors"][0]["pointer"] == f"#/{field}"
    assert public_only.redis.llen("default") == 0


def test_a_name_resolving_to_loopback_is_never_posted_to(public_only: Platform) -> None:
    with receiver([200]) as hook, public_only.http() as client:
        port = httpx.URL(hook.url).port
        body = {
            "task": "webhook.deliver",
            "args": {"url": f"http://localhost:{port}/", "payload": 1},
        }
        job = client.post("/v1/jobs", json=body).json()
        done = wait_for_job(client, job["id"], TERMINAL)
        assert done["state"] == "failed"
        assert "non-public address" in done["error"]["message"]  # type: ignore[index]
        assert done["attempts"] == 1  # refused permanently, not retried
        assert hook.requests == []
