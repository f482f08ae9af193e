"""Fault-injection fixtures: short visibility timeouts so redelivery fits in a test."""

import json
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import fresh_db
from tests.support.processes import Platform, RedisServer

# Tight timings for tests: a lease of 3 s swept every second, a 2-second shutdown window.
FAST = {
    "CONVEYOR_WORKER__VISIBILITY_TIMEOUT_SECONDS": "3",
    "CONVEYOR_WORKER__RESTORE_INTERVAL_SECONDS": "1",
    "CONVEYOR_WORKER__SHUTDOWN_TIMEOUT_SECONDS": "2",
    "CONVEYOR_WORKER__CONCURRENCY": "1",
}

FIGURES = Path(tempfile.gettempdir()) / "conveyor-reliability-figures.jsonl"


@pytest.fixture
def fast_platform(redis_server: RedisServer, log_dir: Path, tmp_path: Path) -> Iterator[Platform]:
    platform = Platform(
        redis_server,
        fresh_db(redis_server),
        log_dir,
        **FAST,
        CONVEYOR_WORKER__HEARTBEAT_FILE=str(tmp_path / "heartbeat"),
    )
    yield platform
    platform.stop()


def record_figure(name: str, **values: object) -> None:
    """Print a measured figure and append it for docs/reliability.md."""
    line = json.dumps({"figure": name, **values})
    print(line)
    with FIGURES.open("a") as out:
        out.write(line + "\n")
