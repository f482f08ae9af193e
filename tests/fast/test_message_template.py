"""A job's Celery message is written from a cached template of its envelope (`messages.py`):
the bytes must be exactly those of the envelope serialized whole, whatever the values."""

import base64
from types import MappingProxyType
from typing import Any

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
    numbers = orjson.dumps((0, 3, 0, 30.0, 40.0, 2, 1))
    assert messages._template("demo.echo", Queue.DEFAULT, numbers) is not None
    assert messages._template("\x00id\x00", Queue.DEFAULT, numbers) is None


def _reference(built: bytes, **values: Any) -> bytes:
    """The whole envelope of `values`, with the delivery tag `built` drew."""
    envelope = orjson.loads(built)
    return orjson.dumps(
        messages._envelope(
            envelope["body"], values["job_id"], values["task"], values["queue"],
            values.get("retries", 0), values["max_retries"], values.get("generation", 0),
            values.get("soft_time_limit"), values.get("time_limit"), values["enqueued_at"],
            values.get("due_at"), values.get("trace_context") or {}, values.get("tenant", ""),
            values.get("task_limit"), values.get("concurrency_key"), values.get("key_limit"),
            envelope["properties"]["delivery_tag"],
        )
    )  # fmt: skip


def test_equal_numbers_written_differently_get_their_own_bytes() -> None:
    """30 and 30.0, 0.0 and -0.0, 1 and True are equal keys to a cache: each message must
    still be written with its own values (the template once took the first one's)."""
    base = {"job_id": "j", "task": "t.numbers", "queue": Queue.DEFAULT, "kwargs": {},
            "max_retries": 3, "enqueued_at": 1.5}  # fmt: skip
    for first, second in (({"soft_time_limit": 30, "time_limit": 40},
                           {"soft_time_limit": 30.0, "time_limit": 40.0}),
                          ({"soft_time_limit": 0.0}, {"soft_time_limit": -0.0}),
                          ({"task_limit": 1}, {"task_limit": True})):  # fmt: skip
        for values in (first, second):
            built = messages.build_message(**base, **values)
            assert built == _reference(built, **base, **values), values


def test_a_trace_context_may_be_any_mapping() -> None:
    values = {
        "job_id": "j",
        "task": "t",
        "queue": Queue.HIGH,
        "kwargs": {},
        "max_retries": 0,
        "enqueued_at": 2.0,
        "trace_context": MappingProxyType({"traceparent": "00-a"}),
    }
    built = messages.build_message(**values)  # type: ignore[arg-type]
    assert built == _reference(built, **values)
    assert orjson.loads(built)["headers"]["traceparent"] == "00-a"


def test_templates_do_not_multiply_with_tenants_or_concurrency_keys() -> None:
    """A tenant and a concurrency key are a message's own values: one template serves every
    one of them (a key per customer would otherwise evict the others' templates)."""
    messages._template.cache_clear()
    for n in range(50):
        messages.build_message(job_id=f"j{n}", task="t.keys", queue=Queue.LOW, kwargs={},
                               max_retries=1, enqueued_at=3.0, tenant=f"tenant-{n}",
                               concurrency_key=f"customer-{n}", key_limit=1)  # fmt: skip
    assert messages._template.cache_info().currsize == 1
