"""Day-2 operations of the chart, run as the cluster would run them (see harness.py): what
the chart renders is started, rolled, scaled down and upgraded by a local kubelet, under load.

One release is started for the module (Redis from its StatefulSet, two API pods, a worker pod
per tier, the exporter) and the tests go on from each other's state, in file order.
"""

import random
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis as redis_lib
import yaml

from conveyor.core.apikeys import hash_key
from tests.kubelet.harness import (
    Cluster,
    Kubelet,
    Load,
    Pod,
    ServiceProxy,
    render,
    template_hash,
)
from tests.support.auth import ADMIN_KEY, KEYS_FILE
from tests.support.processes import wait_until

pytestmark = pytest.mark.timeout(600)

RELEASE = "conveyor"
TIERS = ("high", "default", "low")
TERMINAL = {"succeeded", "failed", "cancelled"}


def values(**changes: Any) -> dict[str, Any]:
    """The release's values: production defaults, test task module and keys, no KEDA (the
    replica counts are set here, as an autoscaler would)."""
    keys = yaml.safe_load(KEYS_FILE.read_text())["keys"]
    base: dict[str, Any] = {
        "keda": {"enabled": False},
        "api": {"workers": 1, "autoscaling": {"enabled": False}},
        "config": {
            "taskModules": ["tests.support.tasks"],
            "auth": {"keys": keys, "reloadIntervalSeconds": 1},
            "limits": {"ratePerSecond": 0},
            "visibilityTimeoutSeconds": 6,
        },
    }
    for path, value in changes.items():
        node = base
        *parents, leaf = path.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return base


def component(name: str) -> str:
    return f"{RELEASE}-{name}"


class Release:
    """The running release: its kubelet, Redis and the API behind a Service proxy."""

    def __init__(self, root: Path) -> None:
        self.values = values()
        self.kubelet = Kubelet(Cluster(render(self.values)), root)
        self.api = ServiceProxy()
        self.kubelet.watchers.append(self._endpoints)
        try:
            self._start()
        except BaseException:
            self.close()
            raise

    def _start(self) -> None:
        redis_pod = self.kubelet.start(component("redis"))
        self.kubelet.wait_ready(redis_pod)
        self.redis = redis_lib.Redis(
            port=redis_pod.port(6379),
            password=redis_pod.env["REDIS_PASSWORD"],
            decode_responses=True,
        )
        self.redis_url = (
            f"redis://:{redis_pod.env['REDIS_PASSWORD']}@127.0.0.1:{redis_pod.port(6379)}/0"
        )
        for _ in range(2):
            self.kubelet.wait_ready(self.kubelet.start(component("api")))
        for tier in TIERS:
            self.kubelet.wait_ready(self.kubelet.start(component(f"worker-{tier}")))
        self.kubelet.wait_ready(self.kubelet.start(component("exporter")))

    def _endpoints(self, event: str, pod: Pod) -> None:
        """The endpoints controller: a ready API pod joins the Service; a terminating one
        leaves it a second later (kube-proxy's propagation lag, which preStop covers)."""
        if pod.owner != component("api"):
            return
        port = pod.port("http")
        if event == "ready" and port not in self.api.endpoints:
            self.api.endpoints.append(port)
        elif event == "terminating":
            import threading

            threading.Timer(
                1.0, lambda: port in self.api.endpoints and self.api.endpoints.remove(port)
            ).start()

    def http(self, key: str = ADMIN_KEY) -> httpx.Client:
        """A client of the API Service; a new connection per request (as kube-proxy balances
        connections, a pooled one would pin itself to one pod)."""
        return httpx.Client(
            base_url=f"http://127.0.0.1:{self.api.port}",
            headers={"Authorization": f"Bearer {key}", "Connection": "close"},
            timeout=10,
        )

    def upgrade(self, **changes: Any) -> dict[str, bool]:
        """`helm upgrade` with changed values: which workloads' pod templates changed."""
        self.values = values(**changes)
        before = {
            d["metadata"]["name"]: template_hash(d["spec"]["template"])
            for d in self.kubelet.cluster.docs
            if d["kind"] in ("Deployment", "StatefulSet")
        }
        self.kubelet.cluster.apply(render(self.values))
        return {
            name: template_hash(self.kubelet.cluster.workload(name)["spec"]["template"]) != h
            for name, h in before.items()
        }

    def close(self) -> None:
        self.kubelet.shutdown()
        self.api.close()


