"""The console in a real browser (Debian's chromium, driven by Playwright: nothing is
downloaded) against a live API and workers: sign in, watch a job's progress bar reach
succeeded, cancel a running job, replay a dead letter, create and pause a schedule; a
tenant cannot see or act on another tenant's job, by URL or by form field; a cross-site form
post is refused. Also writes the screenshots docs/console.md shows (`--console-screenshots`).
"""

import shutil
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from playwright.sync_api import Browser, Page, expect, sync_playwright

from tests.conftest import started_platform
from tests.support.auth import ADMIN_KEY, TEAM_A_KEY, TEAM_B_KEY, bearer
from tests.support.processes import Platform, RedisServer

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
SCREENSHOTS = Path(__file__).parents[2] / "docs" / "console"
# Playwright's expect() waits up to this long for each condition (a loaded 2-core machine).
WAIT_MS = 20_000

pytestmark = pytest.mark.slow
expect.set_options(timeout=WAIT_MS)


@pytest.fixture(scope="module")
def live(redis_server: RedisServer, module_logs: Path) -> Iterator[Platform]:
    """The API and two tiers' workers (default, low), on a database of their own."""
    platform = started_platform(redis_server, module_logs, queues=("default", "low"),
                                CONVEYOR_WORKER__HARD_TIMEOUT_GRACE_SECONDS="2")  # fmt: skip
    yield platform
    platform.stop()


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=CHROMIUM, headless=True,
                                              args=["--no-sandbox"])  # fmt: skip
        yield launched
        launched.close()


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    context = browser.new_context(viewport={"width": 1280, "height": 860})
    opened = context.new_page()
    opened.set_default_timeout(WAIT_MS)
    yield opened
    context.close()


def sign_in(page: Page, live: Platform, key: str) -> None:
    page.goto(f"{live.base_url}/ui/")
    page.get_by_test_id("signin-key").fill(key)
    page.get_by_test_id("signin-submit").click()
    expect(page.get_by_test_id("signout")).to_be_visible()


def api(live: Platform, key: str) -> httpx.Client:
    return httpx.Client(base_url=live.base_url, headers=bearer(key), timeout=10)


def test_sign_in_then_watch_a_job_progress_to_succeeded(page: Page, live: Platform) -> None:
    sign_in(page, live, TEAM_A_KEY)
    expect(page.get_by_test_id("session-tenant")).to_have_text("team-a")
    with api(live, TEAM_A_KEY) as client:
        job = client.post("/v1/jobs", json={"task": "demo.sleep", "args": {"seconds": 3}}).json()
    page.goto(f"{live.base_url}/ui/#/jobs/{job['id']}")
    progress = page.get_by_test_id("job-progress")
    expect(page.get_by_test_id("job-state")).to_have_text("running", timeout=WAIT_MS)
    seen = set()
    for _ in range(60):
        value = progress.get_attribute("aria-valuenow") or progress.get_attribute("value")
        if value:
            seen.add(float(value))
        if page.get_by_test_id("job-state").inner_text() == "succeeded":
            break
        page.wait_for_timeout(100)
    expect(page.get_by_test_id("job-state")).to_have_text("succeeded")
    assert len(seen) >= 2, f"the bar did not move: {seen}"
    expect(page.get_by_test_id("job-result")).to_contain_text("slept")
    assert TEAM_A_KEY not in page.content()


def test_cancel_a_running_job_from_its_page(page: Page, live: Platform) -> None:
    sign_in(page, live, TEAM_A_KEY)
    with api(live, TEAM_A_KEY) as client:
        job = client.post("/v1/jobs", json={"task": "demo.sleep", "args": {"seconds": 60}}).json()
    page.goto(f"{live.base_url}/ui/#/jobs/{job['id']}")
    expect(page.get_by_test_id("job-state")).to_have_text("running")
    page.once("dialog", lambda dialog: dialog.accept())
    page.get_by_test_id("terminate").click()
    expect(page.get_by_test_id("job-state")).to_have_text("cancelled")
    with api(live, TEAM_A_KEY) as client:
        assert client.get(f"/v1/jobs/{job['id']}").json()["state"] == "cancelled"


