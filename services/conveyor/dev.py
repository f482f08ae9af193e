"""`conveyor dev`: the whole platform on one machine, under one supervisor.

Starts a private Redis (AOF on, `noeviction`) unless CONVEYOR_REDIS_URL is set, then the
API, one worker per tier and beat as child processes, each in its own process group, with
prefixed output. Ctrl-C or SIGTERM stops them all (children first, Redis last) and leaves no
process behind; if any child dies, everything is stopped and the exit code is 1.
"""

import contextlib
import ctypes
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import redis

from conveyor.core.queues import Queue
from conveyor.core.settings import Settings

STOP_TIMEOUT_SECONDS = 20.0
_COLORS = ("36", "32", "33", "35", "34", "31", "96")
_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    # If the supervisor itself is SIGKILLed, the kernel still stops its children.
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


@dataclass
class Child:
    """One supervised process."""

    name: str
    argv: list[str]
    env: dict[str, str] = field(default_factory=dict)
    process: subprocess.Popen[bytes] | None = None


def free_port() -> int:
    """A TCP port nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def redis_server_argv(data_dir: Path, port: int, appendfsync: str = "everysec") -> list[str]:
    """A durable local Redis: AOF (fsync every second or every write), never evicting jobs."""
    binary = shutil.which("redis-server")
    if binary is None:
        raise SystemExit("redis-server is not on PATH: run `make dev`, or set CONVEYOR_REDIS_URL")
    return [
        binary,
        "--port", str(port),
        "--bind", "127.0.0.1",
        "--dir", str(data_dir.resolve()),
        "--appendonly", "yes",
        "--appendfsync", appendfsync,
        "--maxmemory-policy", "noeviction",
        "--save", "",
        "--protected-mode", "yes",
    ]  # fmt: skip


class Supervisor:
    """Starts children, relays their output, stops them all."""

    def __init__(self, out: IO[str] = sys.stdout) -> None:
        self.children: list[Child] = []
        self.out = out
        self._lock = threading.Lock()
        self._stop = threading.Event()

    def start(self, child: Child) -> None:
        """Launch `child` in its own process group and relay its output."""
        child.process = subprocess.Popen(
            child.argv,
            # The one place the environment is read: children inherit it, plus overrides.
            env={**os.environ, **child.env},
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            preexec_fn=_die_with_parent,
        )
        color = _COLORS[len(self.children) % len(_COLORS)]
        self.children.append(child)
        threading.Thread(
            target=self._relay, args=(child, color), name=f"relay-{child.name}", daemon=True
        ).start()

    def _relay(self, child: Child, color: str) -> None:
        assert child.process is not None
        assert child.process.stdout is not None
        tag = (
            f"\x1b[{color}m{child.name:>8} |\x1b[0m "
            if self.out.isatty()
            else f"{child.name:>8} | "
        )
        for raw in child.process.stdout:
            line = raw.decode(errors="replace").rstrip()
            with self._lock:
                self.out.write(tag + line + "\n")
                self.out.flush()

    def say(self, message: str) -> None:
        """A line from the supervisor itself."""
        with self._lock:
            self.out.write(f"{'dev':>8} | {message}\n")
            self.out.flush()

    def request_stop(self, *_: object) -> None:
        """Signal handler: begin shutdown."""
        self._stop.set()

    def wait(self) -> int:
        """Block until a stop is requested (0) or a child exits on its own (1)."""
        while not self._stop.wait(0.2):
            for child in self.children:
                assert child.process is not None
                if child.process.poll() is not None:
                    self.say(f"{child.name} exited with {child.process.returncode}; stopping")
                    return 1
        return 0

    def stop_all(self, last: str | None = None) -> None:
        """SIGTERM every process group (`last` after the others), SIGKILL what lingers."""
        ordered = [c for c in self.children if c.name != last] + [
            c for c in self.children if c.name == last
        ]
        groups = [ordered[:-1], ordered[-1:]] if last else [ordered]
        for group in groups:
            for child in group:
                _signal_group(child, signal.SIGTERM)
            deadline = time.monotonic() + STOP_TIMEOUT_SECONDS
            for child in group:
                assert child.process is not None
                try:
                    child.process.wait(timeout=max(0.1, deadline - time.monotonic()))
                except subprocess.TimeoutExpired:
                    self.say(f"{child.name} did not stop in time; killing it")
                # Prefork children and gunicorn workers live in the same group: reap them too.
                _signal_group(child, signal.SIGKILL)
                child.process.wait()


def _signal_group(child: Child, signum: signal.Signals) -> None:
    assert child.process is not None
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(child.process.pid, signum)


def _wait_for_redis(url: str, process: Callable[[], int | None], timeout: float = 10.0) -> None:
    client = redis.Redis.from_url(url, socket_connect_timeout=0.5)
    deadline = time.monotonic() + timeout
    while True:
        try:
            client.ping()
            return
        except redis.ConnectionError:
            if process() is not None or time.monotonic() > deadline:
                raise SystemExit(f"Redis at {url} did not come up") from None
            time.sleep(0.1)
        finally:
            client.close()


def run_dev(
    settings: Settings, *, data_dir: Path, api_port: int, appendfsync: str = "everysec"
) -> int:
    """Run the platform until Ctrl-C/SIGTERM; returns the exit code."""
    supervisor = Supervisor()
    signal.signal(signal.SIGINT, supervisor.request_stop)
    signal.signal(signal.SIGTERM, supervisor.request_stop)

    env: dict[str, str] = {"CONVEYOR_API__BIND": f"127.0.0.1:{api_port}"}
    if "redis_url" in settings.model_fields_set:
        redis_url = settings.redis_dsn()
        supervisor.say("using the Redis at CONVEYOR_REDIS_URL")
    else:
        redis_dir = data_dir / "redis"
        redis_dir.mkdir(parents=True, exist_ok=True)
        port = free_port()
        redis_url = f"redis://127.0.0.1:{port}/0"
        supervisor.start(Child("redis", redis_server_argv(redis_dir, port, appendfsync)))
        env["CONVEYOR_REDIS_URL"] = redis_url
        supervisor.say(f"Redis on 127.0.0.1:{port}, data in {redis_dir}")
    redis_process = supervisor.children[0].process if supervisor.children else None
    _wait_for_redis(redis_url, redis_process.poll if redis_process else lambda: None)

    # Modest defaults for a laptop, unless the environment says otherwise.
    if "workers" not in settings.api.model_fields_set:
        env["CONVEYOR_API__WORKERS"] = "1"
    if "concurrency" not in settings.worker.model_fields_set:
        env["CONVEYOR_WORKER__CONCURRENCY"] = "2"
    auth = settings.auth
    if auth.keys_file is None and auth.keys is None and not auth.disabled:
        # Local development only: the chart refuses this setting in production.
        env["CONVEYOR_AUTH__DISABLED"] = "true"
        supervisor.say("authentication is OFF (no CONVEYOR_AUTH__KEYS_FILE): local use only")
    if "send_task_events" not in settings.worker.model_fields_set:
        env["CONVEYOR_WORKER__SEND_TASK_EVENTS"] = "true"  # so Flower can be attached
    if "allowed_networks" not in settings.webhook.model_fields_set:
        # Webhooks to receivers on this machine are the normal case when developing.
        env["CONVEYOR_WEBHOOK__ALLOWED_NETWORKS"] = '["127.0.0.0/8", "::1/128"]'
    conveyor = [sys.executable, "-m", "conveyor"]
    metrics = settings.metrics
    env["CONVEYOR_METRICS__MULTIPROCESS_DIR"] = str((data_dir / "metrics").resolve())
    supervisor.start(Child("api", [*conveyor, "api"], env))
    for offset, queue in enumerate(Queue):
        # One host, three workers: each tier gets its own metrics port.
        port = metrics.worker_port + 10 * offset if metrics.worker_port else 0  # 0: off
        tier_port = {"CONVEYOR_METRICS__WORKER_PORT": str(port)}
        argv = [*conveyor, "worker", "--queue", str(queue)]
        supervisor.start(Child(str(queue), argv, {**env, **tier_port}))
    supervisor.start(Child("beat", [*conveyor, "beat"], env))
    supervisor.start(Child("exporter", [*conveyor, "exporter"], env))
    supervisor.say(f"API on http://127.0.0.1:{api_port} (docs at /docs); Ctrl-C stops everything")
    supervisor.say(
        f"metrics: API :{metrics.api_port}, workers :{metrics.worker_port}/"
        f":{metrics.worker_port + 10}/:{metrics.worker_port + 20}, beat :{metrics.beat_port}, "
        f"exporter :{metrics.exporter_port}"
    )

    code = supervisor.wait()
    supervisor.say("stopping")
    supervisor.stop_all(last="redis")
    supervisor.say("stopped")
    return code
