"""The driver protocol: what a queue backend (memory, Redis, RabbitMQ, SQLite, SQS) provides.

Designed for leasing brokers (Redis, SQS, SQLite: a delivery is a lease that
comes back after a visibility timeout unless settled or extended) and
connection-bound ones (AMQP: a delivery lives as long as its channel) alike:

- each driver declares its ``Capabilities``, and the loader checks a configuration
  against them (asking for what a driver lacks is a load error, not a surprise);
- ``declare`` gets the queue's whole ``QueueSpec``, ``subscribe`` the consumer's
  ``SubscribeSpec`` (the most deliveries it may hold unsettled included);
- the attempt number lives on the ``Delivery``, from the broker's own counter
  where it has one, never in a header the driver edits;
- drivers receive, settle and publish in batches inside, while the consumer takes
  and settles one delivery at a time;
- a settle the broker can no longer honour raises ``LostDelivery``.

Dead-lettering and retry delays are not a driver concern: the runtime decides them
(``queue/settle.py``).
"""

from __future__ import annotations

import asyncio
import math
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any, Literal, TypeVar

from pydantic import BaseModel

from wippy_queue.errors import DriverError
from wippy_queue.queue.message import Message, exact_headers, exact_id

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Capabilities:
    """What a driver can do; the loader refuses configurations that need more."""

    #: whether ``Delivery.attempt`` is exact or may lag (SQS's approximate count)
    attempts: Literal["exact", "approximate"] = "exact"
    #: where a nacked or released message goes back: the tail, its original place, or
    #: no promised place
    requeue: Literal["tail", "original", "unordered"] = "tail"
    #: the longest delay a nack can hold a message back (seconds)
    max_delay_s: float = math.inf
    #: whether ``info`` counts are exact or approximate
    info: Literal["exact", "approximate"] = "exact"
    #: queues split by partition key (tenant partitions): a message goes to its
    #: partition, a subscriber reads one partition or all of them
    partitions: bool = False
    #: messages survive our process (a crash, a restart)
    durable: bool = False
    #: several processes (machines) can share one queue
    shared: bool = False
    #: deliveries are leases: extended while a handler runs, back after a timeout
    leases: bool = False
    #: settles are committed in groups (one commit and fsync for many): the consumer lets
    #: a worker take its next message while its settle commits, so settles can share one,
    #: and an ack the driver has taken gives its credit back (the next messages are
    #: handled while it commits)
    group_commit: bool = False


@dataclass(frozen=True, slots=True)
class QueueSpec:
    """Everything a driver needs to make a queue exist."""

    #: registry ID (``app.queue:tasks``)
    id: str
    #: name on the broker (``queue_name``, default the entry name)
    name: str
    #: the driver's validated ``driver_options`` model for this queue
    options: BaseModel | None = None
    #: the runtime dead-letters at this many attempts (0: never)
    max_attempts: int = 0
    #: registry ID of the dead-letter queue
    dead_letter: str | None = None
    #: messages go to partitions (``publish(partition=...)``; subscribers pick one or all)
    partitioned: bool = False
    #: the MIME type of the queue codec's bytes (brokers that label messages)
    content_type: str = "application/json"

    def option(self, name: str, default: object = None) -> object:
        return getattr(self.options, name, default) if self.options is not None else default


@dataclass(frozen=True, slots=True)
class SubscribeSpec:
    """A consumer's attachment to one queue."""

    #: the consumer's registry ID (names it on the broker)
    consumer_id: str
    #: the queue's name on the broker
    queue: str
    #: the consumer's prefetch buffer
    prefetch: int = 10
    #: the most deliveries it may hold unsettled: prefetch + concurrency
    max_unsettled: int = 11
    #: the driver's validated ``driver_options`` model for this consumer
    options: BaseModel | None = None
    #: on a partitioned queue: the one partition it reads (None: every partition,
    #: including those that appear later)
    partition: str | None = None


@dataclass(frozen=True, slots=True)
class QueueInfo:
    """Truthful counts for one queue.

    ``expired`` counts messages dropped unhandled because their ``ttl`` ran out (with
    no dead-letter queue to go to).
    """

    queue: str
    consumer_count: int
    ready: int
    in_flight: int
    delayed: int = 0
    expired: int = 0
    exact: bool = True

    @property
    def message_count(self) -> int:
        """Every message the queue still owes a handler (derived: no driver can count
        it apart from its parts)."""
        return self.ready + self.in_flight + self.delayed

    @property
    def idle(self) -> bool:
        return self.message_count == 0


