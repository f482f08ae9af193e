"""The fast layer's stand-ins for processes: the API app served in process over
`httpx.ASGITransport`, and a "worker" that is `JobRunner` called directly on the messages the
API wrote into the test Redis. Both run the production code (create_app with its lifespan,
the job store's scripts, the runner's verbs); only gunicorn, Celery and the OS are left out.
"""

import base64
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import httpx
import orjson
import redis
from fastapi import FastAPI
from kombu.transport.redis import Channel
from prometheus_client import Metric

from conveyor.api.app import create_app
from conveyor.api.state import ApiState
from conveyor.core.catalog import TaskCatalog, TaskSpec, load_catalog
from conveyor.core.settings import Settings
from conveyor.jobstore import fairq
from conveyor.jobstore.keys import KeySpace
from conveyor.jobstore.store import JobStore
from conveyor.jobstore.submission import Submission
from conveyor.worker.lifecycle import JobRunner
from tests.support.auth import ADMIN_KEY, KEYS_FILE, bearer

TASK_MODULES = ["tests.support.tasks", "tests.fast.tasks"]
CATALOG: TaskCatalog = load_catalog(TASK_MODULES)
KEYS = KeySpace("conveyor")
# What the subprocess suite's services get from tests.support.processes.service_env.
BASE_SETTINGS: dict[str, Any] = {
    "task_modules": TASK_MODULES,
    "auth": {"keys_file": KEYS_FILE, "reload_interval_seconds": 0.2},
    "webhook": {"signing_secret": "test-signing-secret", "allowed_networks": ["127.0.0.0/8"]},
    "limits": {"rate_per_second": 0},
    "worker": {"hard_timeout_grace_seconds": 2},
}


def settings_for(redis_url: str, **overrides: Any) -> Settings:
    """Settings of the test platform on `redis_url`; `overrides` merge into the groups."""
    values: dict[str, Any] = {**BASE_SETTINGS, "redis_url": redis_url}
    for name, value in overrides.items():
        if isinstance(value, dict) and isinstance(values.get(name), dict):
            values[name] = {**values[name], **value}
        else:
            values[name] = value
    return Settings(**values)


@dataclass
class InProcessApi:
    """One API "process": an app whose lifespan is running."""

    app: FastAPI
    base_url: str

    @property
    def state(self) -> ApiState:
        state: ApiState = self.app.state.conveyor
        return state

    def client(self, key: str | None = ADMIN_KEY) -> httpx.AsyncClient:
        """An HTTP client of this app, authenticated with `key` (the admin key by default)."""
        return httpx.AsyncClient(
            transport=httpx.ASGITransport(app=self.app),
            base_url=self.base_url,
            headers=bearer(key) if key else {},
            timeout=10,
        )


@asynccontextmanager
async def serve(
    settings: Settings, base_url: str = "http://api.test", app: FastAPI | None = None
) -> AsyncIterator[InProcessApi]:
    """`create_app` (or `app`, made by it for `settings`) with its lifespan entered:
    ASGITransport does not run it."""
    app = app or create_app(settings, CATALOG)
    async with app.router.lifespan_context(app):
        yield InProcessApi(app, base_url)


# kombu's unacked deliveries (the transport's claim records each there).
UNACKED, UNACKED_INDEX = Channel.unacked_key, Channel.unacked_index_key


@dataclass(frozen=True)
class Message:
    """One Celery message from a queue list, as a worker would receive it."""

    raw: bytes
    headers: dict[str, Any]
    kwargs: dict[str, Any]

    @classmethod
    def parse(cls, raw: str | bytes) -> "Message":
        raw = raw.encode() if isinstance(raw, str) else raw
        envelope = orjson.loads(raw)
        _args, kwargs, _embed = orjson.loads(base64.b64decode(envelope["body"]))
        return cls(raw, envelope["headers"], kwargs)

    @property
    def job_id(self) -> str:
        return str(self.headers["id"])

    def request(self) -> SimpleNamespace:
        """What Celery hands a task as `self.request`: the message headers as attributes
        (id, retries, timelimit and Conveyor's own headers)."""
        return SimpleNamespace(**self.headers)


