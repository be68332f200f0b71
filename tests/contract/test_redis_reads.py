"""Redis reads in batches (once half the prefetch is free), yet a subscription at its
bound never waits on that: one settle lets the next message in soon."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator

import pytest
from driver_harness import Harness, make

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
