"""The asyncio clients pack commands with hiredis (core/redis.py): the same bytes as
redis-py's own packer, the same refusals, on every kind of connection the API makes.
"""

import random
import struct
from typing import Any

import pytest
import redis
import redis.asyncio

from conveyor.core.redis import (
    AsyncConnection,
    AsyncPrimaryConnection,
    AsyncSSLConnection,
    AsyncUnixConnection,
    HiredisCommands,
    async_client,
    stream_client,
)
from conveyor.core.settings import Settings

COMMANDS: list[tuple[Any, ...]] = [
    ("SET", "key", "value"),
    ("CLIENT SETNAME", "conveyor"),  # a command name of two words is split
    (b"CONFIG GET", b"maxmemory"),
    ("EVALSHA", "a" * 40, 3, "k1", "k2", "k3", -1, 2**70, 0.1 + 0.2, 1e-7, float("inf"), -0.0),
    ("XADD", "audit", "MAXLEN", "~", 1_000_000, "*", "entry", b'{"at":"1.5"}'),
    ("SET", "é\u2603\U0001f600", "\x00\r\n$*"),
    ("SET", bytearray(b"array"), memoryview(b"view")),
    ("SET", "big", b"x" * 100_000),  # past redis-py's buffer cutoff: it sends chunks
]


def python_packed(*args: Any) -> bytes:
    return b"".join(redis.asyncio.Connection().pack_command(*args))


@pytest.mark.parametrize("args", COMMANDS, ids=[str(i) for i in range(len(COMMANDS))])
def test_the_same_bytes_as_redis_pys_packer(args: tuple[Any, ...]) -> None:
    assert b"".join(AsyncConnection().pack_command(*args)) == python_packed(*args)


def test_a_strided_memoryview_is_sent_as_its_bytes() -> None:
    """hiredis packs a memoryview's underlying buffer, strides ignored ("abc" for this one);
    redis-py's Python packer refuses it, its blocking client sends `bytes(view)`."""
    view = memoryview(b"abcdef")[::2]
    packed = b"".join(AsyncConnection().pack_command("SET", "strided", view))
    assert packed == python_packed("SET", "strided", b"ace")


def test_every_float_is_written_as_redis_py_writes_it() -> None:
    rng = random.Random(7)
    for _ in range(20_000):
        value = struct.unpack("d", rng.randbytes(8))[0]
        if value != value:  # NaN: Redis refuses it either way
            continue
        assert b"".join(AsyncConnection().pack_command("X", value)) == python_packed("X", value)


@pytest.mark.parametrize("value", [None, True, object()], ids=["none", "bool", "object"])
def test_what_cannot_be_sent_is_a_data_error(value: object) -> None:
    with pytest.raises(redis.exceptions.DataError):
        python_packed("SET", "key", value)
    with pytest.raises(redis.exceptions.DataError):
        AsyncConnection().pack_command("SET", "key", value)


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("redis://127.0.0.1:6390/0", AsyncConnection),
        ("rediss://127.0.0.1:6390/0", AsyncSSLConnection),
        ("unix:///tmp/redis.sock?db=0", AsyncUnixConnection),
    ],
    ids=["tcp", "tls", "unix"],
)
async def test_each_scheme_gets_its_packing_connection(url: str, expected: type) -> None:
    settings = Settings(redis_url=url)
    for client in (async_client(settings), stream_client(settings, 5.0, 10)):
        assert client.connection_pool.connection_class is expected
        await client.aclose()


def test_sentinel_connections_pack_with_hiredis_too() -> None:
    assert issubclass(AsyncPrimaryConnection, HiredisCommands)


async def test_a_real_redis_reads_back_what_was_packed(settings: Settings) -> None:
    client = async_client(settings)
    try:
        assert client.connection_pool.connection_class is AsyncConnection
        text = "é\u2603\U0001f600 \r\n"
        await client.set("packed:text", text)
        assert await client.get("packed:text") == text
        values = [str(i) for i in range(1000)]
        count = await client.eval("return #ARGV", 0, *values)
        assert count == 1000
        async with client.pipeline(transaction=True) as pipe:
            pipe.rpush("packed:list", *values)
            pipe.lrange("packed:list", 998, -1)
            assert await pipe.execute() == [1000, ["998", "999"]]
    finally:
        await client.delete("packed:text", "packed:list")
        await client.aclose()
