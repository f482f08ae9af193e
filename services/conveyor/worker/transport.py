# The kombu stubs do not describe the Redis channel's internals this module extends.
# mypy: disable-error-code="attr-defined, misc"
"""kombu's Redis transport with reliable consumption (no message lost between pop and ack).

Stock kombu takes a message with BRPOP and only then records it as unacked. A worker killed
in between, or with BRPOP's reply still in its socket buffer, loses that message for good:
Redis has already removed it. Here the pop is a BLMOVE into this consumer's own in-flight
list, and `claim.lua` moves it from there to the unacked set in one step, only if it is still
there (a consumer that looked dead and had its list requeued drops the delivery instead).
At every moment the message is in the queue, in the in-flight list, or unacked; the
in-flight list of a consumer that died is moved back to the queue by `recover_inflight`
(run by every worker and by beat) once its heartbeat in the queue's consumer set is older
than a lease period. While a tier has a backlog, a consumer whose last poll delivered takes
its next token inside `claim.lua` instead (one atomic step, no in-flight list): one round
trip per delivery.

The queue list holds ready tokens, not messages (`conveyor.jobstore.fairq`): the claim picks
the tier's next message in fair order among tenants. Every way kombu puts a message on a
queue (a restore, a publish) goes through the same fair push.

Requires Redis >= 7.0 (BLMOVE; the job store's script flags) and one Redis list per queue
(priority steps `[0]`: Conveyor's tiers are its priorities).
"""

import logging
import os
import secrets
import socket
from functools import cached_property, partial
from queue import Empty
from time import monotonic
from typing import Any, NoReturn

import redis
from kombu.transport import redis as kombu_redis
from kombu.transport import virtual
from kombu.utils.encoding import bytes_to_str
from kombu.utils.json import dumps, loads
from kombu.utils.uuid import uuid as kombu_uuid

from conveyor.core.messages import DUE_AT_HEADER, ENQUEUED_AT_HEADER, TENANT_HEADER
from conveyor.core.queues import Queue
from conveyor.core.redis import PrimaryConnection, PrimarySSLConnection
from conveyor.jobstore import fairq
from conveyor.jobstore.keys import KeySpace

log = logging.getLogger(__name__)

# Conveyor's tiers: their lists hold ready tokens (fairq). Any other queue (Celery's
# remote-control replies) is kombu's own list of messages, consumed with BRPOP.
TIERS = frozenset(str(queue) for queue in Queue)
# The broker transport options naming Conveyor's key prefix and a tenant's default concurrency
# limit per tier (`celery_config` sets them).
KEY_PREFIX_OPTION = "conveyor_key_prefix"
TENANT_LIMIT_OPTION = "conveyor_tenant_limit"
# Deferred acks kept for another try after a failed write, at most (beyond, they are left to
# their leases).
MAX_DEFERRED_ACKS = 10_000
# The longest a pub/sub read on the event loop waits: a message read in pieces (a large
# broadcast, TLS records, replies piled up while the loop was busy) needs its rest, which
# follows within milliseconds; 0 here lost such a message (the read timed out, and redis-py
# reconnected and dropped what it had).
PUBSUB_READ_SECONDS = 2.0
# A fresh token per process: in a container `conveyor` is PID 1 after every restart, and a
# restarted consumer must not inherit (and keep "alive") its predecessor's in-flight list.
_TOKEN = secrets.token_hex(4)
_TOKEN_PID = os.getpid()


def consumer_id() -> str:
    """The identity of this process in in-flight list names and consumer sets."""
    global _TOKEN, _TOKEN_PID
    if os.getpid() != _TOKEN_PID:
        _TOKEN, _TOKEN_PID = secrets.token_hex(4), os.getpid()
    return f"{socket.gethostname()}:{os.getpid()}:{_TOKEN}"


