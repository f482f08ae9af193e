"""Workflows over HTTP in process (issue 20): the seed shapes run by the workers' own runner,
validation with pointers, tenant isolation, cancel, failure policies, resume by replay,
rate limits and idempotency, and the workflow's event stream.
"""

import time
from typing import Any

import httpx
import orjson
import redis

from conveyor.worker.job_signals import job_started
from tests.fast.harness import KEYS, InProcessWorker, problem, serve, settings_for, sse_events
from tests.support.auth import TEAM_A_KEY, TEAM_B_KEY


def square(x: float | None = None, **extra: Any) -> dict[str, Any]:
    return {"task": "demo.square", "args": {} if x is None else {"x": x}, **extra}


def run_all(worker: InProcessWorker, queue: str = "default") -> int:
    """Run every message the tier has (and those their ends release) until none is left."""
    ran = 0
    while worker.redis.llen(KEYS.queue(queue)):
        worker.run_next(queue)
        ran += 1
    return ran


async def test_a_chain_passes_each_result_to_the_next_step(
    client: httpx.AsyncClient, worker: InProcessWorker
) -> None:
    body = {"name": "squares", "chain": [square(3), square(inputs={"x": "step-0"}),
                                         square(inputs={"x": "step-1"})]}  # fmt: skip
    accepted = await client.post("/v1/workflows", json=body)
    assert accepted.status_code == 202, accepted.text
    workflow = accepted.json()
    assert accepted.headers["Location"] == f"/v1/workflows/{workflow['id']}"
    assert [s["state"] for s in workflow["steps"]] == ["queued", "waiting", "waiting"]
    assert [s["depends_on"] for s in workflow["steps"]] == [[], ["step-0"], ["step-1"]]

    assert run_all(worker) == 3
    done = (await client.get(f"/v1/workflows/{workflow['id']}")).json()
    assert done["state"] == "succeeded"
    assert [s["result"] for s in done["steps"]] == [9, 81, 6561]
    assert done["steps_succeeded"] == 3
    assert done["finished_at"] is not None
    # Each step is a job too, tagged with its workflow.
    job = (await client.get(f"/v1/jobs/{done['steps'][1]['job_id']}")).json()
    assert (job["workflow_id"], job["step"], job["args"]) == (workflow["id"], "step-1", {})


async def test_a_chord_callback_receives_every_result(
    client: httpx.AsyncClient, worker: InProcessWorker
) -> None:
    total = {"name": "total", "task": "demo.sum", "inputs": {"values": "*"}}
    body = {"chord": {"parallel": [square(i) for i in range(10)], "then": total}}
    workflow = (await client.post("/v1/workflows", json=body)).json()
    assert run_all(worker) == 11
    done = (await client.get(f"/v1/workflows/{workflow['id']}")).json()
    assert done["state"] == "succeeded"
    assert done["steps"][-1]["name"] == "total"
    assert done["steps"][-1]["result"] == sum(i * i for i in range(10))


