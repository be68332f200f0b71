"""The Redis driver's own connections (``drivers/redis/wire.py``): replies in order, an
error reply in its place, a script the server lacks loaded and run, and a round trip
cut off (cancelled, timed out) never leaves a stale reply for the next one."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
import services

pytestmark = pytest.mark.services


@pytest.fixture
def key() -> Iterator[str]:
    host, port = services.redis_address()
    services.require("Redis", host, port, module="redis")
    name = f"wq-wire-{uuid.uuid4().hex[:10]}"
    yield name
    services.redis_delete_prefix(name)


@asynccontextmanager
async def wired(timeout_s: float = 5.0) -> AsyncIterator[tuple[Any, Any]]:
    """A wire and the client it was made from."""
    import redis.asyncio as aioredis

    from wippy_queue.drivers.redis.wire import Wire

    client = aioredis.Redis.from_url(services.REDIS_URL)
    wire = Wire(client, timeout_s=timeout_s)
    try:
        yield wire, client
    finally:
        await wire.close()
        await client.aclose()


async def test_replies_come_in_order_with_an_error_in_its_place(key: str) -> None:
    from redis.exceptions import ResponseError

    async with wired() as (wire, _):
        replies = await wire.call(
            [("RPUSH", key, "a"), ("INCR", key), ("RPUSH", key, "b"), ("LRANGE", key, 0, -1)]
        )
        assert replies[0] == 1 and replies[2] == 2
        assert isinstance(replies[1], ResponseError)  # INCR on a list: WRONGTYPE
        assert replies[3] == [b"a", b"b"]
        assert await wire.call([("LLEN", key)]) == [2]


async def test_a_script_the_server_lacks_is_loaded_and_run(key: str) -> None:
    # a source no server has seen, so its SHA is surely not cached (nothing is flushed)
    source = f"-- {uuid.uuid4().hex}\nreturn redis.call('RPUSH', KEYS[1], ARGV[1])"
    async with wired() as (wire, client):
        script = client.register_script(source)
        assert await wire.call([wire.evalsha(script, [key], ["x"])]) == [1]
        assert await client.lrange(key, 0, -1) == [b"x"]


async def test_a_cancelled_round_trip_leaves_no_stale_reply(key: str) -> None:
    async with wired() as (wire, client):
        blocked = asyncio.create_task(wire.call([("XREAD", "BLOCK", 5000, "STREAMS", key, "$")]))
        await asyncio.sleep(0.2)
        blocked.cancel()
        with pytest.raises(asyncio.CancelledError):
            await blocked
        await client.xadd(key, {"body": "late"})
        # the cut-off read's reply (the entry) must not answer the next call
        assert await wire.call([("XLEN", key)]) == [1]


async def test_a_late_reply_is_a_redis_timeout_and_the_next_call_works(key: str) -> None:
    from redis.exceptions import TimeoutError as RedisTimeoutError

    async with wired(timeout_s=0.3) as (wire, _):
        with pytest.raises(RedisTimeoutError):
            await wire.call([("BLPOP", key, 2)])
        assert await wire.call([("RPUSH", key, "a")]) == [1]
