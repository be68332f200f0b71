"""Queues on the broker: their arguments, the holding queues of delayed nacks, conflicts.

A queue is durable: quorum (``x-queue-type: quorum``) unless its options say
``type: classic``. Its ``x-delivery-limit`` is set far above any ``max_attempts``
the runtime allows, and a nack republishes (carrying the count) long before the
broker's count could reach it, so the broker never drops a message the runtime
would still retry or dead-letter itself.

A delayed nack goes to a holding queue, one per queue and delay: a classic durable
queue whose ``x-message-ttl`` is the delay and whose expired messages dead-letter
back to the queue through the default exchange; no plugin. Delays of 100 ms and
more are rounded up to two significant digits (a 1234 ms delay waits 1300 ms), so
a queue has few holding queues; each removes itself (``x-expires``) once unused.
"""

from __future__ import annotations

import asyncio
import math
import re
import time
from dataclasses import dataclass, field
from typing import Any

from wippy_queue.drivers.amqp.config import AmqpQueueOptions
from wippy_queue.errors import DriverError
from wippy_queue.queue.driver import QueueSpec

#: far above DeadLetter.max_attempts' limit (1,000,000): it never fires first
DELIVERY_LIMIT = 2_000_000_000
#: a nack at this broker count republishes instead, so the count restarts
REPUBLISH_AT = 1_000_000
#: how long a requeued message counts as ready unless it is seen again first
RETURN_GRACE_S = 1.0
#: a holding queue outlives its last message by this long, then removes itself
HOLD_EXPIRES_MARGIN_MS = 600_000

_ARG_NAMES = {"x-max-length": "max_length", "x-queue-type": "type", "x-overflow": "overflow"}
_INEQUIVALENT = re.compile(r"inequivalent arg '([^']+)' for queue '([^']*)'.*received (.+)$")


@dataclass
class QueueState:
    """What the driver knows of one declared queue."""

    name: str
    spec: QueueSpec
    options: AmqpQueueOptions
    content_type: str | None = None
    #: holding queue name -> its delay in ms (those this driver has used or heard of)
    holding: dict[str, int] = field(default_factory=dict)
    #: messages dropped because their ttl ran out (by this driver)
    expired: int = 0
    #: message id -> until when it is counted as ready: a ``basic.nack`` requeue has
    #: no reply, and the queue shows the message again only once it has applied it
    returning: dict[str, float] = field(default_factory=dict)
    #: a partition's queue: the partitioned queue it belongs to ("" for a queue itself)
    base: str = ""

    @property
    def queue(self) -> str:
        """The declared queue it is (or is a partition of)."""
        return self.base or self.name

    #: copies being published by a settle (the original still counted in flight)
    moving: set[asyncio.Future[None]] = field(default_factory=set)

    async def moves_done(self, timeout_s: float) -> None:
        """Wait (bounded) for the copies being published now: until one is confirmed,
        the broker may count it while its original is still counted in flight."""
        if self.moving:
            await asyncio.wait(set(self.moving), timeout=timeout_s)

    def returned(self) -> int:
        """Messages nacked back that the broker may not show as ready yet."""
        if self.returning:
            now = time.monotonic()
            for message_id in [k for k, until in self.returning.items() if until <= now]:
                del self.returning[message_id]
        return len(self.returning)

    @property
    def quorum(self) -> bool:
        return self.options.type == "quorum"

    @property
    def max_length(self) -> int | None:
        return self.options.max_length


def queue_arguments(options: AmqpQueueOptions) -> dict[str, Any]:
    args: dict[str, Any] = {"x-queue-type": options.type}
    if options.type == "quorum":
        args["x-delivery-limit"] = DELIVERY_LIMIT
    if options.max_length is not None:
        args["x-max-length"] = options.max_length
        args["x-overflow"] = "reject-publish"
    return args


def delay_ms(delay_s: float) -> int:
    """The holding delay for ``delay_s``: whole ms, from 100 ms on two significant digits."""
    ms: int = max(1, math.ceil(delay_s * 1000 - 1e-6))
    if ms < 100:
        return ms
    scale = 10 ** (len(str(ms)) - 2)
    return int(-(-ms // scale) * scale)


#: what a holding queue's name has between its queue's name and its delay
HOLDING_MARK = ".wq-delay-"


def holding_name(queue: str, ms: int) -> str:
    return f"{queue}{HOLDING_MARK}{ms}ms"


def holding_arguments(queue: str, ms: int) -> dict[str, Any]:
    return {
        "x-queue-type": "classic",
        "x-message-ttl": ms,
        "x-dead-letter-exchange": "",
        "x-dead-letter-routing-key": queue,
        "x-expires": ms + HOLD_EXPIRES_MARGIN_MS,
    }


def conflict(spec: QueueSpec, err: BaseException) -> DriverError:
    """A refused declare (PRECONDITION_FAILED), naming the option and both values."""
    text = str(err)
    found = _INEQUIVALENT.search(text)
    if found is None:
        return DriverError(f"queue {spec.name!r} ({spec.id}) cannot be declared: {text}")
    arg, name, values = found.groups()
    option = _ARG_NAMES.get(arg, arg)
    received, _, current = values.partition(" but current is ")
    return DriverError(
        f"queue {name!r} exists on the broker with {option} {current.strip()}; {spec.id} "
        f"asks for {option} {received.strip()}: give the two one value (or delete the queue)"
    )