async def test_an_invalid_workflow_is_a_422_naming_each_place(client: httpx.AsyncClient) -> None:
    cases: list[tuple[dict[str, Any], list[str]]] = [
        ({"steps": [{"name": "a", "task": "demo.square", "args": {"x": 1}, "depends_on": ["b"]},
                    {"name": "b", "task": "demo.square", "args": {"x": 1}, "depends_on": ["a"]},
                    {"name": "c", "task": "demo.square", "args": {"x": 1}}]},
         ["#/steps/0/depends_on", "#/steps/1/depends_on"]),
        ({"steps": [{"name": "a", "task": "no.such"},
                    {"name": "b", "task": "demo.square", "args": {"x": "nan-ish"}},
                    {"name": "c", "task": "demo.square", "depends_on": ["zz"]}]},
         ["#/steps/0/task", "#/steps/1/args/x", "#/steps/2/depends_on/0", "#/steps/2/args/x"]),
        ({"steps": [{"name": "a", "task": "demo.square", "args": {"x": 1}},
                    {"name": "a", "task": "demo.square", "args": {"x": 1}}]},
         ["#/steps/1/name"]),
        ({"steps": [{"name": "a", "task": "demo.square", "args": {"x": 1}},
                    {"name": "b", "task": "demo.square", "depends_on": ["a"],
                     "inputs": {"y": "a", "x": "c"}}]},
         ["#/steps/1/inputs/y", "#/steps/1/inputs/x"]),
        ({"chain": [square(1), square(2, depends_on=["step-0"])]}, ["#/chain/1/depends_on"]),
        # Found by review: a step taking inputs escaped the arguments' size limits.
        ({"steps": [square(1, name="a"), {"name": "b", "task": "demo.echo", "depends_on": ["a"],
          "inputs": {"payload": "a"}}, {"name": "c", "task": "demo.sum", "depends_on": ["a"],
          "inputs": {"values": "*"}, "args": {"extra": "x" * 70_000}}]},
         ["#/steps/2/args/extra", "#/steps/2/args/extra"]),
        # Found by schemathesis: an unnamed step of `steps` was a 500.
        ({"steps": [{"task": ""}, square(1)]}, ["#/steps/0/name", "#/steps/1/name"]),
        ({"steps": [square(1, name="a")] * 1001}, ["#/steps"]),
    ]  # fmt: skip
    for body, pointers in cases:
        refused = problem(await client.post("/v1/workflows", json=body), 422)
        assert [e["pointer"] for e in refused["errors"]] == pointers, refused
    both = await client.post("/v1/workflows", json={"chain": [square(1)], "steps": [square(1)]})
    problem(both, 422)
    listed = (await client.get("/v1/workflows")).json()
    assert listed["items"] == []  # nothing was accepted, not even in part


async def test_tenants_see_and_cancel_only_their_own_workflows(
    api: Any, client: httpx.AsyncClient
) -> None:
    async with api.client(TEAM_A_KEY) as team_a, api.client(TEAM_B_KEY) as team_b:
        mine = (await team_a.post("/v1/workflows", json={"chain": [square(2)]})).json()
        url = f"/v1/workflows/{mine['id']}"
        problem(await team_b.get(url), 404)
        problem(await team_b.post(f"{url}/cancel"), 404)
        assert (await team_b.get("/v1/workflows")).json()["items"] == []
        problem(await team_b.get("/v1/workflows", params={"tenant": "team-a"}), 403)
        assert [w["id"] for w in (await team_a.get("/v1/workflows")).json()["items"]] == [
            mine["id"]
        ]
        assert (await team_a.get(url)).json()["tenant"] == "team-a"
    # An admin sees every tenant's.
    assert (await client.get("/v1/workflows", params={"tenant": "team-a"})).json()["items"]


async def test_cancel_means_nothing_queued_runs(
    client: httpx.AsyncClient, worker: InProcessWorker, redis_client: "redis.Redis"
) -> None:
    body = {"steps": [square(2, name="a"), square(3, name="b"),
                      square(name="c", depends_on=["a", "b"], inputs={"x": "a"})]}  # fmt: skip
    workflow = (await client.post("/v1/workflows", json=body)).json()
    cancelled = (await client.post(f"/v1/workflows/{workflow['id']}/cancel")).json()
    assert cancelled["state"] == "cancelled"
    assert {s["state"] for s in cancelled["steps"]} == {"cancelled"}
    run_all(worker)
    after = (await client.get(f"/v1/workflows/{workflow['id']}")).json()
    assert [s["attempts"] for s in after["steps"]] == [0, 0, 0]
    assert (await client.post(f"/v1/workflows/{workflow['id']}/cancel")).status_code == 200


