"""Shared pieces of the benchmarks: a private Redis, Conveyor and baseline processes, wrk,
Redis command counts, RSS, percentiles. Nothing here touches the shared Redis on 6379.
"""

import contextlib
import json
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import redis

REPO = Path(__file__).resolve().parents[1]
PYTHON = sys.executable
BENCH_KEY = "cvk_bench-000000000000000000000000000000000000000"
WORK = Path(tempfile.mkdtemp(prefix="conveyor-bench-"))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def wait_until(predicate: Callable[[], object], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out waiting for {what}")
        time.sleep(0.05)


@dataclass
class Proc:
    """A child process in its own group, with its output in a log file."""

    name: str
    argv: list[str]
    env: dict[str, str]
    process: subprocess.Popen[bytes] = field(init=False)
    log: Path = field(init=False)

    def __post_init__(self) -> None:
        self.log = WORK / f"{self.name}-{time.monotonic_ns()}.log"
        self.process = subprocess.Popen(
            self.argv,
            env=self.env,
            cwd=REPO,
            stdout=self.log.open("wb"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def stop(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(20)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()

    def pids(self) -> list[int]:
        """This process and its descendants."""
        found, frontier = [self.process.pid], [self.process.pid]
        while frontier:
            parent = frontier.pop()
            with contextlib.suppress(OSError):
                for child in Path(f"/proc/{parent}/task/{parent}/children").read_text().split():
                    found.append(int(child))
                    frontier.append(int(child))
        return found

    def cpu_seconds(self) -> float:
        """CPU time (user + system) of this process and its living descendants."""
        total = 0.0
        for pid in self.pids():
            with contextlib.suppress(OSError):
                fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
                total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        return total


def rss_mb(pid: int) -> float:
    """Resident set size of one process, in MB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


@dataclass
class RedisServer:
    port: int
    proc: Proc

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def client(self) -> redis.Redis:
        return redis.Redis(port=self.port, decode_responses=True)

    def cpu_seconds(self) -> float:
        """The server's own CPU time (user + system), from INFO cpu."""
        cpu: dict[str, Any] = self.client().info("cpu")
        return float(cpu["used_cpu_user"]) + float(cpu["used_cpu_sys"])

    def command_calls(self) -> dict[str, int]:
        """INFO commandstats as {command: calls} (script-internal commands included)."""
        stats: dict[str, Any] = self.client().info("commandstats")
        return {name.removeprefix("cmdstat_"): int(v["calls"]) for name, v in stats.items()}


@contextlib.contextmanager
def redis_server(appendonly: bool = True) -> Iterator[RedisServer]:
    """A private redis-server as production runs it (AOF everysec, noeviction)."""
    binary = shutil.which("redis-server")
    if binary is None:
        raise SystemExit("redis-server is required (apt-get install redis-server)")
    port = free_port()
    data = WORK / f"redis-{port}"
    data.mkdir()
    argv = [
        binary,
        "--port",
        str(port),
        "--bind",
        "127.0.0.1",
        "--dir",
        str(data),
        "--save",
        "",
        "--appendonly",
        "yes" if appendonly else "no",
        "--appendfsync",
        "everysec",
        "--maxmemory-policy",
        "noeviction",
    ]
    server = RedisServer(port, Proc("redis", argv, dict(os.environ)))
    wait_until(lambda: _pings(server), 10, "redis-server")
    try:
        yield server
    finally:
        server.proc.stop()
        shutil.rmtree(data, ignore_errors=True)


def _pings(server: RedisServer) -> bool:
    try:
        return bool(server.client().ping())
    except redis.ConnectionError:
        return False


def keys_file() -> Path:
    from conveyor.core.apikeys import hash_key

    path = WORK / "keys.yaml"
    entry = {"id": "bench", "tenant": "bench", "scopes": ["admin"], "sha256": hash_key(BENCH_KEY)}
    path.write_text(json.dumps({"keys": [entry]}))
    return path


def conveyor_env(redis_url: str, **extra: str) -> dict[str, str]:
    """Production-like settings: auth on, a (non-binding) rate limit checked on every
    submission, metrics on, tracing set up with no exporter endpoint. The backpressure
    limits are lifted (0: none; still checked on every submission): a run of a few seconds
    queues more than the default depth of `default` (100,000) and the default tenant's bytes
    quota (256 MiB) allow, and their refusals, cheap and answered 503/429, would pass for
    accepted work."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CONVEYOR_", "OTEL_"))}
    env.update(
        # The checkout the benchmark runs from, whatever the virtualenv installed.
        PYTHONPATH=f"{REPO / 'services'}{os.pathsep}{REPO}",
        CONVEYOR_REDIS_URL=redis_url,
        CONVEYOR_AUTH__KEYS_FILE=str(keys_file()),
        CONVEYOR_LIMITS__RATE_PER_SECOND="1000000",
        CONVEYOR_LIMITS__BURST="1000000",
        CONVEYOR_LIMITS__MAX_QUEUE_DEPTH__HIGH="0",
        CONVEYOR_LIMITS__MAX_QUEUE_DEPTH__DEFAULT="0",
        CONVEYOR_LIMITS__MAX_QUEUE_DEPTH__LOW="0",
        CONVEYOR_FLOW__TENANT_MAX_BYTES="0",
        CONVEYOR_LOG_LEVEL="WARNING",
        CONVEYOR_WEBHOOK__SIGNING_SECRET="bench-signing-secret-0123456789",
        CONVEYOR_METRICS__MULTIPROCESS_DIR=str(WORK / "metrics"),
        CONVEYOR_METRICS__WORKER_PORT="0",
        CONVEYOR_METRICS__BEAT_PORT="0",
        CONVEYOR_METRICS__EXPORTER_PORT=str(free_port()),
        CONVEYOR_METRICS__API_PORT=str(free_port()),
    )
    env.update(extra)
    return env


def start_conveyor_api(redis_url: str, workers: int = 1, **extra: str) -> tuple[Proc, str]:
    port = free_port()
    env = conveyor_env(
        redis_url,
        CONVEYOR_API__BIND=f"127.0.0.1:{port}",
        CONVEYOR_API__WORKERS=str(workers),
        **extra,
    )
    proc = Proc("conveyor-api", [PYTHON, "-m", "conveyor", "api"], env)
    base = f"http://127.0.0.1:{port}"
    wait_until(lambda: _ready(base + "/readyz"), 30, "the Conveyor API")
    return proc, base


def start_baseline(module: str, redis_url: str, workers: int = 1) -> tuple[Proc, str]:
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(REPO), "BENCH_BROKER_URL": redis_url}
    argv = [PYTHON, "-m", "uvicorn", f"bench.baselines.{module}:app", "--port", str(port),
            "--workers", str(workers), "--log-level", "warning", "--no-access-log"]  # fmt: skip
    proc = Proc(module, argv, env)
    base = f"http://127.0.0.1:{port}"
    wait_until(lambda: _ready(base + "/docs"), 30, module)
    return proc, base


def _ready(url: str) -> bool:
    try:
        return httpx.get(url, timeout=1).status_code == 200
    except httpx.TransportError:
        return False


@dataclass
class LoadResult:
    requests_per_second: float
    p50_ms: float
    p99_ms: float
    errors: int
    requests: int


def wrk(
    url: str,
    connections: int,
    seconds: int,
    body: str,
    headers: dict[str, str],
    unique_idempotency_keys: bool = False,
) -> LoadResult:
    """POST `body` to `url` with wrk (2 threads) and parse its latency distribution; with
    `unique_idempotency_keys` every request carries an Idempotency-Key of its own."""
    binary = shutil.which("wrk")
    if binary is None:
        raise SystemExit("wrk is required (apt-get install wrk)")
    script = WORK / "post.lua"
    lines = ['wrk.method = "POST"', f"wrk.body = [[{body}]]"]
    lines += [f'wrk.headers["{k}"] = "{v}"' for k, v in headers.items()]
    if unique_idempotency_keys:
        lines += [
            "local threads = 0",
            # Each wrk thread has a Lua state of its own: number them so keys never collide.
            "setup = function(thread) threads = threads + 1; thread:set('tid', threads) end",
            "counter = 0",
            "request = function()",
            "  counter = counter + 1",
            '  wrk.headers["Idempotency-Key"] = "b-" .. tid .. "-" .. counter',
            "  return wrk.format()",
            "end",
        ]
    script.write_text("\n".join(lines) + "\n")
    out = subprocess.run(
        [binary, "-t2", f"-c{connections}", f"-d{seconds}s", "--latency", "-s", str(script), url],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return parse_wrk(out)


def parse_wrk(out: str) -> LoadResult:
    def latency(label: str) -> float:
        match = re.search(rf"^\s+{label}%\s+([\d.]+)(us|ms|s)\s*$", out, re.M)
        if match is None:
            raise ValueError(f"no {label}% in wrk output:\n{out}")
        value, unit = float(match.group(1)), match.group(2)
        return value / 1000 if unit == "us" else value * 1000 if unit == "s" else value

    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    total = int(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]
    errors = 0
    non_2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if non_2xx:
        errors += int(non_2xx.group(1))
    socket_errors = re.search(
        r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out
    )
    if socket_errors:
        errors += sum(int(g) for g in socket_errors.groups())
    return LoadResult(rps, latency("50"), latency("99"), errors, total)


def percentile(values: list[float], p: float) -> float:
    """The p-th percentile (nearest rank) of `values`."""
    ordered = sorted(values)
    index = max(0, min(len(ordered) - 1, round(p / 100 * len(ordered) + 0.5) - 1))
    return ordered[index]


def median(values: list[float]) -> float:
    return statistics.median(values)


def table(headers: list[str], rows: list[list[object]]) -> str:
    """A Markdown table."""
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)
