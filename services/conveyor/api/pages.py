"""What both listings (jobs, dead letters) share: their query parameters, the page they
answer with, and the problem for a cursor this API did not issue.
"""

from typing import Annotated

import orjson
from fastapi import Query, Response

from conveyor.api.problems import ProblemError
from conveyor.jobstore.listing import listed_json
from conveyor.jobstore.results import Page

Limit = Annotated[int, Query(ge=1, le=500)]
Cursor = Annotated[str | None, Query(max_length=300, pattern=r"^[A-Za-z0-9_-]+$")]

# A listing returns summaries; `fields` adds the heavy ones (a page then ends early once they
# pass CONVEYOR_API__LISTING_MAX_BYTES, with a cursor to go on).
ListingFields = Annotated[
    str | None,
    Query(
        pattern=r"^(args|result)(,(args|result))?$",
        description="Also return these fields of each job (`args`, `result` or `args,result`); "
        "a page then stops early once they reach the listing byte limit.",
    ),
]


def listing_fields(fields: str | None) -> frozenset[str]:
    """The `fields` parameter as a set of field names."""
    return frozenset(fields.split(",")) if fields else frozenset()


def page_response(page: Page, response: Response) -> Response:
    """A listing's page as JSON: each job without the heavy fields it was not asked for
    (absent, not null), with the headers the route's dependencies set (the rate limit's).
    """
    body = {"items": [listed_json(job) for job in page.jobs], "next_cursor": page.next_cursor}
    return Response(
        orjson.dumps(body), headers=dict(response.headers), media_type="application/json"
    )


def invalid_cursor() -> ProblemError:
    """The 422 for a listing cursor this API did not issue (any listing)."""
    return ProblemError(
        422,
        "Invalid cursor",
        "The cursor is not one this API issued for this listing; pass the `next_cursor` of "
        "the previous page unchanged, or list from the start without one.",
        slug="invalid-cursor",
        errors=[{"pointer": "#/query/cursor", "detail": "Not a cursor of this listing"}],
    )
