"""The job store's single sources, checked against the code and a real Redis: key names
(`jobstore.keys`) and the state machine (`jobstore.machine`)."""

import asyncio
import re
import time
from pathlib import Path

import orjson
import pytest
import redis

from conveyor.core.catalog import load_catalog
from conveyor.core.queues import Queue
from conveyor.core.settings import Settings
from conveyor.jobstore import machine
from conveyor.jobstore.aio import AsyncJobStore
from conveyor.jobstore.keys import (
    NAMES,
    TEMPLATES,
    KeySpace,
    key_gate,
    lua_prelude,
    paused_member,
    quota_queued,
    task_gate,
)
from conveyor.jobstore.machine import TRANSITIONS, Verb
from conveyor.jobstore.model import RECORD_HEAD, JobState
from conveyor.jobstore.runs import StartVerdict
from conveyor.jobstore.scripts import JOB_SCRIPTS, script_text
from conveyor.jobstore.store import JobStore
from conveyor.jobstore.submission import Submission, prepare
from tests.support.processes import REPO, RedisServer

SETTINGS = Settings()
# Lua string literals and comments (a comment's apostrophes open no string).
LUA_TOKEN = re.compile(r"'(?:[^'\\\n]|\\.)*'|\"(?:[^\"\\\n]|\\.)*\"|--[^\n]*")


def lua_strings(source: str) -> list[str]:
    """The string literals of a Lua source, comments left out."""
    return [t[1:-1] for t in LUA_TOKEN.findall(source) if not t.startswith("--")]


# Non-key string literals the scripts use (Redis commands' words, record fields, states...):
# a key-shaped literal has a ':' in it, which none of these have.
KEY_SHAPED = re.compile(r":")


@pytest.fixture
def store(redis_server: RedisServer, redis_db: int) -> JobStore:
    return JobStore(redis_server.client(redis_db), SETTINGS)


def submit(store: JobStore, **extra: object) -> str:
    spec = load_catalog([])["demo.echo"]
    submission = Submission.of(spec, tenant="t1", args={"payload": 1}, **extra)  # type: ignore[arg-type]
    return store.submit(spec, submission).job_id


# -- key names: one source ------------------------------------------------------------------


@pytest.mark.parametrize("name", [*JOB_SCRIPTS, "_lib", "_workflow"])
def test_no_script_spells_a_key_name_of_its_own(name: str) -> None:
    """Every key a script touches comes from a generated key_* function: no string literal
    in a script has the shape of a key (a ':')."""
    literals = lua_strings(script_text(name))
    assert [lit for lit in literals if KEY_SHAPED.search(lit)] == [], name
    assert "prefix .." not in script_text(name), "keys are built only by key_* functions"


def test_the_key_check_catches_a_script_that_builds_its_own_key() -> None:
    rogue = "-- it's fine\nredis.call('ZADD', prefix .. ':delayed', 1, id)"
    assert [lit for lit in lua_strings(rogue) if KEY_SHAPED.search(lit)] == [":delayed"]


def test_every_key_function_a_script_calls_is_generated() -> None:
    generated = set(re.findall(r"local function (key_\w+)", lua_prelude()))
    assert generated == {f"key_{name}" for name in TEMPLATES}
    called = {f for name in JOB_SCRIPTS for f in re.findall(r"\bkey_\w+", script_text(name))}
    called |= set(re.findall(r"\bkey_\w+", script_text("_lib") + script_text("_workflow")))
    assert called <= generated, called - generated


def test_generated_key_functions_match_the_python_names(store: JobStore) -> None:
    """The Lua functions and KeySpace's methods build the same names."""
    keys = KeySpace("pfx")
    probes = {
        "job": ("j1",), "idempotency": ("t", "k"), "events": ("j1",), "index_all": (),
        "index_tenant": ("t",), "index_state": ("queued",), "index_task": ("demo.echo",),
        "index_queue": ("low",), "rate_limit": ("t",), "delayed": (), "delayed_messages": (),
        "dead": (), "dead_messages": (), "running": ("low",), "inflight": ("c", "low"),
        "consumers": ("low",), "beat": (), "queue": ("low",),
        "fair_jobs": ("low", "t"), "fair_tenants": ("low",), "fair_clock": ("low",),
        "fair_weights": (), "fair_held": ("low",), "fair_parked": ("low",),
        "fair_active": ("low",), "fair_limits": (), "paused": (), "slots": (), "gate_active": (),
        "gate_waiting": ("task:demo.echo",), "quota": ("t",), "unique": ("t", "demo.echo", "k"),
        "answered": ("j1",), "workflow": ("w1",), "workflow_messages": ("w1",),
        "workflow_events": ("w1",), "workflow_index_all": (), "workflow_index_tenant": ("t",),
        "workflow_idempotency": ("t", "k"), "schedule": ("s1",), "schedules_all": (),
        "schedules_tenant": ("t",), "schedule_names": (), "schedules_due": (),
        "stats": (29000000,), "audit": (), "session": ("h1",),
        "callback_idempotency": ("t", "j1"), "callbacks_pending": (), "pidbox_bindings": (),
    }  # fmt: skip
    assert set(probes) == set(TEMPLATES)
    for name, args in probes.items():
        call = ", ".join(["'pfx'", *(f"'{a}'" for a in args)])
        lua = store.client.eval(f"{lua_prelude()}\nreturn key_{name}({call})", 0)
        member = getattr(keys, name)
        python = member(*args) if callable(member) else member
        assert lua == python, name


