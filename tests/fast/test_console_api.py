"""What the console stands on, in process (issue 21): sign-in sessions (cookie attributes,
the key's tenant and scopes, sign-out, a removed key), CSRF and cross-site checks, the page's
Content-Security-Policy, the audit log, the overview, retry, and finding jobs by time and by
idempotency key.
"""

import asyncio
import re
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import orjson
import pytest
import redis

from conveyor.api.sessions import SESSION_COOKIE
from conveyor.core.redis import async_client
from conveyor.core.settings import Settings
from conveyor.jobstore.audit_log import append_audit
from conveyor.jobstore.keys import KeySpace
from tests.fast.harness import InProcessApi, InProcessWorker, problem
from tests.support.auth import ADMIN_KEY, TEAM_A_KEY, TEAM_A_READER_KEY, TEAM_B_KEY, bearer

ECHO = {"task": "demo.echo", "args": {"payload": 1}}


class Console:
    """A browser's view of the API: a session cookie (sent by hand: httpx keeps Secure
    cookies for https only) and the CSRF token the page keeps.
    """

    def __init__(self, http: httpx.AsyncClient, cookie: str, csrf: str) -> None:
        self.http, self.cookie, self.csrf = http, cookie, csrf

    async def call(self, method: str, path: str, csrf: bool = True,
                   **kwargs: Any) -> httpx.Response:  # fmt: skip
        headers = {"Cookie": f"{SESSION_COOKIE}={self.cookie}", **kwargs.pop("headers", {})}
        if csrf:
            headers["X-CSRF-Token"] = self.csrf
        return await self.http.request(method, path, headers=headers, **kwargs)


async def audit_written(api: InProcessApi, count: int) -> None:
    """Wait for `count` audit entries: they are stored after the answer, apart from it."""
    client = api.state.redis
    for _ in range(100):
        if await client.xlen(api.state.store.keys.audit) >= count:
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"fewer than {count} audit entries")


async def sign_in(api: InProcessApi, key: str) -> tuple[Console, httpx.Response]:
    http = api.client(None)
    response = await http.post("/ui/session", headers=bearer(key))
    assert response.status_code == 200, response.text
    match = re.match(rf"{SESSION_COOKIE}=([^;]+);", response.headers["set-cookie"])
    assert match
    return Console(http, match.group(1), response.json()["csrf_token"]), response


async def test_sign_in_sets_a_hardened_cookie_and_no_secret_in_the_answer(
    api: InProcessApi, redis_client: "redis.Redis"
) -> None:
    console, response = await sign_in(api, TEAM_A_KEY)
    cookie = response.headers["set-cookie"]
    for attribute in ("HttpOnly", "SameSite=Strict", "Secure", "Path=/", "Max-Age=28800"):
        assert attribute in cookie
    body = response.json()
    assert body["tenant"] == "team-a"
    assert body["key_id"] == "team-a-writer"
    assert body["scopes"] == ["jobs:read", "jobs:write"]
    assert TEAM_A_KEY not in response.text
    assert TEAM_A_KEY not in cookie
    # Redis keeps the session under the cookie's hash, naming the key by its hash only.
    stored = [redis_client.hgetall(k) for k in redis_client.keys("conveyor:session:*")]
    assert len(stored) == 1
    assert console.cookie not in str(redis_client.keys("conveyor:session:*"))
    assert TEAM_A_KEY not in str(stored)
    me = await console.call("GET", "/ui/session", csrf=False)
    assert me.json()["csrf_token"] == console.csrf
    await console.http.aclose()


async def test_a_bad_key_opens_no_session(api: InProcessApi) -> None:
    async with api.client(None) as http:
        problem(await http.post("/ui/session", headers=bearer(TEAM_A_KEY + "x")), 401)
        problem(await http.get("/ui/session"), 401)
        forged = {"Cookie": f"{SESSION_COOKIE}=made-up"}
        problem(await http.get("/v1/jobs", headers=forged), 401)


