"""The broker collector: one pipelined round trip to Redis per scrape, of a fixed size.

Every figure comes from O(1) or O(log n) commands (LLEN, LINDEX at the tail, ZCARD, ZCOUNT,
HLEN, ZRANGE 0 0), so the scrape costs the same with ten or ten million queued jobs. Nothing
is broadcast to workers (no `celery inspect`), and nothing depends on Celery events.

A scrape never goes silent: when Redis cannot be read, every series is still served, its value
NaN, with `conveyor_exporter_up` 0, so dashboards and rules keep their series (no alert fires
or resolves on a value it does not have) and ConveyorRedisUnreachable says why.

A tier's demand (waiting + running jobs) is also read on its own by `read_demand`, for the
autoscaler's `/scaling/<queue>` endpoint.
"""

import logging
import time
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass
from typing import Any

import orjson
import redis
from kombu.transport.redis import PRIORITY_STEPS, Channel
from prometheus_client.metrics_core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from redis.exceptions import RedisError

from conveyor.core.queues import Queue
from conveyor.jobstore.fairq import FlowKind
from conveyor.jobstore.keys import KeySpace
from conveyor.jobstore.liveness import live_worker_window
from conveyor.jobstore.model import JobState, text_of
from conveyor.jobstore.store import confirm_primary
from conveyor.telemetry.metrics import EXPORTER_METRICS

log = logging.getLogger(__name__)

_SEP = "\x06\x16"
NAN = float("nan")


def queue_keys(queue: str) -> list[str]:
    """The list and kombu's priority sub-lists of a queue (Conveyor only fills the first)."""
    return [queue if step == 0 else f"{queue}{_SEP}{step}" for step in PRIORITY_STEPS]


@dataclass(frozen=True)
class Demand:
    """A tier's demand for worker slots: jobs waiting on its queue plus jobs running."""

    queue: str
    waiting: int
    running: int

    @property
    def demand(self) -> int:
        """Slots the tier needs now."""
        return self.waiting + self.running

    def as_json(self) -> bytes:
        """The `/scaling/<queue>` body (KEDA's metrics-api trigger reads `demand`)."""
        return orjson.dumps({**asdict(self), "demand": self.demand})


def read_demand(client: "redis.Redis", keys: KeySpace, queue: str) -> Demand:
    """O(1) reads of the current primary; raises RedisError rather than guess a zero (or
    serve a demoted node's frozen demand to the autoscaler).
    """
    confirm_primary(client)
    with client.pipeline(transaction=False) as pipe:
        for key in queue_keys(queue):
            pipe.llen(key)
        pipe.zcard(keys.running(queue))
        *lengths, running = pipe.execute()
    return Demand(queue, sum(int(n) for n in lengths), int(running))