class ReliableQoS(kombu_redis.QoS):
    """kombu's QoS, except that a delivery claimed by `claim.lua` is already recorded, and
    leases are judged at Redis' clock.
    """

    channel: "ReliableChannel"

    def restore_visible(self, start: int = 0, num: int = 10, interval: int = 10) -> None:
        """Kombu's sweep of expired deliveries, with the expiry computed from Redis' clock
        (leases are written at it): a worker whose clock runs ahead no longer takes live
        deliveries from others.
        """
        self._vrestore_count += 1
        if (self._vrestore_count - 1) % (interval or 1):
            return
        with self.channel.conn_or_acquire() as client:
            seconds, micros = client.time()
            ceil = seconds + micros / 1e6 - self.visibility_timeout
            try:
                with kombu_redis.Mutex(client, self.unacked_mutex_key, self.unacked_mutex_expire):
                    visible = client.zrange(self.unacked_index_key, ceil, 0, desc=True,
                                            byscore=True, offset=num and start, num=num,
                                            withscores=True)  # fmt: skip
                    for tag, _ in visible or []:
                        self.restore_by_tag(tag, client)
            except kombu_redis.MutexHeld:
                pass
            except redis.exceptions.ResponseError as exc:
                # Run at every (re)connection: a refusal here ended the worker.
                raise _transient(exc) from exc

    # A deferred ack write Redis did not answer is tried again after this long.
    RETRY_AFTER_SECONDS = 1.0

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._deferred: list[str] = []
        self._retry_at = 0.0

    def ack(self, delivery_tag: str) -> None:
        """Kombu's ack, with the release of the delivery's flow-control slots in the same
        round trip (a release lost to a failover is made by the beat leader's sweep).

        On an event loop the ack is written before the next poll (or at the loop's next
        round), with the other acks of this round, in one round trip (`flush_acks`): the
        worker's main process spent two fifths of its time waiting for one ack at a time
        (py-spy, a backlog drain). The delivery is let go of at once, so its prefetch slot
        is free; a worker that dies before the write leaves it unacked in Redis, where its
        lease runs out and the restored message is skipped (its job is finished), as after a
        lost ack.
        """
        # A channel Celery collected after a lost connection has no transport any more: its
        # ack is written at once, through the pool it still holds, or fails as a connection
        # error (Celery logs it).
        if getattr(self.channel.connection, "defers_acks", False):
            virtual.QoS.ack(self, delivery_tag)
            self._deferred.append(delivery_tag)
            return
        try:
            self._write_acks([delivery_tag])
        except redis.exceptions.RedisError as exc:
            self._forget(delivery_tag, exc)
        virtual.QoS.ack(self, delivery_tag)

    def flush_acks(self) -> None:
        """Write the deferred acks. A write Redis did not answer is tried again a little
        later while the channel is open (the writes are idempotent, and a restored message
        has a new tag); acks it refused, or that are left when the channel closes, stay
        unacked in Redis, to be restored after their lease and skipped. Logged, never raised
        into the event loop.
        """
        if not self._deferred or monotonic() < self._retry_at:
            return
        tags, self._deferred = self._deferred, []
        try:
            self._write_acks(tags)
        except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError) as exc:
            if self.channel.closed or len(tags) + len(self._deferred) > MAX_DEFERRED_ACKS:
                log.warning("could not ack %d deliveries (%s); their leases run out and their "
                            "finished jobs are skipped when restored", len(tags), exc)  # fmt: skip
                return
            self._deferred[:0] = tags
            self._retry_at = monotonic() + self.RETRY_AFTER_SECONDS
            log.warning("could not ack %d deliveries (%s); trying again in %.0f s",
                        len(tags), exc, self.RETRY_AFTER_SECONDS)  # fmt: skip
        except redis.exceptions.RedisError as exc:
            log.warning("could not ack %d deliveries (%s); their leases run out and their "
                        "finished jobs are skipped when restored", len(tags), exc)  # fmt: skip
        except Exception:  # on the event loop: logged, never the end of the worker
            log.exception("could not ack %d deliveries; their leases run out and their "
                          "finished jobs are skipped when restored", len(tags))  # fmt: skip

    def _write_acks(self, tags: list[str]) -> None:
        pipe = self.channel.own_client.pipeline()
        for tag in tags:
            super()._remove_from_indices(tag, pipe)
        released = self.channel.release_in(pipe, tags)
        results = pipe.execute(raise_on_error=False)
        if not released or isinstance(results[-1], redis.exceptions.ResponseError):
            self.channel.release_slots(tags)  # the script was not loaded yet

    def reject(self, delivery_tag: str, requeue: bool = False) -> None:
        """Kombu's reject; a requeue releases the slots in its restore, a drop here."""
        try:
            super().reject(delivery_tag, requeue)
        except redis.exceptions.RedisError as exc:
            self._forget(delivery_tag, exc)
        if not requeue:
            self.channel.release_slots([delivery_tag])

    def _forget(self, delivery_tag: str, exc: "redis.exceptions.RedisError") -> NoReturn:
        """An ack or reject Redis refused or never answered: the delivery stays unacked in
        Redis (its lease runs out and it is restored, and a finished job's next delivery is
        skipped), so this consumer lets go of it. Held, it kept its prefetch slot for ever: a
        worker of concurrency 1 stopped consuming after one refused ack. Raised as a
        connection error, Celery logs the failed ack and goes on.
        """
        virtual.QoS.ack(self, delivery_tag)
        if isinstance(exc, redis.exceptions.ResponseError):
            raise _transient(exc) from exc
        raise exc

    def _remove_from_indices(self, delivery_tag: str, pipe: Any = None) -> Any:
        """Kombu's removal of the unacked record; inside a restore (a pipe given) the slots
        are released in the same transaction.
        """
        result = super()._remove_from_indices(delivery_tag, pipe)
        if pipe is not None:
            fairq.release(pipe, self.channel.keys, [delivery_tag], self.channel.tenant_limit)
        return result

    def append(self, message: Any, delivery_tag: str) -> None:
        """Track the delivery; write the unacked record unless the claim did."""
        if self.channel.claimed_tag == delivery_tag:
            self.channel.claimed_tag = None
            virtual.QoS.append(self, message, delivery_tag)
            return
        super().append(message, delivery_tag)


