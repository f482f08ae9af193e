"""Bulk submission: jobs/s through POST /v1/jobs/batch into one API process (1 uvicorn worker
under gunicorn), the API's CPU per job and Redis' per job (issue 22, item 2; target: 25,000
jobs/s per API process). Each batch holds 1,000 `demo.echo` jobs with idempotency keys, as the
Python client sends them; 4 clients post in parallel for the duration.

    .venv/bin/python -m bench.batch [--seconds 15] [--batch 1000]
"""

import argparse
import asyncio
import time
import uuid

import httpx

from bench.harness import BENCH_KEY, RedisServer, redis_server, start_conveyor_api, table
from bench.probes import cpu_seconds


async def _post_batches(base: str, size: int, until: float, counts: list[int]) -> None:
    headers = {"Authorization": f"Bearer {BENCH_KEY}"}
    async with httpx.AsyncClient(base_url=base, headers=headers, timeout=60) as client:
        while time.monotonic() < until:
            jobs = [{"task": "demo.echo", "args": {"payload": i},
                     "idempotency_key": f"bench-{uuid.uuid4()}"} for i in range(size)]  # fmt: skip
            response = await client.post("/v1/jobs/batch", json={"jobs": jobs})
            response.raise_for_status()
            counts.append(response.json()["accepted"])


async def _load(base: str, size: int, seconds: float, clients: int) -> tuple[int, float]:
    counts: list[int] = []
    started = time.monotonic()
    until = started + seconds
    await asyncio.gather(*(_post_batches(base, size, until, counts) for _ in range(clients)))
    return sum(counts), time.monotonic() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=15.0)
    parser.add_argument("--batch", type=int, default=1000)
    parser.add_argument("--clients", type=int, default=4)
    options = parser.parse_args()
    with redis_server() as server:
        api, base = start_conveyor_api(server.url)
        try:
            asyncio.run(_load(base, options.batch, 3, options.clients))  # warm up
            pids = api.pids()
            cpu_before = sum(cpu_seconds(pid) for pid in pids)
            usec_before = _redis_usec(server)
            accepted, elapsed = asyncio.run(
                _load(base, options.batch, options.seconds, options.clients)
            )
            cpu = sum(cpu_seconds(pid) for pid in pids) - cpu_before
            redis_usec = _redis_usec(server) - usec_before
        finally:
            api.stop()
    print(table(
        ["batch", "jobs accepted", "jobs/s", "API CPU-ms per job", "Redis µs per job"],
        [[options.batch, accepted, round(accepted / elapsed), round(cpu * 1000 / accepted, 3),
          round(redis_usec / accepted, 1)]],
    ))  # fmt: skip


def _redis_usec(server: RedisServer) -> float:
    # The scripts' own time: EVALSHA's usec includes the commands it runs, which commandstats
    # also lists on their own lines (adding those would count them twice).
    stats = server.client().info("commandstats")
    return float(stats.get("cmdstat_evalsha", {}).get("usec", 0))


if __name__ == "__main__":
    main()