class BrokerCollector(Collector):
    """Collects the EXPORTER_METRICS gauges from Redis."""

    def __init__(self, client: "redis.Redis", keys: KeySpace, visibility_timeout: float) -> None:
        self.client = client
        self.keys = keys
        self.visibility_timeout = visibility_timeout
        self.live_window = live_worker_window(visibility_timeout)

    def describe(self) -> Iterable[Metric]:
        """The families, without reading Redis (called when registering)."""
        return list(self._families().values())

    def collect(self) -> Iterator[Metric]:
        """Read Redis once and yield every family."""
        families = self._families()
        started = time.perf_counter()
        now = time.time()
        try:
            self._fill(families, now)
            families["conveyor_exporter_up"].add_metric([], 1)
        except RedisError as exc:
            log.warning("scrape failed, serving NaN: %s", exc)
            families = self._families()  # nothing half-filled
            for name, labels in _label_sets():
                families[name].add_metric(labels, NAN)
            families["conveyor_exporter_up"].add_metric([], 0)
        families["conveyor_visibility_timeout_seconds"].add_metric([], self.visibility_timeout)
        duration = families["conveyor_exporter_scrape_duration_seconds"]
        duration.add_metric([], time.perf_counter() - started)
        yield from families.values()

    def _fill(self, families: dict[str, GaugeMetricFamily], now: float) -> None:
        queues = [str(q) for q in Queue]
        states = [str(s) for s in JobState]
        confirm_primary(self.client)  # never a demoted node's frozen figures
        with self.client.pipeline(transaction=False) as pipe:
            for queue in queues:
                for key in queue_keys(queue):
                    pipe.llen(key)
                pipe.lindex(queue, -1)  # the tail is taken next: the oldest ready token
                pipe.zcard(self.keys.running(queue))
                pipe.zcount(self.keys.consumers(queue), now - self.live_window, "+inf")
                pipe.llen(self.keys.fair_parked(queue))
            for state in states:
                pipe.zcard(self.keys.index_state(state))
            pipe.hlen(Channel.unacked_key)
            pipe.zrange(Channel.unacked_index_key, 0, 0, withscores=True)
            pipe.zcard(self.keys.delayed)
            pipe.zcard(self.keys.dead)
            pipe.smembers(self.keys.paused)
            replies: list[Any] = pipe.execute()
        it = iter(replies)
        for queue in queues:
            length = sum(int(next(it)) for _ in PRIORITY_STEPS)
            families["conveyor_queue_length"].add_metric([queue], length)
            age = _message_age(next(it), now)
            families["conveyor_queue_oldest_message_age_seconds"].add_metric([queue], age)
            running = int(next(it))
            families["conveyor_queue_running"].add_metric([queue], running)
            families["conveyor_queue_demand"].add_metric([queue], length + running)
            families["conveyor_workers"].add_metric([queue], int(next(it)))
            families["conveyor_queue_held"].add_metric([queue], int(next(it)))
        for state in states:
            families["conveyor_jobs"].add_metric([state], int(next(it)))
        families["conveyor_unacked_deliveries"].add_metric([], int(next(it)))
        oldest = next(it)
        lease_age = now - float(oldest[0][1]) if oldest else 0.0
        families["conveyor_unacked_oldest_age_seconds"].add_metric([], max(0.0, lease_age))
        families["conveyor_delayed_jobs"].add_metric([], int(next(it)))
        families["conveyor_dead_letters"].add_metric([], int(next(it)))
        paused = [text_of(m).partition(":") for m in next(it)]
        for kind in FlowKind:
            count = sum(1 for k, _, _ in paused if k == kind)
            families["conveyor_paused"].add_metric([str(kind)], count)
        for queue in queues:
            is_paused = any(k == FlowKind.TIER and name == queue for k, _, name in paused)
            families["conveyor_queue_paused"].add_metric([queue], 1 if is_paused else 0)

    @staticmethod
    def _families() -> dict[str, GaugeMetricFamily]:
        return {m.name: _gauge(m.name) for m in EXPORTER_METRICS}


# Written by `collect` itself whatever Redis answers.
_OWN = ("conveyor_exporter_up", "conveyor_exporter_scrape_duration_seconds",
        "conveyor_visibility_timeout_seconds")  # fmt: skip


def _label_sets() -> Iterator[tuple[str, list[str]]]:
    """(family, label values) of every series read from Redis: the same on every scrape."""
    values = {"queue": [str(q) for q in Queue], "state": [str(s) for s in JobState],
              "kind": [str(k) for k in FlowKind]}  # fmt: skip
    for metric in EXPORTER_METRICS:
        if metric.name in _OWN:
            continue
        if not metric.labels:
            yield metric.name, []
            continue
        (label,) = metric.labels
        for value in values[label]:
            yield metric.name, [value]


def _gauge(name: str) -> GaugeMetricFamily:
    spec = next(m for m in EXPORTER_METRICS if m.name == name)
    return GaugeMetricFamily(spec.name, spec.help, labels=list(spec.labels))


def _message_age(raw: Any, now: float) -> float:
    """Seconds since the oldest ready token's message became ready (0 for none).

    The tier's list holds ready tokens (`conveyor.jobstore.fairq`) whose value is that time.
    """
    if not raw:
        return 0.0
    try:
        ready = float(raw)
    except (TypeError, ValueError):
        return 0.0
    return max(0.0, now - ready)
