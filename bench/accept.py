"""Benchmark 1: the accept path. POST /v1/jobs (demo.echo) at 16 and 64 connections against
`conveyor api` and the two tutorial baselines, in the same run, one server process each, on a
private Redis (AOF everysec). Prints req/s, p50, p99, errors, ratios, and Redis commands per
accepted job.

    python -m bench.accept [--seconds 20] [--runs 3]
"""

import argparse
import json

from bench.harness import (
    BENCH_KEY,
    LoadResult,
    median,
    redis_server,
    start_baseline,
    start_conveyor_api,
    table,
    wrk,
)

BODY = json.dumps({"task": "demo.echo", "args": {"payload": {"order": 42}}})
TARGETS = ("conveyor", "tutorial_async", "tutorial_sync", "conveyor+idempotency-key")


def measure(target: str, connections: int, seconds: int) -> tuple[LoadResult, dict[str, float]]:
    """One load run against a fresh Redis; also Redis calls per accepted job."""
    with redis_server() as server:
        if target.startswith("conveyor"):
            proc, base = start_conveyor_api(server.url)
            headers = {"Content-Type": "application/json", "Authorization": f"Bearer {BENCH_KEY}"}
        else:
            proc, base = start_baseline(target, server.url)
            headers = {"Content-Type": "application/json"}
        try:
            before = server.command_calls()
            keyed = target.endswith("idempotency-key")
            result = wrk(f"{base}/v1/jobs", connections, seconds, BODY, headers, keyed)
            after = server.command_calls()
            accepted = server.client().llen("default")
        finally:
            proc.stop()
    calls = {cmd: (after.get(cmd, 0) - before.get(cmd, 0)) / max(accepted, 1) for cmd in after}
    return result, {cmd: round(n, 2) for cmd, n in calls.items() if n >= 0.01}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=int, default=20)
    parser.add_argument("--runs", type=int, default=3, help="runs per cell; medians are shown")
    parser.add_argument("--connections", type=int, nargs="+", default=[16, 64])
    options = parser.parse_args()

    rows, medians, commands = [], {}, {}
    for connections in options.connections:
        for target in TARGETS:
            runs = []
            for _ in range(options.runs):
                result, calls = measure(target, connections, options.seconds)
                runs.append(result)
                commands[target] = calls
            rps = median([r.requests_per_second for r in runs])
            medians[(target, connections)] = rps
            rows.append(
                [
                    target,
                    connections,
                    f"{rps:,.0f}",
                    f"{median([r.p50_ms for r in runs]):.1f}",
                    f"{median([r.p99_ms for r in runs]):.1f}",
                    sum(r.errors for r in runs),
                    " / ".join(f"{r.requests_per_second:,.0f}" for r in runs),
                ]
            )
    print(
        table(
            ["server", "conns", "req/s (median)", "p50 ms", "p99 ms", "errors", "runs req/s"], rows
        )
    )
    print()
    for connections in options.connections:
        conveyor = medians[("conveyor", connections)]
        for baseline in TARGETS[1:3]:
            ratio = conveyor / medians[(baseline, connections)]
            print(f"{connections} conns: conveyor / {baseline} = {ratio:.1f}x")
    print()
    for target, calls in commands.items():
        print(f"Redis commands per accepted job, {target}: {json.dumps(calls, sort_keys=True)}")


if __name__ == "__main__":
    main()
