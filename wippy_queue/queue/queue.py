"""A logical queue: its registry ID, its name on a driver, its codec."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

from wippy_queue.queue.codec import Codec
from wippy_queue.queue.driver import Driver, QueueInfo
from wippy_queue.queue.message import Message

log = logging.getLogger(__name__)


@dataclass(eq=False)
class Queue:
    id: str
    name: str
    driver: Driver
    codec: Codec
    #: where its failed messages go (the consumers' retry policy dead-letters there)
    dead_letter: Queue | None = None
    max_attempts: int = 0
    #: driver-specific options, given to the driver when it declares the queue
    options: dict[str, Any] = field(default_factory=dict)
    consumers: list[str] = field(default_factory=list)

    async def put(self, message: Message) -> None:
        await self.driver.publish(self.name, message)

    async def info(self) -> QueueInfo:
        info = await self.driver.info(self.name)
        return QueueInfo(
            queue=self.id,
            message_count=info.message_count,
            consumer_count=info.consumer_count,
            ready=info.ready,
            in_flight=info.in_flight,
            delayed=info.delayed,
        )
