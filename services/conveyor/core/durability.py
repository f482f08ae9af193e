"""Startup check: could the Redis we were given lose queued jobs.

Redis evicts keys under memory pressure unless `maxmemory-policy` is `noeviction`, and keeps
nothing across a restart unless AOF is on. Either silently drops accepted jobs, so every
Conveyor process checks at startup and warns loudly, or refuses to start
(`CONVEYOR_REDIS_DURABILITY_CHECK=refuse`).

A managed Redis (ElastiCache, Memorystore, Azure Cache) disables CONFIG and persists by its
own means (replicas, snapshots): `managed` trusts that, so the pods start instead of
crash-looping, and still refuses an eviction policy when CONFIG lets it read one.
"""

import logging

import redis
from redis.exceptions import RedisError, ResponseError

from conveyor.core.settings import DurabilityCheck

log = logging.getLogger(__name__)


class UnsafeRedisError(RuntimeError):
    """The Redis could lose jobs and the settings say to refuse it."""


CONFIG_DISABLED = "CONFIG GET is not allowed: cannot verify maxmemory-policy and appendonly"
# BLMOVE (6.2) and the job store's script flags (7.0): on an older Redis every script fails.
MINIMUM_VERSION = (7, 0)


def version_problem(client: "redis.Redis") -> str | None:
    """Why this Redis is too old for Conveyor, or None (also when INFO is not allowed)."""
    try:
        version = str(client.info("server").get("redis_version", ""))
    except ResponseError:
        return None
    parts = tuple(int(p) for p in version.split(".")[:2] if p.isdigit())
    if len(parts) == 2 and parts < MINIMUM_VERSION:
        wanted = ".".join(map(str, MINIMUM_VERSION))
        return f"Redis {version} is too old: Conveyor needs Redis >= {wanted} (script flags)"
    return None


def durability_problems(client: "redis.Redis", *, managed: bool = False) -> list[str]:
    """What about this Redis could lose jobs (empty when nothing). `managed`: its provider
    persists it, so neither a disabled CONFIG nor AOF being off is a problem.
    """
    try:
        config = {**client.config_get("maxmemory-policy"), **client.config_get("appendonly")}
    except ResponseError:
        # Managed services often disable CONFIG; say so rather than guess.
        if managed:
            log.info("managed Redis: CONFIG is disabled; trusting the provider's persistence")
            return []
        return [CONFIG_DISABLED + " (a managed Redis: set redis_durability_check=managed)"]
    if managed:
        config["appendonly"] = "yes"
    problems = []
    policy = config.get("maxmemory-policy")
    if policy != "noeviction":
        problems.append(
            f"maxmemory-policy is {policy!r}: under memory pressure Redis may evict queued jobs "
            "and job records; set it to 'noeviction'"
        )
    if config.get("appendonly") != "yes":
        problems.append("appendonly is off: a Redis restart loses every queued job; enable AOF")
    return problems


def check_durability(client: "redis.Redis", mode: DurabilityCheck) -> list[str]:
    """Warn about (or refuse) a Redis that could lose jobs; returns the problems found. A
    Redis too old to run Conveyor's scripts is refused whatever the mode.
    """
    try:
        too_old = version_problem(client)
    except RedisError as exc:
        log.warning("could not check the Redis version (unreachable?): %s", exc)
        too_old = None
    if too_old is not None:
        raise UnsafeRedisError(too_old)
    if mode is DurabilityCheck.OFF:
        return []
    try:
        problems = durability_problems(client, managed=mode is DurabilityCheck.MANAGED)
    except RedisError as exc:
        log.warning("could not check Redis durability (unreachable?): %s", exc)
        return []
    for problem in problems:
        log.warning("REDIS MAY LOSE JOBS: %s", problem)
    if problems and mode in (DurabilityCheck.REFUSE, DurabilityCheck.MANAGED):
        raise UnsafeRedisError("; ".join(problems))
    return problems
