"""The broker exporter never goes silent, and counts a dead worker out within 2.5 heartbeats."""

import math
import time

import redis
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from conveyor.exporter.collector import BrokerCollector
from conveyor.jobstore import fairq
from conveyor.jobstore.fairq import FlowKind
from conveyor.jobstore.keys import KeySpace
from conveyor.jobstore.liveness import live_worker_window
from conveyor.telemetry.metrics import EXPORTER_METRICS
from tests.support.processes import RedisServer, free_port

VISIBILITY_TIMEOUT = 60.0


def scrape(client: "redis.Redis") -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    registry = CollectorRegistry()
    registry.register(BrokerCollector(client, KeySpace("conveyor"), VISIBILITY_TIMEOUT))
    text = generate_latest(registry).decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for f in text_string_to_metric_families(text) for s in f.samples}  # fmt: skip


def test_a_redis_error_keeps_every_series_as_nan(redis_server: RedisServer, redis_db: int) -> None:
    healthy = scrape(redis_server.client(redis_db))
    unreachable = redis.Redis(port=free_port(), socket_connect_timeout=0.5, socket_timeout=0.5)
    failing = scrape(unreachable)

    assert set(failing) == set(healthy), "the same series whether Redis answers or not"
    assert {name for name, _ in failing} == {m.name for m in EXPORTER_METRICS}
    assert healthy[("conveyor_exporter_up", ())] == 1
    assert failing[("conveyor_exporter_up", ())] == 0
    assert failing[("conveyor_visibility_timeout_seconds", ())] == VISIBILITY_TIMEOUT
    own = {"conveyor_exporter_up", "conveyor_visibility_timeout_seconds",
           "conveyor_exporter_scrape_duration_seconds"}  # fmt: skip
    read = {key: value for key, value in failing.items() if key[0] not in own}
    assert len(read) >= 3 * 5 + 7  # per queue, per state
    assert all(math.isnan(value) for value in read.values()), read
    assert not any(math.isnan(value) for key, value in healthy.items() if key[0] not in own)


def test_a_worker_counts_until_it_misses_two_heartbeats(
    redis_server: RedisServer, redis_db: int
) -> None:
    client = redis_server.client(redis_db)
    window = live_worker_window(VISIBILITY_TIMEOUT)
    heartbeat = VISIBILITY_TIMEOUT / 4  # worker/leases.py
    assert heartbeat * 2 < window < heartbeat * 3  # one missed beat is tolerated, not two
    now = time.time()
    consumers = KeySpace("conveyor").consumers("default")
    client.zadd(consumers, {
        "beat-just-now": now - 1,
        "missed-one-beat": now - 2 * heartbeat + 1,
        "killed-40s-ago": now - 40,  # its last beat up to 15 s before: counted until 52 s before
        "stopped": 0,  # a clean stop retires the consumer at once
    })  # fmt: skip
    client.zadd(KeySpace("conveyor").consumers("high"), {"killed-long-ago": now - 55})
    found = scrape(client)
    assert found[("conveyor_workers", (("queue", "default"),))] == 2
    assert found[("conveyor_workers", (("queue", "high"),))] == 0
    assert found[("conveyor_workers", (("queue", "low"),))] == 0


def test_flow_control_shows_what_is_paused_and_held(
    redis_server: RedisServer, redis_db: int
) -> None:
    client = redis_server.client(redis_db)
    keys = KeySpace("conveyor")
    fairq.pause(client, keys, FlowKind.TIER, "low")
    fairq.pause(client, keys, FlowKind.TENANT, "team-a")
    fairq.pause(client, keys, FlowKind.TENANT, "team-b")
    client.lpush(keys.fair_parked("low"), "1.0", "2.0")
    client.lpush(keys.queue("default"), f"{time.time() - 30:.3f}")
    found = scrape(client)
    assert found[("conveyor_queue_paused", (("queue", "low"),))] == 1
    assert found[("conveyor_queue_paused", (("queue", "high"),))] == 0
    assert found[("conveyor_paused", (("kind", "tenant"),))] == 2
    assert found[("conveyor_paused", (("kind", "task"),))] == 0
    assert found[("conveyor_queue_held", (("queue", "low"),))] == 2
    assert found[("conveyor_queue_length", (("queue", "low"),))] == 0
    # The oldest ready token's value is when its job became ready.
    assert 29 < found[("conveyor_queue_oldest_message_age_seconds", (("queue", "default"),))] < 60
