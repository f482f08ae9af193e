"""Bulk submission: jobs/s through POST /v1/jobs/batch into one API process (1 uvicorn worker
under gunicorn), the API's CPU per job and Redis' per job (issue 22, item 2; target: 25,000
jobs/s per API process). Each batch holds 1,000 `demo.echo` jobs with idempotency keys, as the
Python client sends them; 4 clients post in parallel for the duration.

    .venv/bin/python -m bench.batch [--seconds 15] [--batch 1000]

The bodies are built before the clock starts (every job with its own idempotency key, so none
is a replay), and the clients speak HTTP/1.1 over their own keep-alive connections: they
share the 2 cores with the API and Redis, and building 1,000-job bodies in Python, then httpx
reading the answers, took half as much CPU as the API spent on them (bench/README.md,
performance round 11). Every item of every answer must be accepted:
the queue depth limit and the tenant's bytes quota are lifted (`bench.harness.conveyor_env`:
by default they refuse past 100,000 queued jobs on `default` and 256 MiB of a tenant's
messages, which a run reaches within seconds), and a refused item stops the run instead of
passing for work done.
"""

import argparse
import asyncio
import collections
import math
import resource
import time
import uuid

import orjson

from bench.harness import BENCH_KEY, RedisServer, redis_server, start_conveyor_api, table
from bench.probes import cpu_seconds

CLIENTS_CEILING = 40_000  # jobs/s the prebuilt bodies are sized for (more than a run reaches)


def _bodies(count: int, size: int) -> collections.deque[bytes]:
    """`count` batch bodies of `size` jobs, each job with an idempotency key of its own."""
    return collections.deque(
        orjson.dumps({"jobs": [
            {"task": "demo.echo", "args": {"payload": i},
             "idempotency_key": f"bench-{uuid.uuid4()}"}
            for i in range(size)
        ]})
        for _ in range(count)
    )  # fmt: skip


async def _post_batches(base: str, bodies: collections.deque[bytes], until: float,
                        counts: list[int]) -> None:  # fmt: skip
    """One client's keep-alive connection posting prebuilt bodies: HTTP/1.1 written and read
    by hand (as wrk does for `bench.accept`), so that the load generator takes as little of
    the 2 cores as it can (httpx parsing the 650 KB answers took ~8 µs of CPU per job)."""
    host, port = base.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    head = (f"POST /v1/jobs/batch HTTP/1.1\r\nHost: {host}\r\n"
            f"Authorization: Bearer {BENCH_KEY}\r\nContent-Type: application/json\r\n")  # fmt: skip
    try:
        while bodies and time.monotonic() < until:
            body = bodies.popleft()
            writer.write(f"{head}Content-Length: {len(body)}\r\n\r\n".encode() + body)
            status, length = await _response_head(reader)
            answer = await reader.readexactly(length)
            if status != 200:
                raise SystemExit(f"POST /v1/jobs/batch answered {status}: {answer[:500]!r}")
            # The answer ends with the count of 202s: `..., "accepted": N}`.
            accepted = int(answer[answer.rindex(b'"accepted":') + 11 : -1])
            if accepted != body.count(b'"idempotency_key"'):
                items = orjson.loads(answer)["items"]
                refused = [item for item in items if item["status"] != 202]
                raise SystemExit(f"a batch item was refused, the figures would lie: {refused[:1]}")
            counts.append(accepted)
    finally:
        writer.close()


async def _response_head(reader: asyncio.StreamReader) -> tuple[int, int]:
    """The status and Content-Length of the next response."""
    lines = (await reader.readuntil(b"\r\n\r\n")).split(b"\r\n")
    headers = dict(line.lower().split(b": ", 1) for line in lines[1:] if b": " in line)
    return int(lines[0].split()[1]), int(headers[b"content-length"])


async def _load(base: str, bodies: collections.deque[bytes], seconds: float,
                clients: int) -> tuple[int, float]:  # fmt: skip
    counts: list[int] = []
    started = time.monotonic()
    until = started + seconds
    await asyncio.gather(*(_post_batches(base, bodies, until, counts) for _ in range(clients)))
    return sum(counts), time.monotonic() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=15.0)
    parser.add_argument("--batch", type=int, default=1000)
    parser.add_argument("--clients", type=int, default=4)
    options = parser.parse_args()
    warm = _bodies(3 * options.clients, options.batch)
    bodies = _bodies(math.ceil(options.seconds * CLIENTS_CEILING / options.batch), options.batch)
    with redis_server() as server:
        api, base = start_conveyor_api(server.url)  # backpressure lifted (conveyor_env)
        try:
            asyncio.run(_load(base, warm, 60, options.clients))
            pids = api.pids()
            cpu_before = sum(cpu_seconds(pid) for pid in pids)
            client_before = _own_cpu()
            usec_before, redis_cpu_before = _redis_usec(server), _redis_cpu(server)
            accepted, elapsed = asyncio.run(_load(base, bodies, options.seconds, options.clients))
            cpu = sum(cpu_seconds(pid) for pid in pids) - cpu_before
            client_cpu = _own_cpu() - client_before
            redis_usec = _redis_usec(server) - usec_before
            redis_cpu = _redis_cpu(server) - redis_cpu_before
        finally:
            api.stop()
    print(table(
        ["batch", "jobs accepted", "jobs/s", "API CPU-µs per job", "Redis CPU-µs per job",
         "scripts' µs per job", "clients' CPU-µs per job"],
        [[options.batch, accepted, round(accepted / elapsed), round(cpu * 1e6 / accepted, 1),
          round(redis_cpu * 1e6 / accepted, 1), round(redis_usec / accepted, 1),
          round(client_cpu * 1e6 / accepted, 1)]],
    ))  # fmt: skip
    if not bodies:
        print("(the prebuilt bodies ran out before the time was up: the rate is still right)")


def _own_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _redis_usec(server: RedisServer) -> float:
    # The scripts' own time: EVALSHA's usec includes the commands it runs, which commandstats
    # also lists on their own lines (adding those would count them twice).
    stats = server.client().info("commandstats")
    return float(stats.get("cmdstat_evalsha", {}).get("usec", 0))


def _redis_cpu(server: RedisServer) -> float:
    # All of Redis' CPU (networking and AOF included): what competes for the cores.
    stats = server.client().info("cpu")
    return float(stats["used_cpu_user"]) + float(stats["used_cpu_sys"])


if __name__ == "__main__":
    main()