class ReliableChannel(kombu_redis.Channel):
    """Consumes with BLMOVE into an in-flight list when it polls a single list."""

    QoS = ReliableQoS
    # kombu sets each of these attributes from the broker's transport options.
    from_transport_options = (
        *kombu_redis.Channel.from_transport_options,
        KEY_PREFIX_OPTION,
        TENANT_LIMIT_OPTION,
    )
    conveyor_key_prefix = "conveyor"
    # A tenant's running deliveries per tier unless its own limit is set (0 = none).
    conveyor_tenant_limit = 0
    # One list per tier (Conveyor's tiers are its priorities), unless the options say otherwise.
    priority_steps = [0]  # noqa: RUF012 - kombu's attribute (the options replace it)
    claimed_tag: str | None = None
    _claim_client: Any = None
    _release_loaded = False
    # The claim script is known loaded (a claim through `_claim_client` ran it), and the last
    # poll delivered: the next poll takes and claims in one step (claim.lua's take) instead of
    # a blocking pop and a claim, one round trip fewer per delivery while a backlog lasts.
    _claim_loaded = False
    _take_next = False
    _taking = False
    _inflight_source: str | None = None
    _poll_others = False
    # True for every new channel: after a reconnect Celery builds a fresh channel, and a
    # message the old one had moved may still sit in this consumer's in-flight list.
    _inflight_suspect = True

    @cached_property
    def keys(self) -> KeySpace:
        """Conveyor's key names, under the prefix of the broker's transport options."""
        return KeySpace(self.conveyor_key_prefix)

    @property
    def tenant_limit(self) -> int:
        """A tenant's running deliveries per tier unless its own limit is set (0 = none)."""
        return int(self.conveyor_tenant_limit or 0)

    @cached_property
    def subclient(self) -> Any:
        """The pub/sub client (remote control, fanout queues), its reads bounded in time.

        The event loop reads it when its socket turns readable, and kombu asks for a blocking
        read. redis-py reconnects inside that read when the socket has failed, and redis-py 8
        then waits for the next message without any timeout: after a Redis restart the worker
        met late (busy, or descheduled), the end of the old connection became a fresh
        subscription and a wait for a broadcast that may never come, with the whole event
        loop stopped. No job was fetched again, and finished jobs were never acknowledged.
        Here a read waits at most `PUBSUB_READ_SECONDS`: for the rest of a message that has
        begun to arrive (one that never completes is lost with its connection, as before),
        or, after a reconnect inside the read, for the new subscription's confirmation.
        """
        pubsub = self._create_client(asynchronous=True).pubsub()
        pubsub.parse_response = partial(
            pubsub.parse_response, block=False, timeout=PUBSUB_READ_SECONDS
        )
        return pubsub

    @property
    def own_client(self) -> Any:
        """The channel's blocking client for its claims, acks and releases: one for all
        (kombu's conn_or_acquire builds a new redis.Redis per call, a tenth of the main
        process's CPU per delivery, measured with py-spy).
        """
        if self._claim_client is None:
            self._claim_client = self._create_client(asynchronous=False)
        return self._claim_client

    def release_in(self, pipe: Any, tags: list[str]) -> bool:
        """Queue the release of deliveries' slots in `pipe` (EVALSHA: False until this
        channel has loaded the script once, through `release_slots`).
        """
        if not self._release_loaded:
            return False
        fairq.release_by_sha(pipe, self.keys, tags, self.tenant_limit)
        return True

    def release_slots(self, tags: list[str]) -> None:
        """Release the flow-control slots of finished deliveries."""
        try:
            fairq.release(self.own_client, self.keys, tags, self.tenant_limit)
            self._release_loaded = True
        except redis.exceptions.RedisError as exc:
            # The beat leader's sweep releases slots whose delivery is no longer unacked.
            log.warning("could not release the slots of %s now (%s); the sweep will", tags, exc)

    def close(self) -> None:
        """Write the deferred acks first: closed with them pending, the channel's deliveries
        would be left to their leases (and then skipped) instead of acked.
        """
        qos = self._qos
        if qos is not None:
            qos.flush_acks()
        try:
            super().close()
        finally:
            # kombu's close reads a poll still under way: a delivery it brings that is acked
            # at once (a message that cannot be decoded) is written here.
            if qos is not None:
                qos.flush_acks()

    def _get_pool(self, asynchronous: bool = False) -> Any:
        # kombu builds the pool lazily; a reject or ack on a channel whose connection was
        # already closed, or the restore of its unacked messages as Celery closes it after a
        # lost connection, then fails with an AttributeError (`'NoneType' object has no
        # attribute 'hostname'`) that ends the worker: seen after a Sentinel failover, and
        # after a `kill -9` of a standalone Redis (2 of 3 workers exited). As a connection
        # error it is retried or ignored (the messages stay unacked and are restored).
        if self.connection is None or self.connection.client is None:
            raise redis.exceptions.ConnectionError("broker connection already closed")
        return super()._get_pool(asynchronous)

    def _brpop_start(self, timeout: float | None = None) -> None:
        # The slots of the acks pending go back before this poll claims (kombu may start the
        # poll before the tick's flush): a take would otherwise meet a tenant or gate still
        # at its limit.
        qos = self._qos
        if qos is not None:
            qos.flush_acks()
        if timeout is None:
            timeout = self.brpop_timeout
        queues = self._queue_cycle.consume(len(self.active_queues))
        if not queues:
            return
        keys = [self._q_for_pri(queue, pri) for pri in self.priority_steps for queue in queues]
        tiers = [key for key in keys if key in TIERS]
        others = [key for key in keys if key not in TIERS]
        mixed = bool(tiers and others)
        if mixed:  # tiers and kombu's own lists on one channel: poll them in turn
            self._poll_others = not self._poll_others
        if tiers and not self.global_keyprefix and not (mixed and self._poll_others):
            if self._inflight_suspect:
                for tier in tiers:
                    self._hand_back(tier)
            # A ready token must be claimed, never delivered as a message: one tier per poll.
            # Conveyor's workers serve one; a Celery app consuming several waits on each in
            # turn (the cycle rotates after every poll), at most a second at a time.
            source = tiers[0]
            wait = (timeout or 0) if len(keys) == 1 else min(timeout or 1, 1)
            self._inflight_source = source
            self._in_poll = self.client.connection
            self._brpop_sent_at = monotonic()
            self._taking = self._take_next and self._claim_loaded
            if self._taking:
                take = fairq.take_command(self.keys, source, self.unacked_key,
                                          self.unacked_index_key, self.tenant_limit)  # fmt: skip
                self.client.connection.send_command(*take)
                return
            destination = self.keys.inflight(consumer_id(), source)
            self.client.connection.send_command(
                "BLMOVE", source, destination, "RIGHT", "LEFT", wait
            )
            return
        # Not a tier (Celery's remote-control replies): kombu's own BRPOP.
        self._inflight_source = None
        self._in_poll = self.client.connection
        self._brpop_sent_at = monotonic()
        if mixed and not self.global_keyprefix:
            keys, timeout = others, min(timeout or 1, 1)
        command = ["BRPOP", *keys, timeout or 0]
        if self.global_keyprefix:
            command = self.client._prefix_args(command)
        self.client.connection.send_command(*command)

    def _brpop_read(self, **options: Any) -> bool:
        source = self._inflight_source
        if source is None:
            result: bool = super()._brpop_read(**options)
            return result
        taking, self._taking = self._taking, False
        try:
            try:
                try:
                    item = self.client.parse_response(
                        self.client.connection, "EVALSHA" if taking else "BLMOVE", **options
                    )
                except redis.exceptions.NoScriptError:
                    # A new primary or a flushed script cache: block and claim as usual (the
                    # claim loads it again).
                    self._claim_loaded = self._take_next = False
                    raise Empty() from None
                except redis.exceptions.ResponseError as exc:
                    raise _transient(exc) from exc
            except self.connection_errors:
                # The reply may have been lost with a message already moved: hand back
                # whatever is in our in-flight list before the next pop.
                self._inflight_suspect = True
                self.client.connection.disconnect()
                raise
            self._queue_cycle.rotate(source)
            if item is None:
                self._take_next = False
                raise Empty()
            try:
                if taking:
                    self._deliver(item, source)
                else:
                    self._deliver_claimed(source, item)
            except BaseException:
                self._inflight_suspect = True
                raise
            return True
        finally:
            self._in_poll = None
            self._flush_brpop_reauth()

    def _deliver_claimed(self, source: str, token: bytes) -> None:
        key = self.keys.inflight(consumer_id(), source)
        try:
            item = fairq.claim(self.own_client, self.keys, source, key, token,
                               self.unacked_key, self.unacked_index_key,
                               self.tenant_limit)  # fmt: skip
        except redis.exceptions.ResponseError as exc:
            raise _transient(exc) from exc
        self._claim_loaded = True
        if item is None:
            self._take_next = False
            log.warning("a ready token of %s was requeued while this consumer looked dead, "
                        "or had no message; dropped", source)  # fmt: skip
            return
        self._deliver(item, source)

    def _deliver(self, item: bytes, source: str) -> None:
        """Hand a claimed message (its unacked record written by the claim) to Celery."""
        payload = loads(bytes_to_str(item))
        self.claimed_tag = payload["properties"]["delivery_tag"]
        self._take_next = True
        try:
            self.connection._deliver(payload, source)
        finally:
            self.claimed_tag = None

    def _do_restore_message(
        self, payload: Any, exchange: str, routing_key: str, pipe: Any, leftmost: bool = False
    ) -> None:
        """Put an expired (or rejected) delivery's message back on its tenant's list, where
        its next claim takes it (`leftmost`: at the back), with a new delivery tag: the worker
        that held it may still be alive (paused) and will ack its old tag, which must not
        remove the lease of the message's next delivery.
        """
        payload["properties"]["delivery_tag"] = kombu_uuid()
        try:
            payload["headers"]["redelivered"] = True
            payload["properties"]["delivery_info"]["redelivered"] = True
        except KeyError:
            pass
        for queue in self._lookup(exchange, routing_key):
            if queue in TIERS:
                self._fair_push(pipe, queue, payload, front=not leftmost)
            else:  # kombu's own
                (pipe.lpush if leftmost else pipe.rpush)(queue, dumps(payload))

    def _get(self, queue: str, timeout: float | None = None) -> Any:
        """A non-blocking get (`basic_get`): a ready token claimed as `_brpop_read` claims it."""
        if queue not in TIERS:
            return super()._get(queue, timeout)
        inflight = self.keys.inflight(consumer_id(), queue)
        with self.conn_or_acquire() as client:
            token = client.lmove(queue, inflight, "RIGHT", "LEFT")
            if token is None:
                raise Empty()
            item = fairq.claim(client, self.keys, queue, inflight, token,
                               self.unacked_key, self.unacked_index_key,
                               self.tenant_limit)  # fmt: skip
        if item is None:
            raise Empty()
        payload = loads(bytes_to_str(item))
        # basic_get tracks the delivery next: its unacked record is written already.
        self.claimed_tag = payload["properties"]["delivery_tag"]
        return payload

    def basic_get(self, queue: str, no_ack: bool = False, **kwargs: Any) -> Any:
        """Kombu's basic_get; without ack, the claimed delivery is finished at once (its
        unacked record and slots go), as kombu's own get removes the message.
        """
        message = super().basic_get(queue, no_ack, **kwargs)
        if message is not None and no_ack and queue in TIERS:
            self.claimed_tag = None
            self.qos.ack(str(message.delivery_tag))
        return message

    def _put(self, queue: str, message: Any, **kwargs: Any) -> None:
        """A publish through kombu (not Conveyor's own path: the API and beat write messages
        in the accept script) joins the fair queue like any other.
        """
        if queue not in TIERS:
            super()._put(queue, message, **kwargs)
            return
        with self.conn_or_acquire() as client:
            self._fair_push(client, queue, message, front=False)

    def _purge(self, queue: str) -> int:
        """Refused: dropping messages would leave their jobs `queued` for ever (cancel them
        through the API instead).
        """
        if queue not in TIERS:
            result: int = super()._purge(queue)
            return result
        raise NotImplementedError(
            f"purging {queue} is not supported: cancel its jobs through the Conveyor API"
        )

    def _fair_push(self, client: Any, queue: str, payload: Any, *, front: bool) -> None:
        headers = payload.get("headers") or {}
        ready = max(float(headers.get(ENQUEUED_AT_HEADER) or 0.0),
                    float(headers.get(DUE_AT_HEADER) or 0.0)) or None  # fmt: skip
        fairq.push(client, self.keys, queue, str(headers.get(TENANT_HEADER) or ""),
                   [dumps(payload)], ready=ready, front=front)  # fmt: skip

    def _hand_back(self, source: str) -> None:
        """Move anything left in our own in-flight list back to the queue."""
        key = self.keys.inflight(consumer_id(), source)
        with self.conn_or_acquire() as client:
            moved = 0
            while client.lmove(key, source, "RIGHT", "RIGHT") is not None:
                moved += 1
        if moved:
            log.warning("handed %d in-flight message(s) back to %s after an error", moved, source)
        self._inflight_suspect = False


