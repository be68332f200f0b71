"""What the SQS driver knows of one queue: its URL and attributes, its batchers, and
the counts only this process can know (delayed nacks, expired drops, subscriptions)."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from wippy_queue.drivers.sqs.batching import Publisher, Settles
from wippy_queue.drivers.sqs.client import Link, SqsClient
from wippy_queue.drivers.sqs.config import DEFAULT_VISIBILITY_S, MAX_VISIBILITY_S, SqsQueueOptions
from wippy_queue.errors import DriverError
from wippy_queue.queue.driver import QueueSpec

if TYPE_CHECKING:
    from wippy_queue.queue.driver import Subscription

#: the one MessageGroupId of a FIFO queue (until queues have partition keys)
FIFO_GROUP = "default"


class SqsQueue:
    """What the driver knows of one queue on SQS."""

    def __init__(
        self,
        spec: QueueSpec,
        options: SqsQueueOptions,
        url: str,
        attributes: dict[str, str],
        *,
        client: SqsClient,
        link: Link,
        linger_s: float,
        stopped: Callable[[], DriverError],
    ) -> None:
        self.name = spec.name
        self.spec_id = spec.id
        self.options = options
        self.url = url
        self.fifo = attributes.get("FifoQueue") == "true"
        self.lease_s = int(attributes.get("VisibilityTimeout", DEFAULT_VISIBILITY_S))
        self.max_bytes = int(attributes.get("MaximumMessageSize", 262_144))
        self.publisher = Publisher(
            client,
            link,
            url,
            max_bytes=self.max_bytes,
            fifo_group=FIFO_GROUP if self.fifo else None,
            stopped=stopped,
        )
        self.settles = Settles(client, link, url, linger_s=linger_s)
        self.subscriptions: set[Subscription] = set()
        #: SQS MessageId -> when (monotonic) a delayed nack made here is due
        self.delayed: dict[str, float] = {}
        #: dropped by ``nack(requeue=False, reason="expired")`` through this driver
        self.expired = 0

    def delayed_now(self) -> int:
        now = time.monotonic()
        for key in [k for k, due in self.delayed.items() if due <= now]:
            del self.delayed[key]
        return len(self.delayed)


def delay_seconds(delay_s: float, held_s: float) -> int:
    """A nack delay as SQS takes it: whole seconds, within 12 h of the receive."""
    seconds = math.ceil(max(delay_s, 0.0))
    return int(min(seconds, max(MAX_VISIBILITY_S - math.ceil(held_s) - 1, 0)))