@pytest.fixture(scope="module")
def release(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Release]:
    running = Release(tmp_path_factory.mktemp("kubelet"))
    yield running
    running.close()


def submit_work(client: httpx.Client, redis_url: str, seconds: float, priority: str) -> str:
    response = client.post(
        "/v1/jobs",
        json={
            "task": "tests.work",
            "args": {"redis_url": redis_url, "seconds": seconds},
            "priority": priority,
        },
        headers={"Idempotency-Key": str(uuid.uuid4())},
    )
    assert response.status_code == 202, response.text
    job_id: str = response.json()["id"]
    return job_id


def finished(release: Release, job_ids: list[str], timeout: float) -> list[dict[str, Any]]:
    """Every job's record once all are terminal (fails after `timeout`)."""
    with release.http() as client:

        def all_done() -> list[dict[str, Any]] | None:
            jobs = [client.get(f"/v1/jobs/{j}").json() for j in job_ids]
            return jobs if all(j["state"] in TERMINAL for j in jobs) else None

        try:
            result: list[dict[str, Any]] = wait_until(all_done, timeout, "every job to finish",
                                                      step=1)  # fmt: skip
        except AssertionError:
            jobs = [client.get(f"/v1/jobs/{j}").json() for j in job_ids]
            late = [(j["id"], j["state"], j["queue"], j["attempts"]) for j in jobs
                    if j["state"] not in TERMINAL]  # fmt: skip
            raise AssertionError(f"{len(late)} jobs unfinished, e.g. {late[:5]}") from None
        return result


def assert_each_ran_once(release: Release, jobs: list[dict[str, Any]]) -> None:
    """No job lost, none re-run, no death recorded."""
    assert {j["state"] for j in jobs} == {"succeeded"}
    assert [j["id"] for j in jobs if j["attempts"] != 1] == [], "re-runs"
    assert [j["id"] for j in jobs if j.get("deaths", 0)] == [], "deaths recorded"
    executions = release.redis.hgetall("executions")
    assert [j["id"] for j in jobs if executions.get(j["id"]) != "1"] == [], "executed twice"


def test_adding_an_api_key_restarts_nothing_and_works_within_the_reload_interval(
    release: Release,
) -> None:
    new_key = f"cvk_{uuid.uuid4().hex}{uuid.uuid4().hex[:11]}"
    keys = [
        *release.values["config"]["auth"]["keys"],
        {"id": "added", "tenant": "team-c", "scopes": ["jobs:read"], "sha256": hash_key(new_key)},
    ]
    with release.http(new_key) as client:
        assert client.get("/v1/jobs").status_code == 401
    pids = {p.name: p.process.pid for p in release.kubelet.pods if p.alive()}
    changed = release.upgrade(**{"config.auth.keys": keys})
    assert not any(changed.values()), f"pod templates changed: {changed}"
    added_at = time.monotonic()
    for pod in release.kubelet.pods:
        if pod.alive():
            release.kubelet.sync_volumes(pod)
    with release.http(new_key) as client:
        wait_until(lambda: client.get("/v1/jobs").status_code == 200, 10, "the new key to work")
    print(f"new key accepted {time.monotonic() - added_at:.1f}s after the Secret changed")
    assert {p.name: p.process.pid for p in release.kubelet.pods if p.alive()} == pids


def test_helm_test_pod_submits_a_job_and_sees_it_succeed(release: Release) -> None:
    secret = {
        "apiVersion": "v1",
        "kind": "Secret",
        "type": "Opaque",
        "metadata": {"name": "helm-test-key", "namespace": "jobs"},
        "stringData": {"api-key": ADMIN_KEY},
    }
    release.upgrade(**{"tests.apiKey.existingSecret": "helm-test-key"})
    release.kubelet.cluster.apply([*release.kubelet.cluster.docs, secret])
    test_pod = next(
        d["metadata"]["name"]
        for d in release.kubelet.cluster.of_kind("Pod")
        if (d["metadata"].get("annotations") or {}).get("helm.sh/hook") == "test"
    )
    pod = release.kubelet.start(test_pod)
    assert pod.process.wait(150) == 0, pod.log()
    assert "succeeded" in pod.log()


