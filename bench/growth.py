"""Benchmark 5 and 6: the cost of growth, and memory.

- accept throughput with 1 and 2 API processes (wrk, 64 connections);
- exporter scrape time with 10, 10,000 and 1,000,000 jobs queued;
- job-listing latency with 100,000 finished jobs stored;
- RSS of an API worker process, the exporter and beat after the runs.

    python -m bench.growth [--seconds 20] [--queued 10 10000 1000000] [--stored 100000]
"""

import argparse
import json
import time

import httpx

from bench.accept import BODY
from bench.harness import (
    BENCH_KEY,
    PYTHON,
    Proc,
    conveyor_env,
    free_port,
    median,
    percentile,
    redis_server,
    rss_mb,
    start_conveyor_api,
    table,
    wait_until,
    wrk,
)
from bench.seed import accept_jobs
from conveyor.core.queues import Queue
from conveyor.core.settings import Settings
from conveyor.jobstore.store import JobStore

HEADERS = {"Content-Type": "application/json", "Authorization": f"Bearer {BENCH_KEY}"}


def timed_gets(url: str, count: int, headers: dict[str, str] | None = None) -> list[float]:
    times = []
    with httpx.Client(headers=headers or {}, timeout=30) as http:
        http.get(url).raise_for_status()  # warm up
        for _ in range(count):
            started = time.perf_counter()
            http.get(url).raise_for_status()
            times.append((time.perf_counter() - started) * 1000)
    return times


def api_scaling(seconds: int) -> list[list[object]]:
    rows = []
    for processes in (1, 2):
        with redis_server() as server:
            api, base = start_conveyor_api(server.url, workers=processes)
            try:
                result = wrk(f"{base}/v1/jobs", 64, seconds, BODY, HEADERS)
                rss = [rss_mb(pid) for pid in api.pids()[1:]]
            finally:
                api.stop()
        rows.append(
            [
                processes,
                f"{result.requests_per_second:,.0f}",
                f"{result.p50_ms:.1f}",
                f"{result.p99_ms:.1f}",
                result.errors,
                f"{max(rss):.0f}",
            ]
        )
    return rows


def exporter_scrapes(queued: list[int]) -> tuple[list[list[object]], float]:
    rows, rss = [], 0.0
    with redis_server(appendonly=False) as server:
        client = server.client()
        store = JobStore(server.client(), Settings())
        accept_jobs(store, 1, Queue.DEFAULT)
        port = free_port()
        exporter = Proc(
            "exporter",
            [PYTHON, "-m", "conveyor", "exporter"],
            conveyor_env(server.url, CONVEYOR_METRICS__EXPORTER_PORT=str(port)),
        )
        url = f"http://127.0.0.1:{port}/metrics"
        wait_until(lambda: _up(url), 30, "the exporter")
        try:
            have = client.llen("default")
            for target in queued:
                while have < target:
                    batch = min(10_000, target - have)
                    # Ready tokens (what a tier's list holds; the messages wait per tenant).
                    client.lpush("default", *([f"{time.time():.3f}"] * batch))
                    have += batch
                times = timed_gets(url, 30)
                rows.append([f"{target:,}", f"{median(times):.1f}", f"{percentile(times, 99):.1f}"])
            rss = rss_mb(exporter.pids()[0])
        finally:
            exporter.stop()
    return rows, rss


def listing(stored: int) -> list[list[object]]:
    rows = []
    with redis_server(appendonly=False) as server:
        client = server.client()
        store = JobStore(server.client(), Settings())
        accept_jobs(store, stored, Queue.DEFAULT)
        # Finish them all: the records and the state index, as transition.lua leaves them.
        ids = client.zrange("conveyor:index:all", 0, -1, withscores=True)
        for start in range(0, len(ids), 5000):
            with client.pipeline(transaction=False) as pipe:
                for job_id, score in ids[start : start + 5000]:
                    pipe.hset(
                        f"conveyor:job:{job_id}",
                        mapping={
                            "state": "succeeded",
                            "result": json.dumps({"payload": 1}),
                            "started_at": "1.0",
                            "finished_at": "2.0",
                        },
                    )
                    pipe.zadd("conveyor:index:state:succeeded", {job_id: score})
                pipe.delete("conveyor:index:state:queued", "default")
                pipe.execute()
        api, base = start_conveyor_api(server.url)
        headers = {"Authorization": f"Bearer {BENCH_KEY}"}
        try:
            for label, query in (
                ("newest page (limit 50)", "limit=50"),
                ("state=succeeded (limit 50)", "state=succeeded&limit=50"),
                ("tenant's own, limit 500", "tenant=bench&limit=500"),
            ):
                times = timed_gets(f"{base}/v1/jobs?{query}", 50, headers)
                rows.append([label, f"{median(times):.1f}", f"{percentile(times, 99):.1f}"])
            # A page deep in the listing, reached through cursors.
            with httpx.Client(base_url=base, headers=headers) as http:
                cursor = None
                for _ in range(20):
                    page = http.get(
                        "/v1/jobs", params={"limit": 500, **({"cursor": cursor} if cursor else {})}
                    ).json()
                    cursor = page["next_cursor"]
            times = timed_gets(f"{base}/v1/jobs?limit=50&cursor={cursor}", 50, headers)
            rows.append(
                [
                    "page at offset 10,000 (cursor)",
                    f"{median(times):.1f}",
                    f"{percentile(times, 99):.1f}",
                ]
            )
        finally:
            api.stop()
    return rows


def beat_rss() -> float:
    with redis_server(appendonly=False) as server:
        beat = Proc("beat", [PYTHON, "-m", "conveyor", "beat"], conveyor_env(server.url))
        try:
            time.sleep(10)
            return rss_mb(beat.pids()[0])
        finally:
            beat.stop()


def _up(url: str) -> bool:
    try:
        return httpx.get(url, timeout=2).status_code == 200
    except httpx.TransportError:
        return False


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=int, default=20)
    parser.add_argument("--queued", type=int, nargs="+", default=[10, 10_000, 1_000_000])
    parser.add_argument("--stored", type=int, default=100_000)
    options = parser.parse_args()
    print(
        table(
            ["API processes", "req/s", "p50 ms", "p99 ms", "errors", "RSS MB per process"],
            api_scaling(options.seconds),
        )
    )
    print()
    scrapes, exporter_rss = exporter_scrapes(options.queued)
    print(table(["jobs queued", "scrape median ms", "scrape p99 ms"], scrapes))
    print()
    print(
        table(
            [f"listing with {options.stored:,} finished jobs", "median ms", "p99 ms"],
            listing(options.stored),
        )
    )
    print()
    print(f"RSS: exporter {exporter_rss:.0f} MB, beat {beat_rss():.0f} MB")


if __name__ == "__main__":
    main()
