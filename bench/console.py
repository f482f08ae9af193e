"""Benchmark: the console with 100,000 jobs stored (issue 21). How long the calls behind each
page take (median and p99 over repeated calls, one client, a production-like API process),
and how long each page takes in Debian's chromium from navigation to its data on screen.

Data: 100,000 jobs of 10 tenants accepted through the real accept script (1% of them
dead-lettered), 20 schedules, a few hundred audit entries.

    python -m bench.console [--jobs 100000] [--samples 50]
"""

import argparse
import importlib.util
import shutil
import statistics
import time
from collections.abc import Callable

import httpx

from bench.harness import BENCH_KEY, redis_server, start_conveyor_api, table
from bench.seed import accept_jobs
from conveyor.core.queues import Queue
from conveyor.core.settings import Settings
from conveyor.jobstore.store import JobStore
from conveyor.jobstore.submission import message_for

HEADERS = {"Authorization": f"Bearer {BENCH_KEY}"}
TENANTS = [f"tenant-{n}" for n in range(10)]


def seed(url: str, jobs: int) -> str:
    """Accept `jobs` jobs, dead-letter 1% of them; the id of one job to open."""
    import redis

    from conveyor.core.catalog import load_catalog

    settings = Settings(redis_url=url)
    store = JobStore(redis.Redis.from_url(url), settings)
    per_tier = jobs // 2
    accept_jobs(store, per_tier, Queue.DEFAULT, tenants=TENANTS)
    accept_jobs(store, jobs - per_tier, Queue.LOW, tenants=TENANTS)
    catalog = load_catalog([])
    ids = [m.decode() if isinstance(m, bytes) else m
           for m in store.client.zrange(store.keys.index_all, 0, jobs // 100 - 1)]  # fmt: skip
    for job_id in ids:
        job = store.get(job_id)
        assert job is not None
        message = message_for(job, catalog[job.task], settings.worker, generation=1)
        error = '{"type": "BenchError", "message": "seeded"}'
        store.dead_letter(job_id, error, message)
    return ids[0]


def timed(call: Callable[[], httpx.Response], samples: int) -> tuple[float, float]:
    walls = []
    for _ in range(samples):
        started = time.perf_counter()
        response = call()
        walls.append((time.perf_counter() - started) * 1000)
        assert response.status_code == 200, response.text
    walls.sort()
    return statistics.median(walls), walls[min(len(walls) - 1, int(len(walls) * 0.99))]


def browser_times(base: str, routes: list[tuple[str, str, str]]) -> list[list[object]]:
    """Milliseconds to each page's first data row, in chromium: moving to it within the
    console (what an operator does all day), and loading it afresh (the first visit).
    """
    from playwright.sync_api import sync_playwright

    rows: list[list[object]] = []
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=shutil.which("chromium"),
                                             args=["--no-sandbox"])  # fmt: skip
        page = browser.new_page()
        page.goto(f"{base}/ui/")
        page.get_by_test_id("signin-key").fill(BENCH_KEY)
        page.get_by_test_id("signin-submit").click()
        page.get_by_test_id("signout").wait_for()
        for name, route, testid in routes:
            moves, loads = [], []
            for _ in range(5):
                page.goto(f"{base}/ui/#/schedules/new")  # a form: none of the pages' rows
                page.get_by_test_id("schedule-form").wait_for()
                started = time.perf_counter()
                page.evaluate("route => { location.hash = route; }", route)
                page.get_by_test_id(testid).first.wait_for()
                moves.append((time.perf_counter() - started) * 1000)
                started = time.perf_counter()
                page.reload()  # the whole page again: its HTML, scripts (cached), session
                page.get_by_test_id(testid).first.wait_for()
                loads.append((time.perf_counter() - started) * 1000)
            rows.append([name, round(statistics.median(moves), 1), round(max(moves), 1),
                         round(statistics.median(loads), 1), round(max(loads), 1)])  # fmt: skip
        browser.close()
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--jobs", type=int, default=100_000)
    parser.add_argument("--samples", type=int, default=50)
    options = parser.parse_args()
    with redis_server() as server:
        started = time.perf_counter()
        one = seed(server.url, options.jobs)
        print(f"seeded {options.jobs} jobs in {time.perf_counter() - started:.0f} s")
        api, base = start_conveyor_api(server.url, workers=1)
        try:
            with httpx.Client(base_url=base, headers=HEADERS, timeout=30) as http:
                for n in range(20):
                    http.post("/v1/schedules", json={
                        "name": f"report-{n}", "task": "demo.echo", "args": {"payload": n},
                        "cron": f"{n} * * * *", "timezone": "Europe/Paris"})  # fmt: skip
                for _ in range(300):
                    http.post(f"/v1/jobs/{one}/cancel")  # audit entries (409s)
                key = http.post("/v1/jobs", json={"task": "demo.echo", "args": {}},
                                headers={"Idempotency-Key": "find-me"})  # fmt: skip
                assert key.status_code == 202, key.text
                calls = [
                    ("overview", "/v1/overview"),
                    ("jobs, first page", "/v1/jobs?limit=50"),
                    ("jobs, one tenant", "/v1/jobs?limit=50&tenant=tenant-3"),
                    ("jobs, state + task", "/v1/jobs?limit=50&state=queued&task=demo.echo"),
                    (
                        "jobs, tier + since",
                        "/v1/jobs?limit=50&queue=low&since=2020-01-01T00:00:00Z",
                    ),
                    ("jobs, by idempotency key", "/v1/jobs?idempotency_key=find-me"),
                    ("job", f"/v1/jobs/{one}"),
                    ("dead letters", "/v1/dead-letters?limit=50"),
                    ("schedules", "/v1/schedules"),
                    ("audit", "/v1/audit?limit=50"),
                    ("tasks (every page)", "/v1/tasks"),
                    ("session (every page)", "/ui/session"),
                ]
                signed = http.post("/ui/session")
                cookie = {"Cookie": signed.headers["set-cookie"].split(";")[0]}
                rows = []
                for name, path in calls:
                    headers = cookie if path.startswith("/ui") else {}
                    p50, p99 = timed(lambda p=path, h=headers: http.get(p, headers=h),
                                     options.samples)  # fmt: skip
                    rows.append([name, path.split("?")[0], round(p50, 1), round(p99, 1)])
            print(f"\nAPI calls behind the console's pages, {options.jobs} jobs stored "
                  f"({options.samples} calls each):")  # fmt: skip
            print(table(["call", "path", "median ms", "p99 ms"], rows))
            if not (shutil.which("chromium") and importlib.util.find_spec("playwright")):
                print(
                    "\n(no browser figures: they need Debian's chromium and playwright, "
                    "which `make install-dev` installs)"
                )
            if shutil.which("chromium") and importlib.util.find_spec("playwright"):
                routes = [("overview", "#/overview", "tier-row"),
                          ("jobs", "#/jobs", "job-row"),
                          ("job", f"#/jobs/{one}", "job-state"),
                          ("dead letters", "#/dead-letters", "dead-letter-row"),
                          ("schedules", "#/schedules", "schedule-row"),
                          ("audit", "#/audit", "audit-row")]  # fmt: skip
                print("\nIn chromium, to the first data row (5 of each):")
                headers = ["page", "within the console, median ms", "max ms",
                           "reload, median ms", "max ms"]  # fmt: skip
                print(table(headers, browser_times(base, routes)))
        finally:
            api.stop()


if __name__ == "__main__":
    main()
