"""Startup check: could the Redis we were given lose queued jobs.

Redis evicts keys under memory pressure unless `maxmemory-policy` is `noeviction`, and keeps
nothing across a restart unless AOF is on. Either silently drops accepted jobs, so every
Conveyor process checks at startup and warns loudly, or refuses to start
(`CONVEYOR_REDIS_DURABILITY_CHECK=refuse`).
"""

import logging

import redis
from redis.exceptions import RedisError, ResponseError

from conveyor.core.settings import DurabilityCheck

log = logging.getLogger(__name__)


class UnsafeRedisError(RuntimeError):
    """The Redis could lose jobs and the settings say to refuse it."""


def durability_problems(client: "redis.Redis") -> list[str]:
    """What about this Redis could lose jobs (empty when nothing)."""
    try:
        config = {**client.config_get("maxmemory-policy"), **client.config_get("appendonly")}
    except ResponseError:
        # Managed services often disable CONFIG; say so rather than guess.
        return ["CONFIG GET is not allowed: cannot verify maxmemory-policy and appendonly"]
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
    """Warn about (or refuse) a Redis that could lose jobs; returns the problems found."""
    if mode is DurabilityCheck.OFF:
        return []
    try:
        problems = durability_problems(client)
    except RedisError as exc:
        log.warning("could not check Redis durability (unreachable?): %s", exc)
        return []
    for problem in problems:
        log.warning("REDIS MAY LOSE JOBS: %s", problem)
    if problems and mode is DurabilityCheck.REFUSE:
        raise UnsafeRedisError("; ".join(problems))
    return problems
