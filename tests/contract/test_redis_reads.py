"""Redis reads in batches (once half the prefetch is free), yet a subscription at its
bound never waits on that: one settle lets the next message in soon."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import services
from driver_harness import Harness, make

from wippy_queue.queue.driver import LostDelivery
from wippy_queue.queue.message import Message

pytestmark = pytest.mark.services

WAIT_S = 5.0


@pytest.fixture
def redis() -> Iterator[Harness]:
    harness = make("redis")
    yield harness
    if harness.cleanup is not None:
        harness.cleanup()


async def test_one_settle_at_the_bound_lets_the_next_message_in(redis: Harness) -> None:
    async with redis.running() as d:
        for i in range(12):
            await d.publish("q", Message(str(uuid.uuid4()), f'{{"n":{i}}}'.encode(), {}))
        sub = await d.subscribe("q", prefetch=10)  # holds at most 10 unsettled
        async with asyncio.timeout(WAIT_S):
            held = [await sub.receive() for _ in range(10)]
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.1):
                await sub.receive()
        await held[0].ack()  # one credit free: below the batch threshold (5)
        async with asyncio.timeout(1.0):
            eleventh = await sub.receive()
        assert eleventh.message.body == b'{"n":10}'
        for delivery in [*held[1:], eleventh]:
            await delivery.ack()
        await sub.close()


async def test_closing_while_the_workers_ack_is_one_round_trip_at_a_time(redis: Harness) -> None:
    """A stop closes the subscription while its handlers still settle: the releases of
    what no worker holds go out through the settle batch, never beside a flush on the
    same connection (before, two round trips read one socket at once: the close raised
    and the whole driver dropped into a reconnect)."""
    async with redis.running() as d:
        for trial in range(4):
            for i in range(20):
                await d.publish("q", Message(str(uuid.uuid4()), f'{{"n":{i}}}'.encode(), {}))
            sub = await d.subscribe("q", prefetch=10)
            async with asyncio.timeout(WAIT_S):
                held = [await sub.receive() for _ in range(5)]

            async def ack_all(deliveries: list = held) -> None:  # type: ignore[type-arg]
                for delivery in deliveries:
                    await delivery.ack()

            async with asyncio.timeout(WAIT_S):
                await asyncio.gather(ack_all(), sub.close())
            drain = await d.subscribe("q", prefetch=50, consumer="t:drain")
            async with asyncio.timeout(WAIT_S):
                rest = [await drain.receive() for _ in range(15)]
            for delivery in rest:
                await delivery.ack()
            await drain.close()
            assert (await d.info("q")).message_count == 0, f"trial {trial}"


async def test_a_command_the_server_refuses_does_not_end_the_reads(
    redis: Harness, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A reply like READONLY, OOM or BUSY (here WRONGTYPE on the heartbeat) is logged
    and the reads go on once the server takes commands again (before, the
    subscription's reads ended for good while the driver ran, and nothing said so)."""
    import redis.asyncio as aioredis

    from wippy_queue.drivers.redis import subscription as redis_subscription
    from wippy_queue.drivers.redis.link import Keys

    monkeypatch.setattr(redis_subscription, "HEARTBEAT_S", 0.05)
    client = aioredis.Redis.from_url(services.REDIS_URL)
    async with redis.running() as d:
        members = Keys(redis.queue_name("q")).members
        sub = await d.subscribe("q", prefetch=10)
        try:
            await client.delete(members)
            await client.set(members, "not a sorted set")  # the heartbeat's ZADD fails
            async with asyncio.timeout(WAIT_S):
                while "reading failed" not in caplog.text:
                    await asyncio.sleep(0.01)
            await client.delete(members)  # the server takes it again
            await d.publish("q", Message(str(uuid.uuid4()), b'{"n":1}', {}))
            async with asyncio.timeout(WAIT_S):
                delivery = await sub.receive()
            await delivery.ack()
        finally:
            await sub.close()
            await client.aclose()


async def test_a_subscription_whose_handlers_hold_all_its_credit_still_counts(
    redis: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    """It reads nothing while its handlers run, yet says it is alive: ``info`` counts it
    past the liveness window (before, only a read said so)."""
    from wippy_queue.drivers.redis import driver as redis_driver
    from wippy_queue.drivers.redis import subscription as redis_subscription

    monkeypatch.setattr(redis_subscription, "HEARTBEAT_S", 0.05)
    monkeypatch.setattr(redis_driver, "CONSUMER_LIVE_S", 0.3)
    async with redis.running() as d:
        for i in range(2):
            await d.publish("q", Message(str(uuid.uuid4()), f'{{"n":{i}}}'.encode(), {}))
        sub = await d.subscribe("q", prefetch=1)  # room for one: held, nothing to read
        async with asyncio.timeout(WAIT_S):
            held = await sub.receive()
        await asyncio.sleep(0.6)  # twice the window, the handler still busy
        assert (await d.info("q")).consumer_count == 1
        await held.ack()
        await sub.close()


async def test_a_claimed_entry_s_delivery_count_is_read_exactly(redis: Harness) -> None:
    """Claiming entries of a dead member, the subscription reads their delivery counts
    (their attempts, and what its settles are checked against). Read over a range of
    ids, the reply could leave a claimed entry out when this member holds many entries
    between them, and it then counted 1 (its ack refused as lost, the message run
    again); each is now looked up by its own id."""
    from wippy_queue.drivers.redis.link import GROUP

    client = aioredis_client()
    async with redis.running() as d:
        for i in range(12):
            await d.publish("q", Message(str(uuid.uuid4()), f'{{"n":{i}}}'.encode(), {}))
        sub = await d.subscribe("q", prefetch=12)
        try:
            async with asyncio.timeout(WAIT_S):
                held = [await sub.receive() for _ in range(12)]  # all pending here
            stream = held[0].stream
            ends = [held[0].entry_id, held[-1].entry_id]  # ten of ours between them
            await client.xclaim(stream, GROUP, sub.name, 0, ends, retrycount=3)
            counts = await sub._counts(client, stream, [e.encode() for e in ends])
            assert counts == {e.encode(): 3 for e in ends}
            for delivery in held:  # (the two claimed again are no longer these)
                with contextlib.suppress(LostDelivery):
                    await delivery.release()
        finally:
            await sub.close()
            await client.aclose()


def aioredis_client() -> Any:
    import redis.asyncio as aioredis

    return aioredis.Redis.from_url(services.REDIS_URL)
