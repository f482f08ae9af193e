"""`conveyor dev`: the whole platform on one machine, under one supervisor.

Starts a private Redis (AOF on, `noeviction`) unless CONVEYOR_REDIS_URL is set, then the
API, one worker per tier, beat and the exporter as child processes, each in its own process
group, with prefixed output. Start-up is quiet (warnings and errors only; `--verbose` relays
every line) and ends with one summary once every component answers.

Ctrl-C or SIGTERM stops them all: each child's main process gets SIGTERM (never its process
group: a worker's prefork children must not die under their jobs), workers get their own
shutdown timeout to finish running jobs before they hand them back to the queue, and a second
Ctrl-C asks them to hand them back at once. Redis stops last. Jobs a worker left marked
running in the supervisor's own Redis are handed back, so nothing counts a worker death. If
any child dies, everything is stopped and the exit code is 1.
"""

import contextlib
import ctypes
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import httpx
import redis

from conveyor.core.queues import Queue
from conveyor.core.settings import Settings
from conveyor.jobstore.keys import KeySpace

# Past a child's own shutdown deadline, how long before it is killed.
STOP_GRACE_SECONDS = 10.0
# How long a cold shutdown (second Ctrl-C) may take before the worker is killed.
HAND_BACK_SECONDS = 10.0
# After this long without every component ready, say which are not (and keep waiting).
READY_PATIENCE_SECONDS = 60.0
_TAIL_LINES = 40
# Celery's own shutdown notices ("worker: Warm shutdown (MainProcess)", "Hitting Ctrl+C
# again will terminate all running tasks!"): the supervisor says what happens instead.
_CELERY_CHATTER = ("worker: ",)
_COLORS = ("36", "32", "33", "35", "34", "31", "96")
_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    # If the supervisor itself is SIGKILLed, the kernel still stops its children.
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


@dataclass
class Child:
    """One supervised process.

    `stop_timeout`: how long it may take to stop after SIGTERM before it is killed.
    `quiet`: its output is kept (and shown if it dies) rather than relayed.
    `chatter`: line starts not relayed (kept like a quiet child's), e.g. Celery's shutdown
    notices, which the supervisor words itself.
    """

    name: str
    argv: list[str]
    env: dict[str, str] = field(default_factory=dict)
    stop_timeout: float = 20.0
    quiet: bool = False
    chatter: tuple[str, ...] = ()
    process: subprocess.Popen[bytes] | None = None
    tail: deque[str] = field(default_factory=lambda: deque(maxlen=_TAIL_LINES))

    @property
    def running(self) -> bool:
        """Started and not exited."""
        return self.process is not None and self.process.poll() is None


def take_the_terminal() -> Callable[[], None]:
    """Make this process's own group the terminal's foreground group, when it is run in the
    foreground by another program (`make dev`): Ctrl-C then reaches the supervisor alone, so
    a second Ctrl-C cannot kill `make` and orphan the supervisor mid-shutdown. Returns what
    gives the terminal back. Nothing changes without a terminal, or when run by a shell.
    """
    try:
        fd = sys.stdin.fileno()
        if not os.isatty(fd) or os.tcgetpgrp(fd) != os.getpgrp() or os.getpgrp() == os.getpid():
            return lambda: None
        previous = os.getpgrp()
        os.setpgid(0, 0)
        _set_foreground(fd, os.getpgrp())
    except (OSError, ValueError):
        return lambda: None
    return lambda: _set_foreground(fd, previous)


def _set_foreground(fd: int, group: int) -> None:
    # A background group asking for the terminal gets SIGTTOU unless it ignores it.
    before = signal.signal(signal.SIGTTOU, signal.SIG_IGN)
    try:
        with contextlib.suppress(OSError):
            os.tcsetpgrp(fd, group)
    finally:
        signal.signal(signal.SIGTTOU, before)


