"""A consumer's subscription: ``basic.consume`` under QoS, deliveries and their settles.

QoS (``basic.qos`` prefetch) is the consumer's ``max_unsettled`` (prefetch +
concurrency), so the broker never lets it hold more. What each settle is on the wire:

| settle | quorum queue | classic queue |
|---|---|---|
| ack | ``basic.ack`` (batched) | same |
| nack | ``basic.nack`` requeue: the broker counts the attempt | copy with the count, then ack |
| nack with a delay | copy to the holding queue with the count, then ack | same |
| nack(requeue=False) | ``basic.nack`` without requeue: dropped | same |
| release | copy with the count unchanged, then ack (not counted) | same |

A copy is published and confirmed before the original is acked: a crash between
the two delivers the message twice, never zero times.

A subscription to every partition of a partitioned queue consumes each partition's
queue on its one channel (``add`` starts on a partition found later), each consumer
with its share of the QoS, so one busy partition cannot take every credit; a
delivery is settled, requeued, delayed and copied in its own partition's queue.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections import deque
from collections.abc import Awaitable, Callable
from functools import partial
from typing import Any, Protocol

from pamqp.commands import Basic

from wippy_queue.drivers.amqp import wire
from wippy_queue.drivers.amqp.deliver import deliver_directly
from wippy_queue.drivers.amqp.link import Link
from wippy_queue.drivers.amqp.settle import ConsumerChannel
from wippy_queue.drivers.amqp.topology import REPUBLISH_AT, RETURN_GRACE_S, QueueState
from wippy_queue.errors import DriverError
from wippy_queue.queue.driver import (
    Delivery,
    SubscribeSpec,
    Subscription,
    SubscriptionClosed,
    report,
)

log = logging.getLogger(__name__)

EXPIRED = "expired"
#: how long a close waits to see its consumer gone from the broker's count
CANCEL_SEEN_S = 1.0


class Host(Protocol):
    """What a subscription needs of its driver."""

    link: Link

    @property
    def running(self) -> bool: ...

    async def publish_raw(
        self,
        routing_key: str,
        body: bytes,
        properties: Basic.Properties,
        *,
        bounded: int | None = None,
    ) -> None: ...

    async def hold(
        self, state: QueueState, delay_s: float, body: bytes, properties: Basic.Properties
    ) -> None: ...

    def keep(self, task: asyncio.Task[Any]) -> None: ...

    async def consumer_count(self, queue: str) -> int: ...

    def forget(self, subscription: AmqpSubscription) -> None: ...


async def _shielded(work: Awaitable[None]) -> None:
    """Run ``work`` to its end even if the caller is cancelled (a stop mid-settle)."""
    await asyncio.shield(work)


class AmqpDelivery(Delivery):
    __slots__ = (
        "_channel",
        "_count",
        "_counted",
        "_properties",
        "_state",
        "_subscription",
        "_tag",
    )

    def __init__(
        self,
        subscription: AmqpSubscription,
        channel: ConsumerChannel,
        delivered: Any,
        state: QueueState,
    ) -> None:
        properties = delivered.header.properties
        table = properties.headers
        carried = wire.carried_of(table)
        if state.quorum:
            count = wire.delivery_count_of(table)
        else:
            count = 1 if delivered.delivery.redelivered else 0
        super().__init__(wire.message_of(properties, delivered.body), carried + count + 1)
        self._subscription = subscription
        #: the queue it came from (its partition's)
        self._state = state
        self._channel = channel
        self._tag: int = delivered.delivery.delivery_tag
        self._properties: Basic.Properties = properties
        self._count = count
        #: still counted in the subscription's in-flight deliveries
        self._counted = True

    def _live(self, what: str) -> ConsumerChannel:
        channel = self._channel
        if not channel.alive(self._subscription.driver.link.generation):
            raise channel.lost(f"{what} of message {self.message.id}")
        return channel

    async def _ack(self) -> None:
        # asked for at once (a cancellation cannot stop it half-way), so no task is
        # needed to shield it: counted in flight until the ack is sent or lost
        try:
            sent = self._live("ack").ack(self._tag)
        except BaseException:
            self._uncount()
            raise
        sent.add_done_callback(self._ack_done)
        await asyncio.shield(sent)

    def _ack_done(self, sent: asyncio.Future[None]) -> None:
        self._uncount()
        if not sent.cancelled():
            sent.exception()  # retrieved here too: its awaiter may have been cancelled

    def ack_then(self, done: Callable[[BaseException | None], None]) -> None:
        """The batched ack's own future calls back: no task, no shield."""
        self._once()
        try:
            sent = self._live("ack").ack(self._tag)
        except Exception as err:
            self._uncount()
            done(err)
            return
        sent.add_done_callback(self._ack_done)
        sent.add_done_callback(partial(report, done))

    async def _nack(self, *, requeue: bool, delay_s: float, reason: str) -> None:
        await _shielded(self._settled(self._nacked(requeue, delay_s, reason)))

    async def _release(self) -> None:
        await _shielded(self._settled(self._copy(self.attempt - 1)))

    async def _nacked(self, requeue: bool, delay_s: float, reason: str) -> None:
        state = self._state
        if not requeue:
            await self._live("nack").nack(self._tag, requeue=False)
            if reason == EXPIRED:
                state.expired += 1
        elif delay_s > 0:
            await self._copy(self.attempt, delay_s=delay_s)
        elif state.quorum and self._count < REPUBLISH_AT:
            await self._live("nack").nack(self._tag, requeue=True)
            state.returning[self.message.id] = time.monotonic() + RETURN_GRACE_S
        else:
            await self._copy(self.attempt)

    async def _copy(self, carried: int, *, delay_s: float = 0.0) -> None:
        """Publish a copy carrying ``carried`` attempts (to a holding queue after a
        delay), then ack this delivery."""
        self._live("settle")
        driver = self._subscription.driver
        state = self._state
        properties = wire.recarried(self._properties, carried)
        moved = asyncio.get_running_loop().create_future()
        state.moving.add(moved)
        try:
            if delay_s > 0:
                await driver.hold(state, delay_s, self.message.body, properties)
            else:
                await driver.publish_raw(state.name, self.message.body, properties)
        except Exception:
            # The broker refused the copy (a full bounded queue): the original goes back
            # as it is, or its channel would hold it, and a prefetch slot, until it closed.
            with contextlib.suppress(Exception):
                await self._live("give back").nack(self._tag, requeue=True)
            raise
        else:
            self._uncount()  # the copy is on the broker: count that one, not this
        finally:
            state.moving.discard(moved)
            moved.set_result(None)
        await self._live("ack after republishing").ack(self._tag)

    def _uncount(self) -> None:
        if self._counted:
            self._counted = False
            self._subscription.settled()

    async def _settled(self, work: Awaitable[None]) -> None:
        try:
            await work
        finally:
            self._uncount()