async def test_a_session_acts_as_its_key_tenant_and_scopes(api: InProcessApi) -> None:
    async with api.client(TEAM_B_KEY) as team_b:
        theirs = (await team_b.post("/v1/jobs", json=ECHO)).json()["id"]
    console, _ = await sign_in(api, TEAM_A_KEY)
    submitted = await console.call("POST", "/v1/jobs", json=ECHO)
    assert submitted.status_code == 202, submitted.text
    assert submitted.json()["tenant"] == "team-a"
    listed = (await console.call("GET", "/v1/jobs", csrf=False)).json()["items"]
    assert [j["id"] for j in listed] == [submitted.json()["id"]]
    problem(await console.call("GET", f"/v1/jobs/{theirs}", csrf=False), 404)
    problem(await console.call("POST", f"/v1/jobs/{theirs}/cancel"), 404)
    problem(await console.call("GET", "/v1/jobs?tenant=team-b", csrf=False), 403)
    problem(await console.call("GET", "/v1/dead-letters", csrf=False), 403)
    problem(await console.call("GET", "/v1/audit", csrf=False), 403)
    reader, _ = await sign_in(api, TEAM_A_READER_KEY)
    problem(await reader.call("POST", "/v1/jobs", json=ECHO), 403)
    for c in (console, reader):
        await c.http.aclose()


async def test_state_changes_need_the_csrf_token_and_the_same_origin(api: InProcessApi) -> None:
    console, _ = await sign_in(api, TEAM_A_KEY)
    job = (await console.call("POST", "/v1/jobs", json=ECHO)).json()["id"]
    # A cross-site form post: no token (and a browser would not even send the cookie).
    forged = await console.call("POST", f"/v1/jobs/{job}/cancel", csrf=False,
                                headers={"Origin": "https://evil.example",
                                         "Sec-Fetch-Site": "cross-site"})  # fmt: skip
    assert problem(forged, 403)["type"].endswith("csrf")
    no_token = await console.call("POST", f"/v1/jobs/{job}/cancel", csrf=False)
    assert problem(no_token, 403)["type"].endswith("csrf")
    wrong = await console.call("POST", f"/v1/jobs/{job}/cancel", csrf=False,
                               headers={"X-CSRF-Token": "guess"})  # fmt: skip
    problem(wrong, 403)
    other_site = await console.call("POST", f"/v1/jobs/{job}/cancel",
                                    headers={"Origin": "https://evil.example"})  # fmt: skip
    problem(other_site, 403)
    body_post = await console.call("POST", "/v1/jobs", csrf=False, json=ECHO)  # body gate
    problem(body_post, 403)
    assert (await console.call("GET", f"/v1/jobs/{job}", csrf=False)).json()["state"] == "queued"
    same_origin = {"Origin": "http://api.test", "Sec-Fetch-Site": "same-origin"}
    ok = await console.call("POST", f"/v1/jobs/{job}/cancel", headers=same_origin)
    assert ok.status_code == 200, ok.text
    await console.http.aclose()


async def test_sign_out_and_a_removed_key_end_the_session(api: InProcessApi) -> None:
    console, _ = await sign_in(api, TEAM_A_KEY)
    problem(await console.call("DELETE", "/ui/session", csrf=False), 403)
    out = await console.call("DELETE", "/ui/session")
    assert out.status_code == 204
    assert "Max-Age=0" in out.headers["set-cookie"]
    problem(await console.call("GET", "/v1/jobs", csrf=False), 401)
    again, _ = await sign_in(api, TEAM_A_KEY)
    ring = api.state.keys.ring
    removed = ring._by_hash.pop(
        next(h for h, e in ring._by_hash.items() if e.id == "team-a-writer")
    )
    try:
        problem(await again.call("GET", "/v1/jobs", csrf=False), 401)
    finally:
        ring._by_hash[removed.sha256] = removed
    await console.http.aclose()
    await again.http.aclose()