def test_generated_name_functions_match_the_python_names(store: JobStore) -> None:
    """Members and gate names the scripts compare are spelled once too."""
    probes = {"paused_member": (("tier", "low"), paused_member),
              "task_gate": (("demo.echo",), task_gate),
              "key_gate": (("t", "demo.echo", "customer-1"), key_gate),
              "quota_queued": (("low",), quota_queued)}  # fmt: skip
    assert set(probes) == set(NAMES)
    for name, (args, python) in probes.items():
        call = ", ".join(f"'{a}'" for a in args)
        lua = store.client.eval(f"{lua_prelude()}\nreturn name_{name}({call})", 0)
        assert lua == python(*args), name


def _key_patterns(prefix: str) -> list[re.Pattern[str]]:
    patterns = []
    for template in TEMPLATES.values():
        regex = re.escape(template).replace(re.escape("{prefix}"), re.escape(prefix))
        patterns.append(re.compile("^" + re.sub(r"\\\{\w+\\\}", ".+", regex) + "$"))
    # kombu's own keys (its unacked bookkeeping and exchange bindings), not Conveyor's.
    patterns += [re.compile(r"^unacked(_index|_mutex)?$"), re.compile(r"^_kombu\.binding\..+")]
    return patterns


def test_a_whole_job_life_writes_only_keys_the_key_space_describes(
    store: JobStore, redis_server: RedisServer, redis_db: int
) -> None:
    """Every verb, then SCAN: a key no template produces means someone spelled their own."""
    plain = submit(store, idempotency_key="k1")
    store.start(plain)
    store.report_progress(plain, {"current": 1, "total": 2, "message": None})
    store.retry(plain, error="{}", delay=0, message=b'{"headers": {}}', generation=1)
    store.promote_due()
    store.start(plain, generation=1)
    store.succeed(plain, "1")
    doomed = submit(store)
    store.start(doomed)
    store.dead_letter(doomed, "{}", orjson.dumps({"headers": {"conveyor_generation": 1}}))
    delayed = submit(store, delay_seconds=3600)
    handed = submit(store)
    store.start(handed)
    store.hand_back(handed)
    store.heartbeat("host:1:tok", ["default"])
    store.recover_inflight(60)
    client = redis.asyncio.Redis(port=redis_server.port, db=redis_db, decode_responses=True)

    async def api_verbs() -> None:
        astore = AsyncJobStore(client, SETTINGS)
        try:
            await astore.take_token("t1", 10, 10)
            await astore.cancel(delayed)
            assert await astore.replay([doomed]) == 1
            await astore.list_jobs(tenant="t1", state=JobState.QUEUED, task="demo.echo")
            store.start(doomed, generation=1)
            store.dead_letter(doomed, "{}", b'{"headers": {}}')
            assert await astore.purge([doomed]) == 1
        finally:
            await client.aclose()

    asyncio.run(api_verbs())
    patterns = _key_patterns(SETTINGS.key_prefix)
    keys = set(store.client.scan_iter(count=1000))
    assert len(keys) > 15
    assert [k for k in keys if not any(p.match(k) for p in patterns)] == []


# -- the state machine: one table -------------------------------------------------------------

GENERIC = {
    Verb.REPORT_PROGRESS: lambda s, j: s.report_progress(j, {"current": 1}),
    Verb.RETRY: lambda s, j: s.retry(j, error="{}", delay=60, message=b"{}",
                                     generation=1),
    Verb.SUCCEED: lambda s, j: s.succeed(j, "1"),
    Verb.FAIL: lambda s, j: s.fail(j, "{}"),
    Verb.DEAD_LETTER: lambda s, j: s.dead_letter(j, "{}", b'{"headers": {}}'),
    Verb.HAND_BACK: lambda s, j: s.hand_back(j),
}  # fmt: skip


