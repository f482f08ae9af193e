"""The API's workflow verbs (`AsyncJobStore` inherits them): accept a workflow whole within
the tenant's limits, read one with its steps, list and cancel them.
"""

import time
from dataclasses import dataclass
from typing import Any

import orjson
import redis.asyncio

from conveyor.core.settings import Settings
from conveyor.jobstore import _calls
from conveyor.jobstore.keys import KeySpace
from conveyor.jobstore.machine import Verb, transition
from conveyor.jobstore.replication import confirmed_replicas
from conveyor.jobstore.results import AcceptVerdict, Limits, Quota
from conveyor.jobstore.scripts import ACCEPT_WORKFLOW, CANCEL_WORKFLOW, RERUN_STEP
from conveyor.jobstore.workflow import PreparedWorkflow, WorkflowPlan, prepare_workflow
from conveyor.jobstore.workflow_model import (
    STEP_FIELDS,
    WORKFLOW_FIELDS,
    Workflow,
    WorkflowEnd,
    WorkflowState,
    WorkflowSummary,
    decode_summary,
    decode_workflow,
)


@dataclass(frozen=True)
class WorkflowAcceptResult:
    """What accepting a workflow did (the verdicts of a job's accept): CREATED, EXISTING or
    CONFLICT (with `workflow_id`), RATE_LIMITED (`retry_after_ms`; `over_burst` when the
    tenant's burst is smaller than the workflow, so that waiting never helps), QUEUE_FULL
    (`queue`), QUOTA_EXCEEDED (`quota`), NOT_REPLICATED (`replicas`).
    """

    verdict: AcceptVerdict
    workflow_id: str = ""
    tokens_left: int = 0
    retry_after_ms: int = 0
    over_burst: bool = False
    queue: str = ""
    quota: Quota | None = None
    replicas: int = 0
    workflow: Workflow | None = None  # as accepted (CREATED)


@dataclass(frozen=True)
class WorkflowCancelResult:
    """What cancelling did: `found` (False: unknown, or another tenant's), the state it was
    in, the steps that were running (to revoke), and the end it caused.
    """

    found: bool
    previous_state: WorkflowState | None = None
    running_steps: tuple[str, ...] = ()
    ended: WorkflowEnd | None = None


@dataclass(frozen=True)
class RerunResult:
    """What rerunning a step did: `queued` again, or why not (`unknown`, `cancelled` or the
    step's state).
    """

    queued: bool
    refusal: str = ""


@dataclass(frozen=True)
class WorkflowPage:
    """A page of workflows, newest first."""

    workflows: list[WorkflowSummary]
    next_cursor: str | None


class WorkflowVerbs:
    """The workflow half of the API's store."""

    client: "redis.asyncio.Redis"
    settings: Settings
    keys: KeySpace

    async def submit_workflow(
        self, plan: WorkflowPlan, limits: Limits, depths: dict[str, int]
    ) -> WorkflowAcceptResult:
        """Accept `plan` atomically: every step recorded and the roots queued, or nothing.
        `depths`: each tier's depth limit (0: none).
        """
        prepared, args = accept_workflow_args(self.settings, plan, limits, depths)
        replication = self.settings.redis_replication
        async with self.client.client() as conn:
            result = parse_accept(await ACCEPT_WORKFLOW.run_async(conn, args), prepared)
            if not replication.ack_replicas or result.verdict not in (
                AcceptVerdict.CREATED,
                AcceptVerdict.EXISTING,
            ):
                return result
            replayed = result.verdict is AcceptVerdict.EXISTING
            confirmed = await confirmed_replicas(conn, self.keys.prefix, replication, replayed)
        if confirmed < replication.ack_replicas:
            return WorkflowAcceptResult(
                AcceptVerdict.NOT_REPLICATED, workflow_id=result.workflow_id, replicas=confirmed
            )
        return result

    async def get_workflow(self, workflow_id: str, tenant: str | None = None) -> Workflow | None:
        """The workflow with every step, or None when unknown, expired or (with `tenant`)
        another tenant's.
        """
        key = self.keys.workflow(workflow_id)
        values, order = await self.client.hmget(key, [*WORKFLOW_FIELDS, "order"]), None
        summary = decode_summary(values[:-1])
        if summary is None or (tenant is not None and summary.tenant != tenant):
            return None
        order = orjson.loads(values[-1] or b"[]")
        async with self.client.pipeline(transaction=False) as pipe:
            for job_id in order:
                pipe.hmget(self.keys.job(job_id), STEP_FIELDS)
            steps = await pipe.execute()
        return decode_workflow(summary, steps)

    async def list_workflows(
        self,
        *,
        tenant: str | None,
        state: WorkflowState | None = None,
        limit: int = 50,
        cursor: str | None = None,
    ) -> WorkflowPage:
        """Workflows newest first (a tenant's own index only, or every tenant's)."""
        index = (self.keys.workflow_index_tenant(tenant) if tenant is not None
                 else self.keys.workflow_index_all)  # fmt: skip
        bound_score, bound_id = "+inf", ""
        if cursor is not None:
            cursor_score, bound_id = _calls.decode_cursor(cursor)
            bound_score = str(cursor_score)
        found: list[WorkflowSummary] = []
        last: tuple[float, str] | None = None
        more, budget, batch = True, limit * 20, limit + 1
        while len(found) < limit and budget > 0:
            reply: list[Any] = await self.client.zrevrangebyscore(
                index, bound_score, "-inf", start=0, num=batch, withscores=True
            )
            rows = [(_text(m), float(s)) for m, s in reply]
            # Entries sharing the cursor's score come in descending id order: skip those seen.
            at_bound = float(bound_score)
            fresh = [(m, s) for m, s in rows if not (s == at_bound and bound_id and m >= bound_id)]
            if not fresh:
                if len(rows) < batch:
                    more = False
                    break
                batch *= 2  # more equal scores than the batch: widen and read again
                continue
            async with self.client.pipeline(transaction=False) as pipe:
                for workflow_id, _ in fresh:
                    pipe.hmget(self.keys.workflow(workflow_id), WORKFLOW_FIELDS)
                records = await pipe.execute()
            expired, consumed = [], 0
            for (workflow_id, score), values in zip(fresh, records, strict=True):
                consumed += 1
                budget -= 1
                last = (score, workflow_id)
                summary = decode_summary(values)
                if summary is None:
                    expired.append(workflow_id)
                elif state is None or summary.state is state:
                    found.append(summary)
                if len(found) == limit or budget == 0:
                    break
            if expired:
                await self.client.zrem(index, *expired)
            if last is None or (consumed == len(fresh) and len(rows) < batch):
                more = False
                break
            bound_score, bound_id = str(int(last[0])), last[1]
        next_cursor = _calls.encode_cursor(*last) if more and last is not None else None
        return WorkflowPage(found, next_cursor)

    async def rerun_step(self, workflow_id: str, job_id: str, tenant: str | None) -> RerunResult:
        """Run a failed (or dead-lettered) step again; its workflow resumes from it."""
        reply = await RERUN_STEP.run_async(
            self.client,
            [self.keys.prefix, workflow_id, job_id, tenant or "", transition(Verb.RERUN).allowed],
        )
        return RerunResult(True) if int(reply[0]) else RerunResult(False, _text(reply[1]))

    async def cancel_workflow(
        self, workflow_id: str, tenant: str | None = None
    ) -> WorkflowCancelResult:
        """Cancel every step that has not finished; no step starts from now on."""
        reply = await CANCEL_WORKFLOW.run_async(
            self.client,
            [self.keys.prefix, workflow_id, tenant or "", transition(Verb.CANCEL).allowed],
        )
        if int(reply[0]) == 0:
            return WorkflowCancelResult(found=False)
        outcome, seconds = _text(reply[2]), _text(reply[3])
        ended = WorkflowEnd(WorkflowState(outcome), float(seconds)) if outcome else None
        return WorkflowCancelResult(
            found=True, previous_state=WorkflowState(_text(reply[1])),
            running_steps=tuple(_text(r) for r in reply[4:]), ended=ended,
        )  # fmt: skip


