"""One trace from the API request through the enqueue into the worker; job context in logs."""

import json
from pathlib import Path

import pytest

from tests.conftest import fresh_db
from tests.support.otlp import otlp_receiver
from tests.support.processes import TERMINAL, Platform, RedisServer, wait_for_job, wait_until

pytestmark = pytest.mark.slow


def test_api_and_worker_spans_share_a_trace_and_logs_carry_it(
    redis_server: RedisServer, log_dir: Path
) -> None:
    with otlp_receiver() as collector:
        platform = Platform(
            redis_server, fresh_db(redis_server), log_dir,
            # The standard OpenTelemetry variables, as a collector sidecar would be named.
            OTEL_EXPORTER_OTLP_ENDPOINT=collector.endpoint,
            OTEL_BSP_SCHEDULE_DELAY="200",
            CONVEYOR_LOG_FORMAT="json",
        )  # fmt: skip
        try:
            platform.start_api()
            worker = platform.start_worker("default")
            with platform.http() as client:
                job = client.post("/v1/jobs", json={"task": "demo.echo"}).json()
                assert wait_for_job(client, job["id"], TERMINAL)["state"] == "succeeded"

            def worker_span() -> object:
                return next((s for s in collector.spans if s.service == "conveyor-worker"
                             and "demo.echo" in s.name), None)  # fmt: skip

            run = wait_until(worker_span, 20, "the worker's span")
        finally:
            platform.stop()

    trace = [s for s in collector.spans if s.trace_id == run.trace_id]
    names = {(s.service, s.name) for s in trace}
    assert ("conveyor-api", "POST /v1/jobs") in names, names
    assert ("conveyor-api", "conveyor.enqueue") in names, names
    enqueue = next(s for s in trace if s.name == "conveyor.enqueue")
    assert run.parent_span_id == enqueue.span_id, "the worker span continues the enqueue"
    assert enqueue.attributes["conveyor.job_id"] == job["id"]
    assert any(s.service == "conveyor-api" and s.name == "EVALSHA" for s in trace), names

    lines = [json.loads(line) for line in worker.log().splitlines() if line.startswith("{")]
    during = [line for line in lines if line.get("job_id") == job["id"]]
    assert [line["message"] for line in during][:1] == ["job started (attempt 1)"]
    assert any(line["message"].startswith("job succeeded in") for line in during)
    for line in during:
        assert line["task"] == "demo.echo"
        assert line["queue"] == "default"
        assert line["trace_id"] == run.trace_id
