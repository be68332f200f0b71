"""``queue.driver.sqs``: SQS queues through aiobotocore.

Each delivery is a lease: SQS hides a received message for the queue's visibility
timeout; the runtime extends the lease while the message is held (one
``ChangeMessageVisibilityBatch`` per 10), an ack deletes it, a nack or release
makes it visible again (a nack after ``delay_s``). A settle after the lease ran out
(the message may be someone else's by now) raises ``LostDelivery`` and touches
nothing: the message comes back. The attempt is SQS's ``ApproximateReceiveCount``
less the releases this driver made of that message itself.

A partitioned queue is an SQS queue per partition: the queue itself for messages
without one, ``<queue>-p-<partition>`` for the others (created by the first publish
or subscriber of the partition). A subscriber of one partition polls its queue; one
of every partition polls each (``ListQueues`` by the name prefix finds those other
processes made, every ``DISCOVER_S``). A nack's delay or a lease's end leaves a
message in its own SQS queue, so in its partition.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import logging
import time
from collections.abc import Sequence
from typing import Any

from wippy_queue.drivers.sqs import wire
from wippy_queue.drivers.sqs.client import Link, QueueMissing, SqsClient, Unavailable
from wippy_queue.drivers.sqs.config import (
    CAPABILITIES,
    DEFAULT_VISIBILITY_S,
    MAX_BATCH,
    MAX_PARTITIONED_NAME,
    MAX_VISIBILITY_S,
    SqsDriverConfig,
    SqsQueueOptions,
    partition_prefix,
    partition_queue_name,
    valid_queue_name,
)
from wippy_queue.drivers.sqs.queues import SqsQueue
from wippy_queue.drivers.sqs.subscription import SqsDelivery, SqsSubscription
from wippy_queue.errors import DriverError
from wippy_queue.queue.driver import (
    Driver,
    LostDelivery,
    QueueInfo,
    QueueSpec,
    SubscribeSpec,
    Subscription,
)
from wippy_queue.queue.message import Message
from wippy_queue.registry.entry import Entry
from wippy_queue.tasks import cancel_and_wait

log = logging.getLogger(__name__)

#: releases remembered (by SQS MessageId) to correct ApproximateReceiveCount
MAX_RELEASES_REMEMBERED = 100_000
#: how long ``stop`` lets a long poll cut off by a close come back with its messages
STOP_GRACE_S = 0.1
#: how long ``stop`` waits for queued settles and publishes in flight to go out
STOP_FLUSH_S = 5.0
#: ``wait_idle`` polls the queue's counts this often
IDLE_POLL_S = 0.05


class SqsDriver(Driver):
    """``queue.driver.sqs``."""

    capabilities = CAPABILITIES

    def __init__(self, entry_id: str, config: SqsDriverConfig) -> None:
        super().__init__(entry_id)
        self.config = config
        self.client = SqsClient(
            region=config.region,
            endpoint_url=config.endpoint_url,
            profile=config.profile,
            read_timeout_s=config.wait_time + 15,
        )
        self.link = Link(entry_id, config.lifecycle.restart, self._probe, self._give_up)
        self._queues: dict[str, SqsQueue] = {}
        self._running = False
        #: every subscription's receiver, closed ones' too (a long poll may still be out)
        self.pollers: set[asyncio.Task[None]] = set()
        #: SQS MessageId -> releases made here (SQS counted a receive for each)
        self._released: collections.OrderedDict[str, int] = collections.OrderedDict()
        #: partitioned queues: name -> (spec, options) their partitions' queues are made with
        self.partitioned: dict[str, tuple[QueueSpec, SqsQueueOptions]] = {}
        #: subscriptions that read every partition (told of a partition made here)
        self.readers: set[SqsSubscription] = set()
        self._making = asyncio.Lock()

    @classmethod
    def from_entry(cls, entry: Entry) -> SqsDriver:
        assert isinstance(entry.config, SqsDriverConfig)
        return cls(entry.id, entry.config)

    @property
    def calls(self) -> collections.Counter[str]:
        """API calls made so far, by operation."""
        return self.client.calls

    @property
    def running(self) -> bool:
        return self._running

    @property
    def connected(self) -> bool:
        return self._running and self.link.up

    # -- lifecycle ---------------------------------------------------------------

    async def start(self) -> None:
        if self._running:
            return
        self.failed = asyncio.get_running_loop().create_future()
        await self.client.open()
        self.link.reopen()
        self._running = True

    async def stop(self) -> None:
        if not self._running:
            return
        self._running = False
        queues = list(self._queues.values())
        for sub in [sub for queue in queues for sub in queue.subscriptions]:
            await sub.close()
        pollers = list(self.pollers)
        if pollers:
            _, late = await asyncio.wait(pollers, timeout=STOP_GRACE_S)
            await cancel_and_wait(late)  # a long poll still out: cut it short
            await asyncio.gather(*pollers, return_exceptions=True)
        flushing = [queue.settles.flush() for queue in queues]
        flushing += [queue.publisher.close(self.not_running_error()) for queue in queues]
        if flushing:
            _, late = await asyncio.wait(
                [asyncio.ensure_future(f) for f in flushing], timeout=STOP_FLUSH_S
            )
            for task in late:
                task.cancel()
        await self.link.close()
        await self.client.close()  # the queues stay declared for the next start

    def _give_up(self, err: BaseException) -> None:
        if self.failed is not None and not self.failed.done():
            self.failed.set_result(err)

    async def _probe(self) -> object:
        queue = next(iter(self._queues.values()), None)
        if queue is not None:
            return await self.client.call(
                "GetQueueAttributes", QueueUrl=queue.url, AttributeNames=["VisibilityTimeout"]
            )
        return await self.client.call("ListQueues", MaxResults=1)

    # -- queues --------------------------------------------------------------------

    async def declare(self, spec: QueueSpec) -> None:
        if not self._running:
            raise self.not_running_error()
        options = spec.options if spec.options is not None else SqsQueueOptions()
        if not isinstance(options, SqsQueueOptions):
            raise DriverError(f"queue {spec.id}: sqs driver options expected, got {options!r}")
        if not valid_queue_name(spec.name):
            raise DriverError(
                f"queue {spec.id}: {spec.name!r} is no SQS queue name (1-80 of A-Z a-z 0-9 _ -, "
                "a FIFO queue's ending in .fifo): set queue_name"
            )
        if spec.partitioned and len(spec.name.removesuffix(".fifo")) > MAX_PARTITIONED_NAME:
            raise DriverError(
                f"queue {spec.id}: {spec.name!r} is too long for a partitioned SQS queue (its "
                f"partitions' queues add up to 35 characters to it; at most "
                f"{MAX_PARTITIONED_NAME} before .fifo): set a shorter queue_name"
            )
        if spec.partitioned:
            self.partitioned.setdefault(spec.name, (spec, options))
        known = self._queues.get(spec.name)
        if known is not None:
            _same_options(known, spec, options)
            return
        url, attributes = await self._find_or_create(spec, options)
        _check_existing(spec, options, attributes)
        self._queues[spec.name] = self._sqs_queue(spec, options, url, attributes)

    def _sqs_queue(
        self, spec: QueueSpec, options: SqsQueueOptions, url: str, attributes: dict[str, str]
    ) -> SqsQueue:
        return SqsQueue(
            spec,
            options,
            url,
            attributes,
            client=self.client,
            link=self.link,
            linger_s=self.config.settle_linger,
            stopped=self.not_running_error,
        )

    async def _find_or_create(
        self, spec: QueueSpec, options: SqsQueueOptions
    ) -> tuple[str, dict[str, str]]:
        try:
            url = (await self.client.call("GetQueueUrl", QueueName=spec.name))["QueueUrl"]
        except QueueMissing:
            if not options.create:
                raise DriverError(
                    f"queue {spec.id}: SQS queue {spec.name!r} does not exist and its options "
                    "say create: false; create it, or set create: true"
                ) from None
            attributes = {
                "VisibilityTimeout": str(options.visibility_timeout or DEFAULT_VISIBILITY_S)
            }
            if spec.name.endswith(".fifo"):
                attributes["FifoQueue"] = "true"
            created = await self.client.call(
                "CreateQueue", QueueName=spec.name, Attributes=attributes
            )
            url = created["QueueUrl"]
        got = await self.client.call("GetQueueAttributes", QueueUrl=url, AttributeNames=["All"])
        return url, dict(got.get("Attributes", {}))

    def _queue(self, name: str) -> SqsQueue:
        return self.declared(self._queues, name)

    async def partition(self, queue: str, partition: str) -> SqsQueue:
        """The SQS queue of ``partition`` of the partitioned ``queue`` (made if new)."""
        name = partition_queue_name(queue, partition)
        return self._queues.get(name) or await self._partition_queue(queue, name)

    async def _partition_queue(self, queue: str, name: str) -> SqsQueue:
        async with self._making:
            known = self._queues.get(name)
            if known is not None:
                return known
            spec, options = self.partitioned[queue]
            spec = dataclasses.replace(spec, name=name)
            # its partition's queue is ours to make, whatever the queue's own ``create``
            options = options.model_copy(update={"create": True})
            url, attributes = await self._find_or_create(spec, options)
            state = self._sqs_queue(spec, options, url, attributes)
            self._queues[name] = state
        for reader in list(self.readers):
            if reader.queue.name == queue:
                reader.add(state)
        return state

    async def partitions_of(self, queue: str) -> list[SqsQueue]:
        """Every SQS queue of ``queue``: itself, and on a partitioned queue each partition's
        queue (found by name, those other processes made included)."""
        state = self._queue(queue)
        if queue not in self.partitioned:
            return [state]
        prefix = partition_prefix(queue)
        names: list[str] = []
        token = None
        while True:
            params: dict[str, Any] = {"QueueNamePrefix": prefix, "MaxResults": 1000}
            if token:
                params["NextToken"] = token
            try:
                got = await self.client.call("ListQueues", **params)
            except Unavailable as err:
                self.link.lost(err)
                raise
            names += [url.rsplit("/", 1)[-1] for url in got.get("QueueUrls", ())]
            token = got.get("NextToken")
            if not token:
                break
        fifo = queue.endswith(".fifo")
        found = [state]
        for name in sorted(names):
            if name.endswith(".fifo") == fifo and name != queue:
                found.append(self._queues.get(name) or await self._partition_queue(queue, name))
        return found

    # -- messages ------------------------------------------------------------------

    async def publish(self, queue: str, message: Message, partition: str = "") -> None:
        if not self._running:
            raise self.not_running_error()
        state = self._queue(queue)
        if partition and queue in self.partitioned:
            state = await self.partition(queue, partition)
        outgoing = wire.encode(message)
        if outgoing.size > state.max_bytes:
            raise DriverError(
                f"message {message.id} is {outgoing.size} bytes on SQS (body and attributes), "
                f"over queue {queue!r}'s MaximumMessageSize of {state.max_bytes}"
            )
        await state.publisher.put(outgoing)

    async def subscribe(self, spec: SubscribeSpec) -> Subscription:
        if not self._running:
            raise self.not_running_error()
        state = self._queue(spec.queue)
        if spec.queue not in self.partitioned:
            return SqsSubscription(self, state, spec)
        if spec.partition is not None:  # one partition's queue
            return SqsSubscription(self, await self.partition(spec.queue, spec.partition), spec)
        reader = SqsSubscription(self, state, spec, every_partition=True)
        self.readers.add(reader)
        for found in await self.partitions_of(spec.queue):
            reader.add(found)
        return reader

    async def receive(self, queue: SqsQueue, count: int) -> list[dict[str, Any]]:
        """One long poll (ReceiveMessage) for up to ``count`` messages."""
        result = await self.client.call(
            "ReceiveMessage",
            QueueUrl=queue.url,
            MaxNumberOfMessages=min(count, MAX_BATCH),
            WaitTimeSeconds=self.config.wait_time,
            MessageAttributeNames=list(wire.ATTRIBUTE_NAMES),
            MessageSystemAttributeNames=["ApproximateReceiveCount"],
        )
        messages: list[dict[str, Any]] = result.get("Messages", [])
        return messages

    def attempt(self, sqs_id: str, receive_count: int) -> int:
        """SQS's receive count less the releases made here (never below 1)."""
        return max(1, receive_count - self._released.get(sqs_id, 0))

    def released(self, sqs_id: str) -> None:
        self._released[sqs_id] = self._released.get(sqs_id, 0) + 1
        self._released.move_to_end(sqs_id)
        while len(self._released) > MAX_RELEASES_REMEMBERED:
            self._released.popitem(last=False)

    def forget(self, sqs_id: str) -> None:
        self._released.pop(sqs_id, None)

    async def extend(self, deliveries: Sequence[SqsDelivery]) -> None:
        """Renew leases, 10 per ChangeMessageVisibilityBatch; LostDelivery names the lost."""
        lost: list[str] = []
        now = time.monotonic()
        by_queue: dict[SqsQueue, list[SqsDelivery]] = {}
        for delivery in deliveries:
            if delivery.settled:
                continue
            if delivery.deadline <= now:
                lost.append(delivery.message.id)
            else:
                by_queue.setdefault(delivery.queue, []).append(delivery)
        for queue, held in by_queue.items():
            for at in range(0, len(held), MAX_BATCH):
                lost += await self._extend_batch(queue, held[at : at + MAX_BATCH])
        if lost:
            raise LostDelivery(
                f"leases of message(s) {', '.join(lost)} ran out before they were extended; "
                "they go (or went) to another consumer"
            )

    async def _extend_batch(self, queue: SqsQueue, batch: list[SqsDelivery]) -> list[str]:
        sent_at = time.monotonic()
        entries = [
            {"Id": str(i), "ReceiptHandle": d.receipt, "VisibilityTimeout": queue.lease_s}
            for i, d in enumerate(batch)
        ]
        try:
            result = await self.client.call(
                "ChangeMessageVisibilityBatch", QueueUrl=queue.url, Entries=entries
            )
        except Unavailable as err:
            self.link.lost(err)
            raise
        for done in result.get("Successful", ()):
            batch[int(done["Id"])].leased(sent_at, queue.lease_s)
        lost = []
        for failed in result.get("Failed", ()):
            delivery = batch[int(failed["Id"])]
            if "limit" in str(failed.get("Message", "")).lower():
                raise DriverError(
                    f"message {delivery.message.id}: SQS keeps a message hidden at most "
                    f"{MAX_VISIBILITY_S}s from its receive: its lease cannot be extended further"
                )
            lost.append(delivery.message.id)
        return lost

    async def info(self, queue: str) -> QueueInfo:
        """Counts summed over the queue's SQS queues (every partition's)."""
        states = await self.partitions_of(queue)
        ready = in_flight = delayed = expired = 0
        subscriptions: set[object] = set()
        for state in states:
            counts = await self._counts(state)
            ready, in_flight, delayed = (
                ready + counts[0],
                in_flight + counts[1],
                delayed + counts[2],
            )
            expired += state.expired
            subscriptions |= state.subscriptions
        return QueueInfo(
            queue=queue,
            consumer_count=len(subscriptions),
            ready=ready,
            in_flight=in_flight,
            delayed=delayed,
            expired=expired,
            exact=False,
        )

    async def _counts(self, state: SqsQueue) -> tuple[int, int, int]:
        """(ready, in flight, delayed) of one SQS queue."""
        await state.settles.flush()  # what this process settled is counted as settled
        try:
            got = await self.client.call(
                "GetQueueAttributes",
                QueueUrl=state.url,
                AttributeNames=[
                    "ApproximateNumberOfMessages",
                    "ApproximateNumberOfMessagesNotVisible",
                    "ApproximateNumberOfMessagesDelayed",
                ],
            )
        except Unavailable as err:
            self.link.lost(err)
            raise
        attributes = got.get("Attributes", {})
        ready = int(attributes.get("ApproximateNumberOfMessages", 0))
        hidden = int(attributes.get("ApproximateNumberOfMessagesNotVisible", 0))
        # a delayed nack is a hidden message to SQS: those nacked here count as delayed
        delayed_here = min(state.delayed_now(), hidden)
        delayed = int(attributes.get("ApproximateNumberOfMessagesDelayed", 0)) + delayed_here
        return ready, hidden - delayed_here, delayed

    async def wait_idle(self, queue: str, *, timeout_s: float | None = None) -> None:
        """Idle twice in a row (SQS's counts are approximate), polled every 50 ms; while
        the endpoint is unreachable it waits for it."""
        async with asyncio.timeout(timeout_s):
            seen = 0
            while seen < 2:
                try:
                    seen = seen + 1 if await self.idle(queue) else 0
                except Unavailable:  # the endpoint is away: wait for it, then look again
                    seen = 0
                    if not await self.link.ready():
                        raise self.not_running_error() from None
                await asyncio.sleep(IDLE_POLL_S)


def _same_options(known: SqsQueue, spec: QueueSpec, options: SqsQueueOptions) -> None:
    wanted = options.visibility_timeout
    if wanted is not None and wanted != known.lease_s:
        raise DriverError(
            f"queue {known.name!r} is declared with visibility_timeout {known.lease_s}; "
            f"{spec.id} asks for {wanted}: give the two one value"
        )


def _check_existing(spec: QueueSpec, options: SqsQueueOptions, attributes: dict[str, str]) -> None:
    have = int(attributes.get("VisibilityTimeout", DEFAULT_VISIBILITY_S))
    wanted = options.visibility_timeout
    if wanted is not None and wanted != have:
        raise DriverError(
            f"SQS queue {spec.name!r} has visibility_timeout {have}; {spec.id} asks for "
            f"{wanted}: give the two one value (or change the queue's VisibilityTimeout)"
        )
    fifo = attributes.get("FifoQueue") == "true"
    if fifo != spec.name.endswith(".fifo"):
        raise DriverError(f"SQS queue {spec.name!r}: FifoQueue is {fifo}, but the name says not")