async def test_the_page_and_assets_carry_a_strict_policy(api: InProcessApi) -> None:
    async with api.client(None) as http:
        page = await http.get("/ui/")
        assert page.status_code == 200
        policy = page.headers["content-security-policy"]
        assert "default-src 'none'" in policy
        assert "script-src 'self'" in policy
        assert "unsafe" not in policy
        assert "frame-ancestors 'none'" in policy
        assert page.headers["x-frame-options"] == "DENY"
        assert page.headers["x-content-type-options"] == "nosniff"
        assert "<script" in page.text
        assert not re.search(r"<script(?![^>]*\bsrc=)[^>]*>", page.text), "inline script"
        assert "style=" not in page.text
        assert not re.search(r"https?://", page.text), "the page loads from no other host"
        for src in re.findall(r'(?:src|href)="(/[^"]+)"', page.text):
            asset = await http.get(src if src.startswith("/") else f"/ui/{src}")
            assert asset.status_code == 200, src
            assert "content-security-policy" in asset.headers
        assert "immutable" in asset.headers["cache-control"]  # versioned URLs
        assert (await http.get("/ui/static/../../app.py")).status_code == 404
        assert (await http.get("/ui/static/0000/app.js")).status_code == 404  # another release
        assert (await http.get("/ui", follow_redirects=False)).status_code == 308


def test_console_scripts_use_no_inline_code_nor_remote_hosts() -> None:
    from conveyor.console.router import STATIC_DIR

    for script in STATIC_DIR.glob("*.js"):
        text = script.read_text()
        assert "innerHTML" not in text, script.name
        assert "eval(" not in text, script.name
        assert "new Function" not in text, script.name
        # The SVG namespace is a name, not a host anything is loaded from.
        hosts = re.findall(r"""['"`](https?://[^'"`]*)""", text)
        assert set(hosts) <= {"http://www.w3.org/2000/svg"}, script.name


async def test_every_state_change_is_audited_with_who_what_and_outcome(
    api: InProcessApi,
) -> None:
    console, _ = await sign_in(api, TEAM_A_KEY)
    job = (await console.call("POST", "/v1/jobs", json=ECHO)).json()["id"]
    await console.call("POST", f"/v1/jobs/{job}/cancel")
    await console.call("POST", f"/v1/jobs/{job}/cancel?terminate=true")
    async with api.client(TEAM_B_KEY) as team_b:
        problem(await team_b.post(f"/v1/jobs/{job}/cancel"), 404)
    async with api.client(None) as anonymous:
        problem(await anonymous.post(f"/v1/jobs/{job}/cancel"), 401)
    await audit_written(api, 5)
    async with api.client(ADMIN_KEY) as admin:
        page = (await admin.get("/v1/audit", params={"limit": 3})).json()
        more = (await admin.get("/v1/audit", params={"cursor": page["next_cursor"]})).json()
        entries = page["items"] + more["items"]
        team_a = (await admin.get("/v1/audit", params={"tenant": "team-a"})).json()["items"]
    assert [e["action"] for e in entries] == ["cancel_job", "cancel_job", "cancel_job",
                                              "submit_job", "sign_in"]  # fmt: skip
    assert more["next_cursor"] is None
    refused, second, first, submitted, signed_in = entries
    assert (refused["tenant"], refused["status"], refused["outcome"], refused["via"]) == (
        "team-b",
        404,
        "refused",
        "api",
    )
    assert (first["key_id"], first["via"], first["outcome"], first["target"]) == (
        "team-a-writer",
        "console",
        "ok",
        job,
    )
    assert second["path"] == f"/v1/jobs/{job}/cancel"
    assert submitted["target"] == f"/v1/jobs/{job}"  # what it made: the Location
    assert signed_in["via"] == "console"
    assert [e["tenant"] for e in team_a] == ["team-a"] * 4
    await console.http.aclose()


async def test_overview_counts_the_platform_for_admins_and_a_tenant_its_own(
    api: InProcessApi, worker: InProcessWorker
) -> None:
    async with api.client(TEAM_A_KEY) as team_a, api.client(TEAM_B_KEY) as team_b:
        for _ in range(3):
            await team_a.post("/v1/jobs", json=ECHO)
        await team_b.post("/v1/jobs", json=ECHO)
        await team_b.post("/v1/jobs", json={**ECHO, "delay_seconds": 600})
        worker.run_next("default")  # one run ends: the minute counts it
        mine = (await team_a.get("/v1/overview")).json()
    async with api.client(ADMIN_KEY) as admin:
        await admin.put("/v1/admin/pauses/tier/low")
        platform = (await admin.get("/v1/overview")).json()
    default = next(t for t in platform["tiers"] if t["queue"] == "default")
    assert default["waiting"] == 3
    assert platform["delayed"] == 1
    assert platform["scope"] == "all"
    assert sum(m["succeeded"] for m in platform["minutes"]) == 1
    assert len(platform["minutes"]) == 15
    assert next(t for t in platform["tiers"] if t["queue"] == "low")["paused"] is True
    assert {"kind": "tier", "name": "low"} in platform["paused"]
    assert mine["scope"] == "tenant"
    own = next(t for t in mine["tiers"] if t["queue"] == "default")
    assert own["waiting"] + sum(m["succeeded"] for m in mine["minutes"]) == 3
    assert mine["delayed"] == 0


