"""The API's request metrics: every request counted and timed once, by method, route template
and status, with labels the client cannot multiply.
"""

from tests.fast.harness import InProcessApi, delta, samples

ECHO = {"task": "demo.echo", "args": {}}


async def test_each_request_is_counted_and_timed_by_its_labels(api: InProcessApi) -> None:
    metrics = api.state.metrics
    counted_before = samples(metrics.requests, "_total")
    timed_before = samples(metrics.latency, "_count")
    async with api.client() as client:
        for _ in range(3):
            assert (await client.post("/v1/jobs", json=ECHO)).status_code == 202
        assert (await client.post("/v1/jobs", json={"task": "nope"})).status_code == 422
        assert (await client.get("/v1/jobs/not-a-job")).status_code == 404
    counted = delta(samples(metrics.requests, "_total"), counted_before)
    assert counted[("POST", "/v1/jobs", "202")] == 3
    assert counted[("POST", "/v1/jobs", "422")] == 1
    assert counted[("GET", "/v1/jobs/{job_id}", "404")] == 1
    timed = delta(samples(metrics.latency, "_count"), timed_before)
    assert timed[("POST", "/v1/jobs")] == 4
    assert timed[("GET", "/v1/jobs/{job_id}")] == 1


async def test_methods_a_client_invents_share_one_label(api: InProcessApi) -> None:
    """Each method token a client sends would otherwise be a new series."""
    before = samples(api.state.metrics.requests, "_total")
    async with api.client() as client:
        for n in range(5):
            await client.request(f"BREW{n}", "/v1/nowhere")
        await client.request("PROPFIND", "/v1/jobs")
    methods = {labels[0] for labels in samples(api.state.metrics.requests, "_total")}
    assert "other" in methods
    assert not any(m.startswith("BREW") or m == "PROPFIND" for m in methods)
    counted = delta(samples(api.state.metrics.requests, "_total"), before)
    assert sum(v for labels, v in counted.items() if labels[0] == "other") == 6
