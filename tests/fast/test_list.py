"""GET /v1/jobs in process: newest first, filters, cursor pagination, from the Redis indexes
(formerly tests/test_listing.py, against a real API process)."""

import asyncio

import httpx
import pytest
import redis

from tests.fast.harness import KEYS, InProcessWorker


@pytest.fixture
async def seeded(client: httpx.AsyncClient) -> dict[str, list[str]]:
    """25 echo jobs (default queue), 5 sleep jobs (low), 3 echo jobs on high, 4 cancelled."""
    ids: dict[str, list[str]] = {"echo": [], "sleep": [], "high": [], "cancelled": []}

    async def submit(body: dict[str, object]) -> str:
        response = await client.post("/v1/jobs", json=body)
        assert response.status_code == 202, response.text
        job_id: str = response.json()["id"]
        # A millisecond of its own: listings order by creation time, ties by id.
        await asyncio.sleep(0.002)
        return job_id

    for i in range(25):
        ids["echo"].append(await submit({"task": "demo.echo", "args": {"payload": i}}))
    for _ in range(5):
        ids["sleep"].append(await submit({"task": "demo.sleep", "args": {"seconds": 1}}))
    for _ in range(3):
        ids["high"].append(await submit({"task": "demo.echo", "priority": "high"}))
    for job_id in ids["echo"][:4]:
        (await client.post(f"/v1/jobs/{job_id}/cancel")).raise_for_status()
        ids["cancelled"].append(job_id)
    return ids


async def all_pages(client: httpx.AsyncClient, **params: object) -> list[list[str]]:
    pages: list[list[str]] = []
    cursor = None
    while True:
        query = {**params, **({"cursor": cursor} if cursor else {})}
        body = (await client.get("/v1/jobs", params=query)).json()
        pages.append([job["id"] for job in body["items"]])
        cursor = body["next_cursor"]
        if cursor is None:
            return pages
        assert len(pages) < 50, "pagination does not terminate"


async def test_pages_cover_every_job_once_newest_first(
    client: httpx.AsyncClient, seeded: dict[str, list[str]]
) -> None:
    pages = await all_pages(client, limit=10)
    flat = [job_id for page in pages for job_id in page]
    assert [len(p) for p in pages] == [10, 10, 10, 3]
    expected = seeded["echo"] + seeded["sleep"] + seeded["high"]
    assert flat == list(reversed(expected))


async def test_filter_by_task(client: httpx.AsyncClient, seeded: dict[str, list[str]]) -> None:
    pages = await all_pages(client, task="demo.sleep", limit=2)
    assert [j for p in pages for j in p] == list(reversed(seeded["sleep"]))


async def test_filter_by_state_and_queue_together(
    client: httpx.AsyncClient, seeded: dict[str, list[str]]
) -> None:
    cancelled = await all_pages(client, state="cancelled", queue="default", limit=3)
    queued_high = await all_pages(client, state="queued", queue="high")
    assert [j for p in cancelled for j in p] == list(reversed(seeded["cancelled"]))
    assert [j for p in queued_high for j in p] == list(reversed(seeded["high"]))


async def test_filter_combination_with_no_match(
    client: httpx.AsyncClient, seeded: dict[str, list[str]]
) -> None:
    response = await client.get("/v1/jobs", params={"task": "demo.sleep", "queue": "high"})
    assert response.json() == {"items": [], "next_cursor": None}


async def test_expired_records_drop_out_of_the_listing(
    client: httpx.AsyncClient, seeded: dict[str, list[str]], redis_client: "redis.Redis"
) -> None:
    gone = seeded["sleep"][0]
    redis_client.delete(KEYS.job(gone))
    pages = await all_pages(client, task="demo.sleep")
    assert gone not in [j for p in pages for j in p]
    assert redis_client.zscore(KEYS.index_task("demo.sleep"), gone) is None


@pytest.mark.parametrize(
    "params", [{"limit": 0}, {"limit": 501}, {"state": "bogus"}, {"cursor": "%%%"}]
)
async def test_bad_listing_parameters(client: httpx.AsyncClient, params: dict[str, object]) -> None:
    response = await client.get("/v1/jobs", params=params)
    assert response.status_code == 422
    assert response.headers["content-type"] == "application/problem+json"


async def test_listing_shows_finished_states(
    client: httpx.AsyncClient, worker: InProcessWorker
) -> None:
    job = (await client.post("/v1/jobs", json={"task": "demo.fail"})).json()
    worker.run_next("default")
    failed = await client.get("/v1/jobs", params={"state": "failed", "task": "demo.fail"})
    assert job["id"] in [j["id"] for j in failed.json()["items"]]
    queued = await client.get("/v1/jobs", params={"state": "queued", "task": "demo.fail"})
    assert job["id"] not in [j["id"] for j in queued.json()["items"]]


@pytest.mark.parametrize("path", ["/v1/jobs", "/v1/dead-letters"])
async def test_a_cursor_this_api_never_issued_is_explained_with_a_pointer(
    client: httpx.AsyncClient, path: str
) -> None:
    from tests.fast.harness import problem

    body = problem(await client.get(path, params={"cursor": "bm90LWEtY3Vyc29y"}), 422)
    assert body["type"].endswith("invalid-cursor")
    assert "next_cursor" in body["detail"]
    assert body["errors"] == [
        {"pointer": "#/query/cursor", "detail": "Not a cursor of this listing"}
    ]


async def test_a_job_its_state_index_lost_still_moves_with_its_creation_score(
    client: httpx.AsyncClient, redis_client: "redis.Redis"
) -> None:
    """A change of state keeps the job's creation score, and lists the job under its new
    state, even when the index of the state it leaves had lost it."""
    kept = (await client.post("/v1/jobs", json={"task": "demo.echo"})).json()["id"]
    lost = (await client.post("/v1/jobs", json={"task": "demo.echo"})).json()["id"]
    redis_client.zrem(KEYS.index_state("queued"), lost)
    for job_id in (kept, lost):
        (await client.post(f"/v1/jobs/{job_id}/cancel")).raise_for_status()
        created = redis_client.zscore(KEYS.index_queue("default"), job_id)
        assert created is not None
        assert redis_client.zscore(KEYS.index_state("cancelled"), job_id) == created
        assert redis_client.zscore(KEYS.index_state("queued"), job_id) is None
