"""Fair share within a tier: the ready messages of each tier, per tenant.

A tier's Celery list (`KeySpace.queue`) holds one *ready token* per ready message, its value
the time the message became ready. Consumers block on that list as on any kombu queue (a
BLMOVE into their in-flight list), so KEDA, the exporter and Flower see each tier's waiting
count unchanged. The message itself waits on its tenant's list (`fair_jobs`), and the claim
(`claim.lua`) takes the next tenant in stride order: every tenant with jobs waiting is
served in turn, `weight` times per round, whatever the others' backlogs.

Every message enters through `fair_push` (accept, promote, repair, replay, and kombu's
restore or publish through `push`), which adds its token in the same step.
"""

from collections.abc import Iterable, Sequence
from enum import StrEnum
from typing import Any

import redis
import redis.asyncio

from conveyor.core.queues import Queue
from conveyor.jobstore.keys import KeySpace
from conveyor.jobstore.scripts import CLAIM, FLOW, PUSH, RELEASE


def claim(client: "redis.Redis", keys: KeySpace, queue: str, inflight: str, token: bytes | str,
          unacked: str, unacked_index: str, tenant_limit: int = 0) -> bytes | None:  # fmt: skip
    """Claim the next message in fair order for the token a consumer took into `inflight`,
    within the flow-control limits (`tenant_limit`: a tenant's running deliveries per tier
    unless its own limit is set; 0 = none).

    None when the token was requeued meanwhile (the consumer looked dead; it must drop the
    delivery) or nothing could be claimed (the token is parked, or spent on a message that
    now waits at its gate).
    """
    message: bytes | None = CLAIM.run(
        client, [keys.prefix, queue, inflight, token, unacked, unacked_index, tenant_limit]
    )
    return message or None


def take_command(keys: KeySpace, queue: str, unacked: str, unacked_index: str,
                 tenant_limit: int = 0) -> list[str | int]:  # fmt: skip
    """The command that takes a ready token off `queue` and claims its message in one step
    (claim.lua's take), for a consumer to send on its polling connection. Its reply is
    `claim`'s: the message, or nil (nothing ready, or nothing could be claimed; a NOSCRIPT
    error until the script is loaded).
    """
    return ["EVALSHA", CLAIM.sha, 0, keys.prefix, queue, "", "", unacked, unacked_index,
            tenant_limit]  # fmt: skip


def release(client: Any, keys: KeySpace, tags: Sequence[str], tenant_limit: int = 0) -> None:
    """Release the slots of deliveries (acked, rejected or restored), on a client or pipeline."""
    if not tags:
        return
    args: list[str | int] = [keys.prefix, tenant_limit, *tags]
    if isinstance(client, redis.client.Pipeline):
        client.eval(RELEASE.source, 0, *args)
    else:
        RELEASE.run(client, args)


def push(client: Any, keys: KeySpace, queue: str, tenant: str, messages: Sequence[bytes | str],
         *, ready: float | None = None, front: bool = False) -> None:  # fmt: skip
    """Put ready messages of one tenant on a tier (a redis client or pipeline).

    `front` puts them where the tenant's next claim takes them (a restored delivery);
    `ready` is when they became ready (the tokens' value; Redis' clock when None).
    """
    args = [keys.prefix, queue, tenant, "" if ready is None else f"{ready:.3f}",
            "1" if front else "0", *messages]  # fmt: skip
    if isinstance(client, redis.client.Pipeline):
        # A pipeline cannot retry a NOSCRIPT; the full text costs a few KB on a rare path.
        client.eval(PUSH.source, 0, *args)
    else:
        PUSH.run(client, args)


def release_by_sha(pipe: Any, keys: KeySpace, tags: Sequence[str], tenant_limit: int = 0) -> None:
    """`release` queued in a pipeline by the script's SHA (the caller knows it is loaded; a
    NOSCRIPT comes back as that command's error).
    """
    pipe.evalsha(RELEASE.sha, 0, keys.prefix, tenant_limit, *tags)


class FlowKind(StrEnum):
    """What can be paused."""

    TIER = "tier"
    TASK = "task"
    TENANT = "tenant"


# Resumes move what a pause set aside back in batches: one script call never blocks Redis long.
RESUME_BATCH = 1000


def pause(client: "redis.Redis", keys: KeySpace, kind: FlowKind, name: str) -> bool:
    """Pause a tier, task or tenant (True when it was not paused yet)."""
    return int(FLOW.run(client, [keys.prefix, "pause", str(kind), name, 0, 0])) == 1


