"""The audit stream's writes: entries appended by one script call per batch.

The API's audit writer (api/audit.py) gathers the entries of a moment and hands them here;
`GET /v1/audit` reads the stream back with XREVRANGE.
"""

from collections.abc import Sequence

import redis.asyncio

from conveyor.jobstore.keys import KeySpace
from conveyor.jobstore.scripts import AUDIT

# The stream entry's one field: the entry as JSON.
ENTRY_FIELD = "entry"


async def append_audit(
    client: "redis.asyncio.Redis", keys: KeySpace, cap: int, entries: Sequence[bytes]
) -> int:
    """Append `entries` (each one JSON text) to the audit stream in their order, trimming it
    to about `cap` entries; the number appended.

    One script call for the batch: a pipeline of one XADD per entry cost the API about 20 µs
    of CPU per entry in redis-py, the call about 3 (bench/README.md round 10).
    """
    return int(await AUDIT.run_async(client, [keys.prefix, cap, ENTRY_FIELD, *entries]))
