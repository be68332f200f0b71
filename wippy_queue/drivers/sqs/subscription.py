"""A subscription to one SQS queue: a long-polling receiver and the leases it hands out.

The receiver keeps at most ``max_unsettled`` messages leased (buffered here or
handed out and not settled), long-polls for the rest (up to 10 a call), and waits
while the endpoint is down. ``close`` returns at once: a long poll still out is
left to come back, and whatever it brings is made visible again at once, so a
stop neither waits for the poll nor hides a received message (``stop`` cuts the
poll short after a grace second). A buffered message whose lease ran out before
anyone took it is dropped here (SQS shows it again).
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time
from collections.abc import Sequence
from typing import Any, Protocol

from wippy_queue.drivers.sqs import wire
from wippy_queue.drivers.sqs.client import Link, Unavailable
from wippy_queue.drivers.sqs.config import SqsDriverConfig
from wippy_queue.drivers.sqs.queues import SqsQueue, delay_seconds
from wippy_queue.errors import DriverError
from wippy_queue.lifecycle.backoff import restart_delay
from wippy_queue.queue.codec import DecodeError
from wippy_queue.queue.driver import (
    Delivery,
    LostDelivery,
    SubscribeSpec,
    Subscription,
    SubscriptionClosed,
)
from wippy_queue.queue.message import Message

log = logging.getLogger(__name__)

EXPIRED = "expired"


class Owner(Protocol):
    """What a subscription needs of its driver (``SqsDriver``)."""

    config: SqsDriverConfig
    link: Link
    pollers: set[asyncio.Task[None]]

    @property
    def running(self) -> bool: ...

    async def receive(self, queue: SqsQueue, count: int) -> list[dict[str, Any]]: ...

    async def extend(self, deliveries: Sequence[SqsDelivery]) -> None: ...

    def attempt(self, sqs_id: str, receive_count: int) -> int: ...

    def released(self, sqs_id: str) -> None: ...

    def forget(self, sqs_id: str) -> None: ...


def margin_s(lease_s: float) -> float:
    """How long before SQS's own end of a lease we stop trusting it (clock and latency)."""
    return min(1.0, lease_s * 0.1)


class SqsDelivery(Delivery):
    __slots__ = ("_sub", "deadline", "queue", "receipt", "received_at", "sqs_id")

    def __init__(
        self,
        sub: SqsSubscription,
        message: Message,
        attempt: int,
        raw: dict[str, Any],
        received_at: float,
    ) -> None:
        queue = sub.queue
        super().__init__(message, attempt, float(queue.lease_s))
        self._sub = sub
        self.queue = queue
        self.receipt: str = raw["ReceiptHandle"]
        self.sqs_id: str = raw["MessageId"]
        self.received_at = received_at
        self.deadline = 0.0
        # SQS starts the lease when it picks the message, which a long poll does just
        # before it answers: from the answer, less the margin for the way back
        self.leased(received_at, queue.lease_s)

    def leased(self, sent_at: float, lease_s: float) -> None:
        """The lease runs ``lease_s`` from ``sent_at`` (when the call that set it went out,
        or the answer that brought the message)."""
        self.deadline = sent_at + lease_s - margin_s(lease_s)

    def expired(self) -> bool:
        return time.monotonic() >= self.deadline

    def _lost(self) -> LostDelivery:
        return LostDelivery(
            f"message {self.message.id}: its lease of {self.lease_s:g}s ran out before it was "
            "settled; it goes (or went) to another consumer"
        )

    def _taken(self) -> None:
        """Settled (or lost): this subscription may lease another."""
        self._sub.settled()
        if self.expired():
            raise self._lost()

    async def _ack(self) -> None:
        self._taken()
        self.queue.settles.delete(self.receipt, self.message.id)
        self._sub.driver.forget(self.sqs_id)

    async def _nack(self, *, requeue: bool, delay_s: float, reason: str) -> None:
        self._taken()
        if not requeue:
            self.queue.settles.delete(self.receipt, self.message.id)
            self._sub.driver.forget(self.sqs_id)
            if reason == EXPIRED:
                self.queue.expired += 1
            return
        seconds = delay_seconds(delay_s, time.monotonic() - self.received_at)
        if seconds:
            self.queue.delayed[self.sqs_id] = time.monotonic() + seconds
        self.queue.settles.change(self.receipt, self.message.id, seconds, self.deadline)

    async def _release(self) -> None:
        self._taken()
        self._sub.driver.released(self.sqs_id)
        self.queue.settles.change(self.receipt, self.message.id, 0, self.deadline)

    async def _extend(self) -> None:
        await self._sub.driver.extend([self])


