"""The partition contract, for every driver with ``Capabilities.partitions``.

A message published to partition P reaches only subscribers of P or of every
partition; a reader of every partition sees partitions made later (by another
instance where the driver is shared) and takes from all of them in turn; a requeue,
a delayed nack, a release or an expired lease keeps a message in its partition; a
partition nobody reads just waits, counted by ``info`` with every other partition.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import pytest
from driver_harness import Bound, Harness
from test_driver_contract import (  # the one fixture, so each driver runs here too
    WAIT_S,
    driver,
    expect_counts,
    msg,
    needs,
    nothing_to_receive,
    receive,
)

from wippy_queue.queue.driver import LostDelivery, Subscription

__all__ = ["driver"]

#: partitions with names a broker cannot hold as they are (made safe by the driver)
ODD = "tenant/ünïcode name:*"


@contextlib.asynccontextmanager
async def partitioned(harness: Harness) -> AsyncIterator[Bound]:
    needs(harness, "partitions", "the queue is partitioned")
    async with harness.running(partitioned=True) as d:
        yield d


async def close(*subs: Subscription) -> None:
    for sub in subs:
        await sub.close()


async def test_a_partition_s_message_reaches_only_its_own_subscribers(driver: Harness) -> None:
    async with partitioned(driver) as d:
        a = await d.subscribe("q", consumer="t:a", partition="acme")
        b = await d.subscribe("q", consumer="t:b", partition=ODD)
        sent_a, sent_b, sent_none = msg(), msg(), msg()
        await d.publish("q", sent_a, "acme")
        await d.publish("q", sent_b, ODD)
        await d.publish("q", sent_none)  # no partition: for readers of every partition only
        got_a, got_b = await receive(a), await receive(b)
        assert (got_a.message.id, got_b.message.id) == (sent_a.id, sent_b.id)
        assert await nothing_to_receive(a) and await nothing_to_receive(b)
        await got_a.ack()
        await got_b.ack()
        await expect_counts(driver, d, "q", (1,))
        everything = await d.subscribe("q", consumer="t:all")
        got = await receive(everything)
        assert (got.message.id, got.attempt) == (sent_none.id, 1)
        await got.ack()
        await close(a, b, everything)


async def test_a_reader_of_every_partition_reads_each_and_those_made_later(
    driver: Harness,
) -> None:
    needs(driver, "partitions", "the queue is partitioned")
    async with driver.running(partitioned=True) as d, contextlib.AsyncExitStack() as stack:
        other = d
        if driver.capabilities.shared:  # a partition another instance makes
            other = await stack.enter_async_context(driver.running(partitioned=True))
        await d.publish("q", first := msg(), "acme")
        reader = await d.subscribe("q", consumer="t:all")
        got = await receive(reader)
        assert got.message.id == first.id
        await got.ack()
        await other.publish("q", later := msg(), "globex")  # a partition new to everyone
        async with asyncio.timeout(WAIT_S):
            got = await reader.receive()
        assert (got.message.id, got.attempt) == (later.id, 1)
        await got.ack()
        await reader.close()


async def test_requeue_delay_and_release_keep_a_message_in_its_partition(
    driver: Harness,
) -> None:
    async with partitioned(driver) as d:
        own = await d.subscribe("q", consumer="t:own", partition="acme")
        foreign = await d.subscribe("q", consumer="t:foreign", partition="globex")
        await d.publish("q", sent := msg(), "acme")
        first = await receive(own)
        await first.nack()
        second = await receive(own)
        assert (second.message.id, second.attempt) == (sent.id, 2)
        await second.nack(delay_s=0.2)
        third = await receive(own)
        assert (third.message.id, third.attempt) == (sent.id, 3)
        await third.release()
        fourth = await receive(own)
        assert (fourth.message.id, fourth.attempt) == (sent.id, 3)
        assert await nothing_to_receive(foreign)
        await fourth.ack()
        await close(own, foreign)


async def test_an_expired_lease_keeps_the_message_in_its_partition(driver: Harness) -> None:
    needs(driver, "leases", "only a lease expires")
    assert driver.lease_s is not None
    async with partitioned(driver) as one, driver.running(partitioned=True) as two:
        await one.publish("q", sent := msg(), "acme")
        late = await receive(await one.subscribe("q", prefetch=1, consumer="t:a", partition="acme"))
        foreign = await two.subscribe("q", prefetch=1, consumer="t:b", partition="globex")
        own = await two.subscribe("q", prefetch=1, consumer="t:a2", partition="acme")
        async with asyncio.timeout(WAIT_S + driver.lease_s * 3):
            taken = await own.receive()  # after the lease ran out
        assert (taken.message.id, taken.attempt) == (sent.id, 2)
        assert await nothing_to_receive(foreign)
        with pytest.raises(LostDelivery):
            await late.ack()
        await taken.ack()
        await close(foreign, own)


async def test_info_counts_every_partition_and_an_unread_one_just_waits(
    driver: Harness,
) -> None:
    async with partitioned(driver) as d:
        for partition in ("acme", "acme", ODD, ""):
            await d.publish("q", msg(), partition)
        await expect_counts(driver, d, "q", (4, 0, 4, 0, 0))
        other = await d.subscribe("q", consumer="t:other", partition="initech")
        assert await nothing_to_receive(other)
        held = await receive(own := await d.subscribe("q", consumer="t:odd", partition=ODD))
        await held.nack(delay_s=30)  # delayed, still in its partition and counted
        await expect_counts(driver, d, "q", (4, 2, 3, 0, 1))
        await close(other, own)
        acme = await d.subscribe("q", consumer="t:acme", partition="acme")
        got = [await receive(acme) for _ in range(2)]
        assert [g.attempt for g in got] == [1, 1]  # waiting spent no attempt
        for delivery in got:
            await delivery.ack()
        await expect_counts(driver, d, "q", (2,))
        await acme.close()


async def test_a_busy_partition_does_not_starve_another(driver: Harness) -> None:
    async with partitioned(driver) as d:
        busy, quiet = [msg() for _ in range(40)], [msg() for _ in range(4)]
        for m in busy:
            await d.publish("q", m, "busy")
        for m in quiet:
            await d.publish("q", m, "quiet")
        reader = await d.subscribe("q", prefetch=4, consumer="t:all")
        order = []
        for _ in range(len(busy) + len(quiet)):
            delivery = await receive(reader)
            order.append(delivery.message.id)
            await delivery.ack()
        quiet_ids = {m.id for m in quiet}
        last_quiet = max(i for i, mid in enumerate(order) if mid in quiet_ids)
        assert last_quiet < 20, f"the quiet partition waited behind {last_quiet} messages"
        assert sorted(order) == sorted(m.id for m in busy + quiet)
        await reader.close()


async def test_a_driver_started_again_still_finds_new_partitions(driver: Harness) -> None:
    needs(driver, "partitions", "the queue is partitioned")
    async with driver.running(partitioned=True) as d, contextlib.AsyncExitStack() as stack:
        await d.publish("q", before := msg(), "acme")
        await d.stop()
        await d.start()
        await d.declare("q", partitioned=True)
        other = d
        if driver.capabilities.shared:
            other = await stack.enter_async_context(driver.running(partitioned=True))
        reader = await d.subscribe("q", consumer="t:all")
        got = await receive(reader)
        assert got.message.id == before.id
        await got.ack()
        await other.publish("q", later := msg(), "globex")
        got = await receive(reader)
        assert got.message.id == later.id
        await got.ack()
        await reader.close()