def free_port() -> int:
    """A TCP port nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def redis_server_argv(
    data_dir: Path, port: int, appendfsync: str = "everysec", loglevel: str = "notice"
) -> list[str]:
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
        "--loglevel", loglevel,
    ]  # fmt: skip


class Supervisor:
    """Starts children, relays their output, waits for them to be ready, stops them all."""

    def __init__(self, out: IO[str] = sys.stdout) -> None:
        self.children: list[Child] = []
        self.out = out
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._hurry = threading.Event()
        self._kill = threading.Event()

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
            child.tail.append(line)
            if child.quiet or (child.chatter and (not line or line.startswith(child.chatter))):
                continue
            with self._lock:
                self.out.write(tag + line + "\n")
                self.out.flush()

    def say(self, message: str) -> None:
        """A line from the supervisor itself."""
        with self._lock:
            self.out.write(f"{'dev':>8} | {message}\n")
            self.out.flush()

    def request_stop(self, *_: object) -> None:
        """Signal handler: the first begins shutdown, the second hurries it (running jobs
        are handed back at once), the third kills what is left.
        """
        if not self._stop.is_set():
            self._stop.set()
        elif not self._hurry.is_set():
            self._hurry.set()
        else:
            self._kill.set()

    @property
    def stopping(self) -> bool:
        """A stop was requested."""
        return self._stop.is_set()

    def exited(self) -> Child | None:
        """A child that exited on its own, if any (its kept output is shown)."""
        for child in self.children:
            assert child.process is not None
            if child.process.poll() is not None:
                self.say(f"{child.name} exited with {child.process.returncode}; stopping")
                if child.quiet:
                    for line in child.tail:
                        self.say(f"{child.name}: {line}")
                return child
        return None

    def wait_ready(self, checks: Mapping[str, Callable[[], bool]]) -> bool:
        """Poll `checks` until every one passes (True), a stop is requested or a child
        exits (False). Past READY_PATIENCE_SECONDS, says once which are still waited for.
        """
        pending = dict(checks)
        warned = False
        started = time.monotonic()
        while pending:
            if self._stop.wait(0.2) or self.exited() is not None:
                return False
            for name, check in list(pending.items()):
                with contextlib.suppress(Exception):  # not up yet: any failure means "not yet"
                    if check():
                        del pending[name]
            if pending and not warned and time.monotonic() - started > READY_PATIENCE_SECONDS:
                warned = True
                self.say(f"still waiting for: {', '.join(pending)} (--verbose shows their logs)")
        return True

    def wait(self) -> int:
        """Block until a stop is requested (0) or a child exits on its own (1)."""
        while not self._stop.wait(0.2):
            if self.exited() is not None:
                return 1
        return 0

    def stop(self, children: list[Child], on_hurry: Callable[[], None] | None = None) -> None:
        """SIGTERM each child's main process, wait up to its `stop_timeout`, kill it past
        that (its whole process group). A second Ctrl-C calls `on_hurry` once; a third kills.
        """
        for child in children:
            _signal(child, signal.SIGTERM)
        deadlines = {child.name: time.monotonic() + child.stop_timeout for child in children}
        hurried = False
        while any(child.running for child in children):
            if self._hurry.is_set() and not hurried:
                hurried = True
                if on_hurry is not None:
                    on_hurry()
                    limit = time.monotonic() + HAND_BACK_SECONDS
                    deadlines = {name: min(at, limit) for name, at in deadlines.items()}
            now = time.monotonic()
            for child in children:
                if not child.running:
                    continue
                if self._kill.is_set() or now > deadlines[child.name]:
                    if not self._kill.is_set():
                        self.say(f"{child.name} did not stop in time; killing it")
                    _signal_group(child, signal.SIGKILL)
            time.sleep(0.1)
        for child in children:
            # Prefork children and gunicorn workers live in the same group: reap leftovers.
            _signal_group(child, signal.SIGKILL)
            assert child.process is not None
            child.process.wait()


def _signal(child: Child, signum: signal.Signals) -> None:
    assert child.process is not None
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.kill(child.process.pid, signum)


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


def _plural(count: int, noun: str) -> str:
    return f"{count} {noun}" if count == 1 else f"{count} {noun}s"


def _http_ok(url: str) -> bool:
    return httpx.get(url, timeout=1.0).status_code == 200


class _Platform:
    """What the supervisor reads in Redis: running jobs per tier, the beat lock, and (in its
    own Redis only) jobs left running by stopped workers, which it hands back.
    """

    def __init__(self, settings: Settings, redis_url: str, owned: bool) -> None:
        self.settings = settings
        self.redis_url = redis_url
        self.owned = owned
        self.keys = KeySpace(settings.key_prefix)

    def client(self) -> "redis.Redis":
        return redis.Redis.from_url(
            self.redis_url, socket_timeout=2.0, socket_connect_timeout=1.0, decode_responses=True
        )

    def running_jobs(self) -> int:
        """Jobs running on any tier right now (0 when Redis does not answer)."""
        try:
            with self.client() as client:
                return sum(int(client.zcard(self.keys.running(str(q)))) for q in Queue)
        except redis.RedisError:
            return 0

    def beat_leads(self) -> bool:
        """A beat holds the leader lock (so periodic jobs are scheduled)."""
        with self.client() as client:
            return bool(client.exists(f"{self.keys.beat}:lock"))

    def hand_back_orphans(self) -> int:
        """Mark queued again the jobs still running once every worker stopped (their
        messages go back to the queue): only in the supervisor's own Redis, where no other
        worker can be running them.
        """
        if not self.owned:
            return 0
        from conveyor.jobstore.store import JobStore

        handed = 0
        with self.client() as client:
            store = JobStore(client, self.settings)
            for queue in Queue:
                for job_id in client.zrange(self.keys.running(str(queue)), 0, -1):
                    if store.hand_back(str(job_id)).applied:
                        handed += 1
        return handed


SIGNING_SECRET_FILE = "webhook-signing-secret"  # noqa: S105 - a file name


def dev_signing_secret(data_dir: Path) -> str:
    """The webhook signing secret of `conveyor dev` in `data_dir`: read, or made (random,
    256 bits) and written readable by its owner only.
    """
    path = data_dir / SIGNING_SECRET_FILE
    if path.exists():
        return path.read_text().strip()
    secret = secrets.token_hex(32)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as file:
        file.write(secret + "\n")
    return secret


def run_dev(
    settings: Settings,
    *,
    data_dir: Path,
    api_port: int,
    appendfsync: str = "everysec",
    verbose: bool = False,
) -> int:
    """Run the platform until Ctrl-C/SIGTERM; returns the exit code."""
    supervisor = Supervisor()
    # A closed terminal (SIGHUP) stops everything as cleanly as Ctrl-C does.
    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, supervisor.request_stop)
    give_back_the_terminal = take_the_terminal()
    try:
        return _run(supervisor, settings, data_dir, api_port, appendfsync, verbose)
    finally:
        give_back_the_terminal()


def _run(
    supervisor: Supervisor,
    settings: Settings,
    data_dir: Path,
    api_port: int,
    appendfsync: str,
    verbose: bool,
) -> int:
    started = time.monotonic()

    env: dict[str, str] = {"CONVEYOR_API__BIND": f"127.0.0.1:{api_port}"}
    owned = "redis_url" not in settings.model_fields_set
    if owned:
        redis_dir = data_dir / "redis"
        redis_dir.mkdir(parents=True, exist_ok=True)
        port = free_port()
        redis_url = f"redis://127.0.0.1:{port}/0"
        loglevel = "notice" if verbose else "warning"
        argv = redis_server_argv(redis_dir, port, appendfsync, loglevel)
        supervisor.start(Child("redis", argv, quiet=not verbose))
        env["CONVEYOR_REDIS_URL"] = redis_url
        redis_where = f"{redis_url} (AOF in {redis_dir})"
    else:
        redis_url = settings.redis_dsn()
        redis_where = "CONVEYOR_REDIS_URL"
    redis_process = supervisor.children[0].process if supervisor.children else None
    _wait_for_redis(redis_url, redis_process.poll if redis_process else lambda: None)
    platform = _Platform(settings, redis_url, owned)

    # Modest defaults for a laptop, unless the environment says otherwise.
    if "workers" not in settings.api.model_fields_set:
        env["CONVEYOR_API__WORKERS"] = "1"
    if "concurrency" not in settings.worker.model_fields_set:
        env["CONVEYOR_WORKER__CONCURRENCY"] = "2"
    if not verbose and "log_level" not in settings.model_fields_set:
        env["CONVEYOR_LOG_LEVEL"] = "WARNING"
    auth = settings.auth
    if auth.keys_file is None and auth.keys is None and not auth.disabled:
        # Local development only: the chart refuses this setting in production.
        env["CONVEYOR_AUTH__DISABLED"] = "true"
        auth_line = "OFF (no CONVEYOR_AUTH__KEYS_FILE): every caller acts as tenant 'default'"
    else:
        auth_line = _auth_summary(settings)
    if "send_task_events" not in settings.worker.model_fields_set:
        env["CONVEYOR_WORKER__SEND_TASK_EVENTS"] = "true"  # so Flower can be attached
    if settings.webhook.enabled and settings.webhook.signing_secret is None:
        # A random secret of this data directory, kept across runs so that receivers keep
        # verifying; `conveyor webhooks listen --secret-file` reads it.
        env["CONVEYOR_WEBHOOK__SIGNING_SECRET"] = dev_signing_secret(data_dir)
    if "allowed_networks" not in settings.webhook.model_fields_set:
        # Webhooks to receivers on this machine are the normal case when developing.
        env["CONVEYOR_WEBHOOK__ALLOWED_NETWORKS"] = '["127.0.0.0/8", "::1/128"]'
    heartbeat = settings.worker.heartbeat_file
    if "heartbeat_file" not in settings.worker.model_fields_set:
        heartbeat = (data_dir / "worker-heartbeat").resolve()
        env["CONVEYOR_WORKER__HEARTBEAT_FILE"] = str(heartbeat)
    from conveyor.worker.liveness import check as heartbeat_fresh
    from conveyor.worker.liveness import heartbeat_path

    conveyor = [sys.executable, "-m", "conveyor"]
    quiet = [] if verbose else ["--quiet"]
    metrics = settings.metrics
    env["CONVEYOR_METRICS__MULTIPROCESS_DIR"] = str((data_dir / "metrics").resolve())
    api_stop = settings.api.graceful_timeout_seconds + STOP_GRACE_SECONDS
    supervisor.start(Child("api", [*conveyor, "api", *quiet], env, stop_timeout=api_stop))
    base = f"http://127.0.0.1:{api_port}"
    checks: dict[str, Callable[[], bool]] = {"api": lambda: _http_ok(f"{base}/readyz")}
    worker_ports = []
    worker_stop = settings.worker.shutdown_timeout_seconds + STOP_GRACE_SECONDS
    for offset, queue in enumerate(Queue):
        # One host, three workers: each tier gets its own metrics port.
        port = metrics.worker_port + 10 * offset if metrics.worker_port else 0  # 0: off
        worker_ports.append(f"{queue} :{port}" if port else f"{queue} off")
        tier_port = {"CONVEYOR_METRICS__WORKER_PORT": str(port)}
        path = heartbeat_path(heartbeat, str(queue))
        path.unlink(missing_ok=True)  # a previous run's must not count
        checks[f"{queue} worker"] = lambda path=path: heartbeat_fresh(  # type: ignore[misc]
            path, settings.worker.heartbeat_max_age_seconds
        )[0]
        argv = [*conveyor, "worker", "--queue", str(queue), *quiet]
        chatter = () if verbose else _CELERY_CHATTER
        worker = Child(str(queue), argv, {**env, **tier_port}, worker_stop, chatter=chatter)
        supervisor.start(worker)
    supervisor.start(Child("beat", [*conveyor, "beat", *quiet], env))
    checks["beat"] = platform.beat_leads
    supervisor.start(Child("exporter", [*conveyor, "exporter"], env))
    checks["exporter"] = lambda: _http_ok(f"http://127.0.0.1:{metrics.exporter_port}/metrics")

    if supervisor.wait_ready(checks):
        ports = ", ".join(
            [
                f"API {_port(metrics.api_port)}",
                f"workers {' '.join(worker_ports)}",
                f"beat {_port(metrics.beat_port)}",
                f"exporter {_port(metrics.exporter_port)}",
            ]
        )
        summary = [
            f"ready in {time.monotonic() - started:.1f} s",
            f"  API      {base}  (docs {base}/docs, ReDoc {base}/redoc)",
            f"  console  {base}/ui/",
            f"  auth     {auth_line}",
            f"  Redis    {redis_where}",
            f"  metrics  {ports}",
            "  Ctrl-C stops everything"
            + ("" if verbose else "; --verbose shows every process's log"),
        ]
        for line in summary:
            supervisor.say(line)
        code = supervisor.wait()
    else:
        code = 0 if supervisor.stopping else 1
    _shut_down(supervisor, platform, settings)
    return code


def _port(port: int) -> str:
    return f":{port}" if port else "off"


def _auth_summary(settings: Settings) -> str:
    from conveyor.api.auth import KeySource

    if settings.auth.disabled:
        return "OFF (CONVEYOR_AUTH__DISABLED=true): every caller acts as tenant 'default'"
    try:
        count = len(KeySource(settings.auth).ring)
    except (OSError, ValueError, RuntimeError) as exc:
        return f"ON, but the keys do not load: {exc}"
    where = settings.auth.keys_file or "CONVEYOR_AUTH__KEYS"
    return f"ON, {_plural(count, 'key')} from {where}"


def _shut_down(supervisor: Supervisor, platform: _Platform, settings: Settings) -> None:
    """Stop every child (Redis last); hand back what stopped workers left running."""
    running = platform.running_jobs()
    timeout = settings.worker.shutdown_timeout_seconds
    if running:
        them = "it" if running == 1 else "them"
        supervisor.say(
            f"waiting up to {timeout:.0f} s for {_plural(running, 'running job')}; "
            f"Ctrl-C again to hand {them} back now"
        )
    else:
        supervisor.say("stopping")
    workers = {str(queue) for queue in Queue}

    def hand_back_now() -> None:
        if platform.owned:
            supervisor.say("handing running jobs back to their queues")
        else:
            # Another worker may share this Redis: its running jobs are not ours to mark.
            supervisor.say(
                "stopping running jobs now: they go back to their queue, counted as a "
                "worker death (CONVEYOR_REDIS_URL is not the supervisor's own Redis)"
            )
        for child in supervisor.children:
            if child.name in workers and child.running:
                # Celery's cold shutdown: running jobs are cancelled, messages requeued.
                _signal(child, signal.SIGQUIT)

    redis_children = [c for c in supervisor.children if c.name == "redis"]
    others = [c for c in supervisor.children if c.name != "redis"]
    supervisor.stop(others, on_hurry=hand_back_now)
    try:
        handed = platform.hand_back_orphans()
    except redis.RedisError as exc:
        supervisor.say(f"could not hand running jobs back (Redis: {exc}); they come back later")
        handed = 0
    if handed:
        supervisor.say(f"{_plural(handed, 'job')} handed back to the queue (not a worker death)")
    supervisor.stop(redis_children)
    supervisor.say("stopped")