class AmqpSubscription(Subscription):
    def __init__(
        self,
        driver: Host,
        state: QueueState,
        spec: SubscribeSpec,
        states: list[QueueState] | None = None,
    ) -> None:
        self.driver = driver
        #: the queue subscribed to (of a reader of every partition: the queue itself)
        self.state = state
        #: the broker queues it consumes (a reader of every partition: each partition's)
        self.states = list(states or [state])
        self.spec = spec
        self.tag = f"{spec.consumer_id} {uuid.uuid4().hex[:8]}"
        self._channel: ConsumerChannel | None = None
        self._buffer: deque[tuple[ConsumerChannel, Any, QueueState]] = deque()
        self._waiter: asyncio.Future[None] | None = None
        #: deliveries handed out and not yet settled
        self.handed = 0
        #: the broker's consumer count when this one was cancelled
        self._consumers_before: int | None = None
        self.closed = False

    @property
    def buffered(self) -> int:
        return len(self._buffer)

    async def open(self) -> None:
        """Consume on a new channel (at subscribe, and again after a reconnect)."""
        self._drop_channel()
        channel, raw, generation = await self.driver.link.channel()
        batch = self.spec.max_unsettled // (2 * len(self.states))
        holder = ConsumerChannel(channel, raw, generation, batch=batch)
        deliver_directly(raw, holder.routes)
        channel.close_callbacks.add(lambda _sender, _exc: self._channel_closed(holder))
        self._channel = holder
        for state in list(self.states):
            await self._consume(holder, state)

    def _tag_of(self, state: QueueState) -> str:
        return self.tag if state is self.state else f"{self.tag} {state.name}"

    async def _consume(self, holder: ConsumerChannel, state: QueueState) -> None:
        """Consume ``state``'s queue on ``holder``, with this queue's share of the QoS."""
        arguments = {}
        priority = self.spec.options and getattr(self.spec.options, "priority", None)
        if priority is not None:
            arguments["x-priority"] = priority
        share = -(-self.spec.max_unsettled // len(self.states))  # per consumer, as it starts
        await holder.raw.basic_qos(prefetch_count=max(share, 1))
        tag = self._tag_of(state)
        arrived = partial(self._arrived, holder, state=state)
        holder.routes[tag] = arrived
        await holder.raw.basic_consume(
            state.name,
            arrived,
            consumer_tag=tag,
            arguments=arguments or None,
        )

    async def add(self, state: QueueState) -> None:
        """Consume a partition's queue too (one found after the subscription began)."""
        if self.closed or state in self.states:
            return
        self.states.append(state)
        holder = self._channel
        if holder is not None and holder.alive(self.driver.link.generation):
            try:
                await self._consume(holder, state)
            except Exception as err:  # the channel's close reopens it with every queue
                log.warning(
                    "subscription to %s: cannot consume %s: %s", self.state.name, state.name, err
                )

    def _arrived(self, channel: ConsumerChannel, delivered: Any, state: QueueState) -> None:
        if channel is not self._channel or channel.dead:
            return  # a stale channel's delivery: the broker gives it back
        channel.outstanding[delivered.delivery.delivery_tag] = None
        if state.returning:
            state.returning.pop(delivered.header.properties.message_id, None)
        if self.closed:  # in flight when the cancel went out: give it back untried now
            self.handed += 1  # so that the channel stays open until it is given back
            task = asyncio.get_running_loop().create_task(
                self._give_back(channel, delivered, state)
            )
            self.driver.keep(task)
            return
        self._buffer.append((channel, delivered, state))
        self._wake()

    async def _give_back(self, channel: ConsumerChannel, delivered: Any, state: QueueState) -> None:
        try:
            await AmqpDelivery(self, channel, delivered, state).release()
        except DriverError as err:
            log.warning("subscription to %s: giving back failed: %s", self.state.name, err)

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _channel_closed(self, channel: ConsumerChannel) -> None:
        channel.abandon()
        if channel is self._channel:
            self._channel = None
            self._buffer.clear()  # the broker gives them back
            self._wake()

    def _drop_channel(self) -> None:
        if self._channel is not None:
            self._channel.abandon()
            self._channel = None
        self._buffer.clear()

    def settled(self) -> None:
        self.handed -= 1
        if self.closed and self.handed == 0:
            self._close_channel_later()

    async def receive(self) -> Delivery:
        while True:
            if self.closed or not self.driver.running:
                raise SubscriptionClosed(f"subscription to {self.state.name!r} is closed")
            delivery = self.take_ready()
            if delivery is not None:
                return delivery
            if self._channel is None and self.driver.link.up.is_set():
                await self._reopen()
                continue
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                async with asyncio.timeout(None if self.driver.link.up.is_set() else 0.2):
                    await self._waiter
            except TimeoutError:
                pass
            finally:
                self._waiter = None

    def take_ready(self) -> Delivery | None:
        if self.closed or not self._buffer:
            return None
        channel, delivered, state = self._buffer.popleft()
        self.handed += 1
        return AmqpDelivery(self, channel, delivered, state)

    async def _reopen(self) -> None:
        try:
            await self.open()
        except DriverError as err:
            log.warning("subscription to %s: cannot consume again: %s", self.state.name, err)
            await asyncio.sleep(0.2)

    async def reopen_after_reconnect(self) -> None:
        if not self.closed:
            await self.open()

    async def close(self) -> None:
        """Cancel the consumer; give back what it prefetched untried."""
        if self.closed:
            return
        self.closed = True
        self._wake()
        channel = self._channel
        if channel is None:
            return
        with contextlib.suppress(Exception):
            if channel.alive(self.driver.link.generation):
                self._consumers_before = await self.driver.consumer_count(self.state.name)
                for state in self.states:
                    await channel.raw.basic_cancel(self._tag_of(state))
        buffered, self._buffer = list(self._buffer), deque()
        self.handed += len(buffered)  # the channel stays open until all are given back
        for holder, delivered, state in buffered:
            await self._give_back(holder, delivered, state)
        if self.handed == 0:
            await self._close_channel()

    async def _until_gone(self, before: int) -> None:
        """Wait (bounded) until the broker's consumer count shows the cancel: a quorum
        queue keeps a cancelled consumer until its deliveries are settled, and removes
        it a moment after that; ``info`` discounts it until then."""
        with contextlib.suppress(Exception):
            async with asyncio.timeout(CANCEL_SEEN_S):
                while await self.driver.consumer_count(self.state.name) >= before:
                    await asyncio.sleep(0.002)

    def _close_channel_later(self) -> None:
        task = asyncio.get_running_loop().create_task(self._close_channel_if_done())
        self.driver.keep(task)

    async def _close_channel_if_done(self) -> None:
        # a delivery that arrived after the last settle is being given back on this
        # channel: its own settle closes it (closing now would lose its ack)
        if self.handed == 0:
            await self._close_channel()

    async def _close_channel(self) -> None:
        channel, self._channel = self._channel, None
        if channel is not None:
            await channel.close()
            before, self._consumers_before = self._consumers_before, None
            if before is not None and self.driver.running:
                await self._until_gone(before)
        self.driver.forget(self)
