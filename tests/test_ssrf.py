"""SSRF: webhooks and callbacks reach only public addresses unless allow-listed, after DNS
resolution and across redirects; refused URLs are a 422 at submission when they can be."""

import ipaddress
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

import httpx
import pytest

from conveyor.core.netguard import (
    REFUSED_MESSAGE,
    NetGuard,
    RefusedAddressError,
    UnsafeUrlError,
)
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


# Forms `is_global` calls global, and special-purpose ranges an explicit policy refuses.
@pytest.mark.parametrize(
    "host",
    [
        "fec0::1",  # site-local (deprecated): is_global is true for it
        "::ffff:0:7f00:1",  # IPv4-translated (RFC 2765) 127.0.0.1: is_global is true
        "::ffff:0:a00:1",  # IPv4-translated 10.0.0.1
        "::ffff:0:808:808",  # IPv4-translated, even of a public address: not routable
        "2001:db8::1",  # documentation
        "3fff::1",  # documentation (RFC 9637): is_global is true on Python 3.11
        "2001:0:4136:e378:8000:63bf:3fff:fdd2",  # Teredo (2001::/32)
        "2001::1",  # Teredo
        "2001:2::1",  # benchmarking (2001::/23)
        "2001:10::1",  # ORCHID
        "2001:20::1",  # ORCHIDv2
        "2001:4:112::1",  # AS112 anycast (in 2001::/23)
        "fc00::1", "fd12:3456::1",  # unique local
        "fe80::1", "febf::1",  # link-local
        "ff02::1", "ff0e::1",  # multicast, including global scope
        "100::1",  # discard-only
        "5f00::1",  # outside 2000::/3 (SRv6 SIDs)
        "64:ff9b:1::808:808",  # local-use NAT64 (RFC 8215): its embedding is the operator's
        "::808:808",  # IPv4-compatible (deprecated), even of a public address
        "192.0.0.9", "192.0.0.170",  # IETF protocol assignments (is_global true for .9)
        "192.88.99.1",  # 6to4 relay anycast (deprecated)
        "198.18.0.1", "198.19.255.254",  # benchmarking
        "240.0.0.1", "255.255.255.255",  # reserved, broadcast
        "0.1.2.3",  # 'this network'
        "239.255.255.250",  # multicast (is_global is true for it)
        "::ffff:198.18.0.1", "64:ff9b::c000:9", "2002:c612:1::1",  # embedded refused IPv4
    ],
)  # fmt: skip
def test_special_purpose_addresses_are_refused_by_an_explicit_policy(host: str) -> None:
    with pytest.raises(UnsafeUrlError):
        PUBLIC.check_literal("https", host)


@pytest.mark.parametrize(
    "host",
    [
        "8.8.8.8", "1.1.1.1", "93.184.215.14",
        "2606:4700::1111", "2a00:1450:4001:82a::200e", "2620:4f:8000::1",
        "::ffff:8.8.8.8",  # IPv4-mapped: judged by the IPv4 address
        "64:ff9b::808:808",  # NAT64 (DNS64 networks): judged by the IPv4 address
        "2002:808:808::1",  # 6to4: judged by the IPv4 address
    ],
)  # fmt: skip
def test_ordinary_public_addresses_pass(host: str) -> None:
    PUBLIC.check_literal("https", host)


def test_the_allow_list_overrides_the_policy() -> None:
    # The allow-list is checked before the policy, for the address and the IPv4 it carries.
    NetGuard([ipaddress.ip_network("fec0::/10")]).check_literal("http", "fec0::1")
    loopback = NetGuard([ipaddress.ip_network("127.0.0.0/8")])
    loopback.check_literal("http", "::ffff:127.0.0.1")
    loopback.check_literal("http", "64:ff9b::7f00:1")
    # A form refused outright is not judged by its IPv4 address.
    with pytest.raises(UnsafeUrlError):
        loopback.check_literal("http", "::ffff:0:7f00:1")
    NetGuard([ipaddress.ip_network("2001::/32")]).check_literal("http", "2001::1")


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


def test_a_refusal_does_not_say_what_the_name_resolved_to() -> None:
    # The message is what a tenant reads (the job's error): naming the address would make the
    # platform a DNS oracle. The address and the reason are attributes, for the worker's log.
    with pytest.raises(UnsafeUrlError) as refused:
        PUBLIC.resolve("localhost", 80)
    assert "127.0.0.1" not in str(refused.value)
    assert "::1" not in str(refused.value)
    assert str(refused.value) == f"localhost: {REFUSED_MESSAGE}"
    assert isinstance(refused.value, RefusedAddressError)
    assert refused.value.address.is_loopback
    assert refused.value.reason == "loopback"


def test_a_dns_failure_names_only_the_host(monkeypatch: pytest.MonkeyPatch) -> None:
    def fail(*args: object, **kwargs: object) -> None:
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    monkeypatch.setattr(socket, "getaddrinfo", fail)
    # An OSError, which webhook.deliver retries; the resolver's words are for the log.
    with pytest.raises(OSError, match=r"^cannot resolve hooks\.internal\.example$") as failed:
        PUBLIC.resolve("hooks.internal.example", 443)
    assert getattr(failed.value, "detail", None) == "Name or service not known"


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
    args = {"url": "https://example.com/", "payload": 1}
    body: dict[str, Any] = {"task": "webhook.deliver", "args": args}
    if field == "callback_url":
        body["callback_url"] = url
    else:
        args["url"] = url
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
        # Generic: not what the name resolved to (that stays in the worker's log).
        message = done["error"]["message"]  # type: ignore[index]
        assert message == f"localhost: {REFUSED_MESSAGE}"
        assert "127.0.0.1" not in message
        assert "::1" not in message
        assert done["attempts"] == 1  # refused permanently, not retried
        assert hook.requests == []