def accept_workflow_args(
    settings: Settings, plan: WorkflowPlan, limits: Limits, depths: dict[str, int]
) -> tuple[PreparedWorkflow, list[Any]]:
    """The workflow's records and messages, and ARGV of accept_workflow.lua for them."""
    jobs = settings.jobs
    now = time.time()
    prepared = prepare_workflow(
        plan, settings.worker, retention_seconds=jobs.retention_seconds,
        dead_letter_retention_seconds=jobs.dead_letter_retention_seconds, now=now,
    )  # fmt: skip
    args: list[Any] = [
        settings.key_prefix,
        orjson.dumps(prepared.record),
        prepared.request_hash,
        _calls.ms(now),
        repr(float(limits.rate_per_second)),
        limits.burst,
        orjson.dumps(depths),
        "1" if limits.weight == 1 else repr(float(limits.weight)),
        "" if limits.concurrency_per_tier is None else limits.concurrency_per_tier,
        limits.max_queued_per_tier,
        limits.max_bytes,
    ]
    for record, message in prepared.steps:
        args += [orjson.dumps(record), message]
    return prepared, args


def parse_accept(raw: Any, prepared: PreparedWorkflow) -> WorkflowAcceptResult:
    """Decode accept_workflow.lua's reply."""
    code = int(raw[0])
    if code == 1:
        return WorkflowAcceptResult(AcceptVerdict.CREATED, _text(raw[1]), tokens_left=int(raw[2]),
                                    workflow=_as_accepted(prepared))  # fmt: skip
    if code == 0:
        existing, _, existing_hash = _text(raw[1]).partition("\n")
        same = existing_hash == prepared.request_hash
        return WorkflowAcceptResult(
            AcceptVerdict.EXISTING if same else AcceptVerdict.CONFLICT, existing
        )
    if code == 2:
        return WorkflowAcceptResult(
            AcceptVerdict.RATE_LIMITED, retry_after_ms=int(raw[1]), over_burst=int(raw[2]) == 1
        )
    if code == 3:
        return WorkflowAcceptResult(AcceptVerdict.QUEUE_FULL, queue=_text(raw[1]))
    return WorkflowAcceptResult(
        AcceptVerdict.QUOTA_EXCEEDED, quota=Quota(_text(raw[1]), int(raw[2]))
    )


def _as_accepted(prepared: PreparedWorkflow) -> Workflow:
    """The workflow as just accepted, from what was written (no read back)."""
    record = {**prepared.record, "state": "running", "steps": str(len(prepared.steps)),
              "done": "0", "succeeded": "0", "failed": "0", "cancelled": "0"}  # fmt: skip
    summary = decode_summary([record.get(f) for f in WORKFLOW_FIELDS])
    assert summary is not None
    steps = [[step.get(f) for f in STEP_FIELDS] for step, _ in prepared.steps]
    return decode_workflow(summary, steps)


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
