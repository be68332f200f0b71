"""The ONE contract every queue driver passes.

Add a driver by adding its name to ``DRIVERS`` and a branch to ``_make``: every test
below then runs against it. Options other than ``max_length`` are the harness's
business, so that a broker can map "bounded queue" to its own mechanism.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import pytest

from wippy_queue.errors import DriverError
from wippy_queue.queue.driver import Delivery, Driver, QueueInfo, SubscriptionClosed
from wippy_queue.queue.message import Message

DRIVERS = ["memory"]

#: bound on every wait in this file: generous for a remote broker, never reached when green
WAIT_S = 5.0


@dataclass
class Harness:
    name: str
    make: Callable[[], Driver]
    queue_options: Callable[[int | None], dict[str, Any]]

    @asynccontextmanager
    async def running(self, *queues: str, max_length: int | None = None) -> AsyncIterator[Driver]:
        driver = self.make()
        await driver.start()
        try:
            for queue in queues or ("q",):
                await driver.declare(queue, self.queue_options(max_length))
            yield driver
        finally:
            await driver.stop()


def _make(name: str) -> Harness:
    if name == "memory":
        from wippy_queue.drivers.memory import MemoryDriver

        def options(max_length: int | None) -> dict[str, Any]:
            return {} if max_length is None else {"max_length": max_length}

        return Harness(name, lambda: MemoryDriver("test:memory"), options)
    raise AssertionError(f"no harness for driver {name!r}")  # pragma: no cover


@pytest.fixture(params=DRIVERS)
def driver(request: pytest.FixtureRequest) -> Harness:
    return _make(request.param)


def msg(body: bytes = b'{"n":1}', **headers: Any) -> Message:
    return Message(str(uuid.uuid4()), body, dict(headers))


async def receive(sub: Any) -> Delivery:
    async with asyncio.timeout(WAIT_S):
        return await sub.receive()  # type: ignore[no-any-return]


async def nothing_to_receive(sub: Any) -> bool:
    """True if ``sub`` has nothing to deliver now (a ready message arrives at once)."""
    try:
        async with asyncio.timeout(0.05):
            delivery = await sub.receive()
    except TimeoutError:
        return True
    await delivery.release()
    return False


def counts(info: QueueInfo) -> tuple[int, int, int, int, int]:
    """(message_count, consumer_count, ready, in_flight, delayed)."""
    return (info.message_count, info.consumer_count, info.ready, info.in_flight, info.delayed)


async def test_publish_then_consume_in_order_with_id_body_headers(driver: Harness) -> None:
    async with driver.running() as d:
        sent = [msg(f'{{"n":{i}}}'.encode(), trace="t", n=i, ok=True) for i in range(3)]
        for m in sent:
            await d.publish("q", Message(m.id, m.body, dict(m.headers)))
        sub = await d.subscribe("q", prefetch=10)
        got = [await receive(sub) for _ in sent]
        assert [g.message.id for g in got] == [m.id for m in sent]
        for delivery, m in zip(got, sent, strict=True):
            assert delivery.message.body == m.body
            assert {k: delivery.message.headers[k] for k in m.headers} == m.headers
            assert delivery.attempt == 1
            await delivery.ack()
        assert (await d.info("q")).idle


async def test_info_counts_are_truthful_at_each_step(driver: Harness) -> None:
    async with driver.running() as d:
        assert counts(await d.info("q")) == (0, 0, 0, 0, 0)
        for _ in range(3):
            await d.publish("q", msg())
        assert counts(await d.info("q")) == (3, 0, 3, 0, 0)
        sub = await d.subscribe("q", prefetch=10)
        assert counts(await d.info("q")) == (3, 1, 3, 0, 0)
        first, second = await receive(sub), await receive(sub)
        assert counts(await d.info("q")) == (3, 1, 1, 2, 0)
        await first.ack()
        assert counts(await d.info("q")) == (2, 1, 1, 1, 0)
        await second.nack(delay_s=30)
        assert counts(await d.info("q")) == (2, 1, 1, 0, 1)
        third = await receive(sub)
        await third.nack(requeue=False)  # dropped on purpose
        assert counts(await d.info("q")) == (1, 1, 0, 0, 1)
        await sub.close()
        assert counts(await d.info("q")) == (1, 0, 0, 0, 1)


async def test_ack_removes_the_message_for_good(driver: Harness) -> None:
    async with driver.running() as d:
        await d.publish("q", msg())
        sub = await d.subscribe("q", prefetch=1)
        await (await receive(sub)).ack()
        assert (await d.info("q")).message_count == 0
        assert await nothing_to_receive(sub)


async def test_nack_requeues_at_the_tail_with_same_id_headers_and_attempts(
    driver: Harness,
) -> None:
    async with driver.running() as d:
        a, b = msg(b'"a"', tenant="acme"), msg(b'"b"')
        await d.publish("q", a)
        await d.publish("q", b)
        sub = await d.subscribe("q", prefetch=10)
        first = await receive(sub)
        assert (first.message.id, first.attempt) == (a.id, 1)
        await first.nack(reason="try again")

        second = await receive(sub)
        assert second.message.id == b.id  # a went to the tail
        await second.ack()
        again = await receive(sub)
        assert (again.message.id, again.message.body) == (a.id, b'"a"')
        assert again.message.headers["tenant"] == "acme"
        assert again.attempt == 2
        await again.nack()
        assert (await receive(sub)).attempt == 3


async def test_nack_with_delay_holds_the_message_back(driver: Harness) -> None:
    async with driver.running() as d:
        await d.publish("q", msg())
        sub = await d.subscribe("q", prefetch=1)
        delivery = await receive(sub)
        delay_s = 0.1
        nacked_at = time.monotonic()
        await delivery.nack(delay_s=delay_s)
        info = await d.info("q")
        assert (info.delayed, info.ready, info.message_count) == (1, 0, 1)
        again = await receive(sub)
        assert time.monotonic() - nacked_at >= delay_s * 0.9
        assert again.message.id == delivery.message.id
        assert again.attempt == 2
        assert (await d.info("q")).delayed == 0


async def test_release_gives_the_message_back_without_counting_an_attempt(
    driver: Harness,
) -> None:
    async with driver.running() as d:
        m = msg()
        await d.publish("q", m)
        sub = await d.subscribe("q", prefetch=1)
        delivery = await receive(sub)
        await delivery.release()
        assert counts(await d.info("q"))[2:4] == (1, 0)
        again = await receive(sub)
        assert again.message.id == m.id
        assert again.attempt == 1


async def test_publish_blocks_while_full_and_resumes_when_consumed(driver: Harness) -> None:
    async with driver.running(max_length=2) as d:
        await d.publish("q", msg())
        await d.publish("q", msg())
        third = msg()
        blocked = asyncio.create_task(d.publish("q", third))
        done, _ = await asyncio.wait([blocked], timeout=0.05)
        assert not done, "publish to a full queue must wait"
        assert (await d.info("q")).message_count == 2

        sub = await d.subscribe("q", prefetch=1)
        first = await receive(sub)
        async with asyncio.timeout(WAIT_S):
            await blocked  # room was made: the publish completes
        await first.ack()
        ids = []
        for _ in range(2):
            delivery = await receive(sub)
            ids.append(delivery.message.id)
            await delivery.ack()
        assert ids[-1] == third.id


async def test_a_cancelled_blocked_publish_enqueues_nothing(driver: Harness) -> None:
    async with driver.running(max_length=1) as d:
        await d.publish("q", msg())
        blocked = asyncio.create_task(d.publish("q", msg()))
        done, _ = await asyncio.wait([blocked], timeout=0.05)
        assert not done
        blocked.cancel()
        with pytest.raises(asyncio.CancelledError):
            await blocked
        assert (await d.info("q")).message_count == 1


async def test_a_publish_blocked_when_the_driver_stops_raises(driver: Harness) -> None:
    d = driver.make()
    await d.start()
    await d.declare("q", driver.queue_options(1))
    await d.publish("q", msg())
    blocked = asyncio.create_task(d.publish("q", msg()))
    done, _ = await asyncio.wait([blocked], timeout=0.05)
    assert not done
    await d.stop()
    with pytest.raises(DriverError):
        async with asyncio.timeout(WAIT_S):
            await blocked


async def test_competing_subscriptions_each_message_goes_to_one(driver: Harness) -> None:
    async with driver.running() as d:
        one = await d.subscribe("q", prefetch=10)
        two = await d.subscribe("q", prefetch=10)
        assert (await d.info("q")).consumer_count == 2
        first, second = msg(), msg()
        await d.publish("q", first)
        await d.publish("q", second)
        got_one = await receive(one)
        got_two = await receive(two)
        assert {got_one.message.id, got_two.message.id} == {first.id, second.id}
        assert await nothing_to_receive(one)
        assert await nothing_to_receive(two)
        await got_one.ack()
        await got_two.ack()

        sent = [msg() for _ in range(50)]
        seen: dict[str, list[str]] = {"one": [], "two": []}

        async def drain(name: str, sub: Any) -> None:
            while sum(map(len, seen.values())) < len(sent):
                try:
                    async with asyncio.timeout(0.2):
                        delivery = await sub.receive()
                except TimeoutError:
                    continue
                seen[name].append(delivery.message.id)
                await delivery.ack()
                await asyncio.sleep(0)  # let the other subscription take its turn

        workers = [asyncio.create_task(drain("one", one)), asyncio.create_task(drain("two", two))]
        for m in sent:
            await d.publish("q", m)
        async with asyncio.timeout(WAIT_S):
            await asyncio.gather(*workers)
        received = seen["one"] + seen["two"]
        assert sorted(received) == sorted(m.id for m in sent)  # each exactly once
        assert seen["one"] and seen["two"]


async def test_wait_idle_returns_once_nothing_is_ready_in_flight_or_delayed(
    driver: Harness,
) -> None:
    async with driver.running() as d:
        async with asyncio.timeout(WAIT_S):
            await d.wait_idle("q")  # empty: at once
        await d.publish("q", msg())
        with pytest.raises(TimeoutError):
            await d.wait_idle("q", timeout_s=0.05)
        waiting = asyncio.create_task(d.wait_idle("q", timeout_s=WAIT_S))
        sub = await d.subscribe("q", prefetch=1)
        delivery = await receive(sub)
        await delivery.nack(delay_s=0.05)  # delayed is not idle
        again = await receive(sub)
        assert not waiting.done()
        await again.ack()
        await waiting
        assert (await d.info("q")).idle


async def test_stop_then_start_loses_nothing(driver: Harness) -> None:
    d = driver.make()
    await d.start()
    await d.declare("q", driver.queue_options(None))
    sent = [msg() for _ in range(5)]
    for m in sent:
        await d.publish("q", m)
    sub = await d.subscribe("q", prefetch=10)
    held = [await receive(sub) for _ in range(3)]
    await held[0].release()
    await held[1].nack()
    await held[2].nack(delay_s=3600)  # delayed messages survive a stop too
    pending = asyncio.create_task(sub.receive())
    await d.stop()
    with pytest.raises(SubscriptionClosed):
        async with asyncio.timeout(WAIT_S):
            await pending
    with pytest.raises(DriverError):
        await d.publish("q", msg())

    await d.start()
    await d.declare("q", driver.queue_options(None))
    assert (await d.info("q")).message_count == 5
    fresh = await d.subscribe("q", prefetch=10)
    seen = []
    for _ in sent:
        delivery = await receive(fresh)
        seen.append(delivery.message.id)
        await delivery.ack()
    assert sorted(seen) == sorted(m.id for m in sent)
    assert (await d.info("q")).idle
    await d.stop()


async def test_settling_twice_is_an_error(driver: Harness) -> None:
    async with driver.running() as d:
        for _ in range(3):
            await d.publish("q", msg())
        sub = await d.subscribe("q", prefetch=10)
        acked, nacked, released = [await receive(sub) for _ in range(3)]
        await acked.ack()
        await nacked.nack()
        await released.release()
        for delivery in (acked, nacked, released):
            with pytest.raises(DriverError, match="already settled"):
                await delivery.ack()
            with pytest.raises(DriverError):
                await delivery.nack()
            with pytest.raises(DriverError):
                await delivery.release()
        # the failed second settles changed nothing
        assert counts(await d.info("q")) == (2, 1, 2, 0, 0)


async def test_closing_a_subscription_ends_a_pending_receive(driver: Harness) -> None:
    async with driver.running() as d:
        sub = await d.subscribe("q", prefetch=1)
        pending = asyncio.create_task(sub.receive())
        await asyncio.sleep(0)
        await sub.close()
        with pytest.raises(SubscriptionClosed):
            async with asyncio.timeout(WAIT_S):
                await pending
        with pytest.raises(SubscriptionClosed):
            await sub.receive()
        # a closed subscription takes nothing published afterwards
        other = await d.subscribe("q", prefetch=1)
        await d.publish("q", msg())
        assert (await receive(other)).attempt == 1


async def test_unknown_queue_and_stopped_driver_are_driver_errors(driver: Harness) -> None:
    async with driver.running() as d:
        with pytest.raises(DriverError, match="nope"):
            await d.publish("nope", msg())
        with pytest.raises(DriverError):
            await d.info("nope")
    fresh = driver.make()
    await fresh.declare("q", driver.queue_options(None))
    with pytest.raises(DriverError, match="not running"):
        await fresh.publish("q", msg())
    with pytest.raises(DriverError, match="not running"):
        await fresh.subscribe("q", prefetch=1)
