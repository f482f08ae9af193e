"""The job store's Lua scripts, each prepended with the generated key functions and the
shared helpers, called with EVALSHA (loaded on the first NOSCRIPT).

Private to the job store: callers use the store's verbs.
"""

import hashlib
import re
from collections.abc import Iterable, Sequence
from importlib import resources
from typing import Any

import redis
import redis.asyncio
from redis.exceptions import NoScriptError

from conveyor.jobstore.keys import lua_prelude

_FILES = resources.files("conveyor.jobstore.lua")


class Lua:
    """A Lua script called with EVALSHA, loaded on the first NOSCRIPT; `run` on a blocking
    client, `run_async` on an asyncio one.

    redis-py's `Script` does the same, but its per-call checks cost a fifth of the API's CPU on
    the accept path and a quarter of a worker main process's per delivery (measured with
    py-spy). The scripts take their key names' parts in ARGV and build the names with the
    generated key functions.
    """

    def __init__(self, source: str) -> None:
        self.source = source
        self.sha = hashlib.sha1(source.encode(), usedforsecurity=False).hexdigest()

    def run(self, client: "redis.Redis", args: Sequence[Any]) -> Any:
        """Run the script with `args` as ARGV."""
        try:
            return client.evalsha(self.sha, 0, *args)
        except NoScriptError:
            client.script_load(self.source)
            return client.evalsha(self.sha, 0, *args)

    async def run_async(self, client: "redis.asyncio.Redis", args: Sequence[Any]) -> Any:
        """Run the script with `args` as ARGV, on an asyncio client."""
        try:
            return await client.evalsha(self.sha, 0, *args)
        except NoScriptError:
            await client.script_load(self.source)
            return await client.evalsha(self.sha, 0, *args)


def script_text(name: str) -> str:
    """A script's own text (without the prelude)."""
    return _FILES.joinpath(f"{name}.lua").read_text()


# Redis 7 script flags (the shebang line), so that Redis judges a script before it runs it.
# A script without flags is a write script: a replica (READONLY), a primary short of its
# good replicas (`min-replicas-to-write`: NOREPLICAS) and a full Redis (OOM) refuse it whole.
# Unflagged, a script ran until its first write: one that only read (a `start` of a job the
# node did not know) was answered by a demoted or isolated old primary, and the worker acked
# a message whose job it took for gone.
SCRIPT_FLAGS = {
    # Only reads: any node may answer (an API read during a failover).
    "read": "no-writes",
    # Frees memory (dead letters leave, their records expire): it must run when Redis is full.
    "purge": "allow-oom",
    # The primary check of clients that only read: answered when Redis is full too.
    "primary": "allow-oom",
}


# A top-level definition of the prelude or a shared file: `local function name(` up to the
# `end` at the start of a line that closes it (nested blocks are indented), or a one-line
# `local name = …` (a function's state).
_DEFINITION = re.compile(
    r"^local function (\w+)\(.*?^end$|^local (\w+) = [^\n]*$", re.MULTILINE | re.DOTALL
)
_NAME = re.compile(r"[A-Za-z_]\w*")
_COMMENT = re.compile(r"--[^\n]*")


def _names(text: str) -> set[str]:
    return set(_NAME.findall(_COMMENT.sub("", text)))


def link(shared: Iterable[str], body: str) -> str:
    """The functions of `shared` that `body` calls, directly or through each other, in their
    order, followed by `body`.

    Redis runs a script's whole text on every call, and each `local function` it passes
    makes a closure: the prelude's ~80 functions cost accept.lua 7 µs of Redis time per call
    (a third of its own commands' time), whether the script used them or not.
    """
    definitions = [(m.group(1) or m.group(2), m.group(0))
                   for text in shared for m in _DEFINITION.finditer(text)]  # fmt: skip
    needed = _names(body)
    kept: set[str] = set()
    grew = True
    while grew:
        grew = False
        for name, text in definitions:
            if name in needed and name not in kept:
                kept.add(name)
                needed |= _names(text)
                grew = True
    return "\n".join([*(text for name, text in definitions if name in kept), body])


def _job_script(name: str) -> Lua:
    flags = SCRIPT_FLAGS.get(name)
    shebang = f"#!lua flags={flags}" if flags else "#!lua"
    shared = [lua_prelude(), *map(script_text, ("_lib", "_workflow"))]
    return Lua(f"{shebang}\n{link(shared, script_text(name))}")


# Every script of the store (jobs, workflows, schedules, the audit stream). The transport's
# claim and push also take kombu's key names as arguments.
JOB_SCRIPTS = ("accept", "transition", "promote", "start", "replay", "purge", "ratelimit",
               "recover_inflight", "heartbeat", "renew", "repair", "read", "claim",
               "push", "release", "flow", "primary", "accept_workflow",
               "cancel_workflow", "rerun_step", "schedule_put", "schedule_delete",
               "schedule_due", "schedule_advance", "schedule_ran", "audit")  # fmt: skip
(ACCEPT, TRANSITION, PROMOTE, START, REPLAY, PURGE, RATELIMIT, RECOVER_INFLIGHT, HEARTBEAT,
 RENEW, REPAIR, READ, CLAIM, PUSH, RELEASE, FLOW, PRIMARY, ACCEPT_WORKFLOW,
 CANCEL_WORKFLOW, RERUN_STEP, SCHEDULE_PUT, SCHEDULE_DELETE, SCHEDULE_DUE, SCHEDULE_ADVANCE,
 SCHEDULE_RAN, AUDIT) = (_job_script(name) for name in JOB_SCRIPTS)  # fmt: skip
