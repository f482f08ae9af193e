"""A job's Celery message is written from a cached template of its envelope (`messages.py`):
the bytes must be exactly those of the envelope serialized whole, whatever the values."""

import base64

import orjson
from hypothesis import given, settings
from hypothesis import strategies as st

from conveyor.core import messages
from conveyor.core.queues import Queue

JSON_LEAVES = st.none() | st.booleans() | st.integers(-(2**63), 2**63) | st.text()
JSON_LEAVES |= st.floats(allow_nan=False, allow_infinity=False)
JSON = st.recursive(
    JSON_LEAVES,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(), inner, max_size=3),
    max_leaves=10,
)
# Names that break a naive template: a `%`, the stand-ins' own NUL and text, our header names.
AWKWARD = st.sampled_from(["%", "%b", "%%", "\x00id\x00", "\x00tag\x00", "id", "root_id", "é"])
TEXT = st.text() | AWKWARD | st.builds(lambda a, b: a + b, st.text(), AWKWARD)
OPTIONAL_NUMBER = st.none() | st.floats(allow_nan=False, allow_infinity=False)
TRACE = st.dictionaries(TEXT, st.text(), max_size=3) | st.just({})


@settings(max_examples=300, deadline=None)
@given(
    job_id=TEXT, task=TEXT, queue=st.sampled_from(list(Queue)), kwargs=st.dictionaries(
        st.text(), JSON, max_size=4), retries=st.integers(0, 100), max_retries=st.integers(0, 100),
    generation=st.integers(0, 100), soft=OPTIONAL_NUMBER, hard=OPTIONAL_NUMBER,
    enqueued_at=st.floats(0, 2e9), due_at=OPTIONAL_NUMBER, trace=TRACE, tenant=TEXT,
    task_limit=st.none() | st.integers(1, 100), key=st.none() | TEXT,
    key_limit=st.none() | st.integers(1, 100),
)  # fmt: skip
def test_a_message_is_its_envelope_serialized(
    job_id: str, task: str, queue: Queue, kwargs: dict[str, object], retries: int,
    max_retries: int, generation: int, soft: float | None, hard: float | None,
    enqueued_at: float, due_at: float | None, trace: dict[str, str], tenant: str,
    task_limit: int | None, key: str | None, key_limit: int | None,
) -> None:  # fmt: skip
    built = messages.build_message(
        job_id=job_id, task=task, queue=queue, kwargs=kwargs, retries=retries,
        max_retries=max_retries, generation=generation, soft_time_limit=soft,
        time_limit=hard, enqueued_at=enqueued_at, due_at=due_at, trace_context=trace,
        tenant=tenant, task_limit=task_limit, concurrency_key=key, key_limit=key_limit,
    )  # fmt: skip
    envelope = orjson.loads(built)
    body = orjson.loads(base64.b64decode(envelope["body"]))
    whole = messages._envelope(
        envelope["body"], job_id, task, queue, retries, max_retries, generation, soft, hard,
        enqueued_at, due_at, trace, tenant, task_limit, key, key_limit,
        envelope["properties"]["delivery_tag"],
    )  # fmt: skip
    assert built == orjson.dumps(whole)
    assert body == [[], kwargs, {"callbacks": None, "errbacks": None, "chain": None,
                                 "chord": None}]  # fmt: skip


def test_the_common_message_comes_from_a_template() -> None:
    """The fast path is taken (a template exists) for an ordinary job, and the awkward
    values fall back to the envelope serialized whole."""
    assert messages._template("demo.echo", Queue.DEFAULT, 0, 3, 0, 30.0, 40.0, "team-a",
                              2, "cust-1", 1) is not None  # fmt: skip
    assert messages._template("demo.echo", Queue.DEFAULT, 0, 3, 0, None, None, "\x00id\x00",
                              None, None, None) is None  # fmt: skip