async def test_fail_fast_and_continue(client: httpx.AsyncClient, worker: InProcessWorker) -> None:
    def shape(policy: str) -> dict[str, Any]:
        return {"failure_policy": policy, "steps": [
            {"name": "bad", "task": "demo.fail", "args": {"mode": "permanent"}},
            square(2, name="independent"),
            square(name="after", depends_on=["bad"], inputs={"x": "bad"}),
        ]}  # fmt: skip

    fast = (await client.post("/v1/workflows", json=shape("fail_fast"))).json()
    run_all(worker)
    fast = (await client.get(f"/v1/workflows/{fast['id']}")).json()
    assert fast["state"] == "failed"
    # `bad` runs first (submitted first), so the independent step is skipped unstarted.
    assert [s["state"] for s in fast["steps"]] == ["failed", "cancelled", "cancelled"]
    assert fast["steps"][1]["attempts"] == 0

    going = (await client.post("/v1/workflows", json=shape("continue"))).json()
    run_all(worker)
    going = (await client.get(f"/v1/workflows/{going['id']}")).json()
    assert [s["state"] for s in going["steps"]] == ["failed", "succeeded", "cancelled"]
    assert going["steps"][2]["error"]["type"] == "Skipped"
    assert going["state"] == "failed"


async def test_a_replayed_dead_letter_resumes_its_workflow(
    client: httpx.AsyncClient, worker: InProcessWorker
) -> None:
    body = {"chain": [
        {"task": "demo.fail", "args": {"mode": "retryable", "succeed_on_attempt": 2},
         "max_retries": 0},
        {"task": "demo.echo", "inputs": {"payload": "step-0"}},
    ]}  # fmt: skip
    workflow = (await client.post("/v1/workflows", json=body)).json()
    run_all(worker)
    failed = (await client.get(f"/v1/workflows/{workflow['id']}")).json()
    assert (failed["state"], [s["state"] for s in failed["steps"]]) == (
        "failed",
        ["failed", "cancelled"],
    )
    dead = failed["steps"][0]["job_id"]
    assert (await client.post(f"/v1/dead-letters/{dead}/replay")).status_code == 200
    assert (await client.get(f"/v1/workflows/{workflow['id']}")).json()["state"] == "running"
    run_all(worker)
    done = (await client.get(f"/v1/workflows/{workflow['id']}")).json()
    assert done["state"] == "succeeded"
    assert done["steps"][1]["result"] == {"payload": {"succeeded_on_attempt": 2}}


async def test_every_step_takes_a_token_and_a_workflow_larger_than_the_burst_is_a_422(
    redis_url: str,
) -> None:
    settings = settings_for(redis_url, limits={"rate_per_second": 0.01, "burst": 3})
    async with serve(settings) as api, api.client(TEAM_A_KEY) as client:
        too_big = await client.post("/v1/workflows", json={"chain": [square(1)] * 4})
        assert problem(too_big, 422)["type"] == "urn:conveyor:problem:workflow-over-burst"
        two = await client.post("/v1/workflows", json={"chain": [square(1)] * 2})
        assert two.status_code == 202
        response = await client.post("/v1/workflows", json={"chain": [square(1)] * 2})
        assert problem(response, 429)["type"] == "urn:conveyor:problem:rate-limited"
        assert int(response.headers["Retry-After"]) >= 1
        listed = (await client.get("/v1/workflows")).json()["items"]
        assert len(listed) == 1  # the refused ones left nothing


async def test_an_idempotency_key_answers_with_the_same_workflow(client: httpx.AsyncClient) -> None:
    body = {"chain": [square(1)]}
    first = await client.post("/v1/workflows", json=body, headers={"Idempotency-Key": "wf-1"})
    again = await client.post("/v1/workflows", json=body, headers={"Idempotency-Key": "wf-1"})
    other = await client.post("/v1/workflows", json={"chain": [square(2)]},
                              headers={"Idempotency-Key": "wf-1"})  # fmt: skip
    assert (first.status_code, again.status_code) == (202, 200)
    assert again.json()["id"] == first.json()["id"]
    problem(other, 409)