# Refusals a Redis gives while it cannot serve writes for a while: out of memory under
# `noeviction`, a replica during a failover, loading its data after a restart. A worker
# backs off and reconnects (kombu's connection-error path) instead of exiting.
# With Sentinel also: an isolated old primary refusing writes (`min-replicas-to-write`), and a
# blocked pop that a demotion to replica ended.
TRANSIENT_REFUSALS = (
    "OOM",
    "READONLY",
    "LOADING",
    "MASTERDOWN",
    "TRYAGAIN",
    "NOREPLICAS",
    "UNBLOCKED",
)


def refusal_code(exc: "redis.exceptions.ResponseError") -> str:
    """The error code of a refusal: redis-py 8 strips it from the message of the errors it
    has a class for (READONLY, OOM, ...) and keeps it as `status_code`.
    """
    code: str | None = getattr(exc, "status_code", None)
    return code or str(exc).split(" ", 1)[0]


def _transient(exc: "redis.exceptions.ResponseError") -> Exception:
    """A transient refusal as a connection error (retried), anything else as it is."""
    if refusal_code(exc) in TRANSIENT_REFUSALS:
        log.warning("Redis refused for now (%s %s); reconnecting", refusal_code(exc), exc)
        return redis.exceptions.ConnectionError(str(exc))
    return exc


