"""GET /v1/jobs: newest first, filters, cursor pagination, from the Redis indexes."""

import httpx
import pytest

from tests.support.processes import Platform


@pytest.fixture(scope="module")
def seeded(api_only: Platform) -> dict[str, list[str]]:
    """25 echo jobs (default queue), 5 sleep jobs (low), 3 echo jobs on high, 4 cancelled."""
    ids: dict[str, list[str]] = {"echo": [], "sleep": [], "high": [], "cancelled": []}
    with api_only.http() as client:
        for i in range(25):
            ids["echo"].append(
                client.post("/v1/jobs", json={"task": "demo.echo", "args": {"payload": i}}).json()[
                    "id"
                ]
            )
        for _ in range(5):
            ids["sleep"].append(
                client.post("/v1/jobs", json={"task": "demo.sleep", "args": {"seconds": 1}}).json()[
                    "id"
                ]
            )
        for _ in range(3):
            ids["high"].append(
                client.post("/v1/jobs", json={"task": "demo.echo", "priority": "high"}).json()["id"]
            )
        for job_id in ids["echo"][:4]:
            client.post(f"/v1/jobs/{job_id}/cancel").raise_for_status()
            ids["cancelled"].append(job_id)
    return ids


def all_pages(client: httpx.Client, **params: object) -> list[list[str]]:
    pages, cursor = [], None
    while True:
        query = {**params, **({"cursor": cursor} if cursor else {})}
        body = client.get("/v1/jobs", params=query).json()
        pages.append([job["id"] for job in body["items"]])
        cursor = body["next_cursor"]
        if cursor is None:
            return pages
        assert len(pages) < 50, "pagination does not terminate"


def test_pages_cover_every_job_once_newest_first(
    api_only: Platform, seeded: dict[str, list[str]]
) -> None:
    with api_only.http() as client:
        pages = all_pages(client, limit=10)
    flat = [job_id for page in pages for job_id in page]
    assert [len(p) for p in pages] == [10, 10, 10, 3]
    expected = seeded["echo"] + seeded["sleep"] + seeded["high"]
    assert flat == list(reversed(expected))


def test_filter_by_task(api_only: Platform, seeded: dict[str, list[str]]) -> None:
    with api_only.http() as client:
        pages = all_pages(client, task="demo.sleep", limit=2)
    assert [j for p in pages for j in p] == list(reversed(seeded["sleep"]))


def test_filter_by_state_and_queue_together(
    api_only: Platform, seeded: dict[str, list[str]]
) -> None:
    with api_only.http() as client:
        cancelled = all_pages(client, state="cancelled", queue="default", limit=3)
        queued_high = all_pages(client, state="queued", queue="high")
    assert [j for p in cancelled for j in p] == list(reversed(seeded["cancelled"]))
    assert [j for p in queued_high for j in p] == list(reversed(seeded["high"]))


def test_filter_combination_with_no_match(api_only: Platform, seeded: dict[str, list[str]]) -> None:
    with api_only.http() as client:
        body = client.get("/v1/jobs", params={"task": "demo.sleep", "queue": "high"}).json()
    assert body == {"items": [], "next_cursor": None}


def test_expired_records_drop_out_of_the_listing(
    api_only: Platform, seeded: dict[str, list[str]]
) -> None:
    gone = seeded["sleep"][0]
    api_only.redis.delete(f"conveyor:job:{gone}")
    with api_only.http() as client:
        pages = all_pages(client, task="demo.sleep")
    assert gone not in [j for p in pages for j in p]
    assert api_only.redis.zscore("conveyor:index:task:demo.sleep", gone) is None


@pytest.mark.parametrize(
    "params", [{"limit": 0}, {"limit": 501}, {"state": "bogus"}, {"cursor": "%%%"}]
)
def test_bad_listing_parameters(api_only: Platform, params: dict[str, object]) -> None:
    with api_only.http() as client:
        response = client.get("/v1/jobs", params=params)
    assert response.status_code == 422
    assert response.headers["content-type"] == "application/problem+json"
