"""A logical queue bound to a driver, and the runtime's dead-letter rule for it."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any

from wippy_queue.queue.codec import Codec
from wippy_queue.queue.driver import Delivery, Driver, QueueInfo
from wippy_queue.queue.message import Message
from wippy_queue.queue.outcome import Outcome

log = logging.getLogger(__name__)

#: Headers written on a dead-lettered message.
DL_REASON = "x_dead_letter_reason"
DL_ERROR = "x_dead_letter_error"
DL_QUEUE = "x_dead_letter_queue"
DL_CONSUMER = "x_dead_letter_consumer"
DL_TIME = "x_dead_letter_time"
DL_ATTEMPTS = "x_dead_letter_attempts"
DL_MESSAGE_ID = "x_dead_letter_message_id"


@dataclass(eq=False)
class Queue:
    id: str
    name: str
    driver: Driver
    codec: Codec
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

    def exhausted(self, delivery: Delivery) -> bool:
        return self.dead_letter is not None and delivery.attempt >= self.max_attempts

    def plan(self, delivery: Delivery, outcome: Outcome) -> str:
        """What settling ``outcome`` will do: ``ack``, ``nack`` or ``dead_letter``."""
        if outcome.ack:
            return "ack"
        return "dead_letter" if self.exhausted(delivery) else "nack"

    async def apply(
        self, delivery: Delivery, outcome: Outcome, action: str, consumer_id: str
    ) -> None:
        if action == "ack":
            await delivery.ack()
        elif action == "dead_letter":
            await self._dead_letter(delivery, outcome, consumer_id)
        else:
            delay_s = outcome.delay_s or 0.0
            await delivery.nack(requeue=True, delay_s=delay_s, reason=outcome.reason)

    async def _dead_letter(self, delivery: Delivery, outcome: Outcome, consumer_id: str) -> None:
        assert self.dead_letter is not None
        original = delivery.message
        headers = {k: v for k, v in original.headers.items() if k != "attempts"}
        headers.update(
            {
                DL_REASON: outcome.reason,
                DL_QUEUE: self.id,
                DL_CONSUMER: consumer_id,
                DL_TIME: time.time(),
                DL_ATTEMPTS: delivery.attempt,
                DL_MESSAGE_ID: original.id,
            }
        )
        if outcome.error:
            headers[DL_ERROR] = outcome.error[:2000]
        # Publish first, then ack: a crash in between duplicates, never loses.
        await self.dead_letter.put(Message(original.id, original.body, headers))
        await delivery.ack()
        log.warning(
            "message %s dead-lettered to %s after %d attempts (%s)",
            original.id,
            self.dead_letter.id,
            delivery.attempt,
            outcome.reason,
            extra={"fields": {"queue": self.id, "message_id": original.id}},
        )
