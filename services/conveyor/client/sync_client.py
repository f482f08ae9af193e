"""`Client`: the blocking Python client of the Conveyor API."""

import builtins
import time
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping
from types import TracebackType
from typing import Any, Self, TypeVar

import httpx
from httpx_sse import SSEError, connect_sse

from conveyor.client._base import (
    BATCH_SIZE,
    RETRIED_STATUSES,
    BatchOutcome,
    JobEvent,
    Options,
    Retrying,
    RetryPolicy,
    WorkflowEvent,
    batch_bodies,
    batch_outcomes,
    list_params,
    refused_in_batch,
    stream_timeout,
    submission_body,
    unreachable,
    workflow_body,
    workflow_list_params,
)
from conveyor.client.errors import ConveyorError, NotFound, TransportError, WaitTimeout, error_for
from conveyor.core.audit import AuditEntry
from conveyor.core.schedules import Schedule
from conveyor.jobstore.listing import ListedJob
from conveyor.jobstore.model import Job
from conveyor.jobstore.workflow_model import Workflow, WorkflowState, WorkflowSummary

EventT = TypeVar("EventT", JobEvent, WorkflowEvent)


class Client:
    """Submit, read, list, cancel and wait for jobs.

    Every request is safe to retry (submissions carry an idempotency key), so 429 and 503
    answers are retried after their Retry-After, and connection failures with backoff, up to
    `max_retries` times; other errors raise a typed `ApiError`. `on_retry` is told of each
    retry before its wait (a `Retrying`: what failed, why, and when the next try comes).
    """

    def __init__(
        self,
        base_url: str,
        api_key: str | None = None,
        *,
        timeout: float = 10.0,
        max_retries: int = 5,
        on_retry: Callable[[Retrying], None] | None = None,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.options = Options(
            base_url, api_key, timeout, RetryPolicy(max_retries=max_retries), on_retry
        )
        self._http = httpx.Client(
            base_url=base_url, headers=self.options.headers(), timeout=timeout, transport=transport
        )

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        """Close the connection pool."""
        self._http.close()

    def submit(
        self,
        task: str,
        args: Mapping[str, Any] | None = None,
        *,
        priority: str | None = None,
        idempotency_key: str | None = None,
        delay_seconds: float | None = None,
        max_retries: int | None = None,
        timeout_seconds: int | None = None,
        callback_url: str | None = None,
        concurrency_key: str | None = None,
        unique: Mapping[str, Any] | None = None,
    ) -> Job:
        """Submit a job; returns it as accepted, or the job answering for it (a replayed
        idempotency key, or `unique`: `{"mode": "queued"|"active"|"ttl"|"debounce", "key"?,
        "ttl_seconds"?}`).
        """
        body = submission_body(
            task,
            args,
            priority=priority,
            idempotency_key=idempotency_key,
            delay_seconds=delay_seconds,
            max_retries=max_retries,
            timeout_seconds=timeout_seconds,
            callback_url=callback_url,
            concurrency_key=concurrency_key,
            unique=unique,
        )
        return Job.model_validate(self._request("POST", "/v1/jobs", json=body).json())

    def submit_many(self, submissions: Iterable[Mapping[str, Any]]) -> builtins.list[BatchOutcome]:
        """Submit many jobs in batches (POST /v1/jobs/batch), each accepted or refused on its
        own; returns each one's outcome in order. Each submission is a POST /v1/jobs body
        (`task`, `args`, `priority`, ...), given an idempotency key unless it has one, so
        submissions refused for a moment (429, 503) are retried without ever duplicating.
        """
        items = batch_bodies(builtins.list(submissions))
        outcomes: builtins.list[BatchOutcome | None] = [None] * len(items)
        todo = builtins.list(range(len(items)))
        policy = self.options.retry
        for attempt in range(policy.max_retries + 1):
            retry: builtins.list[int] = []
            for start in range(0, len(todo), BATCH_SIZE):
                chunk = todo[start : start + BATCH_SIZE]
                body = {"jobs": [items[i] for i in chunk]}
                response = self._request("POST", "/v1/jobs/batch", json=body)
                for index, outcome in zip(chunk, batch_outcomes(response.json()), strict=True):
                    outcomes[index] = outcome
                    if outcome.status in RETRIED_STATUSES:
                        retry.append(index)
            if not retry or attempt == policy.max_retries:
                break
            what, reason = (
                f"{len(retry)} submission(s) of a batch",
                refused_in_batch(outcomes, retry),
            )
            delay = policy.delay(attempt + 1, None)
            self.options.retrying(what, reason, attempt + 1, delay)
            time.sleep(delay)
            todo = retry
        return [outcome for outcome in outcomes if outcome is not None]

    def get(self, job_id: str) -> Job:
        """The job now."""
        return Job.model_validate(self._request("GET", f"/v1/jobs/{job_id}").json())

    def list(
        self,
        *,
        state: str | None = None,
        task: str | None = None,
        queue: str | None = None,
        tenant: str | None = None,
        page_size: int = 100,
        fields: Collection[str] = (),
    ) -> Iterator[ListedJob]:
        """Jobs newest first, fetching page after page as the iteration goes: summaries, plus
        `fields` ("args", "result") when asked for.
        """
        params = list_params(state, task, queue, tenant, page_size, fields)
        while True:
            page = self._request("GET", "/v1/jobs", params=params).json()
            for item in page["items"]:
                yield ListedJob.model_validate(item)
            if not page.get("next_cursor"):
                return
            params = {**params, "cursor": page["next_cursor"]}

    def cancel(self, job_id: str, *, terminate: bool = False) -> Job:
        """Cancel a job that has not finished (`terminate` kills a running one at once)."""
        params = {"terminate": "true"} if terminate else {}
        return Job.model_validate(
            self._request("POST", f"/v1/jobs/{job_id}/cancel", params=params).json()
        )

    def pause(self, kind: str, name: str) -> bool:
        """Pause a tier, task or tenant (admin); True when it was not paused yet."""
        return self._request("PUT", f"/v1/admin/pauses/{kind}/{name}").status_code == 201

    def resume(self, kind: str, name: str) -> None:
        """Resume a paused tier, task or tenant (admin); NotFound when it was not paused."""
        self._request("DELETE", f"/v1/admin/pauses/{kind}/{name}")

    def paused(self) -> builtins.list[tuple[str, str]]:
        """What is paused, as (kind, name) pairs (admin)."""
        items = self._request("GET", "/v1/admin/pauses").json()["paused"]
        return [(item["kind"], item["name"]) for item in items]

    def retry(self, job_id: str) -> Job:
        """Run a failed job again, as a new attempt of the same job."""
        return Job.model_validate(self._request("POST", f"/v1/jobs/{job_id}/retry").json())

    def create_schedule(
        self, schedule: Mapping[str, Any], *, tenant: str | None = None
    ) -> Schedule:
        """Create a schedule (`POST /v1/schedules`'s body; `tenant`: another's, admin)."""
        params = {"tenant": tenant} if tenant else {}
        response = self._request("POST", "/v1/schedules", json=dict(schedule), params=params)
        return Schedule.model_validate(response.json())

    def schedules(self, *, tenant: str | None = None) -> builtins.list[Schedule]:
        """The caller's schedules (an admin's: every tenant's, or `tenant`'s)."""
        params = {"tenant": tenant} if tenant else {}
        items = self._request("GET", "/v1/schedules", params=params).json()["items"]
        return [Schedule.model_validate(item) for item in items]

    def get_schedule(self, schedule_id: str) -> Schedule:
        """One schedule, with its next run times and its last run."""
        return Schedule.model_validate(self._request("GET", f"/v1/schedules/{schedule_id}").json())

    def update_schedule(
        self, schedule_id: str, changes: Mapping[str, Any], *, version: int | None = None
    ) -> Schedule:
        """Change the given fields (`version`: refused with a 412 if it changed meanwhile)."""
        headers = {"If-Match": str(version)} if version is not None else {}
        path = f"/v1/schedules/{schedule_id}"
        response = self._request("PATCH", path, json=dict(changes), headers=headers)
        return Schedule.model_validate(response.json())

    def pause_schedule(self, schedule_id: str) -> Schedule:
        """No runs until resumed."""
        path = f"/v1/schedules/{schedule_id}/pause"
        return Schedule.model_validate(self._request("POST", path).json())

    def resume_schedule(self, schedule_id: str) -> Schedule:
        """Runs again from the next tick after now."""
        path = f"/v1/schedules/{schedule_id}/resume"
        return Schedule.model_validate(self._request("POST", path).json())

    def trigger_schedule(self, schedule_id: str) -> dict[str, str | None]:
        """Start one run now: `{"job_id": …}` or `{"workflow_id": …}`."""
        run: dict[str, str | None] = self._request(
            "POST", f"/v1/schedules/{schedule_id}/trigger"
        ).json()
        return run

    def delete_schedule(self, schedule_id: str) -> None:
        """No more runs."""
        self._request("DELETE", f"/v1/schedules/{schedule_id}")

    def audit(self, *, tenant: str | None = None, page_size: int = 100) -> Iterator[AuditEntry]:
        """The audit log newest first, page after page as the iteration goes (admin)."""
        params: dict[str, Any] = {"limit": page_size, **({"tenant": tenant} if tenant else {})}
        while True:
            page = self._request("GET", "/v1/audit", params=params).json()
            for item in page["items"]:
                yield AuditEntry.model_validate(item)
            if not page.get("next_cursor"):
                return
            params = {**params, "cursor": page["next_cursor"]}

    def tasks(self) -> builtins.list[dict[str, Any]]:
        """The task catalogue, with each task's argument schema."""
        tasks: builtins.list[dict[str, Any]] = self._request("GET", "/v1/tasks").json()
        return tasks

    def events(self, job_id: str, *, last_event_id: str | None = None) -> Iterator[JobEvent]:
        """The job's events until it finishes: a `job` snapshot, `state` and `progress`
        changes, and a final `job`. A dropped connection is resumed where it left off.
        """
        return self._events(job_id, last_event_id, deadline=None)

    def wait(
        self,
        job_id: str,
        *,
        timeout: float | None = None,
        on_event: Callable[[JobEvent], None] | None = None,
        poll_interval: float = 1.0,
    ) -> Job:
        """Block until the job finishes; returns it with its result or error.

        Follows the event stream (calling `on_event` for each event) and falls back to
        polling when the stream is unavailable (a proxy that buffers it, an older server).
        Raises WaitTimeout after `timeout` seconds.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        try:
            for event in self._events(job_id, None, deadline):
                if on_event is not None:
                    on_event(event)
                if event.is_terminal:
                    return event.job()
        except (NotFound, WaitTimeout):
            raise
        except ConveyorError:
            pass  # the stream failed: poll instead
        while True:
            job = self.get(job_id)
            if job.state.is_terminal:
                return job
            if deadline is not None and time.monotonic() > deadline:
                raise WaitTimeout(job_id)
            time.sleep(poll_interval)

    def submit_workflow(self, workflow: Mapping[str, Any]) -> Workflow:
        """Submit a workflow (the POST /v1/workflows body: `steps`, `chain` or `chord`, and
        `failure_policy`, `name`, `idempotency_key`); returns it as accepted (or as it is,
        for a replay of its idempotency key, which every submission carries).
        """
        response = self._request("POST", "/v1/workflows", json=workflow_body(workflow))
        return Workflow.model_validate(response.json())

    def get_workflow(self, workflow_id: str) -> Workflow:
        """The workflow now, with every step."""
        response = self._request("GET", f"/v1/workflows/{workflow_id}")
        return Workflow.model_validate(response.json())

    def list_workflows(
        self, *, state: str | None = None, tenant: str | None = None, page_size: int = 100
    ) -> Iterator[WorkflowSummary]:
        """Workflows newest first, page after page as the iteration goes."""
        params = workflow_list_params(state, tenant, page_size)
        while True:
            page = (self._request("GET", "/v1/workflows", params=params)).json()
            for item in page["items"]:
                yield WorkflowSummary.model_validate(item)
            if not page.get("next_cursor"):
                return
            params = {**params, "cursor": page["next_cursor"]}

    def cancel_workflow(self, workflow_id: str, *, terminate: bool = False) -> Workflow:
        """Cancel every step that has not finished (`terminate` kills running ones)."""
        params = {"terminate": "true"} if terminate else {}
        path = f"/v1/workflows/{workflow_id}/cancel"
        return Workflow.model_validate((self._request("POST", path, params=params)).json())

    def rerun_step(self, workflow_id: str, step: str) -> Workflow:
        """Run a failed or dead-lettered step again; the workflow resumes from it."""
        path = f"/v1/workflows/{workflow_id}/steps/{step}/rerun"
        return Workflow.model_validate((self._request("POST", path)).json())

    def workflow_events(
        self, workflow_id: str, *, last_event_id: str | None = None
    ) -> Iterator[WorkflowEvent]:
        """The workflow's events until it ends: a `workflow` snapshot, each step's changes
        (`step`, `progress`), and a final `workflow`. A dropped connection is resumed.
        """
        return self._stream(f"/v1/workflows/{workflow_id}/events", f"workflow {workflow_id}",
                            workflow_id, last_event_id, None, WorkflowEvent)  # fmt: skip

    def wait_workflow(
        self,
        workflow_id: str,
        *,
        timeout: float | None = None,
        on_event: Callable[[WorkflowEvent], None] | None = None,
        poll_interval: float = 1.0,
    ) -> Workflow:
        """Block until the workflow ends; returns it with every step's result or error.
        Follows its event stream (calling `on_event` for each event), polling when the
        stream is unavailable. Raises WaitTimeout after `timeout` seconds.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        path = f"/v1/workflows/{workflow_id}/events"
        try:
            for event in self._stream(path, f"workflow {workflow_id}", workflow_id, None,
                                         deadline, WorkflowEvent):  # fmt: skip
                if on_event is not None:
                    on_event(event)
                if event.is_terminal:
                    return event.workflow()
        except (NotFound, WaitTimeout):
            raise
        except ConveyorError:
            pass  # the stream failed: poll instead
        while True:
            workflow = self.get_workflow(workflow_id)
            if workflow.state is not WorkflowState.RUNNING:
                return workflow
            if deadline is not None and time.monotonic() > deadline:
                raise WaitTimeout(workflow_id)
            time.sleep(poll_interval)

    def _events(
        self, job_id: str, last_event_id: str | None, deadline: float | None
    ) -> Iterator[JobEvent]:
        return self._stream(f"/v1/jobs/{job_id}/events", f"job {job_id}", job_id,
                            last_event_id, deadline, JobEvent)  # fmt: skip

    def _stream(
        self,
        path: str,
        what: str,
        resource_id: str,
        last_event_id: str | None,
        deadline: float | None,
        make: Callable[[str, str, dict[str, Any]], EventT],
    ) -> Iterator[EventT]:
        job_id = resource_id
        failures = 0
        while True:
            headers = {"Last-Event-ID": last_event_id} if last_event_id else {}
            try:
                with connect_sse(
                    self._http,
                    "GET",
                    path,
                    headers=headers,
                    timeout=stream_timeout(self.options.timeout, deadline, job_id),
                ) as source:
                    if source.response.status_code != 200:
                        source.response.read()
                        raise error_for(source.response)
                    for sse in source.iter_sse():
                        if not sse.data:
                            continue  # a keep-alive comment, not an event
                        event = make(sse.id, sse.event, sse.json())
                        last_event_id, failures = event.id, 0
                        yield event
                        if event.is_terminal:
                            return
                        stream_timeout(self.options.timeout, deadline, job_id)
            except (httpx.TransportError, SSEError) as exc:
                stream_timeout(self.options.timeout, deadline, job_id)  # past it: WaitTimeout
                failures += 1
                if failures > self.options.retry.max_retries:
                    raise TransportError(self._unreachable(f"event stream of {what}", exc)) from exc
                delay = self.options.retry.delay(failures, None)
                self.options.retrying(f"event stream of {what}", exc, failures, delay)
                time.sleep(delay)
            # The server closes streams after a while: reconnecting resumes them.

    def _unreachable(self, what: str, exc: Exception) -> str:
        return unreachable(self.options.base_url, what, exc)

    def _request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        policy = self.options.retry
        attempt = 0
        while True:
            attempt += 1
            try:
                response = self._http.request(method, path, **kwargs)
            except httpx.TransportError as exc:
                if attempt > policy.max_retries:
                    raise TransportError(self._unreachable(f"{method} {path}", exc)) from exc
                delay = policy.delay(attempt, None)
                self.options.retrying(f"{method} {path}", exc, attempt, delay)
                time.sleep(delay)
                continue
            if response.status_code in RETRIED_STATUSES and attempt <= policy.max_retries:
                delay = policy.delay(attempt, response)
                self.options.retrying(f"{method} {path}", response, attempt, delay)
                time.sleep(delay)
                continue
            if response.is_error:
                raise error_for(response)
            return response