def resume(client: "redis.Redis", keys: KeySpace, kind: FlowKind, name: str,
           tenant_limit: int = 0) -> bool:  # fmt: skip
    """Resume it, moving back what its pause set aside (False when it was not paused)."""
    tiers = [str(q) for q in Queue]
    args = [keys.prefix, "resume", str(kind), name, tenant_limit, RESUME_BATCH, *tiers]
    moved = int(FLOW.run(client, args))
    was_paused = moved != -1
    while moved >= RESUME_BATCH:
        moved = int(FLOW.run(client, [*args[:1], "drain", *args[2:]]))
    return was_paused


async def pause_async(client: "redis.asyncio.Redis", keys: KeySpace, kind: FlowKind,
                      name: str) -> bool:  # fmt: skip
    """`pause`, on an asyncio client (the API's)."""
    return int(await FLOW.run_async(client, [keys.prefix, "pause", str(kind), name, 0, 0])) == 1


async def resume_async(client: "redis.asyncio.Redis", keys: KeySpace, kind: FlowKind,
                       name: str, tenant_limit: int = 0) -> bool:  # fmt: skip
    """`resume`, on an asyncio client (the API's)."""
    tiers = [str(q) for q in Queue]
    args = [keys.prefix, "resume", str(kind), name, tenant_limit, RESUME_BATCH, *tiers]
    moved = int(await FLOW.run_async(client, args))
    was_paused = moved != -1
    while moved >= RESUME_BATCH:
        moved = int(await FLOW.run_async(client, [*args[:1], "drain", *args[2:]]))
    return was_paused


async def paused_async(client: "redis.asyncio.Redis", keys: KeySpace) -> list[tuple[FlowKind, str]]:
    """`paused`, on an asyncio client (the API's)."""
    return _parse_paused(await client.smembers(keys.paused))


def sweep(client: "redis.Redis", keys: KeySpace, unacked: str, tenant_limit: int = 0) -> int:
    """Flow control's upkeep (the beat leader, every tick): release the slots of deliveries
    no longer unacked (their release was lost with a crash or a failover), and put back held
    tenants that may run again (their limit was raised). Returns the slots released.
    """
    tags = _texts(client.hkeys(keys.slots))
    with client.pipeline(transaction=False) as pipe:
        for tag in tags:
            pipe.hexists(unacked, tag)
        still = pipe.execute()
    orphaned = [tag for tag, held in zip(tags, still, strict=True) if not held]
    released = 0
    for start in range(0, len(orphaned), RESUME_BATCH):
        batch = orphaned[start : start + RESUME_BATCH]
        released += int(RELEASE.run(client, [keys.prefix, tenant_limit, *batch]))
    tiers = [str(q) for q in Queue]
    FLOW.run(client, [keys.prefix, "sweep", "", "", tenant_limit, RESUME_BATCH, *tiers])
    return released


def paused(client: "redis.Redis", keys: KeySpace) -> list[tuple[FlowKind, str]]:
    """What is paused, sorted."""
    return _parse_paused(client.smembers(keys.paused))


def _parse_paused(members: Iterable[bytes | str]) -> list[tuple[FlowKind, str]]:
    found = []
    for member in _texts(members):
        kind, _, name = member.partition(":")
        found.append((FlowKind(kind), name))
    return sorted(found)


def ready_messages(client: "redis.Redis", keys: KeySpace, queue: str) -> list[bytes]:
    """Every message waiting on a tier (its tenant in the rotation or held off it), each
    tenant's oldest first (for inspection and tests; it reads every tenant's list, so not
    for a hot path).
    """
    tenants: list[bytes | str] = client.zrange(keys.fair_tenants(queue), 0, -1)  # type: ignore[assignment]
    held: list[bytes | str] = client.zrange(keys.fair_held(queue), 0, -1)  # type: ignore[assignment]
    found: list[bytes] = []
    for tenant in dict.fromkeys(_texts([*tenants, *held])):
        messages: list[bytes] = client.lrange(keys.fair_jobs(queue, tenant), 0, -1)  # type: ignore[assignment]
        found.extend(reversed(messages))
    return found


def ready_count(client: "redis.Redis", keys: KeySpace, queue: str, tenant: str) -> int:
    """How many of one tenant's messages wait on a tier."""
    return int(client.llen(keys.fair_jobs(queue, tenant)))


def _texts(values: Iterable[bytes | str]) -> list[str]:
    return [v.decode() if isinstance(v, bytes) else v for v in values]
