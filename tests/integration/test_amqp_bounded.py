"""A bounded classic AMQP queue that is full when a settle republishes its message."""

from __future__ import annotations

import asyncio
import uuid

import amqp_support
import pytest

from wippy_queue.drivers.amqp.config import AmqpQueueOptions
from wippy_queue.drivers.amqp.driver import AmqpDriver
from wippy_queue.errors import DriverError
from wippy_queue.queue.driver import QueueSpec, SubscribeSpec
from wippy_queue.queue.message import Message, new_message_id

pytestmark = pytest.mark.services

WAIT_S = 5.0


@pytest.fixture(autouse=True)
def _broker() -> None:
    amqp_support.require()


async def test_a_nack_whose_copy_a_full_queue_refuses_gives_the_message_back() -> None:
    """On a classic queue a nack republishes the message (its attempts in a header) and
    acks the delivery; a full ``reject-publish`` queue refuses the copy: the nack fails,
    and the delivery goes back to the queue as it is (before, it stayed unacked on the
    open channel, holding a prefetch slot, and the consumer got nothing more)."""
    name = f"wq-bounded-{uuid.uuid4().hex[:12]}"
    driver = AmqpDriver("t:rabbit", amqp_support.URL)
    await driver.start()
    try:
        options = AmqpQueueOptions(type="classic", max_length=1)
        await driver.declare(QueueSpec("t:q", name, options))
        first = Message(new_message_id(), b'{"n": 1}', {})
        await driver.publish(name, first)
        subscription = await driver.subscribe(SubscribeSpec("t:c", name, 0, 1))
        async with asyncio.timeout(WAIT_S):
            delivery = await subscription.receive()
        second = Message(new_message_id(), b'{"n": 2}', {})
        await driver.publish(name, second)  # now full
        with pytest.raises(DriverError, match="refused"):
            await delivery.nack()
        async with asyncio.timeout(WAIT_S):
            again = await subscription.receive()  # the consumer is not stuck
        assert again.message.id in {first.id, second.id}
        await again.ack()
        await subscription.close()
    finally:
        await driver.stop()
        await asyncio.to_thread(amqp_support.delete_queues, [name])