class DeferredAcks:
    """Transport mixin: on an event loop, each channel's acks of one round are written before
    its next poll or at the next round (`ReliableQoS.ack`); without one (a drain outside
    Celery's loop, a `basic_get`) every ack is written at once.
    """

    defers_acks = False
    channels: list[Any]

    _loop: Any = None

    def register_with_event_loop(self, connection: Any, loop: Any) -> None:
        """Register as kombu does, and flush the deferred acks on each tick of `loop`."""
        super().register_with_event_loop(connection, loop)
        self.defers_acks = True
        self._loop = loop
        loop.on_tick.add(self.flush_acks)

    def close_connection(self, connection: Any) -> None:
        """Close as kombu does (each channel writes its deferred acks as it closes), and
        leave the event loop: a reconnect registers the new connection's transport.
        """
        try:
            super().close_connection(connection)
        finally:
            if self._loop is not None:
                self._loop.on_tick.discard(self.flush_acks)

    def flush_acks(self) -> None:
        """Write every channel's deferred acks."""
        for channel in list(self.channels):
            qos = channel._qos
            if qos is not None:
                qos.flush_acks()


class ReliableTransport(DeferredAcks, kombu_redis.Transport):
    """The Redis transport with `ReliableChannel` (`celery_config.TRANSPORT` names it)."""

    Channel = ReliableChannel


