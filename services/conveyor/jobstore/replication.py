"""Replicated acknowledgement (`REDIS_REPLICATION__ACK_REPLICAS`): how many replicas have a
connection's writes, asked on the connection that wrote them.
"""

import redis.asyncio

from conveyor.core.settings import ReplicationSettings


async def confirmed_replicas(
    conn: "redis.asyncio.Redis", prefix: str, replication: ReplicationSettings, replayed: bool
) -> int:
    """WAIT for `replication.ack_replicas` replicas to have this connection's writes. A replay
    wrote nothing: a propagated no-op first moves the connection's offset past the original
    write, which a first try may have left unconfirmed.
    """
    if replayed:
        await conn.publish(f"{prefix}:replication-barrier", "")
    return int(
        await conn.execute_command(  # type: ignore[no-untyped-call]
            "WAIT", replication.ack_replicas, replication.ack_timeout_ms
        )
    )
