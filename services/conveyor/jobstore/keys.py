"""Redis key names of everything Conveyor keeps in Redis: the one place they are spelled.

Python calls `KeySpace`'s methods; the Lua scripts call `key_<name>(...)` functions that
`lua_prelude()` generates from the same templates and prepends to every script, so no script
spells a key of its own (`tests/test_jobstore_keys.py` checks the scripts, and scans a
database after a whole job life for any key these templates do not describe).
"""

import re
from dataclasses import dataclass

# name → template. `{prefix}` is `CONVEYOR_KEY_PREFIX`; other fields are the function's
# parameters, in order. Celery's queue lists are named by the queue alone (kombu's choice).
TEMPLATES: dict[str, str] = {
    "job": "{prefix}:job:{job_id}",
    "idempotency": "{prefix}:idem:{tenant}:{key}",
    # A uniqueness lock: the job holding a tenant's task + unique key (accept.lua).
    "unique": "{prefix}:unique:{tenant}:{task}:{key}",
    # The idempotency keys of submissions a job's uniqueness answered (accept.lua).
    "answered": "{prefix}:answered:{job_id}",
    "events": "{prefix}:events:{job_id}",
    # Workflows (workflow.lua): the workflow's record, every step's message kept for the
    # workflow's life (a waiting step's until its parents finish; all of them so that a
    # resumed workflow can queue a skipped step again), its event stream, its indexes, and
    # its idempotency keys (apart from the jobs': a key names a job or a workflow, never both).
    "workflow": "{prefix}:workflow:{workflow_id}",
    "workflow_messages": "{prefix}:workflow:{workflow_id}:messages",
    "workflow_events": "{prefix}:workflow:{workflow_id}:events",
    "workflow_index_all": "{prefix}:workflows:all",
    "workflow_index_tenant": "{prefix}:workflows:tenant:{tenant}",
    "workflow_idempotency": "{prefix}:wfidem:{tenant}:{key}",
    "index_all": "{prefix}:index:all",
    "index_tenant": "{prefix}:index:tenant:{tenant}",
    "index_state": "{prefix}:index:state:{state}",
    "index_task": "{prefix}:index:task:{task}",
    "index_queue": "{prefix}:index:queue:{queue}",
    # A string "<tokens> <ms>" (a hash named `ratelimit:` in earlier releases: a new name, so an
    # upgrade never reads one as the other).
    "rate_limit": "{prefix}:bucket:{tenant}",
    "delayed": "{prefix}:delayed",
    "delayed_messages": "{prefix}:delayed:messages",
    "dead": "{prefix}:dead",
    "dead_messages": "{prefix}:dead:messages",
    "callbacks_pending": "{prefix}:callbacks:pending",
    "running": "{prefix}:running:{queue}",
    "inflight": "{prefix}:inflight:{consumer}:{queue}",
    "consumers": "{prefix}:consumers:{queue}",
    "beat": "{prefix}:beat",
    # Fair share within a tier (fairq.lua): each tenant's ready messages, the tenants with
    # ready messages scored by their virtual pass, the tier's virtual clock, and weights.
    "fair_jobs": "{prefix}:fair:{queue}:jobs:{tenant}",
    "fair_tenants": "{prefix}:fair:{queue}:tenants",
    "fair_clock": "{prefix}:fair:{queue}:clock",
    "fair_weights": "{prefix}:fair:weights",
    # Flow control (claim.lua, release.lua): tenants held off a tier (paused, or at their
    # concurrency limit) with their pass, tokens parked while nothing could be claimed, each
    # tenant's running deliveries per tier, their own limits, what is paused, and the
    # delivery tag -> slots of every claimed delivery.
    "fair_held": "{prefix}:fair:{queue}:held",
    "fair_parked": "{prefix}:fair:{queue}:parked",
    "fair_active": "{prefix}:fair:{queue}:active",
    "fair_limits": "{prefix}:fair:limits",
    "paused": "{prefix}:paused",
    "slots": "{prefix}:slots",
    # Gates (a task's limit, a concurrency key's): running deliveries per gate, and the
    # messages waiting for a gate's slot (or its task's resume), without a token.
    "gate_active": "{prefix}:gate:active",
    "gate_waiting": "{prefix}:gate:waiting:{gate}",
    # A tenant's usage its quotas are checked against at accept: messages waiting per tier,
    # delayed messages, and the bytes of both.
    "quota": "{prefix}:quota:{tenant}",
    # Runtime schedules (schedules.lua): each schedule's record, the ids of every schedule
    # and of one tenant's, the owner of each `tenant/name`, and the unpaused schedules scored
    # by when their next run is due (ms, Redis' clock).
    "schedule": "{prefix}:schedule:{schedule_id}",
    "schedules_all": "{prefix}:schedules:all",
    "schedules_tenant": "{prefix}:schedules:tenant:{tenant}",
    "schedule_names": "{prefix}:schedules:names",
    "schedules_due": "{prefix}:schedules:due",
    # Runs that ended per minute (the console's throughput): a hash of `<tier>/<outcome>` and
    # `tenant/<tenant>/<outcome>` counts, for the minute (epoch minutes, Redis' clock).
    "stats": "{prefix}:stats:{minute}",
    # The audit log: a capped stream of every mutating call (who, what, target, outcome).
    "audit": "{prefix}:audit",
    # A console session (the cookie's id hashed): its key id, tenant, scopes and CSRF token.
    "session": "{prefix}:session:{session_hash}",
    # Celery's remote-control bindings (kombu's key): one member per worker node.
    "pidbox_bindings": "_kombu.binding.celery.pidbox",
    "queue": "{queue}",
}

