"""The AMQP consumer channel's ack batching: what goes on the wire, and when."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from wippy_queue.drivers.amqp.settle import ConsumerChannel
from wippy_queue.queue.driver import LostDelivery


class FakeRaw:
    """An aiormq channel that records the settles sent on it."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, int, bool]] = []
        self.is_closed = False

    async def basic_ack(self, tag: int, multiple: bool = False, wait: bool = True) -> None:
        self.sent.append(("ack", tag, multiple))

    async def basic_nack(self, tag: int, requeue: bool = True, wait: bool = True) -> None:
        self.sent.append(("nack", tag, requeue))


class FakeChannel:
    async def close(self) -> None:
        pass


def channel_with(tags: range, batch: int) -> tuple[ConsumerChannel, FakeRaw]:
    raw = FakeRaw()
    channel = ConsumerChannel(FakeChannel(), raw, 1, batch=batch)
    for tag in tags:
        channel.outstanding[tag] = None
    return channel, raw


async def settled(futures: list[asyncio.Future[Any]]) -> None:
    async with asyncio.timeout(5):
        await asyncio.gather(*futures)


async def test_a_full_batch_goes_out_as_one_multiple_ack() -> None:
    channel, raw = channel_with(range(1, 6), batch=4)
    futures = [channel.ack(tag) for tag in (2, 1, 4, 3)]
    await settled(futures)
    assert raw.sent == [("ack", 4, True)]
    assert list(channel.outstanding) == [5]


async def test_a_nack_sends_the_gathered_acks_with_it_and_multiple_never_covers_it() -> None:
    channel, raw = channel_with(range(1, 5), batch=10)
    futures = [channel.ack(1), channel.ack(3)]
    assert raw.sent == []  # gathered, not sent
    futures.append(channel.nack(2, requeue=True))
    await settled(futures)
    # the nack first; then 1 and 3, the front of what is left: one multiple ack
    assert raw.sent == [("nack", 2, True), ("ack", 3, True)]
    assert list(channel.outstanding) == [4]


async def test_acks_behind_an_unsettled_delivery_go_one_by_one() -> None:
    channel, raw = channel_with(range(1, 5), batch=2)
    await settled([channel.ack(2), channel.ack(4)])
    assert sorted(raw.sent) == [("ack", 2, False), ("ack", 4, False)]
    assert list(channel.outstanding) == [1, 3]


async def test_close_sends_what_was_gathered() -> None:
    channel, raw = channel_with(range(1, 3), batch=10)
    future = channel.ack(1)
    await channel.close()
    await settled([future])
    assert raw.sent == [("ack", 1, False)]


async def test_a_lost_channel_fails_the_gathered_acks() -> None:
    channel, raw = channel_with(range(1, 3), batch=10)
    future = channel.ack(1)
    channel.abandon()
    with pytest.raises(LostDelivery):
        await settled([future])
    assert raw.sent == []
