"""A consumer: a prefetch buffer, ``concurrency`` workers, settle from the result.

Backpressure: a consumer holds at most ``prefetch + concurrency`` unsettled
deliveries (a credit is taken before each receive and returned after settle).
Stop is graceful and loses nothing: no new deliveries, prefetched ones go back
untried, in-flight handlers get ``stop_timeout`` to finish, then are cancelled and
their messages go back too.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import time
import traceback
from collections.abc import Awaitable, Sequence
from typing import Any

from wippy_queue.errors import HandlerError, LifecycleError, WippyQueueError
from wippy_queue.queue import context
from wippy_queue.queue.codec import DecodeError
from wippy_queue.queue.deferred import DeferredSettles
from wippy_queue.queue.driver import Delivery, Subscription, SubscriptionClosed
from wippy_queue.queue.handle import MessageHandle
from wippy_queue.queue.handler import Handler, outcome_of
from wippy_queue.queue.middleware import Job, Middleware, SettleHook, build_chain
from wippy_queue.queue.outcome import ACK, Outcome
from wippy_queue.queue.queue import Queue

log = logging.getLogger(__name__)


class _AllOf:
    """Several gates as one: open when all are."""

    def __init__(self, gates: list[asyncio.Event]) -> None:
        self._gates = gates

    def is_set(self) -> bool:
        return all(gate.is_set() for gate in self._gates)

    async def wait(self) -> None:
        for gate in self._gates:
            await gate.wait()


class Consumer:
    def __init__(
        self,
        entry_id: str,
        queue: Queue,
        handler: Handler,
        *,
        concurrency: int,
        prefetch: int,
        base_context: context.CallContext,
        middlewares: Sequence[Middleware] = (),
        settle_hooks: Sequence[SettleHook] = (),
        timeout_s: float | None = None,
        stop_timeout_s: float = 10.0,
        auto_ack: bool = False,
    ) -> None:
        self.entry_id = entry_id
        self.queue = queue
        self.handler = handler
        self.concurrency = concurrency
        self.prefetch = prefetch
        self.timeout_s = timeout_s
        self.stop_timeout_s = stop_timeout_s
        self.auto_ack = auto_ack
        self._base_context = base_context
        self._middlewares = tuple(middlewares)
        self._settle_hooks = tuple(settle_hooks)
        gates = [h.gate for h in self._settle_hooks if h.gate is not None]
        #: closed while a settle hook cannot work (the audit trail is unwritable)
        self._gate = gates[0] if len(gates) == 1 else _AllOf(gates) if gates else None
        self._chain = build_chain(self._middlewares, self._invoke)
        self._subscription: Subscription | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._fetcher: asyncio.Task[None] | None = None
        self._buffer: asyncio.Queue[Delivery] = asyncio.Queue()
        self._credits = asyncio.Semaphore(prefetch + concurrency)
        self._active: dict[asyncio.Task[Any], Delivery] = {}
        self._deferred: DeferredSettles | None = None
        self._stopping = False
        #: resolves with the error if the consumer dies while running (the supervisor restarts it)
        self.failed: asyncio.Future[BaseException] | None = None

    @property
    def held(self) -> int:
        """Unsettled deliveries this consumer holds (never above prefetch + concurrency)."""
        deferred = self._deferred.pending if self._deferred else 0
        return self._buffer.qsize() + len(self._active) + deferred

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._stopping = False
        self.failed = loop.create_future()
        self._base_context = self._base_context.evolve(loop=loop, consumer=self.entry_id)
        #: what each message's context is copied from: never touched by a handler
        self._clean_context = contextvars.copy_context()
        await self.handler.start(concurrency=self.concurrency)
        try:
            self._subscription = await self.queue.driver.subscribe(
                self.queue.name, prefetch=self.prefetch
            )
        except BaseException:
            await self.handler.close()
            raise
        self._credits = asyncio.Semaphore(self.prefetch + self.concurrency)
        self._buffer = asyncio.Queue()
        self._fetcher = asyncio.create_task(self._fetch(), name=f"{self.entry_id}:fetch")
        self._tasks = [
            asyncio.create_task(self._work(), name=f"{self.entry_id}:worker-{i}")
            for i in range(self.concurrency)
        ]
        if self._settle_hooks:
            self._deferred = DeferredSettles(
                self.entry_id,
                self.queue,
                release_credit=self._credits.release,
                on_settle_error=self._settle_failed,
            )

    async def _fetch(self) -> None:
        assert self._subscription is not None
        try:
            while True:
                if self._gate is not None and not self._gate.is_set():
                    await self._gate.wait()
                await self._credits.acquire()
                try:
                    delivery = await self._subscription.receive()
                except BaseException:
                    self._credits.release()
                    raise
                self._buffer.put_nowait(delivery)
        except SubscriptionClosed:
            if not self._stopping:
                self._fail(LifecycleError(f"consumer {self.entry_id}: its driver stopped"))
        except asyncio.CancelledError:
            raise
        except Exception as err:
            log.exception("consumer %s: receiving failed", self.entry_id)
            self._fail(err)

    def _fail(self, err: BaseException) -> None:
        if self.failed is not None and not self.failed.done():
            self.failed.set_result(err)

    async def _work(self) -> None:
        while True:
            delivery = await self._buffer.get()
            if self._stopping or (self._gate is not None and not self._gate.is_set()):
                await delivery.release()
                self._credits.release()
                continue
            task = asyncio.current_task()
            assert task is not None
            self._active[task] = delivery
            deferred = False
            try:
                deferred = await self._process(delivery)
            except asyncio.CancelledError:
                if not delivery.settled:  # cut off by stop: give it back, lose nothing
                    await delivery.release()
                raise
            except Exception as err:  # settling failed (e.g. the dead-letter broker is down)
                await self._settle_failed(delivery, err)
            finally:
                del self._active[task]
                if not deferred:  # a deferred settle returns the credit when it is done
                    self._credits.release()
            if self._stopping:
                return  # stop() waits for this task: done with its message, it is done

    async def _settle_failed(self, delivery: Delivery, err: Exception) -> None:
        """Give the message back and let the supervisor restart this consumer (with backoff)."""
        log.error(
            "consumer %s: settling message %s failed: %s: %s; it goes back to the queue",
            self.entry_id,
            delivery.message.id,
            type(err).__name__,
            err,
        )
        if not delivery.settled:
            try:
                await delivery.release()
            except Exception:
                log.exception(
                    "consumer %s: giving message %s back failed", self.entry_id, delivery.message.id
                )
        self._fail(err)

    async def _process(self, delivery: Delivery) -> bool:
        """Run one delivery; True when its settle was deferred to a settle task."""
        message = delivery.message
        queue = self.queue
        started = time.monotonic()
        job = Job(self.entry_id, queue.id, None, message, None, delivery.attempt)
        deferred = False

        async def settle(outcome: Outcome) -> None:
            nonlocal deferred
            if self.auto_ack:
                return
            action = queue.plan(delivery, outcome)
            waits = self._ask_hooks(job, outcome, action, started) if self._settle_hooks else ()
            if isinstance(waits, Exception):  # refused (the audit trail is down)
                await self._refused(job, delivery, waits)
            elif waits:
                deferred = self._defer(delivery, outcome, action, list(waits))
            else:  # no hooks, or done (the record is written): settle now
                await queue.apply(delivery, outcome, action, self.entry_id)

        if self.auto_ack:
            await delivery.ack()
        try:
            job.data = queue.codec.decode(message.body)
        except DecodeError as err:
            log.error("consumer %s: message %s: %s", self.entry_id, message.id, err)
            await settle(Outcome.nack("decode_error", str(err)))
            return deferred
        handle = job.handle = MessageHandle(
            message, job.data, queue.id, settle, asyncio.get_running_loop()
        )
        call = self._base_context.for_message(handle, message.id)
        # In a fresh context: nothing a handler sets (our call context or any context
        # variable of its own) reaches this worker's next message.
        try:
            outcome = await context.run_in(
                context.fresh(self._clean_context, call), self._chain(job)
            )
        except asyncio.CancelledError:
            handle.release()
            raise
        except Exception as err:  # a middleware failed: fail closed
            log.exception("consumer %s: middleware failed", self.entry_id)
            outcome = Outcome.nack("middleware_error", f"{type(err).__name__}: {err}")
        await handle.finish(outcome)
        return deferred

    def _ask_hooks(
        self, job: Job, outcome: Outcome, action: str, started: float
    ) -> list[Awaitable[None]] | Exception:
        """Ask every settle hook (the audit record): what is left to wait for, or why not."""
        duration_s = time.monotonic() - started
        waits = []
        try:
            for hook in self._settle_hooks:
                wait = hook.before_settle(job, outcome, action, duration_s)
                if wait is not None:
                    waits.append(wait)
        except Exception as err:
            return err
        return waits

    async def _refused(self, job: Job, delivery: Delivery, err: Exception) -> None:
        """A settle hook refused (the audit trail is down): give the message back."""
        log.error("consumer %s: message %s given back: %s", self.entry_id, job.message.id, err)
        await delivery.release()

    def _defer(
        self, delivery: Delivery, outcome: Outcome, action: str, waits: list[Awaitable[None]]
    ) -> bool:
        # Pipelined: the worker takes its next message while the hooks (an audit write
        # waiting for its fsync, group-committed with other workers' records) finish.
        assert self._deferred is not None
        self._deferred.add(delivery, outcome, action, waits)
        return True

    async def _invoke(self, job: Job) -> Outcome:
        try:
            if self.timeout_s is None:
                result = await self.handler.call(job.data)
            else:
                async with asyncio.timeout(self.timeout_s):
                    result = await self.handler.call(job.data)
        except TimeoutError:
            log.error(
                "consumer %s: handler timed out after %.3gs on message %s",
                self.entry_id,
                self.timeout_s,
                job.message.id,
            )
            return Outcome.nack("timeout", f"handler did not finish within {self.timeout_s}s")
        except Exception as err:
            # our own errors (a publish refused, the audit trail down) say what happened;
            # a traceback is for the handler's own bugs (Lua errors included)
            own = isinstance(err, WippyQueueError) and not isinstance(err, HandlerError)
            log.error(
                "consumer %s: handler failed on message %s: %s: %s",
                self.entry_id,
                job.message.id,
                type(err).__name__,
                err,
                extra={} if own else {"fields": {"traceback": traceback.format_exc()}},
            )
            return Outcome.nack("handler_error", f"{type(err).__name__}: {err}")
        outcome = outcome_of(result)
        if outcome is ACK:
            if log.isEnabledFor(logging.DEBUG):
                log.debug("consumer %s: message %s done", self.entry_id, job.message.id)
        else:
            log.warning(
                "consumer %s: message %s nacked: %s", self.entry_id, job.message.id, outcome.error
            )
        return outcome

    async def stop(self) -> None:
        """Stop taking deliveries, drain in-flight work, give back everything unfinished."""
        self._stopping = True
        if self._fetcher is not None:
            self._fetcher.cancel()
            await asyncio.gather(self._fetcher, return_exceptions=True)
        if self._subscription is not None:
            await self._subscription.close()
        while not self._buffer.empty():
            await self._buffer.get_nowait().release()
            self._credits.release()
        unfinished = await self._drain()
        if self._deferred is not None:  # settles waiting on the audit write: bounded too
            await self._deferred.drain(self.stop_timeout_s)
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []
        await self.handler.close()
        if unfinished:
            raise LifecycleError(
                f"consumer {self.entry_id}: {len(unfinished)} handler(s) did not finish within "
                f"stop_timeout {self.stop_timeout_s}s; their messages were returned to the "
                f"queue: {', '.join(unfinished)}"
            )

    async def _drain(self) -> list[str]:
        """Wait for in-flight handlers; cancel the late ones, returning their messages."""
        busy = list(self._active)
        if not busy:
            return []
        _, pending = await asyncio.wait(busy, timeout=self.stop_timeout_s)
        unfinished = []
        for task in pending:
            delivery = self._active.get(task)
            if delivery is not None:
                unfinished.append(delivery.message.id)
            task.cancel()
        if pending:
            await asyncio.wait(pending)
        return unfinished