_EXACT = frozenset((str, int, float, bool))


def _exact_items(headers: dict[Any, Any]) -> bool:
    """Every key an exact ``str`` and every value an exact header type (a loop: a
    third cheaper than ``all`` over a generator, and it runs per delivery)."""
    for key, value in headers.items():
        if type(key) is not str or type(value) not in _EXACT:
            return False
    return True


class SubscriptionClosed(DriverError):
    """``receive`` on a subscription that was closed or whose driver stopped."""


class LostDelivery(DriverError):
    """A settle the broker can no longer honour: the delivery's channel is gone (a
    reconnect) or its lease passed to another consumer. The message is (or will be)
    delivered again; nothing is lost, but this attempt's settle did not happen."""


class Delivery(ABC):
    """One delivery of a message to one consumer; settled exactly once.

    The base class enforces single-shot settling for every driver; drivers
    implement ``_ack``, ``_nack`` and ``_release`` (and ``_extend`` for leases).
    """

    __slots__ = ("_acking", "attempt", "lease_s", "malformed", "message", "settled")

    #: the task of a default ``ack_then`` (held until done: the loop holds tasks weakly)
    _acking: asyncio.Task[None] | None

    def __init__(
        self,
        message: Message,
        attempt: int,
        lease_s: float | None = None,
        malformed: str | None = None,
    ) -> None:
        #: the message as exact built-in types (``_well_formed``), whatever the driver built
        self.message = message
        #: 1 for the first delivery, 2 for the first redelivery, ... (from the broker)
        self.attempt = attempt
        #: seconds the lease lasts unless extended (None: not a lease)
        self.lease_s = lease_s
        #: why what the broker holds is not a well-formed message (then ``message`` has
        #: what could be read): the runtime settles it as a ``decode_error``
        self.malformed = malformed
        self.settled = False
        if not (
            type(message.id) is str
            and type(message.body) is bytes
            and type(message.headers) is dict
            and message.id
            and _exact_items(message.headers)
        ):
            self._well_formed()

    def _well_formed(self) -> None:
        """Make the message exact built-in types: its id a ``str``, its body ``bytes``, its
        headers plain ``str`` keys and ``str``/``int``/``float``/``bool`` values. What
        cannot be made so is left out and makes the delivery ``malformed``: nothing a
        driver hands over can crash settling, its audit record, or lie to a check."""
        message = self.message
        message_id, id_problem = exact_id(message.id)
        headers, header_problem = exact_headers(message.headers)
        body, body_problem = message.body, None
        if not isinstance(body, bytes | bytearray | memoryview):
            body, body_problem = b"", f"its body is a {type(body).__name__}, not bytes"
        self.message = Message(message_id, bytes(body), headers)
        problem = id_problem or header_problem or body_problem
        if problem and self.malformed is None:
            self.malformed = f"the broker's message is malformed: {problem}"

    def _once(self) -> None:
        if self.settled:
            raise DriverError(f"message {self.message.id} was already settled")
        self.settled = True

    async def ack(self) -> None:
        """The message is done: remove it from the queue."""
        self._once()
        await self._ack()

    def ack_then(self, done: Callable[[BaseException | None], None]) -> None:
        """``ack`` without awaiting it: ``done`` is called on the loop once the ack is
        made (None) or failed (the error). For drivers whose acks go out in groups
        (``group_commit``): the consumer goes on meanwhile, and a driver that can call
        back from its own future saves a task per message; this default runs ``_ack``
        in one. Settling twice raises here, at once."""
        self._once()
        self._acking = asyncio.ensure_future(self._ack())  # (held: a task must be)
        self._acking.add_done_callback(partial(self._report, done))

    def _report(
        self, done: Callable[[BaseException | None], None], task: asyncio.Future[None]
    ) -> None:
        self._acking = None
        report(done, task)

    async def nack(self, *, requeue: bool = True, delay_s: float = 0.0, reason: str = "") -> None:
        """The attempt failed: requeue (after ``delay_s``), or drop it (``requeue=False``)."""
        self._once()
        await self._nack(requeue=requeue, delay_s=delay_s, reason=reason)

    async def release(self) -> None:
        """Give the message back untried (prefetched, cut off by a stop): no attempt counted."""
        self._once()
        await self._release()

    async def extend(self) -> None:
        """Renew the lease for another ``lease_s`` (no-op for drivers without leases)."""
        if not self.settled:
            await self._extend()

    @abstractmethod
    async def _ack(self) -> None: ...

    @abstractmethod
    async def _nack(self, *, requeue: bool, delay_s: float, reason: str) -> None: ...

    @abstractmethod
    async def _release(self) -> None: ...

    async def _extend(self) -> None:
        return None


