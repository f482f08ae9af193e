"""Real processes for tests: redis-server, `conveyor api|worker|beat|dev`, stock Celery."""

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import redis

from tests.support.auth import ADMIN_KEY, KEYS_FILE

REPO = Path(__file__).resolve().parents[2]
METRICS_DIR = Path(tempfile.gettempdir()) / "conveyor-test-metrics"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def wait_until(predicate: Callable[[], object], timeout: float, what: str, step: float = 0.05):
    """Poll until `predicate()` is truthy; returns its value or fails with `what`."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(step)


@dataclass
class RedisServer:
    """A private redis-server on a free port (never the shared one on 6379)."""

    port: int
    process: subprocess.Popen[bytes]
    data_dir: Path

    def url(self, db: int = 0) -> str:
        return f"redis://127.0.0.1:{self.port}/{db}"

    def client(self, db: int = 0) -> redis.Redis:
        return redis.Redis(port=self.port, db=db, decode_responses=True)


def start_redis(data_dir: Path, *extra: str, port: int | None = None) -> RedisServer:
    binary = shutil.which("redis-server")
    assert binary, "redis-server must be installed (make test installs it)"
    data_dir.mkdir(parents=True, exist_ok=True)
    port = port or free_port()
    process = subprocess.Popen(
        [
            binary,
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--dir",
            str(data_dir),
            "--save",
            "",
            "--appendonly",
            "no",
            "--databases",
            "64",
            *extra,
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    server = RedisServer(port, process, data_dir)

    def ready() -> bool:
        try:
            return bool(server.client().ping())
        except redis.ConnectionError:
            assert process.poll() is None, "redis-server exited at start"
            return False

    wait_until(ready, 10, "redis-server to start")
    return server


class Service:
    """A `conveyor ...` (or other) command run as a child in its own process group."""

    def __init__(self, name: str, argv: list[str], env: dict[str, str], log_dir: Path) -> None:
        self.name = name
        self.log_path = log_dir / f"{name}-{time.monotonic_ns()}.log"
        self._log = self.log_path.open("wb")
        self.process = subprocess.Popen(
            argv,
            env=env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            cwd=REPO,
        )

    @property
    def pid(self) -> int:
        return self.process.pid

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def group_pids(self) -> list[int]:
        """The live processes of this service's process group, its main process first."""
        pids = []
        for stat in Path("/proc").glob("[0-9]*/stat"):
            with contextlib.suppress(OSError):
                fields = stat.read_text().rsplit(")", 1)[1].split()
                if int(fields[2]) == self.pid:  # after "pid (comm)": state, ppid, pgrp
                    pids.append(int(stat.parent.name))
        return sorted(pids, key=lambda pid: (pid != self.pid, pid))

    def dump_stacks(self, settle: float = 0.3, timeout: float = 10) -> str:
        """Every thread's stack of each process of the group (`conveyor worker|beat` dump them
        on SIGUSR2), one process at a time: dumps written at once interleave in the shared log.
        """
        start = len(self.log())
        for pid in self.group_pids():
            before = self.log()[start:].count("Current thread")
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGUSR2)
            deadline = time.monotonic() + timeout
            size = -1
            while time.monotonic() < deadline:
                text = self.log()
                if text[start:].count("Current thread") > before and len(text) == size:
                    break  # this process's dump has started and the log stopped growing
                size = len(text)
                time.sleep(settle)
        return self.log()[start:]

    def wait_for_log(self, text: str, timeout: float = 30) -> None:
        def seen() -> bool:
            if self.process.poll() is not None:
                raise AssertionError(f"{self.name} exited early:\n{self.log()[-3000:]}")
            return text in self.log()

        wait_until(seen, timeout, f"{text!r} in the {self.name} log", step=0.1)

    def signal(self, signum: int) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.process.pid, signum)

    _terminated_at: float | None = None

    def terminate(self) -> None:
        """SIGTERM once, without waiting (`stop` then waits for it)."""
        if self._terminated_at is None and self.process.poll() is None:
            self.signal(signal.SIGTERM)
            self._terminated_at = time.monotonic()

    def stop(self, timeout: float = 20) -> int:
        """SIGTERM (unless `terminate` sent it), wait up to `timeout` from that signal, then
        SIGKILL the whole group so no prefork child outlives a test.
        """
        self.terminate()
        if self._terminated_at is not None:
            left = max(0.0, timeout - (time.monotonic() - self._terminated_at))
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(left)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.process.pid, signal.SIGKILL)
        code = self.process.wait()
        self._log.close()
        return code


def conveyor_argv(*args: str) -> list[str]:
    return [sys.executable, "-m", "conveyor", *args]


