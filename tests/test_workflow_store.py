"""Workflows in the job store, against a real Redis: accepted whole, children released by
their parents' finishing transitions, failure policies, resume by replay, cancel, and the
limits refusing a workflow leave nothing behind. Runs are driven with the workers' own verbs
(start, succeed, fail, dead_letter), as a worker would.
"""

import asyncio
from collections.abc import Iterator
from typing import Any

import orjson
import pytest
import redis.asyncio

from conveyor.core.catalog import load_catalog
from conveyor.core.settings import Settings
from conveyor.jobstore.aio import AsyncJobStore
from conveyor.jobstore.model import JobState
from conveyor.jobstore.results import AcceptVerdict, Limits
from conveyor.jobstore.runs import Fence, StartVerdict
from conveyor.jobstore.store import JobStore
from conveyor.jobstore.submission import Submission
from conveyor.jobstore.workflow import StepPlan, WorkflowPlan
from conveyor.jobstore.workflow_model import FailurePolicy, Workflow, WorkflowState
from conveyor.jobstore.workflow_store import WorkflowAcceptResult
from tests.support.processes import RedisServer

SETTINGS = Settings()
CATALOG = load_catalog([])


def step(name: str, *parents: str, inputs: dict[str, str] | None = None) -> StepPlan:
    spec = CATALOG["demo.echo"]
    submission = Submission.of(spec, tenant="t1", args={} if inputs else {"payload": name})
    return StepPlan(name, spec, submission, tuple(parents), inputs or {})


def plan(*steps: StepPlan, policy: FailurePolicy = FailurePolicy.FAIL_FAST,
         key: str | None = None) -> WorkflowPlan:  # fmt: skip
    return WorkflowPlan("t1", "test", policy, steps, key)


class Harness:
    """Both stores on one database; the API's verbs run on a private event loop."""

    def __init__(self, server: RedisServer, db: int) -> None:
        self.loop = asyncio.new_event_loop()
        self.aclient = redis.asyncio.Redis(port=server.port, db=db)
        self.astore = AsyncJobStore(self.aclient, SETTINGS)
        self.store = JobStore(server.client(db), SETTINGS)
        self.client = server.client(db)

    def run(self, coro: Any) -> Any:
        return self.loop.run_until_complete(coro)

    def accept(self, wf: WorkflowPlan, limits: Limits | None = None,
               depths: dict[str, int] | None = None) -> WorkflowAcceptResult:  # fmt: skip
        return self.run(self.astore.submit_workflow(wf, limits or Limits(), depths or {}))

    def get(self, workflow_id: str) -> Workflow:
        found = self.run(self.astore.get_workflow(workflow_id))
        assert found is not None
        return found

    def states(self, workflow_id: str) -> dict[str, JobState]:
        return {s.name: s.state for s in self.get(workflow_id).steps}

    def ids(self, workflow_id: str) -> dict[str, str]:
        return {s.name: s.job_id for s in self.get(workflow_id).steps}

    def succeed(self, job_id: str, result: Any) -> Any:
        started = self.store.start(job_id)
        assert started.verdict is StartVerdict.RUN, started
        return self.store.succeed(job_id, orjson.dumps(result).decode(),
                                  Fence.attempt(started.attempts))  # fmt: skip

    def close(self) -> None:
        self.run(self.aclient.aclose())
        self.loop.close()


@pytest.fixture
def h(redis_server: RedisServer, redis_db: int) -> Iterator[Harness]:
    harness = Harness(redis_server, redis_db)
    yield harness
    harness.close()


