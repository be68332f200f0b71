"""The ONE contract every queue driver passes.

Add a driver by adding it to ``driver_harness.DRIVERS`` and a branch to
``driver_harness.make``: every test below then runs against it. A case a driver's
capabilities exclude is skipped by capability, never by driver name.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from driver_harness import DRIVERS, Bound, Harness, make

from wippy_queue.errors import DriverError
from wippy_queue.queue.driver import Delivery, LostDelivery, QueueInfo, SubscriptionClosed
from wippy_queue.queue.message import Message

#: bound on every wait in this file: generous for a remote broker, never reached when green
WAIT_S = 5.0


@pytest.fixture(params=DRIVERS)
def driver(request: pytest.FixtureRequest) -> Iterator[Harness]:
    harness = make(request.param)
    yield harness
    if harness.cleanup is not None:
        harness.cleanup()


def needs(harness: Harness, capability: str, why: str) -> None:
    """Skip unless the driver has ``capability`` (a Capabilities field that is truthy)."""
    if not getattr(harness.capabilities, capability):
        pytest.skip(f"{harness.name} lacks capability {capability!r}: {why}")


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


async def expect_counts(
    harness: Harness, d: Bound, queue: str, expected: tuple[int, ...], *, at: int = 0
) -> None:
    """``counts(info)[at:]`` is ``expected`` as far as the driver can say, within WAIT_S
    (a broker's counts catch up with a settle a moment later).

    Ready and in flight are compared as their sum: a driver may fetch ahead within a
    subscription's limit, and what it took and has not handed out is in flight too.
    Where ``info`` is approximate (SQS) only message_count and consumer_count count.
    """
    wanted = {at + i: value for i, value in enumerate(expected)}
    if harness.capabilities.info != "exact":
        wanted = {i: value for i, value in wanted.items() if i < 2}
    summed = 2 in wanted and 3 in wanted

    def view(full: tuple[int, ...]) -> dict[int | str, int]:
        shown: dict[int | str, int] = {i: full[i] for i in wanted if not summed or i < 2 or i > 3}
        if summed:
            shown["ready+in_flight"] = full[2] + full[3]
        return shown

    goal = view(tuple(wanted.get(i, 0) for i in range(5)))
    deadline = time.monotonic() + WAIT_S
    full = counts(await d.info(queue))
    while view(full) != goal and time.monotonic() < deadline:
        await asyncio.sleep(0.02)
        full = counts(await d.info(queue))
    assert view(full) == goal, full


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
        await expect_counts(driver, d, "q", (0, 1, 0, 0, 0))


async def test_info_counts_are_truthful_at_each_step(driver: Harness) -> None:
    async with driver.running() as d:
        await expect_counts(driver, d, "q", (0, 0, 0, 0, 0))
        for _ in range(3):
            await d.publish("q", msg())
        await expect_counts(driver, d, "q", (3, 0, 3, 0, 0))
        sub = await d.subscribe("q", prefetch=10)
        await expect_counts(driver, d, "q", (3, 1, 3, 0, 0))
        first, second = await receive(sub), await receive(sub)
        await expect_counts(driver, d, "q", (3, 1, 1, 2, 0))
        await first.ack()
        await expect_counts(driver, d, "q", (2, 1, 1, 1, 0))
        await second.nack(delay_s=30)
        await expect_counts(driver, d, "q", (2, 1, 1, 0, 1))
        third = await receive(sub)
        await third.nack(requeue=False)  # dropped on purpose
        await expect_counts(driver, d, "q", (1, 1, 0, 0, 1))
        await sub.close()
        await expect_counts(driver, d, "q", (1, 0, 0, 0, 1))


async def test_ack_removes_the_message_for_good(driver: Harness) -> None:
    async with driver.running() as d:
        await d.publish("q", msg())
        sub = await d.subscribe("q", prefetch=1)
        await (await receive(sub)).ack()
        await expect_counts(driver, d, "q", (0,))
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
        await expect_counts(driver, d, "q", (1, 1, 0, 0, 1))
        again = await receive(sub)
        assert time.monotonic() - nacked_at >= delay_s * 0.9
        assert again.message.id == delivery.message.id
        assert again.attempt == 2
        await expect_counts(driver, d, "q", (1, 1, 0, 1, 0))


async def test_release_gives_the_message_back_without_counting_an_attempt(
    driver: Harness,
) -> None:
    async with driver.running() as d:
        m = msg()
        await d.publish("q", m)
        sub = await d.subscribe("q", prefetch=1)
        delivery = await receive(sub)
        await delivery.release()
        await expect_counts(driver, d, "q", (1, 0), at=2)
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


async def test_a_count_cancelled_midway_leaves_the_driver_counting(driver: Harness) -> None:
    """A caller cancelled while the driver asks the broker (a publish waiting for room,
    a join that timed out) must not break the driver's next question."""
    async with driver.running() as d:
        await d.publish("q", msg())
        for spins in range(12):  # cancelled before, during and after the broker's reply
            asking = asyncio.create_task(d.info("q"))
            for _ in range(spins):
                await asyncio.sleep(0)
            asking.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await asking
            assert (await d.info("q")).message_count == 1


async def test_a_publish_blocked_when_the_driver_stops_raises(driver: Harness) -> None:
    d = Bound(driver, driver.new_driver())
    await d.start()
    await d.declare("q", 1)
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
        two = await d.subscribe("q", prefetch=10, consumer="t:other")
        assert (await d.info("q")).consumer_count == 2
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
    d = Bound(driver, driver.new_driver())
    await d.start()
    await d.declare("q")
    sent = [msg() for _ in range(5)]
    for m in sent:
        await d.publish("q", m)
    sub = await d.subscribe("q", prefetch=10)
    held = [await receive(sub) for _ in range(3)]
    await held[0].release()
    await held[1].nack()
    # delayed messages survive a stop too: an embedded driver makes them ready at stop, a
    # broker keeps holding them back until they are due
    await held[2].nack(delay_s=1.0 if driver.capabilities.durable else 3600)
    pending = asyncio.create_task(sub.receive())
    await d.stop()
    with pytest.raises(SubscriptionClosed):
        async with asyncio.timeout(WAIT_S):
            await pending
    with pytest.raises(DriverError):
        await d.publish("q", msg())

    await d.start()
    await d.declare("q")
    await expect_counts(driver, d, "q", (5,))
    info = await d.info("q")
    # a broker keeps the delayed message delayed (memory makes it ready at stop)
    assert info.delayed in (0, 1)
    waiting = [m.id for m in sent if not (info.delayed and m.id == held[2].message.id)]
    fresh = await d.subscribe("q", prefetch=10)
    seen: list[str] = []
    while set(seen) != set(waiting):
        delivery = await receive(fresh)
        assert delivery.message.id in waiting
        seen.append(delivery.message.id)
        await delivery.ack()
    # a lease that ends before its ack lands hands the message out again (at least once)
    if not driver.capabilities.leases:
        assert sorted(seen) == sorted(waiting)
    await expect_counts(driver, d, "q", (info.delayed,))
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
        await expect_counts(driver, d, "q", (2, 1, 2, 0, 0))


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
    fresh = Bound(driver, driver.new_driver())
    with pytest.raises(DriverError, match="not running"):
        await fresh.publish("q", msg())
    with pytest.raises(DriverError, match="not running"):
        await fresh.subscribe("q", prefetch=1)


# -- the cases real brokers make matter ------------------------------------------------


async def test_deliveries_handed_out_stay_settleable_after_the_subscription_closes(
    driver: Harness,
) -> None:
    async with driver.running() as d:
        for _ in range(3):
            await d.publish("q", msg())
        sub = await d.subscribe("q", prefetch=10)
        acked, nacked, released = [await receive(sub) for _ in range(3)]
        await sub.close()
        await acked.ack()
        await nacked.nack()
        await released.release()
        fresh = await d.subscribe("q", prefetch=10)
        back = sorted([(await receive(fresh)).message.id for _ in range(2)])
        assert back == sorted([nacked.message.id, released.message.id])


async def test_header_types_survive_publish_requeue_and_release(driver: Harness) -> None:
    """``1``, ``1.0``, ``True`` and ``"1"`` stay distinct, compared by ``type()``."""
    sent = {"i": 1, "f": 1.0, "b": True, "s": "1", "neg": -7, "big": 2**60, "u": "ünï"}
    many = {f"h{n:02}": n for n in range(25)}  # more than SQS's 10 attributes
    async with driver.running() as d:
        await d.publish("q", msg(**sent, **many))
        sub = await d.subscribe("q", prefetch=1)
        first = await receive(sub)
        await first.nack()
        second = await receive(sub)
        await second.release()
        third = await receive(sub)
        for delivery in (first, second, third):
            got = delivery.message.headers
            assert {k: (v, type(v)) for k, v in got.items()} == {
                k: (v, type(v)) for k, v in {**sent, **many}.items()
            }
        await third.ack()


@pytest.mark.parametrize(
    "body",
    [b"\xff\xfe\x00 not utf-8 \x80", b"x" * (1024 * 1024), b""],
    ids=["non-utf8", "1MB", "empty"],
)
async def test_bodies_come_back_byte_for_byte(driver: Harness, body: bytes) -> None:
    if driver.max_body_bytes is not None and len(body) > driver.max_body_bytes:
        pytest.skip(f"{driver.name} carries bodies up to {driver.max_body_bytes} bytes")
    async with driver.running() as d:
        sent = msg(body)
        await d.publish("q", sent)
        delivery = await receive(await d.subscribe("q", prefetch=1))
        assert (delivery.message.id, delivery.message.body) == (sent.id, body)
        await delivery.ack()


async def test_a_signature_verifies_after_a_round_trip_a_requeue_and_a_dead_letter(
    driver: Harness,
) -> None:
    from wippy_queue.identity import Actor
    from wippy_queue.queue.outcome import Outcome, Reason
    from wippy_queue.queue.settle import dead_letter_message
    from wippy_queue.security.provenance import Stamper

    stamper = Stamper(
        {"k1": "contract-key-0123456789"}, "k1", dead_letter_sources={"t:dead": frozenset({"t:q"})}
    )
    async with driver.running("q", "dead") as d:
        sent = msg(b'{"n":1}', tenant="acme", n=1)
        stamper.stamp(sent, "t:q", Actor("svc", {"tenant": "acme"}))
        await d.publish("q", sent)
        sub = await d.subscribe("q", prefetch=1)
        first = await receive(sub)
        assert stamper.verify(first.message, "t:q").publisher == "svc"
        await first.nack()
        second = await receive(sub)
        assert stamper.verify(second.message, "t:q").tenant == "acme"
        copy = dead_letter_message(second, Outcome.nack(Reason.HANDLER_ERROR), "t:q", "t:c")
        await d.publish("dead", copy)
        await second.ack()
        dead = await receive(await d.subscribe("dead", prefetch=1))
        assert stamper.verify(dead.message, "t:dead").publisher == "svc"
        await dead.ack()


async def test_a_cancelled_receive_loses_nothing(driver: Harness) -> None:
    async with driver.running() as d:
        sub = await d.subscribe("q", prefetch=1)
        for _ in range(20):  # cancel at every point a receive can be at
            pending = asyncio.create_task(sub.receive())
            await d.publish("q", msg())
            await asyncio.sleep(0)
            pending.cancel()
            got = await asyncio.gather(pending, return_exceptions=True)
            if isinstance(got[0], Delivery):
                await got[0].ack()
        # what it prefetched is its own until it closes (a broker's consumer prefetch)
        await sub.close()
        sub2 = await d.subscribe("q", prefetch=20, consumer="t:other")
        info = await d.info("q")
        for _ in range(info.ready + info.in_flight):
            await (await receive(sub2)).ack()
        async with asyncio.timeout(WAIT_S):
            await d.wait_idle("q")


async def test_a_cancelled_ack_still_acks(driver: Harness) -> None:
    """Settles are shielded from cancellation: a stop cannot leave one half done."""
    async with driver.running() as d:
        await d.publish("q", msg())
        delivery = await receive(await d.subscribe("q", prefetch=1))
        acking = asyncio.create_task(delivery.ack())
        await asyncio.sleep(0)
        acking.cancel()
        await asyncio.gather(acking, return_exceptions=True)
        async with asyncio.timeout(WAIT_S):
            await d.wait_idle("q")


async def test_a_subscription_never_holds_more_than_its_limit(driver: Harness) -> None:
    async with driver.running() as d:
        for _ in range(10):
            await d.publish("q", msg())
        sub = await d.subscribe("q", prefetch=3)
        held = [await receive(sub) for _ in range(3)]
        fourth = asyncio.create_task(sub.receive())
        done, _ = await asyncio.wait([fourth], timeout=0.2)
        assert not done, "a fourth unsettled delivery past max_unsettled=3"
        await held[0].ack()
        async with asyncio.timeout(WAIT_S):
            await (await fourth).ack()
        for delivery in held[1:]:
            await delivery.ack()


async def test_receive_many_takes_what_is_ready_within_both_limits(driver: Harness) -> None:
    """The consumer's fetch loop takes batches: never past ``limit`` nor the
    subscription's own limit, each message once, in order where a batch holds several."""
    async with driver.running() as d:
        sent = [msg() for _ in range(10)]
        for message in sent:
            await d.publish("q", message)
        sub = await d.subscribe("q", prefetch=4)
        got: list[Delivery] = []
        async with asyncio.timeout(WAIT_S):
            one = await sub.receive_many(1)
            assert len(one) == 1
            got += one
            while len(got) < 4:  # at most 3 more fit under max_unsettled=4
                batch = await sub.receive_many(10)
                assert 1 <= len(batch) <= 4 - len(got)
                got += batch
        assert sub.take_ready() is None, "a fifth unsettled delivery past max_unsettled=4"
        async with asyncio.timeout(WAIT_S):
            while len(got) < len(sent):
                for delivery in got:
                    if not delivery.settled:
                        await delivery.ack()
                batch = await sub.receive_many(3)
                assert 1 <= len(batch) <= 3
                got += batch
        assert [delivery.message.id for delivery in got] == [m.id for m in sent]
        for delivery in got[-3:]:
            if not delivery.settled:
                await delivery.ack()
        async with asyncio.timeout(WAIT_S):
            await d.wait_idle("q")


async def test_declare_is_idempotent_and_a_conflicting_declare_is_refused(
    driver: Harness,
) -> None:
    async with driver.running(max_length=5) as d:
        await d.publish("q", msg())
        await d.declare("q", 5)  # the same again: fine, nothing lost
        assert (await d.info("q")).message_count == 1
        with pytest.raises(DriverError, match="max_length"):
            await d.declare("q", 7)


# -- brokers: several instances, crashes, leases, faults --------------------------------


async def test_messages_outlive_the_driver_instance(driver: Harness) -> None:
    needs(driver, "durable", "messages must survive the process that published them")
    sent = [msg() for _ in range(3)]
    async with driver.running() as first:
        for m in sent:
            await first.publish("q", m)
    async with driver.running() as second:
        sub = await second.subscribe("q", prefetch=10)
        got = [await receive(sub) for _ in sent]
        assert sorted(g.message.id for g in got) == sorted(m.id for m in sent)
        for delivery in got:
            await delivery.ack()


async def test_a_crashed_instance_s_delivery_goes_to_a_new_instance_with_attempt_plus_one(
    driver: Harness,
) -> None:
    needs(driver, "shared", "a second instance must reach the same queue")
    needs(driver, "durable", "the message must outlive the crashed instance")
    sent = msg()
    async with driver.running() as crashed:
        await crashed.publish("q", sent)
        held = await receive(await crashed.subscribe("q", prefetch=1))
        assert held.attempt == 1
    # stopped without settling: as if the process had died holding it
    async with driver.running() as survivor:
        sub = await survivor.subscribe("q", prefetch=1)
        async with asyncio.timeout(WAIT_S + (driver.lease_s or 0)):
            again = await sub.receive()
        assert (again.message.id, again.attempt) == (sent.id, 2)
        await again.ack()


async def test_two_instances_on_one_queue_each_take_each_message_once(driver: Harness) -> None:
    needs(driver, "shared", "two instances must reach the same queue")
    async with driver.running() as one, driver.running() as two:
        sent = [msg() for _ in range(40)]
        seen: list[str] = []

        async def drain(bound: Bound, name: str) -> None:
            sub = await bound.subscribe("q", prefetch=5, consumer=name)
            while len(seen) < len(sent):
                try:
                    async with asyncio.timeout(0.2):
                        delivery = await sub.receive()
                except TimeoutError:
                    continue
                seen.append(delivery.message.id)
                await delivery.ack()
            await sub.close()

        workers = [
            asyncio.create_task(drain(one, "t:one")),
            asyncio.create_task(drain(two, "t:two")),
        ]
        for m in sent:
            await one.publish("q", m)
        async with asyncio.timeout(WAIT_S * 2):
            await asyncio.gather(*workers)
        assert sorted(seen) == sorted(m.id for m in sent)  # each exactly once


async def test_a_lease_taken_over_makes_the_late_settle_a_lost_delivery(
    driver: Harness,
) -> None:
    needs(driver, "leases", "only a lease can pass to another consumer")
    assert driver.lease_s is not None
    async with driver.running() as one, driver.running() as two:
        await one.publish("q", msg())
        late = await receive(await one.subscribe("q", prefetch=1, consumer="t:one"))
        taker = await two.subscribe("q", prefetch=1, consumer="t:two")
        async with asyncio.timeout(WAIT_S + driver.lease_s * 3):
            taken = await taker.receive()  # after the lease ran out
        assert (taken.message.id, taken.attempt) == (late.message.id, 2)
        with pytest.raises(LostDelivery):
            await late.ack()
        await taken.ack()
        async with asyncio.timeout(WAIT_S):
            await one.wait_idle("q")


async def test_extending_a_lease_keeps_the_message_from_others(driver: Harness) -> None:
    needs(driver, "leases", "only a lease expires")
    assert driver.lease_s is not None
    async with driver.running() as one, driver.running() as two:
        await one.publish("q", msg())
        held = await receive(await one.subscribe("q", prefetch=1, consumer="t:one"))
        other = asyncio.create_task(
            (await two.subscribe("q", prefetch=1, consumer="t:two")).receive()
        )
        deadline = time.monotonic() + driver.lease_s * 3
        while time.monotonic() < deadline:
            await held.extend()
            done, _ = await asyncio.wait([other], timeout=driver.lease_s / 4)
            assert not done, "an extended lease was handed to another consumer"
        await held.ack()
        other.cancel()
        await asyncio.gather(other, return_exceptions=True)


async def test_killed_connections_reconnect_and_lose_nothing(driver: Harness) -> None:
    if driver.kill_connections is None:
        pytest.skip(f"{driver.name} has no connection to kill")
    async with driver.running() as d:
        sent = [msg() for _ in range(5)]
        for m in sent[:3]:
            await d.publish("q", m)
        sub = await d.subscribe("q", prefetch=10)
        first = await receive(sub)
        await driver.kill_connections()
        with contextlib.suppress(LostDelivery):  # connection-bound: it comes again
            await first.ack()
        for m in sent[3:]:
            async with asyncio.timeout(WAIT_S):
                await d.publish("q", m)
        seen = {first.message.id}
        while seen != {m.id for m in sent}:
            delivery = await receive(sub)
            seen.add(delivery.message.id)
            await delivery.ack()


async def test_the_broker_restarting_loses_nothing(driver: Harness) -> None:
    if driver.restart_broker is None:
        pytest.skip(f"{driver.name} has no broker to restart")
    needs(driver, "durable", "messages must outlive a broker restart")
    async with driver.running() as d:
        before = msg()
        await d.publish("q", before)
        sub = await d.subscribe("q", prefetch=10)
        await driver.restart_broker()
        after = msg()
        async with asyncio.timeout(WAIT_S * 4):
            await d.publish("q", after)
        seen = set()
        while seen != {before.id, after.id}:
            async with asyncio.timeout(WAIT_S * 4):
                delivery = await sub.receive()
            seen.add(delivery.message.id)
            await delivery.ack()
