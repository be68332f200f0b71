"""Batching inside the SQS driver: many callers, few API calls.

- ``Publisher``: concurrent publishes to one queue share ``SendMessageBatch`` calls
  (up to 10 entries and the queue's byte limit each, a few calls in flight); a
  publish returns once SQS has its message. Nothing waits on a timer: while one
  batch is in flight the next fills, so under load every call carries 10.
- ``Settles``: acks (``DeleteMessageBatch``) and nacks and releases
  (``ChangeMessageVisibilityBatch``) are pipelined: a settle is queued and sent
  within ``linger_s`` or as soon as 10 are waiting; ``flush`` sends everything now
  (before ``info``, on stop).

While the endpoint is unreachable both wait for the ``Link`` and retry; a whole
batch sent twice after an unanswered call may duplicate a standard queue's
messages (at-least-once; a FIFO queue drops them by deduplication id).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from wippy_queue.drivers.sqs.client import Link, SqsClient, Unavailable
from wippy_queue.drivers.sqs.config import MAX_BATCH
from wippy_queue.drivers.sqs.wire import Outgoing
from wippy_queue.errors import DriverError
from wippy_queue.tasks import cancel_and_wait

log = logging.getLogger(__name__)

#: SendMessageBatch calls one queue has in flight at once
MAX_IN_FLIGHT = 8
#: back-off before resending entries SQS failed on its side (not ours)
RESEND_DELAY_S = 0.2


class Publisher:
    """``put`` a message; it shares a SendMessageBatch with concurrent puts."""

    def __init__(
        self,
        client: SqsClient,
        link: Link,
        url: str,
        *,
        max_bytes: int,
        fifo_group: str | None,
        stopped: Callable[[], DriverError],
    ) -> None:
        self._client = client
        self._link = link
        self._url = url
        self._max_bytes = max_bytes
        self._group = fifo_group
        self._stopped = stopped
        self._pending: list[tuple[Outgoing, asyncio.Future[None]]] = []
        self._wake = asyncio.Event()
        self._slots = asyncio.Semaphore(MAX_IN_FLIGHT)
        self._sends: set[asyncio.Task[None]] = set()
        self._runner: asyncio.Task[None] | None = None

    async def put(self, message: Outgoing) -> None:
        future = asyncio.get_running_loop().create_future()
        self._pending.append((message, future))
        self._wake.set()
        if self._runner is None:
            self._runner = asyncio.get_running_loop().create_task(self._run())
        await future  # cancelled before it was sent: it is skipped

    def _take(self) -> list[tuple[Outgoing, asyncio.Future[None]]]:
        batch: list[tuple[Outgoing, asyncio.Future[None]]] = []
        size = 0
        while self._pending and len(batch) < MAX_BATCH:
            message, future = self._pending[0]
            if future.done():  # its caller gave up before it was sent
                self._pending.pop(0)
                continue
            if batch and size + message.size > self._max_bytes:
                break
            self._pending.pop(0)
            batch.append((message, future))
            size += message.size
        return batch

    async def _run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._pending:
                await self._slots.acquire()
                batch = self._take()
                if not batch:
                    self._slots.release()
                    break
                task = asyncio.get_running_loop().create_task(self._send(batch))
                self._sends.add(task)
                task.add_done_callback(self._sent)

    def _sent(self, task: asyncio.Task[None]) -> None:
        self._sends.discard(task)
        self._slots.release()

    async def _send(self, batch: list[tuple[Outgoing, asyncio.Future[None]]]) -> None:
        waiting = {str(i): item for i, item in enumerate(batch)}
        while waiting:
            if not await self._link.ready():
                _fail(waiting.values(), self._stopped())
                return
            entries = [message.entry(key, self._group) for key, (message, _) in waiting.items()]
            try:
                result = await self._client.call(
                    "SendMessageBatch", QueueUrl=self._url, Entries=entries
                )
            except Unavailable as err:
                self._link.lost(err)
                continue
            except DriverError as err:
                _fail(waiting.values(), err)
                return
            for done in result.get("Successful", ()):
                _, future = waiting.pop(done["Id"])
                if not future.done():
                    future.set_result(None)
            for failed in result.get("Failed", ()):
                if failed.get("SenderFault", True):
                    message, future = waiting.pop(failed["Id"])
                    _fail([(message, future)], _entry_error("publish", message.message_id, failed))
            if waiting:  # SQS failed on its side: send those again
                await asyncio.sleep(RESEND_DELAY_S)

    async def close(self, err: DriverError) -> None:
        """Fail what is not sent yet, let sends in flight finish (bounded by the caller)."""
        if self._runner is not None:
            await cancel_and_wait([self._runner])
            self._runner = None
        _fail(self._pending, err)
        self._pending.clear()
        if self._sends:
            await asyncio.gather(*self._sends, return_exceptions=True)


def _fail(items: Any, err: BaseException) -> None:
    for _, future in items:
        if not future.done():
            future.set_exception(err)
            future.exception()  # retrieved: a caller that gave up leaves no warning


def _entry_error(what: str, message_id: str, failed: dict[str, Any]) -> DriverError:
    return DriverError(
        f"SQS refused to {what} message {message_id}: {failed.get('Code')}: {failed.get('Message')}"
    )


@dataclass(slots=True)
class Settle:
    """One delete (``seconds`` None) or visibility change queued for a batch call."""

    receipt: str
    message_id: str
    seconds: int | None = None
    #: past this (monotonic) the lease is gone: a visibility change is no longer ours
    deadline: float = float("inf")


class Settles:
    """Pipelined deletes and visibility changes of one queue."""

    def __init__(self, client: SqsClient, link: Link, url: str, *, linger_s: float) -> None:
        self._client = client
        self._link = link
        self._url = url
        self._linger_s = linger_s
        self._deletes: list[Settle] = []
        self._changes: list[Settle] = []
        self._timer: asyncio.TimerHandle | None = None
        self._sends: set[asyncio.Task[None]] = set()

    def delete(self, receipt: str, message_id: str) -> None:
        self._add(self._deletes, Settle(receipt, message_id))

    def change(self, receipt: str, message_id: str, seconds: int, deadline: float) -> None:
        self._add(self._changes, Settle(receipt, message_id, seconds, deadline))

    def _add(self, pending: list[Settle], item: Settle) -> None:
        pending.append(item)
        if len(pending) >= MAX_BATCH:
            self._start(pending, MAX_BATCH)
        elif self._timer is None:
            loop = asyncio.get_running_loop()
            self._timer = loop.call_later(self._linger_s, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        self._start_all()

    def _start_all(self) -> None:
        for pending in (self._deletes, self._changes):
            while pending:
                self._start(pending, MAX_BATCH)

    def _start(self, pending: list[Settle], count: int) -> None:
        batch = pending[:count]
        del pending[:count]
        send = self._send_deletes if batch[0].seconds is None else self._send_changes
        task = asyncio.get_running_loop().create_task(send(batch))
        self._sends.add(task)
        task.add_done_callback(self._sends.discard)

    async def flush(self) -> None:
        """Send everything queued now and wait for every send in flight."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._start_all()
        if self._sends:
            await asyncio.gather(*self._sends, return_exceptions=True)

    async def _send_deletes(self, batch: list[Settle]) -> None:
        await self._send("DeleteMessageBatch", batch, lambda item: {})

    async def _send_changes(self, batch: list[Settle]) -> None:
        now = time.monotonic()
        live = [item for item in batch if item.deadline > now]
        if len(live) < len(batch):  # the lease ran out while waiting: the message is back
            log.info("%d visibility changes dropped: their leases ran out", len(batch) - len(live))
        if live:
            await self._send(
                "ChangeMessageVisibilityBatch",
                live,
                lambda item: {"VisibilityTimeout": item.seconds},
            )

    async def _send(self, operation: str, batch: list[Settle], extra: Any) -> None:
        waiting = {
            str(i): (item, {"Id": str(i), "ReceiptHandle": item.receipt, **extra(item)})
            for i, item in enumerate(batch)
        }
        while waiting:
            if not await self._link.ready():
                log.warning(
                    "%s: %d settles not sent (stopping); those messages come back after "
                    "their visibility timeout",
                    operation,
                    len(waiting),
                )
                return
            try:
                result = await self._client.call(
                    operation, QueueUrl=self._url, Entries=[entry for _, entry in waiting.values()]
                )
            except Unavailable as err:
                self._link.lost(err)
                continue
            except DriverError as err:
                log.error("%s of %d messages failed: %s", operation, len(waiting), err)
                return
            for done in result.get("Successful", ()):
                waiting.pop(done["Id"], None)
            for failed in result.get("Failed", ()):
                if failed.get("SenderFault", True):
                    item, _ = waiting.pop(failed["Id"])
                    log.warning("%s", _entry_error(operation, item.message_id, failed))
            if waiting:
                await asyncio.sleep(RESEND_DELAY_S)
