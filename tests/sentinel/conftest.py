"""Fixtures of the Sentinel fault tests: a Sentinel group, and Conveyor against it."""

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import fresh_db
from tests.sentinel.cluster import MASTER, SentinelGroup
from tests.support.processes import Platform, RedisServer


@pytest.fixture
def group(tmp_path: Path) -> Iterator[SentinelGroup]:
    """One primary, two replicas, three Sentinels (chart timings: down-after 5 s)."""
    group = SentinelGroup(tmp_path / "sentinel")
    try:
        yield group.start()
    finally:
        group.stop()


# What the fault tests' platform runs with, Sentinel or not: short leases, 2 API processes.
SETTINGS_ENV = {
    "CONVEYOR_REDIS_DURABILITY_CHECK": "refuse",
    "CONVEYOR_TASK_MODULES": '["tests.sentinel.tasks"]',
    "CONVEYOR_WORKER__VISIBILITY_TIMEOUT_SECONDS": "10",
    "CONVEYOR_WORKER__RESTORE_INTERVAL_SECONDS": "1",
    "CONVEYOR_WORKER__SHUTDOWN_TIMEOUT_SECONDS": "2",
    "CONVEYOR_API__WORKERS": "2",
}


def ha_platform(
    group: SentinelGroup, ledger: RedisServer, log_dir: Path, ack_replicas: int, **env: str
) -> Platform:
    """Conveyor configured only through the Sentinel settings (its `redis_url` names no
    reachable host). `platform.redis` is the ledger, a standalone Redis the faults never touch.
    """
    return Platform(
        ledger,
        fresh_db(ledger),
        log_dir,
        CONVEYOR_REDIS_URL="redis://unreachable.invalid:1/0",
        CONVEYOR_REDIS_SENTINEL__ADDRESSES=group.addresses(),
        CONVEYOR_REDIS_SENTINEL__MASTER_NAME=MASTER,
        CONVEYOR_REDIS_REPLICATION__ACK_REPLICAS=str(ack_replicas),
        **{**SETTINGS_ENV, **env},
    )