# The idempotency key a job's completion callback is submitted with (so it is enqueued once);
# a replayed job's next callback must be a new one, so replay.lua deletes it.
CALLBACK_IDEMPOTENCY = "callback:{job_id}"
TEMPLATES["callback_idempotency"] = TEMPLATES["idempotency"].replace("{key}", CALLBACK_IDEMPOTENCY)

# Names that are not keys but members and fields the scripts compare (what is paused, the
# gates of flow control): spelled here too, generated as `name_<name>(...)` Lua functions.
NAMES: dict[str, str] = {
    "paused_member": "{kind}:{name}",
    "task_gate": "task:{task}",
    "key_gate": "key:{tenant}:{task}:{key}",
    "quota_queued": "queued:{queue}",
}

_FIELD = re.compile(r"\{(\w+)\}")


def callback_idempotency_key(job_id: str) -> str:
    """The idempotency key of `job_id`'s completion callback."""
    return CALLBACK_IDEMPOTENCY.format(job_id=job_id)


@dataclass(frozen=True)
class KeySpace:
    """Key names under one prefix (`CONVEYOR_KEY_PREFIX`)."""

    prefix: str

    def _key(self, name: str, **fields: str) -> str:
        return TEMPLATES[name].format(prefix=self.prefix, **fields)

    def job(self, job_id: str) -> str:
        """Hash holding one job record."""
        return self._key("job", job_id=job_id)

    def idempotency(self, tenant: str, key: str) -> str:
        """String mapping a tenant's idempotency key to the job id and request hash."""
        return self._key("idempotency", tenant=tenant, key=key)

    def answered(self, job_id: str) -> str:
        """Set of the idempotency keys of submissions the job's uniqueness answered."""
        return self._key("answered", job_id=job_id)

    def unique(self, tenant: str, task: str, key: str) -> str:
        """String naming the job that holds a tenant's uniqueness key of a task."""
        return self._key("unique", tenant=tenant, task=task, key=key)

    def events(self, job_id: str) -> str:
        """Stream of a job's state and progress changes (ids are the SSE event ids)."""
        return self._key("events", job_id=job_id)

    def workflow(self, workflow_id: str) -> str:
        """Hash holding one workflow's record (its steps are job records)."""
        return self._key("workflow", workflow_id=workflow_id)

    def workflow_messages(self, workflow_id: str) -> str:
        """Hash of a workflow's step job ids to their Celery messages."""
        return self._key("workflow_messages", workflow_id=workflow_id)

    def workflow_events(self, workflow_id: str) -> str:
        """Stream of a workflow's step changes and its own (ids are the SSE event ids)."""
        return self._key("workflow_events", workflow_id=workflow_id)

    @property
    def workflow_index_all(self) -> str:
        """Sorted set of every workflow id, scored by creation time (ms)."""
        return self._key("workflow_index_all")

    def workflow_index_tenant(self, tenant: str) -> str:
        """Workflows of one tenant."""
        return self._key("workflow_index_tenant", tenant=tenant)

    def workflow_idempotency(self, tenant: str, key: str) -> str:
        """String mapping a tenant's workflow idempotency key to the workflow and request."""
        return self._key("workflow_idempotency", tenant=tenant, key=key)

    @property
    def index_all(self) -> str:
        """Sorted set of every job id, scored by creation time (ms)."""
        return self._key("index_all")

    def index_tenant(self, tenant: str) -> str:
        """Jobs of one tenant."""
        return self._key("index_tenant", tenant=tenant)

    def index_state(self, state: str) -> str:
        """Jobs in one state."""
        return self._key("index_state", state=state)

    def index_task(self, task: str) -> str:
        """Jobs of one task."""
        return self._key("index_task", task=task)

    def index_queue(self, queue: str) -> str:
        """Jobs of one queue."""
        return self._key("index_queue", queue=queue)

    @property
    def index_pattern(self) -> str:
        """SCAN pattern of every index (the task indexes are open-ended)."""
        return self._key("index_all").removesuffix("all") + "*"

    def rate_limit(self, tenant: str) -> str:
        """Hash holding a tenant's token bucket."""
        return self._key("rate_limit", tenant=tenant)

    @property
    def delayed(self) -> str:
        """Sorted set of job ids waiting for their due time (ms)."""
        return self._key("delayed")

    @property
    def delayed_messages(self) -> str:
        """Hash of job id to the Celery message to push when due."""
        return self._key("delayed_messages")

    @property
    def dead(self) -> str:
        """Sorted set of dead-lettered job ids, scored by when they died (ms)."""
        return self._key("dead")

    @property
    def dead_messages(self) -> str:
        """Hash of dead-lettered job id to the message that replays it."""
        return self._key("dead_messages")

    @property
    def callbacks_pending(self) -> str:
        """Sorted set of finished jobs whose completion callback is not yet enqueued (ms)."""
        return self._key("callbacks_pending")

    def running(self, queue: str) -> str:
        """Sorted set of a queue's running job ids (scored by start, Redis time in seconds),
        kept by the job scripts; its size is the running half of the tier's demand.
        """
        return self._key("running", queue=queue)

    def inflight(self, consumer: str, queue: str) -> str:
        """List of messages a consumer has taken from `queue` but not yet recorded."""
        return self._key("inflight", consumer=consumer, queue=queue)

    def consumers(self, queue: str) -> str:
        """Sorted set of a queue's consumers, scored by their last heartbeat (seconds)."""
        return self._key("consumers", queue=queue)

    def fair_jobs(self, queue: str, tenant: str) -> str:
        """List of one tenant's ready messages on a tier (oldest at the tail)."""
        return self._key("fair_jobs", queue=queue, tenant=tenant)

    def fair_tenants(self, queue: str) -> str:
        """Sorted set of the tier's tenants with ready messages, scored by virtual pass: the
        lowest is served next.
        """
        return self._key("fair_tenants", queue=queue)

    def fair_clock(self, queue: str) -> str:
        """The tier's virtual clock: the pass of the tenant served last."""
        return self._key("fair_clock", queue=queue)

    @property
    def fair_weights(self) -> str:
        """Hash of tenant to its fair-share weight (set at accept from the keys file)."""
        return self._key("fair_weights")

    def fair_held(self, queue: str) -> str:
        """Sorted set of a tier's tenants held off (paused, or at their concurrency limit),
        scored by their pass.
        """
        return self._key("fair_held", queue=queue)

    def fair_parked(self, queue: str) -> str:
        """List of a tier's ready tokens parked because no message could be claimed."""
        return self._key("fair_parked", queue=queue)

    def fair_active(self, queue: str) -> str:
        """Hash of tenant to its deliveries claimed on a tier and not yet released."""
        return self._key("fair_active", queue=queue)

    @property
    def fair_limits(self) -> str:
        """Hash of tenant to its own concurrency limit per tier (keys file)."""
        return self._key("fair_limits")

    @property
    def paused(self) -> str:
        """Set of what is paused: `tier:<queue>`, `task:<name>`, `tenant:<name>`."""
        return self._key("paused")

    @property
    def slots(self) -> str:
        """Hash of delivery tag to the slots its claim took (released at ack or restore)."""
        return self._key("slots")

    @property
    def gate_active(self) -> str:
        """Hash of gate (`task:<name>`, `key:<tenant>:<task>:<key>`) to deliveries running."""
        return self._key("gate_active")

    def gate_waiting(self, gate: str) -> str:
        """List of messages waiting for a slot of `gate` (or their task's resume)."""
        return self._key("gate_waiting", gate=gate)

    def quota(self, tenant: str) -> str:
        """Hash of a tenant's usage: `queued:<tier>` messages waiting, `delayed`, `bytes`."""
        return self._key("quota", tenant=tenant)

    @property
    def beat(self) -> str:
        """Prefix of RedBeat's keys (schedule entries and the leader lock)."""
        return self._key("beat")

    def schedule(self, schedule_id: str) -> str:
        """Hash holding one schedule: its definition and when it runs next."""
        return self._key("schedule", schedule_id=schedule_id)

    @property
    def schedules_all(self) -> str:
        """Set of every schedule id."""
        return self._key("schedules_all")

    def schedules_tenant(self, tenant: str) -> str:
        """Set of one tenant's schedule ids."""
        return self._key("schedules_tenant", tenant=tenant)

    @property
    def schedule_names(self) -> str:
        """Hash of `tenant/name` to the schedule id holding that name."""
        return self._key("schedule_names")

    @property
    def schedules_due(self) -> str:
        """Sorted set of unpaused schedule ids scored by their next run's due time (ms)."""
        return self._key("schedules_due")

    def stats(self, minute: int) -> str:
        """Hash of run outcomes counted in one minute (epoch minutes)."""
        return self._key("stats", minute=str(minute))

    @property
    def audit(self) -> str:
        """Stream of audit entries (capped)."""
        return self._key("audit")

    def session(self, session_hash: str) -> str:
        """Hash of one console session, named by its cookie's SHA-256."""
        return self._key("session", session_hash=session_hash)

    def callback_idempotency(self, tenant: str, job_id: str) -> str:
        """The idempotency record of a job's completion callback."""
        return self.idempotency(tenant, callback_idempotency_key(job_id))

    @property
    def pidbox_bindings(self) -> str:
        """The set of every worker node's remote-control binding (kombu's)."""
        return self._key("pidbox_bindings")

    def queue(self, queue: str) -> str:
        """The Celery list of a queue (kombu names it after the queue). It holds one ready
        token per ready message (its value the time it became ready), not the messages: a
        consumer blocks on it, and the claim then picks the message fairly (fairq).
        """
        return self._key("queue", queue=queue)