def test_replay_a_dead_letter(page: Page, live: Platform) -> None:
    with api(live, ADMIN_KEY) as client:
        body = {"task": "demo.fail", "max_retries": 0,
                "args": {"mode": "retryable", "succeed_on_attempt": 2}}  # fmt: skip
        job = client.post("/v1/jobs", json=body).json()
        for _ in range(100):
            if client.get(f"/v1/jobs/{job['id']}").json()["state"] == "failed":
                break
            page.wait_for_timeout(100)
    sign_in(page, live, ADMIN_KEY)
    page.get_by_test_id("nav-dead-letters").click()
    row = page.locator(f"[data-testid=dead-letter-row][data-job-id='{job['id']}']")
    expect(row).to_be_visible()
    row.get_by_test_id("dl-replay").click()
    expect(row).to_have_count(0)
    page.goto(f"{live.base_url}/ui/#/jobs/{job['id']}")
    expect(page.get_by_test_id("job-state")).to_have_text("succeeded")  # attempt 2 succeeds
    with api(live, ADMIN_KEY) as client:
        assert client.get(f"/v1/jobs/{job['id']}").json()["attempts"] == 2


def test_create_and_pause_a_schedule(page: Page, live: Platform) -> None:
    sign_in(page, live, TEAM_A_KEY)
    page.goto(f"{live.base_url}/ui/#/schedules/new")
    form = page.get_by_test_id("schedule-form")
    form.get_by_test_id("sf-name").fill("nightly-echo")
    form.get_by_test_id("sf-task").select_option("demo.echo")
    form.get_by_test_id("sf-args").fill('{"payload": "hello"}')
    form.get_by_test_id("sf-timing").select_option("cron")
    form.get_by_test_id("sf-cron").fill("0 3 * * *")
    form.get_by_test_id("sf-timezone").fill("Europe/Paris")
    form.get_by_test_id("sf-submit").click()
    expect(page.get_by_test_id("schedule-next-run").first).to_be_visible()
    with api(live, TEAM_A_KEY) as client:
        (created,) = [s for s in client.get("/v1/schedules").json()["items"]
                      if s["name"] == "nightly-echo"]  # fmt: skip
    assert created["timezone"] == "Europe/Paris"
    assert len(created["next_runs"]) == 5
    page.goto(f"{live.base_url}/ui/#/schedules")
    row = page.locator(f"[data-testid=schedule-row][data-schedule-id='{created['id']}']")
    row.get_by_test_id("schedule-pause").click()
    expect(row.get_by_test_id("schedule-resume")).to_be_visible()
    with api(live, TEAM_A_KEY) as client:
        assert client.get(f"/v1/schedules/{created['id']}").json()["paused"] is True


def test_a_tenant_cannot_see_or_act_on_another_tenants_job(page: Page, live: Platform) -> None:
    with api(live, TEAM_B_KEY) as client:
        theirs = client.post("/v1/jobs", json={"task": "demo.sleep", "args": {"seconds": 30}})
        theirs_id = theirs.json()["id"]
    sign_in(page, live, TEAM_A_KEY)
    page.goto(f"{live.base_url}/ui/#/jobs")
    expect(page.get_by_test_id("jobs-filters")).to_be_visible()
    expect(page.locator(f"[data-testid=job-row][data-job-id='{theirs_id}']")).to_have_count(0)
    # Editing the URL: the job's page and a listing of the other tenant.
    page.goto(f"{live.base_url}/ui/#/jobs/{theirs_id}")
    expect(page.get_by_test_id("error")).to_contain_text("not found", ignore_case=True)
    page.goto(f"{live.base_url}/ui/#/jobs?tenant=team-b")
    expect(page.get_by_test_id("jobs-filters")).to_be_visible()
    page.wait_for_timeout(500)
    expect(page.locator(f"[data-testid=job-row][data-job-id='{theirs_id}']")).to_have_count(0)
    # Editing what the page sends: its own session, cancel on their id, list their tenant.
    statuses = page.evaluate(
        """async (id) => {
            const me = await (await fetch('/ui/session')).json();
            const headers = {'X-CSRF-Token': me.csrf_token};
            const cancel = await fetch(`/v1/jobs/${id}/cancel`, {method: 'POST', headers});
            const list = await fetch('/v1/jobs?tenant=team-b');
            const read = await fetch(`/v1/jobs/${id}`);
            return [cancel.status, list.status, read.status];
        }""",
        theirs_id,
    )
    assert statuses == [404, 403, 404]
    with api(live, TEAM_B_KEY) as client:
        assert client.get(f"/v1/jobs/{theirs_id}").json()["state"] in ("queued", "running")
        client.post(f"/v1/jobs/{theirs_id}/cancel", params={"terminate": "true"})