async def test_retry_runs_a_failed_job_again_for_its_own_tenant(
    api: InProcessApi, worker: InProcessWorker
) -> None:
    async with api.client(TEAM_A_KEY) as team_a, api.client(TEAM_B_KEY) as team_b:
        body = {"task": "demo.fail", "args": {"mode": "retryable"}, "max_retries": 0}
        job = (await team_a.post("/v1/jobs", json=body)).json()
        problem(await team_a.post(f"/v1/jobs/{job['id']}/retry"), 409)  # not failed yet
        worker.run_next(job["queue"])
        assert (await team_a.get(f"/v1/jobs/{job['id']}")).json()["state"] == "failed"
        problem(await team_b.post(f"/v1/jobs/{job['id']}/retry"), 404)
        retried = await team_a.post(f"/v1/jobs/{job['id']}/retry")
        assert retried.status_code == 200, retried.text
        assert retried.json()["state"] == "queued"


async def test_find_jobs_by_time_and_by_idempotency_key(api: InProcessApi) -> None:
    async with api.client(TEAM_A_KEY) as team_a, api.client(TEAM_B_KEY) as team_b:
        keyed = await team_a.post("/v1/jobs", json=ECHO, headers={"Idempotency-Key": "k-1"})
        await team_b.post("/v1/jobs", json=ECHO, headers={"Idempotency-Key": "k-1"})
        found = (await team_a.get("/v1/jobs", params={"idempotency_key": "k-1"})).json()
        assert [j["id"] for j in found["items"]] == [keyed.json()["id"]]
        none = (await team_a.get("/v1/jobs", params={"idempotency_key": "k-2"})).json()
        assert none["items"] == []
        now = datetime.now(UTC)
        later = (now + timedelta(minutes=5)).isoformat()
        earlier = (now - timedelta(minutes=5)).isoformat()
        assert (await team_a.get("/v1/jobs", params={"since": later})).json()["items"] == []
        assert len((await team_a.get("/v1/jobs", params={"since": earlier})).json()["items"]) == 1
        assert (await team_a.get("/v1/jobs", params={"until": earlier})).json()["items"] == []


async def test_with_authentication_off_any_key_signs_in_as_the_development_tenant(
    redis_url: str,
) -> None:
    from tests.fast.harness import serve, settings_for

    settings = settings_for(redis_url)
    settings.auth.disabled = True
    async with serve(settings) as local:
        console, response = await sign_in(local, "anything")
        assert response.json()["tenant"] == "default"
        me = await console.call("GET", "/ui/session", csrf=False)
        assert me.status_code == 200, me.text
        assert (await console.call("POST", "/v1/jobs", json=ECHO)).status_code == 202
        await console.http.aclose()


# Found by the adversarial review (each failed before its fix).


async def test_sign_in_takes_a_rate_limit_token_and_429s_are_not_audited(
    redis_url: str, redis_client: "redis.Redis"
) -> None:
    from tests.fast.harness import serve, settings_for

    settings = settings_for(redis_url)
    settings.limits.rate_per_second, settings.limits.burst = 0.01, 2
    async with serve(settings) as limited, limited.client(None) as http:
        statuses = [(await http.post("/ui/session", headers=bearer(TEAM_A_READER_KEY))).status_code
                    for _ in range(6)]  # fmt: skip
        assert statuses[:2] == [200, 200]
        assert set(statuses[2:]) == {429}
        assert len(redis_client.keys("conveyor:session:*")) == 2
        for _ in range(10):
            await http.post("/v1/nowhere", headers=bearer(TEAM_A_READER_KEY))
        await asyncio.sleep(0.3)  # the audit writes go on after the answers
        assert redis_client.xlen("conveyor:audit") <= 3