def test_api_rolling_update_under_load_fails_no_request(release: Release) -> None:
    old_api = release.kubelet.running(component("api"))
    with release.http() as client:
        job_id = submit_work(client, release.redis_url, 0, "high")

        def request() -> httpx.Response:
            if random.random() < 0.5:
                return client.get(f"/v1/jobs/{job_id}")
            return client.post("/v1/jobs", json={"task": "demo.echo", "priority": "low"})

        changed = release.upgrade(**{"api.workers": 2})
        assert changed[component("api")]
        assert not changed[component("worker-high")]
        with Load(request, threads=4) as load:
            time.sleep(2)
            new, stopped = release.kubelet.rolling_update(component("api"), replicas=2)
            time.sleep(2)
    print(
        f"API rollout: {load.ok} requests ok, {len(load.failures)} failed; old pods stopped "
        f"in {[round(p.stopped_after or 0, 1) for p in stopped]} s"
    )
    assert load.failures == []
    assert load.ok > 100, "the load ran through the rollout"
    assert {p.name for p in stopped} == {p.name for p in old_api}
    assert all(p.exit_code == 0 and not p.killed for p in stopped), [
        p.log()[-2000:] for p in stopped
    ]
    assert len(new) == 2


def test_worker_rolling_update_under_load_loses_and_reruns_nothing(release: Release) -> None:
    accepted: list[str] = []
    with release.http() as client:

        def request() -> httpx.Response:
            priority = random.choice(TIERS)
            seconds = random.uniform(0.1, 1.5)  # running across every pod stop, short drains
            response = client.post(
                "/v1/jobs",
                json={
                    "task": "tests.work",
                    "priority": priority,
                    "args": {"redis_url": release.redis_url, "seconds": seconds},
                },
            )
            if response.status_code == 202:
                accepted.append(response.json()["id"])
            time.sleep(0.05)
            return response

        changed = release.upgrade(**{"config.logLevel": "DEBUG"})
        assert all(changed[component(f"worker-{t}")] for t in TIERS)
        with Load(request, threads=2) as load:
            time.sleep(3)
            import threading

            results: dict[str, tuple[list[Pod], list[Pod]]] = {}
            rollouts = [
                threading.Thread(
                    target=lambda t=t: results.__setitem__(
                        t, release.kubelet.rolling_update(component(f"worker-{t}"), replicas=1)
                    )
                )
                for t in TIERS
            ]
            for thread in rollouts:
                thread.start()
            for thread in rollouts:
                thread.join(300)
            time.sleep(3)
    assert load.failures == []
    jobs = finished(release, accepted, timeout=300)
    stopped = [p for _, old in results.values() for p in old]
    print(
        f"worker rollout: {len(jobs)} jobs through it; old pods drained in "
        f"{[round(p.stopped_after or 0, 1) for p in stopped]} s"
    )
    assert len(jobs) > 50
    assert_each_ran_once(release, jobs)
    assert all(p.exit_code == 0 and not p.killed for p in stopped)
    # Draining waited for jobs (≤ 1.5 s), not for the shutdown timeout (minutes).
    assert max(p.stopped_after or 0 for p in stopped) < 30


def test_scale_down_with_long_jobs_running_reruns_nothing(release: Release) -> None:
    owner = component("worker-low")
    for _ in range(2):  # the autoscaler scaled the tier to 3 pods
        release.kubelet.wait_ready(release.kubelet.start(owner))
    pods = release.kubelet.running(owner)
    assert len(pods) == 3
    slots = 3 * int(pods[0].env["CONVEYOR_WORKER__CONCURRENCY"])
    with release.http() as client:
        jobs = [submit_work(client, release.redis_url, 8, "low") for _ in range(slots)]
        wait_until(
            lambda: all(client.get(f"/v1/jobs/{j}").json()["state"] == "running" for j in jobs),
            30,
            "every slot busy",
        )
    exporter = release.kubelet.running(component("exporter"))[0]
    demand = httpx.get(f"http://127.0.0.1:{exporter.port('metrics')}/scaling/low", timeout=5)
    assert demand.json() == {"queue": "low", "waiting": 0, "running": slots, "demand": slots}
    # The ReplicaSet removes two pods, both busy: they drain instead of handing jobs back.
    victims = pods[1:]
    stops = [release.kubelet.stop_in_background(p) for p in victims]
    for thread in stops:
        thread.join(120)
    records = finished(release, jobs, timeout=60)
    drained = [round(p.stopped_after or 0, 1) for p in victims]
    print(f"scale-down 3 -> 1: busy pods drained in {drained} s")
    assert_each_ran_once(release, records)
    assert all(p.exit_code == 0 and not p.killed for p in victims)