def test_a_cross_site_form_post_is_refused(page: Page, live: Platform) -> None:
    with api(live, TEAM_A_KEY) as client:
        job = client.post("/v1/jobs", json={"task": "demo.sleep", "args": {"seconds": 30}}).json()
    sign_in(page, live, TEAM_A_KEY)  # the browser holds a live session cookie
    evil = "http://evil.test/"
    page.route(evil, lambda route: route.fulfill(content_type="text/html", body=f"""
        <form id="f" method="post" action="{live.base_url}/v1/jobs/{job['id']}/cancel"></form>
        <script>document.getElementById('f').submit()</script>"""))  # fmt: skip
    with page.expect_navigation():
        page.goto(evil)
    assert '"status":401' in page.content() or '"status":403' in page.content()
    with api(live, TEAM_A_KEY) as client:
        assert client.get(f"/v1/jobs/{job['id']}").json()["state"] in ("queued", "running")
        client.post(f"/v1/jobs/{job['id']}/cancel", params={"terminate": "true"})


def test_every_page_renders_and_screenshots(
    browser: Browser, live: Platform, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """Each main page shows its content with data in it; the screenshots go to docs/console
    with `--console-screenshots`.
    """
    folder = SCREENSHOTS if request.config.getoption("--console-screenshots") else tmp_path
    folder.mkdir(parents=True, exist_ok=True)
    with api(live, ADMIN_KEY) as client:
        for n in range(6):
            client.post("/v1/jobs", json={"task": "demo.echo", "args": {"payload": n}})
        client.post("/v1/jobs", json={"task": "demo.sleep", "args": {"seconds": 8}})
        failed = client.post("/v1/jobs", json={"task": "demo.fail", "max_retries": 0,
                                               "args": {"mode": "retryable"}}).json()  # fmt: skip
        flow = client.post("/v1/workflows", json={"chord": {
            "parallel": [{"task": "demo.square", "args": {"x": n}} for n in range(4)],
            "then": {"task": "demo.sum", "inputs": {"values": "*"}}}}).json()  # fmt: skip
        digest = {"name": "hourly-digest", "task": "demo.echo", "args": {"payload": "digest"},
                  "cron": "0 * * * *", "timezone": "Europe/Paris", "overlap": "skip"}  # fmt: skip
        client.post("/v1/schedules", json=digest)
    context = browser.new_context(viewport={"width": 1280, "height": 800})
    page = context.new_page()
    page.set_default_timeout(WAIT_MS)
    try:
        sign_in(page, live, ADMIN_KEY)
        shots = [
            ("overview", "#/overview", "tier-row"),
            ("jobs", "#/jobs", "job-row"),
            ("job", f"#/jobs/{failed['id']}", "job-error"),
            ("dead-letters", "#/dead-letters", "dead-letter-row"),
            ("workflow", f"#/workflows/{flow['id']}", "dag-node"),
            ("schedules", "#/schedules", "schedule-row"),
            ("audit", "#/audit", "audit-row"),
        ]
        page.wait_for_timeout(1500)  # the runs end, so the pages show states and results
        for name, route, testid in shots:
            page.goto(f"{live.base_url}/ui/{route}")
            expect(page.get_by_test_id(testid).first).to_be_visible()
            page.wait_for_timeout(300)
            page.screenshot(path=str(folder / f"{name}.png"), full_page=False)
            assert (folder / f"{name}.png").stat().st_size > 10_000, name
    finally:
        context.close()


def test_saving_a_stale_schedule_form_never_undoes_a_pause(page: Page, live: Platform) -> None:
    """Found by review: the form's PATCH carried every field and no version."""
    with api(live, TEAM_A_KEY) as client:
        created = client.post("/v1/schedules", json={"name": "stale-form", "task": "demo.echo",
                                                     "args": {"payload": 1},
                                                     "interval_seconds": 60}).json()  # fmt: skip
    sign_in(page, live, TEAM_A_KEY)
    page.goto(f"{live.base_url}/ui/#/schedules/{created['id']}/edit")
    form = page.get_by_test_id("schedule-form")
    expect(form.get_by_test_id("sf-name")).to_have_value("stale-form")
    with api(live, TEAM_A_KEY) as client:  # another operator pauses it meanwhile
        assert client.post(f"/v1/schedules/{created['id']}/pause").status_code == 200
    form.get_by_test_id("sf-args").fill('{"payload": 2}')
    form.get_by_test_id("sf-submit").click()
    expect(page.get_by_test_id("error")).to_contain_text("changed", ignore_case=True)
    with api(live, TEAM_A_KEY) as client:
        after = client.get(f"/v1/schedules/{created['id']}").json()
    assert after["paused"] is True
    assert after["args"] == {"payload": 1}
