"""Deferred settles: deliveries whose outcome is decided, waiting on settle hooks.

The audit trail must write a message's record before the message is acked. A
worker does not wait for that write: it hands the delivery here and takes its next
message, so records from every worker are group-committed in one write. Deliveries
waiting on the same awaitable (one audit batch) are settled together by one task
once it completes; if it fails, they all go back to the queue unsettled. Each
delivery keeps its consumer credit until it is settled, so backpressure holds.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from wippy_queue.queue.driver import Delivery
from wippy_queue.queue.outcome import Outcome
from wippy_queue.queue.queue import Queue

log = logging.getLogger(__name__)


@dataclass(slots=True)
class _Item:
    delivery: Delivery
    outcome: Outcome
    action: str


class DeferredSettles:
    def __init__(
        self,
        consumer_id: str,
        queue: Queue,
        *,
        release_credit: Callable[[], None],
        on_settle_error: Callable[[Delivery, Exception], Awaitable[None]],
    ) -> None:
        self.consumer_id = consumer_id
        self.queue = queue
        self._release_credit = release_credit
        self._on_settle_error = on_settle_error
        self._groups: dict[asyncio.Future[Any], list[_Item]] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self.pending = 0

    def add(
        self, delivery: Delivery, outcome: Outcome, action: str, waits: list[Awaitable[None]]
    ) -> None:
        """Settle ``delivery`` with ``action`` once every awaitable in ``waits`` is done."""
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
        group.append(_Item(delivery, outcome, action))

    def _ready(self, future: asyncio.Future[Any]) -> None:
        items = self._groups.pop(future, [])
        task = asyncio.get_running_loop().create_task(self._settle(future, items))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _settle(self, future: asyncio.Future[Any], items: list[_Item]) -> None:
        error = None if future.cancelled() else future.exception()
        for item in items:
            try:
                if future.cancelled() or error is not None:
                    await self._give_back(item.delivery, error)
                else:
                    try:
                        await self.queue.apply(
                            item.delivery, item.outcome, item.action, self.consumer_id
                        )
                    except Exception as err:
                        await self._on_settle_error(item.delivery, err)
            finally:
                self.pending -= 1
                self._release_credit()

    async def _give_back(self, delivery: Delivery, error: BaseException | None) -> None:
        # e.g. the audit trail cannot be written: nothing is acked unaudited
        log.error(
            "consumer %s: message %s given back unsettled: %s",
            self.consumer_id,
            delivery.message.id,
            error or "cancelled",
        )
        if not delivery.settled:
            await delivery.release()

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