class ReliableSentinelChannel(ReliableChannel, kombu_redis.SentinelChannel):
    """`ReliableChannel` whose connections go to the primary the Sentinels name: each
    reconnect asks them again, and a connection to a demoted primary (READONLY) is dropped.
    """

    from_transport_options = (
        *kombu_redis.SentinelChannel.from_transport_options,
        KEY_PREFIX_OPTION,
        TENANT_LIMIT_OPTION,
    )
    # A failover can leave a message in this consumer's in-flight list on the new primary
    # without any error on this channel (the old primary moved it, replicated the move and
    # died before its reply; measured in the Sentinel fault tests): hand back leftovers at
    # most this often. Safe at any poll: the previous delivery was claimed out of the list.
    HAND_BACK_EVERY_SECONDS = 1.0
    # Leave an isolated old primary that refuses writes (NOREPLICAS) like a demoted one:
    # kombu's own commands (its unacked mutex, restores) otherwise end the worker.
    connection_class = PrimaryConnection
    connection_class_ssl = PrimarySSLConnection
    _handed_back_at = 0.0

    def _brpop_start(self, timeout: float | None = None) -> None:
        if monotonic() - self._handed_back_at >= self.HAND_BACK_EVERY_SECONDS:
            self._handed_back_at = monotonic()
            self._inflight_suspect = True
        super()._brpop_start(timeout)


class ReliableSentinelTransport(DeferredAcks, kombu_redis.SentinelTransport):
    """The Sentinel transport with `ReliableSentinelChannel` (`celery_config` names it)."""

    Channel = ReliableSentinelChannel
