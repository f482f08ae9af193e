"""`StoreUpkeep`: the job store's bookkeeping beside the job's verbs — promoting due
delayed jobs, pruning indexes and dead letters, consumers' heartbeats and leases, and the
sweeps that repair abandoned runs and drop dead workers' bindings. Run by workers and the
beat leader; `JobStore` inherits it.
"""

import re
from collections.abc import Sequence
from typing import Any

import orjson
import redis

from conveyor.core.queues import Queue
from conveyor.jobstore import _calls, fairq
from conveyor.jobstore.keys import KeySpace
from conveyor.jobstore.machine import DUE_MESSAGE_STATES, Verb, listed, transition
from conveyor.jobstore.model import text_of
from conveyor.jobstore.runs import Lease, Renewal
from conveyor.jobstore.scripts import HEARTBEAT, PROMOTE, RECOVER_INFLIGHT, RENEW, REPAIR

# kombu's separator inside binding members, and a Conveyor worker's node name
# (`<queue>.<pid>@<host>`, set by `conveyor worker`) in its pidbox queue's name.
_KOMBU_SEP = "\x06\x16"
_NODE = re.compile(r"^(?P<queue>[a-z]+)\.(?P<pid>\d+)@(?P<host>.+)\.celery\.pidbox$")


class StoreUpkeep:
    """Bookkeeping on the store's Redis (see the module docstring)."""

    client: "redis.Redis"
    keys: KeySpace
    retention_seconds: int
    dead_letter_retention_seconds: int

    def promote_due(self, limit: int = 500) -> int:
        """Push delayed messages due by Redis' clock onto their queues (promote)."""
        rule = transition(Verb.PROMOTE)
        pushable = listed(DUE_MESSAGE_STATES)
        args = [self.keys.prefix, "", limit, pushable, rule.allowed]
        return int(PROMOTE.run(self.client, args))

    def prune_index(self, key: str, older_than: float, budget: int = 5000) -> int:
        """Drop ids of expired jobs from one index, oldest first; returns how many went."""
        removed, start = 0, 0
        while start < budget:
            ids = self.client.zrangebyscore(key, "-inf", _calls.ms(older_than), start=start,
                                            num=500)  # fmt: skip
            if not ids:
                break
            with self.client.pipeline(transaction=False) as pipe:
                for job_id in ids:
                    pipe.exists(self.keys.job(text_of(job_id)))
                exists = pipe.execute()
            gone = [text_of(job_id) for job_id, alive in zip(ids, exists, strict=True) if not alive]
            if gone:
                self.client.zrem(key, *gone)
                removed += len(gone)
            start += len(ids) - len(gone)
        return removed

    def prune_dead_letters(self) -> int:
        """Forget dead letters older than the dead-letter retention (by Redis' clock, which
        scored them).
        """
        seconds, micros = self.client.time()
        older_than = seconds + micros / 1e6 - self.dead_letter_retention_seconds
        ids = self.client.zrangebyscore(self.keys.dead, "-inf", _calls.ms(older_than), start=0,
                                        num=5000)  # fmt: skip
        if not ids:
            return 0
        with self.client.pipeline(transaction=True) as pipe:
            pipe.zrem(self.keys.dead, *ids)
            pipe.hdel(self.keys.dead_messages, *ids)
            pipe.execute()
        return len(ids)

    def index_keys(self) -> list[str]:
        """Every index sorted set (found by pattern: the task set is open-ended)."""
        return [text_of(k) for k in self.client.scan_iter(match=self.keys.index_pattern, count=500)]

    # -- consumers (the reliable transport's bookkeeping) ---------------------------------

    def heartbeat(self, consumer: str, queues: Sequence[str]) -> None:
        """Record that `consumer` is alive and consuming `queues` (at Redis' clock)."""
        HEARTBEAT.run(self.client, [self.keys.prefix, consumer, "0", *queues])

    def retire(self, consumer: str, queues: Sequence[str]) -> None:
        """Mark `consumer` gone at once (a clean stop), so its in-flight lists are recovered."""
        HEARTBEAT.run(self.client, [self.keys.prefix, consumer, "1", *queues])

    def recover_inflight(self, ttl_seconds: float) -> int:
        """Requeue the in-flight messages of consumers silent for longer than `ttl_seconds`
        (by Redis' clock).
        """
        return sum(
            int(RECOVER_INFLIGHT.run(self.client, [self.keys.prefix, str(queue), "", ttl_seconds]))
            for queue in Queue
        )

    def sweep_flow(self, unacked_key: str, tenant_limit: int) -> int:
        """Flow control's upkeep (`fairq.sweep`): slots whose release was lost, tokens of
        tenants that may run again. Returns the slots released.
        """
        return fairq.sweep(self.client, self.keys, unacked_key, tenant_limit)

    def prune_dead_nodes(self, ttl_seconds: float) -> int:
        """Drop the remote-control bindings (and mailboxes) of worker nodes whose consumer has
        been silent for `ttl_seconds`: a SIGKILLed worker leaves its binding behind, and every
        revoke broadcast would go on copying into its mailbox. Returns how many went.
        """
        seconds, micros = self.client.time()
        alive_since = seconds + micros / 1e6 - ttl_seconds
        dead = []
        for raw in self.client.smembers(self.keys.pidbox_bindings):
            member = text_of(raw)
            node = _NODE.match(member.rsplit(_KOMBU_SEP, 1)[-1])
            if node is None:
                continue  # not a Conveyor worker's node: not ours to judge
            live = self.client.zrangebyscore(self.keys.consumers(node["queue"]), alive_since,
                                             "+inf")  # fmt: skip
            prefix = f"{node['host']}:{node['pid']}:"
            if not any(text_of(c).startswith(prefix) for c in live):
                dead.append((member, member.rsplit(_KOMBU_SEP, 1)[-1]))
        if dead:
            with self.client.pipeline(transaction=False) as pipe:
                for member, mailbox in dead:
                    pipe.srem(self.keys.pidbox_bindings, member)
                    pipe.delete(mailbox)
                pipe.execute()
        return len(dead)

    def renew_leases(self, unacked_index: str, leases: Sequence[Lease]) -> Renewal:
        """Renew this worker's deliveries' leases and their runs in the running sets, at
        Redis' clock: those in their start grace, and after it those whose run started
        (the record names the delivery); the others are left to lapse.
        """
        if not leases:
            return Renewal(0)
        groups = [(lease.tag, lease.queue, lease.job_id, "1" if lease.in_grace else "0")
                  for lease in leases]  # fmt: skip
        args = [self.keys.prefix, unacked_index, *(item for group in groups for item in group)]
        renewed, *lapsed = RENEW.run(self.client, args)
        return Renewal(int(renewed), tuple(text_of(job_id) for job_id in lapsed))

    def stuck_runs(
        self, queue: str, older_than_seconds: float, limit: int = 100
    ) -> list[tuple[str, float]]:
        """`(job id, running-set score)` of the queue's runs nobody renewed for
        `older_than_seconds` (by Redis' clock).
        """
        seconds, _ = self.client.time()
        ceiling = seconds - older_than_seconds
        rows: list[Any] = self.client.zrangebyscore(
            self.keys.running(queue), "-inf", ceiling, 0, limit, withscores=True
        )
        return [(text_of(job_id), float(score)) for job_id, score in rows]

    def unacked_job_ids(self, unacked_key: str) -> set[str]:
        """Ids of the jobs whose delivery is unacked (kombu restores those itself)."""
        ids = set()
        for _, raw in self.client.hscan_iter(unacked_key, count=500):
            try:
                ids.add(str(orjson.loads(raw)[0]["headers"]["id"]))
            except (orjson.JSONDecodeError, KeyError, IndexError, TypeError):
                continue
        return ids

    def generation(self, job_id: str) -> int:
        """The generation of the job's current message (0 before any retry or replay)."""
        return int(self.client.hget(self.keys.job(job_id), "generation") or 0)

    def repair(
        self, job_id: str, message: bytes, seen_score: float, generation: int, attempts: int
    ) -> bool:
        """Queue an abandoned run again (see repair.lua); False if it moved on meanwhile."""
        args = [self.keys.prefix, job_id, message, repr(seen_score), generation, attempts]
        return bool(int(REPAIR.run(self.client, args)))