def test_a_chain_runs_in_order_and_passes_each_result_on(h: Harness) -> None:
    wf = h.accept(plan(step("a"), step("b", "a", inputs={"payload": "a"}),
                       step("c", "b", inputs={"payload": "*"})))  # fmt: skip
    assert wf.verdict is AcceptVerdict.CREATED
    ids = h.ids(wf.workflow_id)
    assert h.states(wf.workflow_id) == {"a": "queued", "b": "waiting", "c": "waiting"}
    # Only the root's message is on a queue.
    assert h.client.llen("conveyor:fair:default:jobs:t1") == 1

    h.succeed(ids["a"], {"n": 1})
    assert h.states(wf.workflow_id)["b"] == "queued"
    started = h.store.start(ids["b"])
    assert started.inputs is not None
    assert started.inputs.values == {"payload": {"n": 1}}
    h.store.succeed(ids["b"], '{"n": 2}', Fence.attempt(started.attempts))
    started = h.store.start(ids["c"])
    assert started.inputs is not None
    assert started.inputs.values == {"payload": [{"n": 2}]}
    done = h.store.succeed(ids["c"], '"end"', Fence.attempt(started.attempts))
    assert done.workflow_ended is not None
    assert done.workflow_ended.outcome is WorkflowState.SUCCEEDED
    final = h.get(wf.workflow_id)
    assert final.state is WorkflowState.SUCCEEDED
    assert (final.steps_done, final.steps_succeeded) == (3, 3)
    assert [s.result for s in final.steps] == [{"n": 1}, {"n": 2}, "end"]
    # Ended: everything it kept expires together, with the jobs' retention.
    retention = SETTINGS.jobs.retention_seconds
    assert 0 < h.client.ttl(f"conveyor:workflow:{wf.workflow_id}") <= retention
    assert 0 < h.client.ttl(f"conveyor:job:{ids['a']}") <= SETTINGS.jobs.retention_seconds


def test_a_diamond_joins_once_after_both_branches(h: Harness) -> None:
    wf = h.accept(plan(step("a"), step("b", "a"), step("c", "a"),
                       step("d", "b", "c", inputs={"payload": "*"})))  # fmt: skip
    ids = h.ids(wf.workflow_id)
    h.succeed(ids["a"], 1)
    assert h.states(wf.workflow_id) == {"a": "succeeded", "b": "queued", "c": "queued",
                                        "d": "waiting"}  # fmt: skip
    h.succeed(ids["c"], "from c")
    assert h.states(wf.workflow_id)["d"] == "waiting"  # one parent left
    h.succeed(ids["b"], "from b")
    assert h.states(wf.workflow_id)["d"] == "queued"
    # Every step's message was pushed exactly once (nothing claims them here).
    assert h.client.llen("conveyor:fair:default:jobs:t1") == 4
    started = h.store.start(ids["d"])
    assert started.inputs is not None
    assert started.inputs.values == {"payload": ["from b", "from c"]}


def test_fail_fast_skips_what_waits_and_what_has_not_started(h: Harness) -> None:
    wf = h.accept(plan(step("a"), step("b", "a"), step("c", "a"), step("d", "b", "c")))
    ids = h.ids(wf.workflow_id)
    h.succeed(ids["a"], 1)
    started = h.store.start(ids["b"])
    h.store.fail(ids["b"], '{"type": "E", "message": "m"}', Fence.attempt(started.attempts))
    states = h.states(wf.workflow_id)
    assert states["d"] == "cancelled"  # waiting: skipped at once
    assert states["c"] == "queued"  # its message is out: skipped when a worker reaches it
    skipped = h.store.start(ids["c"])
    assert skipped.verdict is StartVerdict.SKIP
    assert skipped.workflow_ended is not None
    assert skipped.workflow_ended.outcome is WorkflowState.FAILED
    final = h.get(wf.workflow_id)
    assert (final.steps_succeeded, final.steps_failed, final.steps_cancelled) == (1, 1, 2)
    assert final.steps[3].error is not None
    assert final.steps[3].error.type == "Skipped"


def test_continue_runs_independent_branches_and_skips_only_descendants(h: Harness) -> None:
    wf = h.accept(plan(step("a"), step("b", "a"), step("c", "a"), step("d", "b"),
                       step("e", "d"), policy=FailurePolicy.CONTINUE))  # fmt: skip
    ids = h.ids(wf.workflow_id)
    h.succeed(ids["a"], 1)
    started = h.store.start(ids["b"])
    h.store.fail(ids["b"], '{"type": "E", "message": "m"}', Fence.attempt(started.attempts))
    assert h.states(wf.workflow_id) == {"a": "succeeded", "b": "failed", "c": "queued",
                                        "d": "cancelled", "e": "cancelled"}  # fmt: skip
    done = h.succeed(ids["c"], 2)
    assert done.workflow_ended is not None
    assert done.workflow_ended.outcome is WorkflowState.FAILED