class SqsSubscription(Subscription):
    def __init__(self, driver: Owner, queue: SqsQueue, spec: SubscribeSpec) -> None:
        self.driver = driver
        self.queue = queue
        self._max = max(spec.max_unsettled, 1)
        self._buffer: collections.deque[SqsDelivery] = collections.deque()
        self._unsettled = 0
        self._closed = False
        self._arrived = asyncio.Event()
        self._room = asyncio.Event()
        queue.subscriptions.add(self)
        poller = asyncio.get_running_loop().create_task(
            self._poll(), name=f"sqs:{queue.name}:{spec.consumer_id}"
        )
        driver.pollers.add(poller)
        poller.add_done_callback(driver.pollers.discard)

    # -- handing out ----------------------------------------------------------------

    async def receive(self) -> Delivery:
        while True:
            if self._closed or not self.driver.running:
                raise SubscriptionClosed(f"subscription to {self.queue.name!r} is closed")
            while self._buffer:
                delivery = self._buffer.popleft()
                if delivery.expired():  # nobody took it in time: SQS shows it again
                    self.driver.released(delivery.sqs_id)  # a receive SQS counted, untried
                    self._room.set()
                    continue
                self._unsettled += 1
                return delivery
            self._arrived.clear()
            await self._arrived.wait()

    def settled(self) -> None:
        self._unsettled -= 1
        self._room.set()

    async def extend(self, deliveries: Any) -> None:
        await self.driver.extend([d for d in deliveries if isinstance(d, SqsDelivery)])

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self.queue.subscriptions.discard(self)
        self._arrived.set()
        self._room.set()
        self._give_back(list(self._buffer))
        self._buffer.clear()

    def _give_back(self, deliveries: list[SqsDelivery]) -> None:
        """Messages received but never handed out: visible again now."""
        for delivery in deliveries:
            if not delivery.settled and not delivery.expired():
                delivery.settled = True
                self.driver.released(delivery.sqs_id)
                self.queue.settles.change(
                    delivery.receipt, delivery.message.id, 0, delivery.deadline
                )

    # -- receiving ------------------------------------------------------------------

    async def _poll(self) -> None:
        failures = 0
        while not self._closed and self.driver.running:
            room = self._max - self._unsettled - len(self._buffer)
            if room <= 0:
                self._room.clear()
                await self._room.wait()
                continue
            if not await self.driver.link.ready():
                return
            try:
                got = await self.driver.receive(self.queue, room)
            except Unavailable as err:
                self.driver.link.lost(err)
                continue
            except DriverError as err:  # the queue was deleted, permissions, ...
                failures += 1
                log.error("receiving from SQS queue %r failed: %s", self.queue.name, err)
                await asyncio.sleep(restart_delay(self.driver.config.lifecycle.restart, failures))
                continue
            failures = 0
            self._take(got, time.monotonic())

    def _take(self, got: list[dict[str, Any]], received_at: float) -> None:
        deliveries = [self._delivery(raw, received_at) for raw in got]
        if self._closed:  # a poll that came back after close: give it all back
            self._give_back(deliveries)
            return
        self._buffer.extend(deliveries)
        if deliveries:
            self._arrived.set()

    def _delivery(self, raw: dict[str, Any], received_at: float) -> SqsDelivery:
        count = int((raw.get("Attributes") or {}).get("ApproximateReceiveCount", 1))
        attempt = self.driver.attempt(raw["MessageId"], count)
        self.queue.delayed.pop(raw["MessageId"], None)
        try:
            message = wire.decode(raw)
        except DecodeError as err:
            message = Message(raw["MessageId"], str(raw.get("Body", "")).encode(), {})
            delivery = SqsDelivery(self, message, attempt, raw, received_at)
            delivery.malformed = str(err)
            return delivery
        return SqsDelivery(self, message, attempt, raw, received_at)
