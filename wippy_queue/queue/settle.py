"""Settling: what happens to a delivery once its outcome is known, in one place.

- ``Outcome`` (``queue/outcome.py``): ack, or a nack with its ``Reason``; settling
  it is an ``Action``: ack, nack (retry) or dead-letter.
- ``RetryPolicy``: what a nack becomes (a retry after a delay, or a dead letter at
  ``max_attempts``) and how long a retried message waits.
- ``Settler``: the one path every delivery of a consumer is settled through: now,
  or once the settle hooks (the audit record) are written; a refused or failed
  settle gives the message back untried. It holds the consumer's credit for each
  delivery until it is settled, so backpressure holds across deferred settles.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from wippy_queue.queue.driver import Delivery, LostDelivery
from wippy_queue.queue.message import Message
from wippy_queue.queue.middleware import Job
from wippy_queue.queue.outcome import DENIALS, Action, Outcome
from wippy_queue.queue.queue import Queue

log = logging.getLogger(__name__)


#: Headers written on a dead-lettered message.
DL_REASON = "x_dead_letter_reason"
DL_ERROR = "x_dead_letter_error"
DL_QUEUE = "x_dead_letter_queue"
DL_CONSUMER = "x_dead_letter_consumer"
DL_TIME = "x_dead_letter_time"
DL_ATTEMPTS = "x_dead_letter_attempts"
DL_MESSAGE_ID = "x_dead_letter_message_id"


class SettleHook(Protocol):
    """Asked after the outcome is known and before the delivery is settled.

    ``before_settle`` returns None when its work is done, or an awaitable (e.g. an
    audit write waiting for its fsync) that the consumer awaits before it settles;
    raising, or an awaitable that fails, refuses the settle and the message goes back
    to the queue untried (this is how the audit trail makes sure nothing is acked
    unaudited). While ``gate`` is clear the consumer takes no new deliveries.
    """

    gate: asyncio.Event | None

    def before_settle(
        self, job: Job, outcome: Outcome, action: Action, duration_s: float
    ) -> Awaitable[None] | None: ...


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """A queue's rule for failed attempts.

    A denied message backs off (``deny_initial_s`` doubling to ``deny_max_s``), so
    a message no consumer may take never spins the CPU.
    """

    dead_letter: Queue | None = None
    max_attempts: int = 0
    deny_initial_s: float = 0.1
    deny_max_s: float = 5.0

    def action(self, attempt: int, outcome: Outcome) -> Action:
        if outcome.ack:
            return Action.ACK
        if self.dead_letter is not None and attempt >= self.max_attempts:
            return Action.DEAD_LETTER
        return Action.NACK

    def delay_s(self, attempt: int, outcome: Outcome) -> float:
        if outcome.delay_s is not None:
            return outcome.delay_s
        if outcome.reason in DENIALS:
            return min(self.deny_initial_s * 2.0 ** max(attempt - 1, 0), self.deny_max_s)
        return 0.0


def dead_letter_message(
    delivery: Delivery, outcome: Outcome, queue_id: str, consumer: str
) -> Message:
    """The copy that goes to the dead-letter queue: same id, body and headers, plus why."""
    original = delivery.message
    headers = dict(original.headers)
    headers.update(
        {
            DL_REASON: outcome.reason,
            DL_QUEUE: queue_id,
            DL_CONSUMER: consumer,
            DL_TIME: time.time(),
            DL_ATTEMPTS: delivery.attempt,
            DL_MESSAGE_ID: original.id,
        }
    )
    if outcome.error:
        headers[DL_ERROR] = outcome.error[:2000]
    return Message(original.id, original.body, headers)


class Settler:
    """Settles one consumer's deliveries; every path goes through here.

    ``release_credit`` is called once per delivery, when it is settled or given back.
    ``on_error`` hears of a settle that failed (the broker of the dead-letter queue
    is down): the message has been given back, the consumer decides what next.
    """

    def __init__(
        self,
        consumer_id: str,
        queue: Queue,
        policy: RetryPolicy,
        *,
        hooks: Sequence[SettleHook] = (),
        auto_ack: bool = False,
        pipelined: bool = False,
        release_credit: Callable[[], None],
        on_error: Callable[[Exception], None],
    ) -> None:
        self.consumer_id = consumer_id
        self.queue = queue
        self.policy = policy
        self.auto_ack = auto_ack
        #: settle in the background (drivers that group-commit): the worker goes on
        self.pipelined = pipelined
        self._hooks = tuple(hooks)
        self._release_credit = release_credit
        self._on_error = on_error
        self._groups: dict[asyncio.Future[Any], list[tuple[Delivery, Outcome, Action]]] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        #: deliveries whose settle has begun (their credit is returned by that settle)
        self._taken: set[Delivery] = set()
        #: deliveries waiting on a hook (an audit write) before they are settled
        self.pending = 0

    async def settle(self, job: Job, delivery: Delivery, outcome: Outcome, started: float) -> None:
        """Settle ``delivery`` with ``outcome``: now, or once the hooks' writes are done."""
        self._taken.add(delivery)
        if self.auto_ack:  # acked on delivery, before the handler ran
            self._done(delivery)
            return
        action = self.policy.action(delivery.attempt, outcome)
        waits = self._ask_hooks(job, outcome, action, started) if self._hooks else ()
        if isinstance(waits, Exception):  # refused (the audit trail is down)
            log.error(
                "consumer %s: message %s given back: %s", self.consumer_id, job.message.id, waits
            )
            await self.give_back(delivery)
        elif waits:
            self._defer(delivery, outcome, action, list(waits))
        elif self.pipelined:  # committed with other workers' settles; the credit waits
            self.pending += 1
            self._spawn(self._pipelined(delivery, outcome, action))
        else:  # no hooks, or done (the record is written): settle now
            await self._apply_or_give_back(delivery, outcome, action)

    async def _pipelined(self, delivery: Delivery, outcome: Outcome, action: Action) -> None:
        try:
            await self._apply_or_give_back(delivery, outcome, action)
        finally:
            self.pending -= 1

    def _spawn(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def give_back(self, delivery: Delivery) -> None:
        """Back to the queue untried (prefetched, cut off by a stop, refused): no attempt."""
        try:
            if not delivery.settled:
                await delivery.release()
        finally:
            self._done(delivery)

    async def cut_off(self, delivery: Delivery) -> None:
        """Its handler was cancelled (a stop): give it back unless its settle has begun."""
        if delivery not in self._taken:
            await self.give_back(delivery)

    def _done(self, delivery: Delivery) -> None:
        self._taken.discard(delivery)
        self._release_credit()

    async def _apply_or_give_back(
        self, delivery: Delivery, outcome: Outcome, action: Action
    ) -> None:
        try:
            await self.apply(delivery, outcome, action)
        except LostDelivery as err:  # its lease was taken over: it is delivered again
            log.warning("consumer %s: %s", self.consumer_id, err)
            self._done(delivery)
            return
        except Exception as err:
            log.error(
                "consumer %s: settling message %s failed: %s: %s; it goes back to the queue",
                self.consumer_id,
                delivery.message.id,
                type(err).__name__,
                err,
            )
            try:
                await self.give_back(delivery)
            except Exception:
                log.exception(
                    "consumer %s: giving message %s back failed",
                    self.consumer_id,
                    delivery.message.id,
                )
            self._on_error(err)
            return
        self._done(delivery)

    async def apply(self, delivery: Delivery, outcome: Outcome, action: Action) -> None:
        if action is Action.ACK:
            await delivery.ack()
        elif action is Action.DEAD_LETTER:
            await self._dead_letter(delivery, outcome)
        else:
            delay_s = self.policy.delay_s(delivery.attempt, outcome)
            await delivery.nack(requeue=True, delay_s=delay_s, reason=outcome.reason)

    async def _dead_letter(self, delivery: Delivery, outcome: Outcome) -> None:
        target = self.policy.dead_letter
        assert target is not None
        copy = dead_letter_message(delivery, outcome, self.queue.id, self.consumer_id)
        # Publish first, then ack: a crash in between duplicates, never loses.
        await target.put(copy)
        await delivery.ack()
        log.warning(
            "message %s dead-lettered to %s after %d attempts (%s)",
            copy.id,
            target.id,
            delivery.attempt,
            outcome.reason,
            extra={"fields": {"queue": self.queue.id, "message_id": copy.id}},
        )

    def _ask_hooks(
        self, job: Job, outcome: Outcome, action: Action, started: float
    ) -> list[Awaitable[None]] | Exception:
        """Ask every settle hook (the audit record): what is left to wait for, or why not."""
        duration_s = time.monotonic() - started
        waits = []
        try:
            for hook in self._hooks:
                wait = hook.before_settle(job, outcome, action, duration_s)
                if wait is not None:
                    waits.append(wait)
        except Exception as err:
            return err
        return waits

    def _defer(
        self, delivery: Delivery, outcome: Outcome, action: Action, waits: list[Awaitable[None]]
    ) -> None:
        # Pipelined: the worker takes its next message while the hooks (an audit write
        # waiting for its fsync, group-committed with other workers' records) finish.
        first = waits[0] if len(waits) == 1 else None
        future: asyncio.Future[Any]
        if isinstance(first, asyncio.Future):
            future = first  # the common case: one audit batch
        else:
            future = asyncio.ensure_future(asyncio.gather(*waits))
        self.pending += 1
        group = self._groups.get(future)
        if group is None:
            group = self._groups[future] = []
            future.add_done_callback(self._ready)
        group.append((delivery, outcome, action))

    def _ready(self, future: asyncio.Future[Any]) -> None:
        items = self._groups.pop(future, [])
        self._spawn(self._settle_group(future, items))

    async def _settle_group(
        self, future: asyncio.Future[Any], items: list[tuple[Delivery, Outcome, Action]]
    ) -> None:
        error = None if future.cancelled() else future.exception()
        for delivery, outcome, action in items:
            self.pending -= 1
            if future.cancelled() or error is not None:
                # e.g. the audit trail cannot be written: nothing is acked unaudited
                log.error(
                    "consumer %s: message %s given back unsettled: %s",
                    self.consumer_id,
                    delivery.message.id,
                    error or "cancelled",
                )
                await self.give_back(delivery)
            else:
                await self._apply_or_give_back(delivery, outcome, action)

    async def drain(self, timeout_s: float) -> None:
        """Wait (bounded) for every deferred settle; give back whatever is still waiting."""
        waiting = {*self._groups, *self._tasks}
        if waiting:
            await asyncio.wait(waiting, timeout=timeout_s)
        for future in list(self._groups):
            future.cancel()  # _ready runs: its items are given back
        await asyncio.sleep(0)  # let the done callbacks schedule their tasks
        if self._tasks:
            await asyncio.wait(set(self._tasks))