def test_replaying_a_dead_lettered_step_resumes_the_workflow(h: Harness) -> None:
    wf = h.accept(plan(step("a"), step("b", "a"), step("c", "b"), step("d", "a")))
    ids = h.ids(wf.workflow_id)
    h.succeed(ids["a"], 1)
    h.succeed(ids["d"], 4)
    started = h.store.start(ids["b"])
    h.store.dead_letter(ids["b"], '{"type": "E", "message": "m"}', b'{"headers": {}}',
                        Fence.attempt(started.attempts))  # fmt: skip
    assert h.get(wf.workflow_id).state is WorkflowState.FAILED
    assert h.client.ttl(f"conveyor:workflow:{wf.workflow_id}") > 0

    assert h.run(h.astore.replay([ids["b"]])) == 1
    resumed = h.get(wf.workflow_id)
    assert resumed.state is WorkflowState.RUNNING
    assert h.states(wf.workflow_id) == {"a": "succeeded", "b": "queued", "c": "waiting",
                                        "d": "succeeded"}  # fmt: skip
    assert h.client.ttl(f"conveyor:workflow:{wf.workflow_id}") == -1  # kept again
    assert h.client.ttl(f"conveyor:job:{ids['a']}") == -1
    h.succeed(ids["b"], 2)
    done = h.succeed(ids["c"], 3)
    assert done.workflow_ended is not None
    assert done.workflow_ended.outcome is WorkflowState.SUCCEEDED
    final = h.get(wf.workflow_id)
    assert (final.steps_done, final.steps_succeeded, final.steps_failed) == (4, 4, 0)


def test_cancel_stops_every_step_and_nothing_queued_runs(h: Harness) -> None:
    wf = h.accept(plan(step("a"), step("b"), step("c", "a", "b")))
    ids = h.ids(wf.workflow_id)
    h.store.start(ids["a"])  # running
    cancelled = h.run(h.astore.cancel_workflow(wf.workflow_id, "t1"))
    assert cancelled.found
    assert cancelled.running_steps == (ids["a"],)
    assert cancelled.ended is not None
    assert cancelled.ended.outcome is WorkflowState.CANCELLED
    assert set(h.states(wf.workflow_id).values()) == {JobState.CANCELLED}
    assert h.store.start(ids["b"]).verdict is StartVerdict.SKIP
    # Another tenant cannot see it or cancel it.
    assert not h.run(h.astore.cancel_workflow(wf.workflow_id, "t2")).found
    assert h.run(h.astore.get_workflow(wf.workflow_id, "t2")) is None
    # A cancelled workflow's dead letters stay dead letters.


def test_a_refused_workflow_writes_nothing(h: Harness) -> None:
    steps = [step(f"s{i}") for i in range(5)]
    refused = h.accept(plan(*steps), Limits(rate_per_second=1, burst=3))
    assert refused.verdict is AcceptVerdict.RATE_LIMITED
    assert refused.over_burst
    full = h.accept(plan(*steps), depths={"default": 4})
    assert full.verdict is AcceptVerdict.QUEUE_FULL
    assert full.queue == "default"
    quota = h.accept(plan(*steps), Limits(max_queued_per_tier=2))
    assert quota.verdict is AcceptVerdict.QUOTA_EXCEEDED
    keys = {k for k in h.client.scan_iter() if not k.startswith("conveyor:bucket:")}
    assert keys == set()


def test_idempotency_keys_answer_with_the_same_workflow(h: Harness) -> None:
    first = h.accept(plan(step("a"), key="k1"))
    again = h.accept(plan(step("a"), key="k1"))
    other = h.accept(plan(step("a"), step("b"), key="k1"))
    assert again.verdict is AcceptVerdict.EXISTING
    assert again.workflow_id == first.workflow_id
    assert other.verdict is AcceptVerdict.CONFLICT
    assert h.client.zcard("conveyor:workflows:all") == 1