async def test_the_event_stream_follows_every_step_to_the_end(
    client: httpx.AsyncClient, worker: InProcessWorker
) -> None:
    workflow = (await client.post("/v1/workflows", json={"chain": [square(2), square(
        inputs={"x": "step-0"})]})).json()  # fmt: skip
    run_all(worker)
    # The workflow ended: a fresh stream is its snapshot; a resumed one replays the steps.
    fresh = list(sse_events((await client.get(f"/v1/workflows/{workflow['id']}/events")).text))
    assert [e["event"] for e in fresh] == ["workflow"]
    resumed = await client.get(f"/v1/workflows/{workflow['id']}/events",
                               headers={"Last-Event-ID": "0-0"})  # fmt: skip
    events = list(sse_events(resumed.text))
    kinds = [(e["event"], e.get("data", "")) for e in events]
    assert kinds[-1][0] == "workflow"
    assert '"succeeded"' in kinds[-1][1]
    changes = [orjson.loads(e["data"]) for e in events if e["event"] == "step"]
    assert [(c["step"], c["state"]) for c in changes] == [
        ("step-0", "running"),
        ("step-0", "succeeded"),
        ("step-1", "queued"),
        ("step-1", "running"),
        ("step-1", "succeeded"),
    ]


async def test_a_steps_queue_wait_starts_when_its_parents_release_it(
    client: httpx.AsyncClient, worker: InProcessWorker
) -> None:
    waits: dict[str, float] = {}

    def record(sender: object, job_id: str = "", wait_seconds: float | None = None,
               **_: Any) -> None:  # fmt: skip
        assert wait_seconds is not None
        waits[job_id] = wait_seconds

    job_started.connect(record, weak=False)
    try:
        body = {"chain": [square(2), square(inputs={"x": "step-0"})]}
        workflow = (await client.post("/v1/workflows", json=body)).json()
        time.sleep(1.0)  # the root waits in its queue; the child waits for its parent
        run_all(worker)
    finally:
        job_started.disconnect(record)
    root, child = (s["job_id"] for s in workflow["steps"])
    assert waits[root] >= 1.0
    assert waits[child] < 0.5  # released just before it ran: not a second of queue wait


async def test_cancelling_one_step_stops_what_depends_on_it(
    client: httpx.AsyncClient, worker: InProcessWorker
) -> None:
    body = {"failure_policy": "continue", "steps": [
        square(2, name="a"), square(3, name="b"),
        square(name="after-b", depends_on=["b"], inputs={"x": "b"}),
    ]}  # fmt: skip
    workflow = (await client.post("/v1/workflows", json=body)).json()
    b = workflow["steps"][1]["job_id"]
    assert (await client.post(f"/v1/jobs/{b}/cancel")).json()["state"] == "cancelled"
    run_all(worker)
    done = (await client.get(f"/v1/workflows/{workflow['id']}")).json()
    assert [s["state"] for s in done["steps"]] == ["succeeded", "cancelled", "cancelled"]
    assert done["state"] == "cancelled"  # nothing failed; a cancel stopped part of it


async def test_rerunning_a_failed_step_resumes_its_workflow(
    api: Any, client: httpx.AsyncClient, worker: InProcessWorker
) -> None:
    body = {"chain": [
        {"task": "demo.fail", "args": {"mode": "permanent", "succeed_on_attempt": 2}},
        {"task": "demo.echo", "inputs": {"payload": "step-0"}},
    ]}  # fmt: skip
    workflow = (await client.post("/v1/workflows", json=body)).json()
    run_all(worker)
    url = f"/v1/workflows/{workflow['id']}"
    assert (await client.get(url)).json()["state"] == "failed"
    problem(await client.post(f"{url}/steps/step-1/rerun"), 409)  # skipped, not failed
    problem(await client.post(f"{url}/steps/nope/rerun"), 404)
    async with api.client(TEAM_B_KEY) as team_b:
        problem(await team_b.post(f"{url}/steps/step-0/rerun"), 404)
    rerun = (await client.post(f"{url}/steps/step-0/rerun")).json()
    assert rerun["state"] == "running"
    assert [s["state"] for s in rerun["steps"]] == ["queued", "waiting"]
    run_all(worker)
    done = (await client.get(url)).json()
    assert done["state"] == "succeeded"
    assert done["steps"][1]["result"] == {"payload": {"succeeded_on_attempt": 2}}
    assert done["steps_failed"] == 0
    assert done["steps_done"] == 2
    problem(await client.post(f"{url}/steps/step-0/rerun"), 409)  # succeeded now