def report(done: Callable[[BaseException | None], None], future: asyncio.Future[Any]) -> None:
    """Tell an ``ack_then`` caller how ``future`` ended: None, or its error."""
    done(asyncio.CancelledError() if future.cancelled() else future.exception())


class Subscription(ABC):
    """A consumer's attachment to one queue."""

    @abstractmethod
    async def receive(self) -> Delivery:
        """Wait for the next delivery; raise ``SubscriptionClosed`` once closed.

        While the driver's connection is down this waits (the consumer pauses).
        """

    async def receive_many(self, limit: int) -> list[Delivery]:
        """Wait for the next delivery, then take those ready now (``take_ready``), up to
        ``limit`` in all: the consumer's fetch loop awaits once per batch instead of
        once per message. Same errors as ``receive``."""
        batch = [await self.receive()]
        while len(batch) < limit:
            more = self.take_ready()
            if more is None:
                break
            batch.append(more)
        return batch

    def take_ready(self) -> Delivery | None:
        """A delivery that ``receive`` would return at once, or None (then ``receive``
        waits, or says why not). Within the subscription's limit, like ``receive``."""
        return None

    @abstractmethod
    async def close(self) -> None:
        """Stop delivering; deliveries already handed out stay settleable."""

    async def extend(self, deliveries: Sequence[Delivery]) -> None:
        """Renew the leases of ``deliveries`` (drivers batch this into one call)."""
        for delivery in deliveries:
            await delivery.extend()


class Driver(ABC):
    """A queue backend. One driver instance serves every queue bound to its entry."""

    capabilities: Capabilities = Capabilities()

    def __init__(self, entry_id: str) -> None:
        self.entry_id = entry_id
        #: resolves with an error when the driver dies while running (lost its broker
        #: for good): the supervisor then fails or restarts it as its lifecycle says
        self.failed: asyncio.Future[BaseException] | None = None

    @abstractmethod
    async def start(self) -> None: ...

    @abstractmethod
    async def stop(self) -> None: ...

    @property
    @abstractmethod
    def running(self) -> bool: ...

    @property
    def connected(self) -> bool:
        """False while the broker is unreachable (reconnecting); embedded drivers: True."""
        return self.running

    @abstractmethod
    async def declare(self, spec: QueueSpec) -> None:
        """Make the queue exist as ``spec`` says; idempotent; a conflicting re-declare
        raises DriverError."""

    @abstractmethod
    async def publish(self, queue: str, message: Message, partition: str = "") -> None:
        """Enqueue (on the broker once this returns); may wait while the queue is full.

        ``partition``: where the message goes on a partitioned queue (a requeue keeps it
        there); ``""`` is the default partition (and the only one of other queues).
        """

    @abstractmethod
    async def subscribe(self, spec: SubscribeSpec) -> Subscription: ...

    @abstractmethod
    async def info(self, queue: str) -> QueueInfo: ...

    async def idle(self, queue: str) -> bool:
        """Whether ``queue`` has nothing ready, in flight or delayed; a driver that can
        tell more cheaply than by its ``info`` counts says so here."""
        return (await self.info(queue)).idle

    async def wait_idle(self, queue: str, *, timeout_s: float | None = None) -> None:
        """Wait until ``queue`` has nothing ready, in flight or delayed.

        Brokers without change notifications poll ``idle``; the memory driver overrides
        this with an event.
        """
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while not await self.idle(queue):
            if deadline is not None and time.monotonic() >= deadline:
                raise TimeoutError(f"queue {queue!r} not idle after {timeout_s}s")
            await asyncio.sleep(0.02)

    def declared(self, queues: Mapping[str, T], queue: str) -> T:
        """What this driver keeps of ``queue`` (``queues[queue]``); a DriverError naming
        the queue and the driver if it was never declared here."""
        try:
            return queues[queue]
        except KeyError:
            error = f"queue {queue!r} is not declared on driver {self.entry_id}"
            raise DriverError(error) from None

    def not_running_error(self) -> DriverError:
        return DriverError(
            f"driver {self.entry_id} is not running; start it first "
            "(lifecycle.auto_start: true, or runtime.start(driver_id))"
        )
