"""The AMQP driver's connection reads frames through its buffered reader, on the broker."""

from __future__ import annotations

import asyncio
import uuid

import aio_pika
import aiormq
import amqp_support
import pytest

from wippy_queue.drivers.amqp import frames
from wippy_queue.drivers.amqp.link import Link
from wippy_queue.lifecycle.config import RestartPolicy

pytestmark = pytest.mark.services


@pytest.fixture(autouse=True)
def _broker() -> None:
    amqp_support.require()


async def round_trip(link: Link) -> aiormq.Connection:
    """Publish (confirmed), get and consume on ``link``'s connection: the frames of a
    delivery, a confirm and a ``basic.get-ok`` are all read; the connection used."""
    channel, raw, _ = await link.channel(confirms=True)
    queue = await channel.declare_queue(f"wq-frames-{uuid.uuid4().hex[:12]}", exclusive=True)
    bodies = [b"one", b"x" * 300_000, b"three"]  # the second spans several frames
    for body in bodies:
        await channel.default_exchange.publish(aio_pika.Message(body), queue.name)
    got = await queue.get(timeout=5)
    assert got is not None and got.body == bodies[0]
    await got.ack()
    seen: list[bytes] = []
    async with asyncio.timeout(5), queue.iterator() as messages:
        async for message in messages:
            seen.append(message.body)
            await message.ack()
            if len(seen) == 2:
                break
    assert seen == bodies[1:]
    connection: aiormq.Connection = raw.connection
    await channel.close()
    return connection


async def drivers_connection() -> aiormq.Connection:
    """The aiormq connection of a driver's link, after a round trip on it."""
    link = Link("t:rabbit", amqp_support.URL, RestartPolicy())
    await link.open()
    try:
        return await round_trip(link)
    finally:
        await link.close()


async def test_the_drivers_connection_reads_through_the_buffered_reader() -> None:
    """If an aiormq release drops the hook, the driver falls back to aiormq's reader:
    this fails so that the loss of the saving is noticed."""
    assert frames.HOOKABLE, "aiormq no longer has Connection.__reader: the hook is gone"
    assert isinstance(await drivers_connection(), frames.BufferedConnection)


async def test_without_the_hook_the_driver_connects_as_aio_pika_does(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(frames, "HOOKABLE", False)
    assert not isinstance(await drivers_connection(), frames.BufferedConnection)