def service_env(redis_url: str, **overrides: str) -> dict[str, str]:
    """Environment of a child: this one, minus any CONVEYOR_*, plus the test's settings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CONVEYOR_")}
    env.update(
        {
            "PYTHONPATH": str(REPO),
            "PYTHONUNBUFFERED": "1",
            "CONVEYOR_REDIS_URL": redis_url,
            "CONVEYOR_TASK_MODULES": '["tests.support.tasks"]',
            "CONVEYOR_WORKER__CONCURRENCY": "2",
            "CONVEYOR_WORKER__DELAYED_POLL_SECONDS": "0.2",
            "CONVEYOR_WEBHOOK__SIGNING_SECRET": "test-signing-secret",
            "CONVEYOR_API__WORKERS": "1",
            "CONVEYOR_AUTH__KEYS_FILE": str(KEYS_FILE),
            "CONVEYOR_AUTH__RELOAD_INTERVAL_SECONDS": "0.2",
            # Load tests submit thousands of jobs at once; the limit tests set their own.
            "CONVEYOR_LIMITS__RATE_PER_SECOND": "0",
            # Test receivers listen on loopback; the SSRF tests start services without this.
            "CONVEYOR_WEBHOOK__ALLOWED_NETWORKS": '["127.0.0.0/8"]',
            # Many workers and beats share this host: no fixed metrics ports unless a test
            # asks for one.
            "CONVEYOR_METRICS__WORKER_PORT": "0",
            "CONVEYOR_METRICS__BEAT_PORT": "0",
            "CONVEYOR_METRICS__API_PORT": "0",
            "CONVEYOR_METRICS__MULTIPROCESS_DIR": str(METRICS_DIR),
        }
    )
    env.update(overrides)
    return env


class Platform:
    """The API and workers of one test module, sharing one private Redis database."""

    def __init__(self, redis_server: RedisServer, db: int, log_dir: Path, **env: str) -> None:
        self.redis_url = redis_server.url(db)
        self.redis = redis_server.client(db)
        self.log_dir = log_dir
        self.env_overrides = env
        self.services: list[Service] = []
        self.api_port = free_port()
        self.base_url = f"http://127.0.0.1:{self.api_port}"

    def env(self, **extra: str) -> dict[str, str]:
        return service_env(self.redis_url, **{**self.env_overrides, **extra})

    def start_api(self, probe: str = "/readyz") -> Service:
        env = self.env(CONVEYOR_API__BIND=f"127.0.0.1:{self.api_port}")
        api = Service("api", conveyor_argv("api"), env, self.log_dir)
        self.services.append(api)

        def ready() -> bool:
            assert api.process.poll() is None, f"api exited:\n{api.log()[-3000:]}"
            try:
                return httpx.get(f"{self.base_url}{probe}", timeout=1).status_code == 200
            except httpx.TransportError:
                return False

        wait_until(ready, 30, "the API to become ready", step=0.1)
        return api

    def start_worker(self, queue: str, **extra: str) -> Service:
        argv = conveyor_argv("worker", "--queue", queue)
        worker = Service(f"worker-{queue}", argv, self.env(**extra), self.log_dir)
        self.services.append(worker)
        worker.wait_for_log(" ready.", timeout=40)
        return worker

    def start(self, name: str, argv: list[str], **extra: str) -> Service:
        service = Service(name, argv, self.env(**extra), self.log_dir)
        self.services.append(service)
        return service

    def http(self, key: str | None = ADMIN_KEY) -> httpx.Client:
        """A client of the API, authenticated with `key` (the admin key by default)."""
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        return httpx.Client(base_url=self.base_url, timeout=10, headers=headers)

    def worker_report(self, lines: int = 40) -> str:
        """Each worker's liveness, the end of its log, and the stack of every thread of its
        main process and prefork children (`Service.dump_stacks`): what a test that found jobs
        stuck shows.
        """
        report = []
        for worker in (s for s in self.services if s.name.startswith("worker-")):
            code = worker.process.poll()
            state = "running" if code is None else f"exited {code}"
            tail = "\n".join(worker.log().splitlines()[-lines:])
            stacks = worker.dump_stacks() if code is None else ""
            report.append(f"--- {worker.name} (pid {worker.pid}, {state}) ---\n{tail}\n{stacks}")
        return "\n".join(report)

    def stop(self) -> None:
        """Stop every service: all are signalled first, so their graceful shutdowns overlap
        (one after the other, the suite spent minutes in teardowns).
        """
        for service in reversed(self.services):
            service.terminate()
        for service in reversed(self.services):
            service.stop()
        self.services.clear()


@contextlib.contextmanager
def running(platform: Platform) -> Iterator[Platform]:
    try:
        yield platform
    finally:
        platform.stop()


def wait_for_job(
    client: httpx.Client, job_id: str, states: set[str], timeout: float = 30
) -> dict[str, object]:
    """Poll GET /v1/jobs/{id} until the job is in one of `states`."""

    def reached() -> dict[str, object] | None:
        job: dict[str, object] = client.get(f"/v1/jobs/{job_id}").json()
        return job if job["state"] in states else None

    result: dict[str, object] = wait_until(reached, timeout, f"job {job_id} to reach {states}")
    return result


TERMINAL = {"succeeded", "failed", "cancelled"}
