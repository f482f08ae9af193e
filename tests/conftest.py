"""Shared fixtures: a private redis-server for the session, a fresh database per user."""

import itertools
from collections.abc import Iterator
from pathlib import Path

import pytest
from xdist.remote import Producer
from xdist.scheduler import LoadScopeScheduling

from tests.support.processes import Platform, RedisServer, start_redis

_databases = itertools.cycle(range(1, 64))

# `make test` runs the suite in two pytest-xdist processes (`-n 2`). These tests time their
# faults against leases, failovers, alert windows and beat's ticks, and start many processes
# each: they are one unit of work, run one after another in one process (the longest lane,
# handed out first), while the other process takes every other test, one at a time. Two of
# them at once on two cores would starve each other's timings. (Paths they share on this host
# are safe: metrics directories are per process, and a test that reads a heartbeat file
# names its own.)
SERIAL_PATHS = (
    "tests/reliability/",
    "tests/sentinel/",
    "tests/observability/",
    "tests/kubelet/",
    "tests/test_beat.py",
)
SERIAL_UNIT = "timed-faults"


class TimedFaultsInOneLane(LoadScopeScheduling):
    """xdist's scope scheduling with two kinds of unit: the serial paths' tests together, and
    every other test alone. (xdist's own `loadgroup` marks tests by rewriting their node ids,
    which pytest 9 no longer reads.) Larger units are handed out first."""

    def _split_scope(self, nodeid: str) -> str:
        return lane_unit(nodeid)


def lane_unit(nodeid: str) -> str:
    """The unit of work a test belongs to: the serial one, or the test alone."""
    return SERIAL_UNIT if nodeid.startswith(SERIAL_PATHS) else nodeid


@pytest.hookimpl(optionalhook=True)  # `-p no:xdist` runs the suite without xdist's hooks
def pytest_xdist_make_scheduler(config: pytest.Config, log: Producer) -> TimedFaultsInOneLane:
    return TimedFaultsInOneLane(config, log)


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = start_redis(tmp_path_factory.mktemp("redis"))
    yield server
    server.process.terminate()
    server.process.wait(10)


def fresh_db(server: RedisServer) -> int:
    db = next(_databases)
    server.client(db).flushdb()
    return db


@pytest.fixture
def redis_db(redis_server: RedisServer) -> int:
    """A flushed database number of the private server, for this test alone."""
    return fresh_db(redis_server)


@pytest.fixture
def log_dir(tmp_path: Path) -> Path:
    path = tmp_path / "logs"
    path.mkdir()
    return path


@pytest.fixture(scope="module")
def module_logs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("logs")


@pytest.fixture(scope="module")
def api_only(redis_server: RedisServer, module_logs: Path) -> Iterator[Platform]:
    """The API alone (no workers), on a database of its own: messages stay queued."""
    platform = Platform(redis_server, fresh_db(redis_server), module_logs)
    platform.start_api()
    yield platform
    platform.stop()


def started_platform(
    redis_server: RedisServer,
    log_dir: Path,
    queues: tuple[str, ...] = ("high", "default", "low"),
    **env: str,
) -> Platform:
    """The API and a worker per queue in `queues`, on a fresh database; stopped again if
    any of them fails to start."""
    platform = Platform(redis_server, fresh_db(redis_server), log_dir, **env)
    try:
        platform.start_api()
        for queue in queues:
            platform.start_worker(queue)
    except BaseException:
        platform.stop()
        raise
    return platform


@pytest.fixture(scope="module")
def platform(redis_server: RedisServer, module_logs: Path) -> Iterator[Platform]:
    """The API and one worker per tier, on a database of their own."""
    platform = started_platform(
        redis_server, module_logs, CONVEYOR_WORKER__HARD_TIMEOUT_GRACE_SECONDS="2"
    )
    yield platform
    platform.stop()


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--workflow-soak",
        default="200",
        help="How many random workflows the workflow soak runs (its figures: 1000).",
    )
    parser.addoption(
        "--console-screenshots",
        action="store_true",
        help="Write the console's screenshots to docs/console/ (else to a temporary folder).",
    )