@pytest.mark.parametrize("state", list(JobState))
@pytest.mark.parametrize("verb", [*GENERIC, Verb.START, Verb.CANCEL])
def test_every_verb_from_every_state_follows_the_table(
    store: JobStore, redis_server: RedisServer, redis_db: int, verb: Verb, state: JobState
) -> None:
    """The table is the oracle: a verb applies exactly from its sources and leaves its target."""
    job_id = submit(store)
    store.client.hset(f"conveyor:job:{job_id}", "state", str(state))
    rule = TRANSITIONS[verb]
    if verb is Verb.START:
        applied = store.start(job_id).verdict is StartVerdict.RUN
    elif verb is Verb.CANCEL:
        client = redis.asyncio.Redis(port=redis_server.port, db=redis_db, decode_responses=True)

        async def cancel() -> bool:
            try:
                return (await AsyncJobStore(client, SETTINGS).cancel(job_id)).applied
            finally:
                await client.aclose()

        applied = asyncio.run(cancel())
    else:
        applied = GENERIC[verb](store, job_id).applied
    assert applied == (state in rule.sources)
    after = store.client.hget(f"conveyor:job:{job_id}", "state")
    assert after == (str(rule.target) if applied else str(state))
    ttl = store.client.ttl(f"conveyor:job:{job_id}")
    expected = (
        {
            machine.Expiry.KEEP: -1,
            machine.Expiry.RETENTION: SETTINGS.jobs.retention_seconds,
            machine.Expiry.DEAD_LETTER_RETENTION: SETTINGS.jobs.dead_letter_retention_seconds,
        }[rule.expiry]
        if applied
        else -1
    )
    assert ttl == expected or (expected > 0 and expected - 5 <= ttl <= expected)


def test_promote_and_replay_follow_the_table(store: JobStore, redis_server: RedisServer,
                                            redis_db: int) -> None:  # fmt: skip
    for state in JobState:
        job_id = submit(store, delay_seconds=0.001)
        store.client.hset(f"conveyor:job:{job_id}", "state", str(state))
        time.sleep(0.01)  # due 1 ms after acceptance, by Redis' clock
        store.promote_due()
        rule = TRANSITIONS[Verb.PROMOTE]
        expected = rule.target if state in rule.sources else state
        assert store.client.hget(f"conveyor:job:{job_id}", "state") == expected, state
    client = redis.asyncio.Redis(port=redis_server.port, db=redis_db, decode_responses=True)

    async def replay_each() -> dict[JobState, str]:
        outcome = {}
        astore = AsyncJobStore(client, SETTINGS)
        try:
            for state in JobState:
                job_id = submit(store)
                store.client.hset(f"conveyor:job:{job_id}", "state", str(state))
                store.client.zadd("conveyor:dead", {job_id: 1})
                store.client.hset("conveyor:dead:messages", job_id, '{"headers": {}}')
                await astore.replay([job_id])
                outcome[state] = store.client.hget(f"conveyor:job:{job_id}", "state")
        finally:
            await client.aclose()
        return outcome

    rule = TRANSITIONS[Verb.REPLAY]
    for state, after in asyncio.run(replay_each()).items():
        assert after == (rule.target if state in rule.sources else state), state


def test_the_architecture_page_shows_the_table_from_the_code() -> None:
    page = (REPO / "docs" / "architecture.md").read_text()
    assert machine.markdown_table() in page, "paste machine.markdown_table() into the page"


def test_every_verb_has_a_rule() -> None:
    assert set(TRANSITIONS) == set(Verb)
    assert Path(machine.__file__).exists()


def test_a_record_is_stored_as_built_and_its_head_read_by_position(store: JobStore) -> None:
    """accept.lua reads id, tenant, task, queue and state by their places in the record's
    array and the idempotency key from its tail: a job with every optional field is stored
    field for field as `NewJob.record` built it, indexed by those five, and its key answers
    a replay."""
    spec = load_catalog([])["demo.echo"]
    submission = Submission.of(spec, tenant="t9", args={"payload": 1}, idempotency_key="k9",
                               callback_url="https://example.com/hook", timeout_seconds=5,
                               priority=Queue.HIGH, delay_seconds=60)  # fmt: skip
    job, _ = prepare(spec, submission, SETTINGS.worker)
    assert tuple(job.record)[: len(RECORD_HEAD)] == RECORD_HEAD
    first = store.submit(spec, submission)
    stored = store.client.hgetall(store.keys.job(first.job_id))
    expected = {**job.record, "id": first.job_id}
    assert set(stored) == set(expected)
    for field in ("tenant", "task", "queue", "state", "idempotency_key", "callback_url",
                  "timeout_seconds", "max_retries", "args"):  # fmt: skip
        assert stored[field] == expected[field], field
    assert stored["state"] == "scheduled"
    assert "attempts" not in stored
    for index in (store.keys.index_tenant("t9"), store.keys.index_task("demo.echo"),
                  store.keys.index_queue("high"), store.keys.index_state("scheduled")):  # fmt: skip
        assert store.client.zscore(index, first.job_id) is not None, index
    assert store.submit(spec, submission).job_id == first.job_id