def test_replaying_every_dead_letter_passes_over_a_cancelled_workflows_own(h: Harness) -> None:
    """Found by review: a cancelled workflow's dead letter stays in the set, and replaying
    every dead letter read the set's head again and again, for ever."""
    wf = h.accept(plan(step("a"), step("b")))
    ids = h.ids(wf.workflow_id)
    h.store.start(ids["b"])
    started = h.store.start(ids["a"])
    h.store.dead_letter(ids["a"], '{"type": "E", "message": "m"}', b'{"headers": {}}',
                        Fence.attempt(started.attempts))  # fmt: skip
    h.run(h.astore.cancel_workflow(wf.workflow_id, "t1"))
    other = h.accept(plan(step("x")))
    x = h.ids(other.workflow_id)["x"]
    started = h.store.start(x)
    h.store.dead_letter(x, '{"type": "E", "message": "m"}', b'{"headers": {}}',
                        Fence.attempt(started.attempts))  # fmt: skip
    replayed = h.run(asyncio.wait_for(h.astore.replay(), 10))
    assert replayed == 1
    assert h.client.zrange("conveyor:dead", 0, -1) == [ids["a"]]
    assert h.states(other.workflow_id)["x"] == "queued"


# -- found by review (each failed before its fix) ---------------------------------------------


def test_a_fan_in_over_the_input_limit_is_sized_before_redis_builds_it(
    redis_server: RedisServer, redis_db: int, h: Harness
) -> None:
    wf = h.accept(plan(step("a"), step("b"), step("c", "a", "b", inputs={"payload": "*"})))
    ids = h.ids(wf.workflow_id)
    h.succeed(ids["a"], "x" * 100)
    h.succeed(ids["b"], "y" * 100)
    small = JobStore(redis_server.client(redis_db),
                     Settings(workflows={"max_input_bytes": 150}))  # fmt: skip
    started = small.start(ids["c"])
    assert started.inputs is not None
    assert started.inputs.values == {}
    assert started.inputs.size == 2 * 102  # both JSON strings, never concatenated


def test_a_run_from_before_a_replay_cannot_write(h: Harness) -> None:
    wf = h.accept(plan(step("a"), step("b", "a")))
    ids = h.ids(wf.workflow_id)
    first = h.store.start(ids["a"])
    h.store.dead_letter(ids["a"], '{"type": "E", "message": "m"}', b'{"headers": {}}',
                        Fence.attempt(first.attempts))  # fmt: skip
    assert h.run(h.astore.replay([ids["a"]])) == 1
    # The first run was only paused: its late outcome must not touch the replay.
    late = h.store.fail(ids["a"], '{"type": "E", "message": "late"}',
                        Fence.attempt(first.attempts))  # fmt: skip
    assert not late.applied
    assert late.stale
    assert h.states(wf.workflow_id) == {"a": "queued", "b": "waiting"}


def test_fail_fast_stays_halted_while_another_failure_stands(h: Harness) -> None:
    wf = h.accept(plan(step("x"), step("y"), step("r"), step("z", "x", "y")))
    ids = h.ids(wf.workflow_id)
    runs = {name: h.store.start(ids[name]) for name in ("x", "y")}  # both running
    for name, started in runs.items():
        h.store.dead_letter(ids[name], '{"type": "E", "message": "m"}', b'{"headers": {}}',
                            Fence.attempt(started.attempts))  # fmt: skip
    assert h.store.start(ids["r"]).verdict is StartVerdict.SKIP  # halted
    assert h.run(h.astore.replay([ids["x"]])) == 1
    states = h.states(wf.workflow_id)
    assert (states["r"], states["z"]) == ("cancelled", "cancelled")  # y still failed
    assert h.run(h.astore.replay([ids["y"]])) == 1
    states = h.states(wf.workflow_id)
    assert (states["r"], states["z"]) == ("queued", "waiting")


def test_every_step_is_kept_as_long_as_a_dead_lettered_one(h: Harness) -> None:
    wf = h.accept(plan(step("a"), step("b"), policy=FailurePolicy.CONTINUE))
    ids = h.ids(wf.workflow_id)
    h.succeed(ids["a"], 1)
    started = h.store.start(ids["b"])
    h.store.dead_letter(ids["b"], '{"type": "E", "message": "m"}', b'{"headers": {}}',
                        Fence.attempt(started.attempts))  # fmt: skip
    assert h.get(wf.workflow_id).state is WorkflowState.FAILED
    assert h.client.ttl(f"conveyor:job:{ids['a']}") > SETTINGS.jobs.retention_seconds
