# The kombu stubs do not describe the Redis channel's internals this module extends.
# mypy: disable-error-code="attr-defined, misc"
"""kombu's Redis transport with reliable consumption (no message lost between pop and ack).

Stock kombu takes a message with BRPOP and only then records it as unacked. A worker killed
in between, or with BRPOP's reply still in its socket buffer, loses that message for good:
Redis has already removed it. Here the pop is a BLMOVE into this consumer's own in-flight
list, and the message leaves that list in the same MULTI/EXEC that records it as unacked.
At every moment the message is in the queue, in the in-flight list, or unacked; the
in-flight list of a consumer that died is moved back to the queue by `recover_inflight`
(run by every worker and by beat) once its heartbeat in the queue's consumer set is older
than a lease period.

Requires Redis >= 6.2 (BLMOVE) and one Redis list per queue (priority steps `[0]`: Conveyor's
tiers are its priorities).
"""

import os
import socket
from queue import Empty
from time import monotonic, time
from typing import Any, ClassVar

from kombu.transport import redis as kombu_redis
from kombu.transport import virtual
from kombu.utils.encoding import bytes_to_str
from kombu.utils.json import dumps, loads

from conveyor.core.keys import Keys


def consumer_id() -> str:
    """The identity of this process in in-flight list names and consumer sets."""
    return f"{socket.gethostname()}:{os.getpid()}"


class ReliableQoS(kombu_redis.QoS):
    """Records a delivery as unacked and drops it from the in-flight list atomically."""

    channel: "ReliableChannel"

    def append(self, message: Any, delivery_tag: str) -> None:
        """Kombu's append, plus LREM from the in-flight list in the same transaction."""
        pending = self.channel.take_inflight()
        if pending is None:
            super().append(message, delivery_tag)
            return
        key, raw = pending
        delivery = message.delivery_info
        record = dumps([message._raw, delivery["exchange"], delivery["routing_key"]])
        with self.pipe_or_acquire() as pipe:
            pipe.zadd(self.unacked_index_key, {delivery_tag: time()})
            pipe.hset(self.unacked_key, delivery_tag, record)
            pipe.lrem(key, 1, raw)
            pipe.execute()
        virtual.QoS.append(self, message, delivery_tag)


class ReliableChannel(kombu_redis.Channel):
    """Consumes with BLMOVE into an in-flight list when it polls a single list."""

    QoS = ReliableQoS
    keys: ClassVar[Keys]
    _inflight_source: str | None = None
    _inflight_pending: tuple[str, bytes] | None = None

    def take_inflight(self) -> tuple[str, bytes] | None:
        """The in-flight entry of the delivery being recorded, handed over once."""
        pending, self._inflight_pending = self._inflight_pending, None
        return pending

    def _brpop_start(self, timeout: float | None = None) -> None:
        if timeout is None:
            timeout = self.brpop_timeout
        queues = self._queue_cycle.consume(len(self.active_queues))
        if not queues:
            return
        keys = [self._q_for_pri(queue, pri) for pri in self.priority_steps for queue in queues]
        self._in_poll = self.client.connection
        self._brpop_sent_at = monotonic()
        if len(keys) == 1 and not self.global_keyprefix:
            source = self._inflight_source = keys[0]
            destination = self.keys.inflight(consumer_id(), source)
            self.client.connection.send_command(
                "BLMOVE", source, destination, "RIGHT", "LEFT", timeout or 0
            )
        else:  # several lists: kombu's own BRPOP (not used by Conveyor's workers)
            self._inflight_source = None
            command = ["BRPOP", *keys, timeout or 0]
            if self.global_keyprefix:
                command = self.client._prefix_args(command)
            self.client.connection.send_command(*command)

    def _brpop_read(self, **options: Any) -> bool:
        source = self._inflight_source
        if source is None:
            result: bool = super()._brpop_read(**options)
            return result
        try:
            try:
                item = self.client.parse_response(self.client.connection, "BLMOVE", **options)
            except self.connection_errors:
                self.client.connection.disconnect()
                raise
            if item is None:
                raise Empty()
            self._queue_cycle.rotate(source)
            key = self.keys.inflight(consumer_id(), source)
            self._inflight_pending = (key, item)
            self.connection._deliver(loads(bytes_to_str(item)), source)
            if self.take_inflight() is not None:
                # Delivered without an unacked record (a no-ack consumer): nothing to keep.
                with self.conn_or_acquire() as client:
                    client.lrem(key, 1, item)
            return True
        finally:
            self._in_poll = None
            self._flush_brpop_reauth()


class ReliableTransport(kombu_redis.Transport):
    """The Redis transport with `ReliableChannel`; `bind_transport` makes one per app."""

    Channel = ReliableChannel


def bind_transport(keys: Keys) -> type[ReliableTransport]:
    """A transport class whose channels name their in-flight lists under `keys`."""
    channel = type("BoundReliableChannel", (ReliableChannel,), {"keys": keys})
    return type("BoundReliableTransport", (ReliableTransport,), {"Channel": channel})