def paused_member(kind: str, name: str) -> str:
    """The member of the paused set naming a paused tier, task or tenant."""
    return NAMES["paused_member"].format(kind=kind, name=name)


def task_gate(task: str) -> str:
    """The gate of a task's concurrency limit (and of its pause)."""
    return NAMES["task_gate"].format(task=task)


def key_gate(tenant: str, task: str, key: str) -> str:
    """The gate of a tenant's concurrency key of a task."""
    return NAMES["key_gate"].format(tenant=tenant, task=task, key=key)


def quota_queued(queue: str) -> str:
    """The field of a tenant's usage counting its messages waiting on a tier."""
    return NAMES["quota_queued"].format(queue=queue)


def lua_prelude() -> str:
    """Lua functions `key_<name>(prefix, <fields>…)` built from TEMPLATES, and
    `name_<name>(<fields>…)` from NAMES, for the scripts.
    """
    functions = [_lua_function(f"key_{name}", template, ["prefix"])
                 for name, template in TEMPLATES.items()]  # fmt: skip
    functions += [_lua_function(f"name_{name}", template, []) for name, template in NAMES.items()]
    return "-- Generated from conveyor.jobstore.keys.TEMPLATES.\n" + "\n".join(functions) + "\n"


def _lua_function(function: str, template: str, leading: list[str]) -> str:
    fields = _FIELD.findall(template)
    params = ", ".join(dict.fromkeys([*leading, *fields]))
    # split() alternates literal text (even places) and field names (odd places).
    parts = _FIELD.split(template)
    expression = " .. ".join(
        part if odd else _lua_string(part)
        for odd, part in ((i % 2 == 1, p) for i, p in enumerate(parts))
        if part
    )
    return f"local function {function}({params})\n  return {expression}\nend"


def _lua_string(text: str) -> str:
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"
