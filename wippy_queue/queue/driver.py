"""The driver protocol: what a queue backend (memory, Redis Streams, RabbitMQ) provides.

Everything is async and per delivery: a consumer subscribes with a prefetch,
receives deliveries one at a time and settles each exactly once. Attempt counts
live with the broker (the ``attempts`` header of a delivered message), so that a
message redelivered after a crash keeps its count. Dead-lettering is NOT a driver
concern: the consumer decides it from the attempt count (see ``queue/settle.py``).
"""

from __future__ import annotations

import asyncio
import time
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from wippy_queue.errors import DriverError
from wippy_queue.queue.message import Message


@dataclass(frozen=True, slots=True)
class QueueInfo:
    """Truthful counts for one queue.

    ``message_count`` is every message the queue still owes a handler:
    ``ready + in_flight + delayed``.
    """

    queue: str
    message_count: int
    consumer_count: int
    ready: int
    in_flight: int
    delayed: int = 0

    @property
    def idle(self) -> bool:
        return self.message_count == 0


class SubscriptionClosed(DriverError):
    """``receive`` on a subscription that was closed or whose driver stopped."""


class Delivery(ABC):
    """One delivery of a message to one consumer; settled exactly once.

    The base class enforces single-shot settling for every driver; drivers
    implement ``_ack``, ``_nack`` and ``_release``.
    """

    __slots__ = ("message", "settled")

    def __init__(self, message: Message) -> None:
        self.message = message
        self.settled = False

    @property
    def attempt(self) -> int:
        """1 for the first delivery, 2 for the first redelivery, ..."""
        return self.message.attempts

    def _once(self) -> None:
        if self.settled:
            raise DriverError(f"message {self.message.id} was already settled")
        self.settled = True

    async def ack(self) -> None:
        """The message is done: remove it from the queue."""
        self._once()
        await self._ack()

    async def nack(self, *, requeue: bool = True, delay_s: float = 0.0, reason: str = "") -> None:
        """The attempt failed: requeue at the tail (after ``delay_s``) or drop it."""
        self._once()
        await self._nack(requeue=requeue, delay_s=delay_s, reason=reason)

    async def release(self) -> None:
        """Give the message back untried (prefetched, or cut off by a stop): no attempt counted."""
        self._once()
        await self._release()

    @abstractmethod
    async def _ack(self) -> None: ...

    @abstractmethod
    async def _nack(self, *, requeue: bool, delay_s: float, reason: str) -> None: ...

    @abstractmethod
    async def _release(self) -> None: ...


class Subscription(ABC):
    """A consumer's attachment to one queue."""

    @abstractmethod
    async def receive(self) -> Delivery:
        """Wait for the next delivery; raise ``SubscriptionClosed`` once closed."""

    @abstractmethod
    async def close(self) -> None:
        """Stop delivering; deliveries already handed out stay settleable."""


class Driver(ABC):
    """A queue backend. One driver instance serves every queue bound to its entry."""

    def __init__(self, entry_id: str) -> None:
        self.entry_id = entry_id

    @abstractmethod
    async def start(self) -> None: ...

    @abstractmethod
    async def stop(self) -> None: ...

    @property
    @abstractmethod
    def running(self) -> bool: ...

    @abstractmethod
    async def declare(self, queue: str, options: Mapping[str, Any]) -> None:
        """Make ``queue`` exist with the driver-specific ``options``."""

    @abstractmethod
    async def publish(self, queue: str, message: Message) -> None:
        """Enqueue; may wait while the queue is full (backpressure)."""

    @abstractmethod
    async def subscribe(self, queue: str, *, prefetch: int) -> Subscription: ...

    @abstractmethod
    async def info(self, queue: str) -> QueueInfo: ...

    async def wait_idle(self, queue: str, *, timeout_s: float | None = None) -> None:
        """Wait until ``queue`` has nothing ready, in flight or delayed.

        Brokers without change notifications poll ``info``; the memory driver overrides
        this with an event.
        """
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while not (await self.info(queue)).idle:
            if deadline is not None and time.monotonic() >= deadline:
                raise TimeoutError(f"queue {queue!r} not idle after {timeout_s}s")
            await asyncio.sleep(0.02)

    def not_running_error(self) -> DriverError:
        return DriverError(
            f"driver {self.entry_id} is not running; start it first "
            "(lifecycle.auto_start: true, or runtime.start(driver_id))"
        )
