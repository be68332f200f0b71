"""A subscription to one SQS queue: a long-polling receiver and the leases it hands out.

The receiver keeps at most ``max_unsettled`` messages leased (buffered here or
handed out and not settled), long-polls for the rest (up to 10 a call), and waits
while the endpoint is down. ``close`` returns at once: a long poll still out is
left to come back, and whatever it brings is made visible again at once, so a
stop neither waits for the poll nor hides a received message (``stop`` cuts the
poll short after a grace second). A buffered message whose lease ran out before
anyone took it is dropped here (SQS shows it again).

A reader of every partition of a partitioned queue polls each partition's SQS queue
(one poller each, each asking for at most its share of ``max_unsettled``, so one
busy partition cannot take every credit while another waits) and looks for new
partitions' queues every ``DISCOVER_S``. A long poll of a quiet partition must not
keep the credits it asked for from the others, so the pollers do not reserve them:
a reader of N partitions may hold up to N - 1 messages past its limit (buffered
here, never handed out past it).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import math
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
#: a reader of every partition looks for partitions made elsewhere this often
DISCOVER_S = 1.0


class Owner(Protocol):
    """What a subscription needs of its driver (``SqsDriver``)."""

    config: SqsDriverConfig
    link: Link
    pollers: set[asyncio.Task[None]]

    @property
    def running(self) -> bool: ...

    async def receive(self, queue: SqsQueue, count: int) -> list[dict[str, Any]]: ...

    async def extend(self, deliveries: Sequence[SqsDelivery]) -> None: ...

    async def partitions_of(self, queue: str) -> list[SqsQueue]: ...

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
        queue: SqsQueue,
        message: Message,
        attempt: int,
        raw: dict[str, Any],
        received_at: float,
    ) -> None:
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
        if seconds < math.ceil(delay_s):
            log.warning(
                "sqs queue %s: message %s nacked with a %gs delay comes back after %ds: SQS "
                "keeps a message from view at most 12 h from its receive",
                self.queue.name, self.message.id, delay_s, seconds,
            )  # fmt: skip
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
    def __init__(
        self,
        driver: Owner,
        queue: SqsQueue,
        spec: SubscribeSpec,
        *,
        every_partition: bool = False,
    ) -> None:
        self.driver = driver
        #: the queue it subscribed to (of a reader of every partition: the queue's own)
        self.queue = queue
        #: the SQS queues it polls (a reader of every partition: each partition's)
        self.queues: list[SqsQueue] = []
        self._consumer_id = spec.consumer_id
        self._max = max(spec.max_unsettled, 1)
        self._buffer: collections.deque[SqsDelivery] = collections.deque()
        self._unsettled = 0
        self._closed = False
        self._arrived = asyncio.Event()
        self._room = asyncio.Event()
        self._gone = asyncio.Event()
        if every_partition:
            self._start(self._discover(), f"sqs:{queue.name}:{spec.consumer_id}:discover")
        else:
            self.add(queue)

    def _start(self, work: Any, name: str) -> None:
        poller = asyncio.get_running_loop().create_task(work, name=name)
        self.driver.pollers.add(poller)
        poller.add_done_callback(self.driver.pollers.discard)

    def add(self, queue: SqsQueue) -> None:
        """Poll ``queue`` too (a partition's)."""
        if self._closed or queue in self.queues:
            return
        self.queues.append(queue)
        queue.subscriptions.add(self)
        self._start(self._poll(queue), f"sqs:{queue.name}:{self._consumer_id}")

    async def _discover(self) -> None:
        """Look for partitions' queues made elsewhere (this process's are added at once)."""
        while not self._closed and self.driver.running:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(DISCOVER_S):
                    await self._gone.wait()
            if self._closed or not self.driver.running:
                return
            if not await self.driver.link.ready():
                return
            try:
                for queue in await self.driver.partitions_of(self.queue.name):
                    self.add(queue)
            except Unavailable:
                continue
            except DriverError as err:
                log.error("listing partitions of SQS queue %r failed: %s", self.queue.name, err)

    # -- handing out ----------------------------------------------------------------

    async def receive(self) -> Delivery:
        while True:
            if self._closed or not self.driver.running:
                raise SubscriptionClosed(f"subscription to {self.queue.name!r} is closed")
            delivery = self.take_ready()
            if delivery is not None:
                return delivery
            self._arrived.clear()
            await self._arrived.wait()

    def take_ready(self) -> Delivery | None:
        while self._buffer and not self._closed:
            delivery = self._buffer.popleft()
            if delivery.expired():  # nobody took it in time: SQS shows it again
                self.driver.released(delivery.sqs_id)  # a receive SQS counted, untried
                self._room.set()
                continue
            self._unsettled += 1
            return delivery
        return None

    def settled(self) -> None:
        self._unsettled -= 1
        self._room.set()

    async def extend(self, deliveries: Any) -> None:
        await self.driver.extend([d for d in deliveries if isinstance(d, SqsDelivery)])

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        for queue in self.queues:
            queue.subscriptions.discard(self)
        readers = getattr(self.driver, "readers", None)
        if readers is not None:
            readers.discard(self)
        self._arrived.set()
        self._room.set()
        self._gone.set()
        self._give_back(list(self._buffer))
        self._buffer.clear()

    def _give_back(self, deliveries: list[SqsDelivery]) -> None:
        """Messages received but never handed out: visible again now."""
        for delivery in deliveries:
            if not delivery.settled and not delivery.expired():
                delivery.settled = True
                self.driver.released(delivery.sqs_id)
                delivery.queue.settles.change(
                    delivery.receipt, delivery.message.id, 0, delivery.deadline
                )

    # -- receiving ------------------------------------------------------------------

    async def _poll(self, queue: SqsQueue) -> None:
        failures = 0
        while not self._closed and self.driver.running:
            room = self._max - self._unsettled - len(self._buffer)
            if len(self.queues) > 1:  # its share, so every partition's poller gets some
                room = min(room, max(1, -(-self._max // len(self.queues))))
            if room <= 0:
                self._room.clear()
                await self._room.wait()
                continue
            if not await self.driver.link.ready():
                return
            try:
                got = await self.driver.receive(queue, room)
            except Unavailable as err:
                self.driver.link.lost(err)
                continue
            except DriverError as err:  # the queue was deleted, permissions, ...
                failures += 1
                log.error("receiving from SQS queue %r failed: %s", queue.name, err)
                await asyncio.sleep(restart_delay(self.driver.config.lifecycle.restart, failures))
                continue
            failures = 0
            self._take(queue, got, time.monotonic())

    def _take(self, queue: SqsQueue, got: list[dict[str, Any]], received_at: float) -> None:
        deliveries = [self._delivery(queue, raw, received_at) for raw in got]
        if self._closed:  # a poll that came back after close: give it all back
            self._give_back(deliveries)
            return
        self._buffer.extend(deliveries)
        if deliveries:
            self._arrived.set()

    def _delivery(self, queue: SqsQueue, raw: dict[str, Any], received_at: float) -> SqsDelivery:
        count = int((raw.get("Attributes") or {}).get("ApproximateReceiveCount", 1))
        attempt = self.driver.attempt(raw["MessageId"], count)
        queue.delayed.pop(raw["MessageId"], None)
        try:
            message = wire.decode(raw)
        except DecodeError as err:
            message = Message(raw["MessageId"], str(raw.get("Body", "")).encode(), {})
            delivery = SqsDelivery(self, queue, message, attempt, raw, received_at)
            delivery.malformed = str(err)
            return delivery
        return SqsDelivery(self, queue, message, attempt, raw, received_at)