@dataclass
class InProcessWorker:
    """A worker without Celery: takes messages off the queue lists and runs `JobRunner`."""

    redis: "redis.Redis"
    settings: Settings
    store: JobStore = field(init=False)
    runner: JobRunner = field(init=False)

    def __post_init__(self) -> None:
        self.store = JobStore(self.redis, self.settings)
        self.runner = JobRunner(self.store, CATALOG, self.settings)

    def claim(self, queue: str) -> tuple[Message, str] | None:
        """The next message of `queue` in fair order and its delivery tag, claimed as the
        transport claims it (a ready token into an in-flight list, then claim.lua, within
        the flow-control limits); None when the tier has no token or the claim took nothing
        (its token parked, or spent on a message now waiting at its gate).
        """
        inflight = KEYS.inflight("in-process", queue)
        token = self.redis.lmove(KEYS.queue(queue), inflight, "RIGHT", "LEFT")
        if token is None:
            return None
        limit = self.settings.flow.tenant_concurrency_per_tier
        raw = fairq.claim(self.redis, KEYS, queue, inflight, token, UNACKED, UNACKED_INDEX, limit)
        if raw is None:
            return None
        return Message.parse(raw), orjson.loads(raw)["properties"]["delivery_tag"]

    def ack(self, tag: str) -> None:
        """Ack a claimed delivery as the transport does: its record goes, its slots free."""
        self.redis.hdel(UNACKED, tag)
        self.redis.zrem(UNACKED_INDEX, tag)
        fairq.release(self.redis, KEYS, [tag], self.settings.flow.tenant_concurrency_per_tier)

    def submit_as(self, tenant: str, task: str = "demo.echo", count: int = 1,
                  **extra: Any) -> list[str]:  # fmt: skip
        """Submit `count` jobs of `task` (no arguments) for `tenant` through the store."""
        spec = CATALOG[task]
        return [self.store.submit(spec, Submission.of(spec, tenant=tenant, args={},
                                                      **extra)).job_id
                for _ in range(count)]  # fmt: skip

    def claim_all(self, queue: str = "default") -> list[tuple[str, str]]:
        """Claim until the tier's list has no token left: (job id, tag) of each claimed."""
        claimed = []
        while self.redis.llen(KEYS.queue(queue)):
            got = self.claim(queue)
            if got is not None:
                claimed.append((got[0].job_id, got[1]))
        return claimed

    def take(self, queue: str) -> Message:
        """The next message of `queue` in fair order, claimed and acked at once."""
        claimed = self.claim(queue)
        assert claimed is not None, f"nothing to claim on the {queue} queue"
        message, tag = claimed
        self.ack(tag)
        return message

    def run(self, message: Message, spec: TaskSpec | None = None) -> None:
        """Deliver `message` to the runner, as a worker's task would."""
        spec = spec or CATALOG[message.headers["task"]]
        self.runner.run(spec, message.request(), message.kwargs)

    def run_next(self, queue: str) -> Message:
        """Take the next message of `queue` and run it."""
        message = self.take(queue)
        self.run(message)
        return message

    def promote(self) -> int:
        """Move the delayed messages that are due onto their queues (the workers' poller)."""
        return self.store.promote_due()

    def fast_forward(self, job_id: str) -> None:
        """Make the job's delayed message due now, as if its delay had passed (due times
        are compared with Redis' clock)."""
        assert self.redis.zscore(KEYS.delayed, job_id) is not None, f"{job_id} is not delayed"
        seconds, micros = self.redis.time()
        self.redis.zadd(KEYS.delayed, {job_id: seconds * 1000 + micros // 1000}, xx=True)

    def due_at(self, job_id: str) -> float | None:
        """When the job's delayed message is due (seconds), or None if it has none."""
        score = self.redis.zscore(KEYS.delayed, job_id)
        return None if score is None else score / 1000

    def queued(self, queue: str) -> list[Message]:
        """The messages waiting on `queue`, each tenant's oldest first (left in place)."""
        return [Message.parse(raw) for raw in fairq.ready_messages(self.redis, KEYS, queue)]


def problem(response: httpx.Response, status: int) -> dict[str, Any]:
    """The problem document of `response`, which must have `status`."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json"
    body: dict[str, Any] = response.json()
    assert body["status"] == status
    return body


def sse_events(text: str) -> Iterator[dict[str, str]]:
    """The events of a (finished) text/event-stream body, each as its fields."""
    for block in text.split("\n\n"):
        fields: dict[str, str] = {}
        for line in block.splitlines():
            if line.startswith(":"):  # a comment (keep-alive)
                continue
            name, _, value = line.partition(":")
            fields[name] = value.removeprefix(" ")
        if fields:
            yield fields


def samples(metric: Any, suffix: str) -> dict[tuple[str, ...], float]:
    """A metric's samples named `suffix`, by their label values (sorted by label name)."""
    collected: list[Metric] = list(metric.collect())
    return {
        tuple(sample.labels[name] for name in sorted(sample.labels) if name != "le"): sample.value
        for family in collected
        for sample in family.samples
        if sample.name.endswith(suffix)
    }


def delta(after: dict[Any, float], before: dict[Any, float]) -> dict[Any, float]:
    """What the test added (values of one process's metrics outlive an app)."""
    return {labels: value - before.get(labels, 0) for labels, value in after.items()}