async def test_another_apps_cookie_beside_the_session_does_not_lock_the_console_out(
    api: InProcessApi,
) -> None:
    console, _ = await sign_in(api, TEAM_A_KEY)
    for foreign in ('theme={"dark":true}', "pref=a b", 'x="unterminated'):
        cookie = f"{foreign}; {SESSION_COOKIE}={console.cookie}"
        response = await console.http.get("/ui/session", headers={"Cookie": cookie})
        assert response.status_code == 200, (foreign, response.text)
    await console.http.aclose()


async def test_sign_in_opens_the_session_of_the_key_it_checked(api: InProcessApi) -> None:
    async with api.client(None) as http:
        mixed = {"Authorization": f"Basic {ADMIN_KEY}", "X-API-Key": TEAM_A_READER_KEY}
        response = await http.post("/ui/session", headers=mixed)
        assert response.status_code == 200, response.text
        assert response.json()["key_id"] == "team-a-reader"
        cookie = response.headers["set-cookie"].split(";")[0]
        me = (await http.get("/ui/session", headers={"Cookie": cookie})).json()
        assert me["key_id"] == "team-a-reader"
        assert me["scopes"] == ["jobs:read"]


async def test_audit_log_lines_cannot_be_forged_and_bad_cursors_are_a_422(
    api: InProcessApi, caplog: pytest.LogCaptureFixture
) -> None:
    async with api.client(ADMIN_KEY) as admin:
        with caplog.at_level("INFO", logger="conveyor.audit"):
            await admin.delete("/v1/schedules/x%0Aaudit delete_schedule sch_1 by tests-admin")
        lines = [r.getMessage() for r in caplog.records if r.name == "conveyor.audit"]
        assert len(lines) == 1
        assert "\n" not in lines[0]
        problem(await admin.get("/v1/audit", params={"cursor": "99999999999999999999-0"}), 422)


async def test_audit_entries_are_one_json_field_and_older_entries_still_list(
    api: InProcessApi, redis_client: "redis.Redis"
) -> None:
    # An entry as earlier releases stored it: field by field.
    redis_client.xadd("conveyor:audit", {
        "at": "1700000000.250", "key_id": "old-key", "tenant": "team-a", "via": "api",
        "action": "cancel_job", "method": "POST", "path": "/v1/jobs/j1/cancel",
        "target": "j1", "status": "200", "outcome": "ok"})  # fmt: skip
    async with api.client(ADMIN_KEY) as admin:
        await admin.post("/v1/jobs", json=ECHO)
        await audit_written(api, 2)
        items = (await admin.get("/v1/audit")).json()["items"]
    newest, oldest = items
    assert (newest["action"], newest["status"], newest["key_id"]) == (
        "submit_job", 202, "tests-admin")  # fmt: skip
    assert (oldest["key_id"], oldest["at"], oldest["status"]) == (
        "old-key", "2023-11-14T22:13:20.250Z", 200)  # fmt: skip
    stored = redis_client.xrevrange("conveyor:audit", count=1)[0][1]
    assert list(stored) == ["entry"], "one field: the entry as JSON"


async def test_a_writers_batch_is_appended_in_order_by_one_call_and_the_stream_stays_capped(
    settings: Settings, redis_client: "redis.Redis"
) -> None:
    keys = KeySpace(settings.key_prefix)
    client = async_client(settings)
    before = redis_client.info("commandstats")
    try:
        entries = [orjson.dumps({"n": n}) for n in range(2500)]
        assert await append_audit(client, keys, 1000, entries) == 2500
    finally:
        await client.aclose()
    after = redis_client.info("commandstats")
    calls = {name: after[name]["calls"] - before.get(name, {"calls": 0})["calls"]
             for name in after if name in ("cmdstat_evalsha", "cmdstat_eval")}  # fmt: skip
    assert 1 <= sum(calls.values()) <= 2, calls  # the call (and its EVAL after a NOSCRIPT)
    stored = redis_client.xrange(keys.audit)
    # MAXLEN ~ trims whole stream nodes (100 entries): about the cap, never below it.
    assert 1000 <= len(stored) < 1200
    numbers = [orjson.loads(fields["entry"])["n"] for _, fields in stored]
    assert numbers == list(range(2500 - len(stored), 2500)), "the newest, in order"
