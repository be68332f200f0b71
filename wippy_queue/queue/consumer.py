"""A consumer: a prefetch buffer, ``concurrency`` workers, settle from the result.

Backpressure: a consumer holds at most ``prefetch + concurrency`` undecided
deliveries (a credit is taken before each receive and returned after settle, or once
a group-committing driver has taken the ack over: it commits meanwhile). A
handler with a backlog (threads: see ``Handler.backlog``) takes more calls than it
runs at once; the consumer's workers are then ``concurrency + backlog``, and the
handler runs ``concurrency`` of their calls at a time.
Stop is graceful and loses nothing: no new deliveries, prefetched ones go back
untried, in-flight handlers get ``stop_timeout`` to finish, then are cancelled and
their messages go back too.
"""

from __future__ import annotations

import asyncio
import collections
import contextvars
import logging
import time
from collections.abc import Sequence
from functools import partial
from typing import Any

from pydantic import BaseModel

from wippy_queue.errors import HandlerError, LifecycleError, WippyQueueError
from wippy_queue.identity import Decision
from wippy_queue.queue import context
from wippy_queue.queue.codec import DecodeError
from wippy_queue.queue.deadlines import Deadlines
from wippy_queue.queue.driver import (
    Delivery,
    LostDelivery,
    SubscribeSpec,
    Subscription,
    SubscriptionClosed,
)
from wippy_queue.queue.failures import FailureLog
from wippy_queue.queue.handle import MessageHandle
from wippy_queue.queue.handler import Handler, outcome_of
from wippy_queue.queue.leases import LeaseKeeper
from wippy_queue.queue.message import expired
from wippy_queue.queue.middleware import Job, Middleware, build_chain
from wippy_queue.queue.outcome import ACK, Outcome, Reason
from wippy_queue.queue.publisher import BoundPublisher
from wippy_queue.queue.queue import Queue
from wippy_queue.queue.settle import RetryPolicy, SettleHook, Settler
from wippy_queue.tasks import cancel_and_wait

log = logging.getLogger(__name__)

#: what a delivery that is no well-formed message is recorded as (no check ran)
MALFORMED = Decision(False, "malformed")


class _AllOf:
    """Several gates as one: open when all are."""

    def __init__(self, gates: list[asyncio.Event]) -> None:
        self._gates = gates

    def is_set(self) -> bool:
        return all(gate.is_set() for gate in self._gates)

    async def wait(self) -> None:
        for gate in self._gates:
            await gate.wait()


class _Credits:
    """How many more deliveries the consumer may take (prefetch + concurrency, less
    those unsettled). One taker, the fetch loop, takes every free credit for one
    ``receive_many`` and returns those the batch did not use; it waits only when none
    is free: cheaper per message than an ``asyncio.Semaphore``. Once out, it is woken
    when ``wake_at`` are free again, not at each settle: it then takes that many in
    one go instead of waking once per message, and the buffer still holds the rest of
    the prefetch for the workers meanwhile."""

    __slots__ = ("_waiter", "free", "wake_at")

    def __init__(self, free: int, wake_at: int = 1) -> None:
        self.free = free
        self.wake_at = max(1, min(wake_at, free))
        self._waiter: asyncio.Future[None] | None = None

    async def wait(self) -> None:
        """Until ``wake_at`` are free (the caller then takes them, one ``free -= 1``
        at a time)."""
        while self.free <= 0:
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None

    def give(self) -> None:
        self.free += 1
        waiter = self._waiter
        if waiter is not None and self.free >= self.wake_at and not waiter.done():
            waiter.set_result(None)


def _uncancel(task: asyncio.Task[Any], times: int) -> int:
    """Take back ``times`` cancellation requests; the number still pending."""
    left = task.cancelling()
    for _ in range(times):
        left = task.uncancel()
    return left


class _Buffer:
    """The prefetched deliveries and the workers waiting for one: what
    ``asyncio.Queue`` does for a worker, in a third of the calls (it is on every
    message's path). A put wakes one waiter, which then takes the front delivery; a
    waiter cancelled after its wake passes the wake on, so nothing is left behind."""

    __slots__ = ("_items", "_loop", "_waiters")

    def __init__(self, loop: asyncio.AbstractEventLoop | None = None) -> None:
        self._loop = loop  # (looked up at each wait otherwise)
        self._items: collections.deque[Delivery] = collections.deque()
        self._waiters: collections.deque[asyncio.Future[None]] = collections.deque()

    def __len__(self) -> int:
        return len(self._items)

    def put(self, delivery: Delivery) -> None:
        self._items.append(delivery)
        if self._waiters:
            self._wake()

    def take(self) -> Delivery:
        """The front delivery (IndexError when there is none)."""
        return self._items.popleft()

    def poll(self) -> Delivery | None:
        """The front delivery, or None when there is none (a worker then ``get``s)."""
        items = self._items
        return items.popleft() if items else None

    async def get(self) -> Delivery:
        items = self._items
        while not items:
            waiter = (self._loop or asyncio.get_running_loop()).create_future()
            self._waiters.append(waiter)
            try:
                await waiter
            except asyncio.CancelledError:
                if waiter.done() and not waiter.cancelled() and items:
                    self._wake()  # woken, then cancelled: the delivery goes to another
                raise
        return items.popleft()

    def _wake(self) -> None:
        waiters = self._waiters
        while waiters:
            waiter = waiters.popleft()
            if not waiter.done():  # (a cancelled worker's is)
                waiter.set_result(None)
                return


class Consumer:
    """Reads as fetch -> run -> settle: ``_fetch`` fills the buffer within the credits,
    each worker runs one delivery through the middleware chain and the handler, and
    the ``Settler`` settles it (every path, including giving it back, goes there)."""

    def __init__(
        self,
        entry_id: str,
        queue: Queue,
        handler: Handler,
        *,
        concurrency: int,
        prefetch: int,
        base_context: context.CallContext,
        retry: RetryPolicy | None = None,
        driver_options: BaseModel | None = None,
        partition: str | None = None,
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
        self.retry = retry or RetryPolicy()
        self.spec = SubscribeSpec(
            consumer_id=entry_id,
            queue=queue.name,
            prefetch=prefetch,
            max_unsettled=prefetch + concurrency,
            options=driver_options,
            partition=partition,
        )
        self._base_context = base_context
        self._middlewares = tuple(middlewares)
        self._settle_hooks = tuple(settle_hooks)
        gates = [h.gate for h in self._settle_hooks if h.gate is not None]
        #: closed while a settle hook cannot work (the audit trail is unwritable)
        self._gate = gates[0] if len(gates) == 1 else _AllOf(gates) if gates else None
        self._chain = build_chain(self._middlewares, self._invoke)
        self._subscription: Subscription | None = None
        self._leases: LeaseKeeper | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._fetcher: asyncio.Task[None] | None = None
        self._active: dict[asyncio.Task[Any], Delivery] = {}
        self._fresh_run()
        self._failures = FailureLog(entry_id, log)
        self._stopping = False
        #: the loop it runs on, kept: looking it up costs a system call (getpid)
        self._loop: asyncio.AbstractEventLoop | None = None
        #: the handlers' time limit while running (``timeout``)
        self._deadlines: Deadlines | None = None
        #: resolves with the error if the consumer dies while running (the supervisor restarts it)
        self.failed: asyncio.Future[BaseException] | None = None

    def _fresh_run(self, loop: asyncio.AbstractEventLoop | None = None) -> None:
        """What one run (start to stop) fills: made anew by each start."""
        self._buffer = _Buffer(loop)
        self._credits = _Credits(self.prefetch + self.concurrency, wake_at=self.prefetch // 2)
        #: every delivery taken and not yet settled (buffered, running, awaiting a hook)
        self._unsettled: set[Delivery] = set()
        self._settler = Settler(
            self.entry_id,
            self.queue,
            self.retry,
            hooks=self._settle_hooks,
            auto_ack=self.auto_ack,
            pipelined=self.queue.driver.capabilities.group_commit,
            done=self._settled,
            on_error=self._fail,
        )

    def _settled(self, delivery: Delivery) -> None:
        self._unsettled.discard(delivery)
        self._credits.give()

    @property
    def held(self) -> int:
        """Deliveries this consumer holds undecided or settling (never above prefetch +
        concurrency; an ack a group-committing driver took over no longer counts)."""
        return len(self._unsettled)

    async def start(self) -> None:
        loop = self._loop = asyncio.get_running_loop()
        backlog = self.handler.backlog(self.prefetch)
        if self.timeout_s is not None and not backlog:  # (one with a backlog times its calls)
            self._deadlines = Deadlines(self.timeout_s, loop)
        self._stopping = False
        self.failed = loop.create_future()
        self._base_context = self._base_context.evolve(loop=loop, consumer=self.entry_id)
        publisher = self._base_context.publisher
        if isinstance(publisher, BoundPublisher):  # what its handlers publish through
            publisher.home = self._base_context
        #: what each message's context is copied from: never touched by a handler
        self._clean_context = contextvars.copy_context()
        await self.handler.start(
            concurrency=self.concurrency, timeout_s=self.timeout_s if backlog else None
        )
        try:
            self._subscription = await self.queue.driver.subscribe(self.spec)
        except BaseException:
            await self.handler.close()
            raise
        self._fresh_run(loop)
        self._leases = LeaseKeeper(self.entry_id, self._subscription)
        self._fetcher = asyncio.create_task(self._fetch(), name=f"{self.entry_id}:fetch")
        self._tasks = [
            asyncio.create_task(self._work(), name=f"{self.entry_id}:worker-{i}")
            for i in range(self.concurrency + backlog)
        ]

    async def _fetch(self) -> None:
        assert self._leases is not None
        hold, unsettled, buffer = self._leases.hold, self._unsettled, self._buffer
        try:
            while True:
                for delivery in await self._receive_batch():
                    unsettled.add(delivery)
                    if delivery.lease_s is not None:
                        hold(delivery)  # extended while held
                    buffer.put(delivery)
        except SubscriptionClosed:
            if not self._stopping:
                self._fail(LifecycleError(f"consumer {self.entry_id}: its driver stopped"))
        except asyncio.CancelledError:
            raise
        except Exception as err:
            log.exception("consumer %s: receiving failed", self.entry_id)
            self._fail(err)

    async def _receive_batch(self) -> list[Delivery]:
        """Once the gate is open and credits are free: as many deliveries as are ready
        (at least one), up to the free credits, each taking one."""
        assert self._subscription is not None
        if self._gate is not None and not self._gate.is_set():
            await self._gate.wait()
        credits = self._credits
        if credits.free <= 0:
            await credits.wait()
        taking, credits.free = credits.free, 0
        try:
            deliveries = await self._subscription.receive_many(taking)
        except BaseException:
            credits.free += taking
            raise
        credits.free += taking - len(deliveries)  # (settles meanwhile gave theirs back)
        return deliveries

    def _fail(self, err: BaseException) -> None:
        if self.failed is not None and not self.failed.done():
            self.failed.set_result(err)

    async def _work(self) -> None:
        settler, buffer = self._settler, self._buffer
        task = asyncio.current_task()
        assert task is not None
        while True:
            delivery = buffer.poll() or await buffer.get()
            if self._stopping or (self._gate is not None and not self._gate.is_set()):
                await settler.give_back(delivery)
                if self._stopping:
                    return  # (stop gives back the rest: a worker never waits again)
                continue
            self._active[task] = delivery
            try:
                await self._process(delivery)
            except asyncio.CancelledError:
                await settler.cut_off(delivery)  # cut off by stop: give it back, lose nothing
                raise
            except Exception as err:  # a bug of ours: give the message back, restart
                log.exception("consumer %s: message %s failed", self.entry_id, delivery.message.id)
                await settler.cut_off(delivery)
                self._fail(err)
            finally:
                del self._active[task]
            if self._stopping:
                return  # stop() waits for this task: done with its message, it is done

    async def _process(self, delivery: Delivery) -> None:
        """Run one delivery: decode, the middleware chain and handler, then settle."""
        message = delivery.message
        job = Job(self.entry_id, self.queue.id, None, message, None, delivery.attempt)
        settle = partial(self._settler.settle, job, delivery, time.monotonic())
        problem = delivery.malformed
        if problem is None:
            try:
                job.data = self.queue.codec.decode(message.body)
            except DecodeError as err:
                problem = str(err)
        if problem is not None:  # decided before anything else: recorded as what it is
            log.error("consumer %s: message %s: %s", self.entry_id, message.id, problem)
            job.decision = (MALFORMED, None)
            await settle(Outcome.nack(Reason.DECODE_ERROR, problem))
            return
        if expired(message):  # never handed to a handler
            log.warning("consumer %s: message %s expired (ttl)", self.entry_id, message.id)
            await settle(Outcome.nack(Reason.EXPIRED, "its queue's ttl ran out"))
            return
        if self.auto_ack:
            try:
                await delivery.ack()
            except LostDelivery as err:  # another consumer took it over: not run here
                log.warning("consumer %s: message %s not run: %s", self.entry_id, message.id, err)
                await settle(ACK)  # (acked already: only its credit comes back)
                return
        loop = self._loop
        assert loop is not None, "start() the consumer first"
        handle = job.handle = MessageHandle(
            message, job.data, self.queue.id, settle, loop, delivery.attempt
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
            self._failures.middleware_failed(message.id, err)
            error = f"{type(err).__name__}: {err}"
            if job.decision is None:  # it failed deciding: a deny, recorded as an error
                job.decision = (Decision(False, "error", error=error), None)
            outcome = Outcome.nack(Reason.MIDDLEWARE_ERROR, error)
        await handle.finish(outcome)

    async def _invoke(self, job: Job) -> Outcome:
        try:
            if self._deadlines is None:
                result = await self.handler.call(job.data)
            else:
                result = await self._call_within(self._deadlines, job.data)
        except Exception as err:
            if isinstance(err, TimeoutError) and self.timeout_s is not None:
                log.error(
                    "consumer %s: handler timed out after %.3gs on message %s",
                    self.entry_id,
                    self.timeout_s,
                    job.message.id,
                )
                return Outcome.nack(
                    Reason.TIMEOUT, f"handler did not finish within {self.timeout_s}s"
                )
            # (a handler's own TimeoutError, with no time limit here, is its error)
            # our own errors (a publish refused, the audit trail down) say what happened;
            # a traceback is for the handler's own bugs (Lua errors included), once each
            own = isinstance(err, WippyQueueError) and not isinstance(err, HandlerError)
            self._failures.handler_failed(job.message.id, err, traceback_=not own)
            return Outcome.nack(Reason.HANDLER_ERROR, f"{type(err).__name__}: {err}")
        outcome = ACK if result is None else outcome_of(result)
        if outcome is ACK:
            if log.isEnabledFor(logging.DEBUG):
                log.debug("consumer %s: message %s done", self.entry_id, job.message.id)
        else:
            log.warning(
                "consumer %s: message %s nacked: %s", self.entry_id, job.message.id, outcome.error
            )
        return outcome

    async def _call_within(self, deadlines: Deadlines, data: Any) -> Any:
        """The handler call under the consumer's ``timeout``: TimeoutError when it runs
        out (unless the task was cancelled by a stop too: that cancellation goes on)."""
        task = asyncio.current_task(self._loop)
        assert task is not None
        deadlines.begin(task)
        try:
            result = await self.handler.call(data)
        except BaseException as err:
            # Every way out ends the call's deadline: one left behind would cancel this
            # worker wherever it is when the time runs out (idle, or on another message).
            cancels = deadlines.end(task)
            if cancels and _uncancel(task, cancels) == 0:  # its time ran out: a timeout
                cause = None if isinstance(err, asyncio.CancelledError) else err
                raise TimeoutError from cause
            raise
        cancels = deadlines.end(task)
        if cancels:  # it swallowed the cancellations: its result stands
            _uncancel(task, cancels)
        return result

    async def stop(self) -> None:
        """Stop taking deliveries, drain in-flight work, give back everything unfinished.

        The subscription is closed first (no more deliveries); what it handed out stays
        settleable (the driver keeps its channel or lease until the running handlers
        have settled: the contract suite checks it), so handlers finish normally.
        """
        self._stopping = True
        if self._fetcher is not None:
            await cancel_and_wait([self._fetcher])
        if self._subscription is not None:
            await self._subscription.close()
        while self._buffer:
            await self._settler.give_back(self._buffer.take())
        self.handler.drop_backlog()  # calls not started yet go back like the buffer's
        unfinished = await self._drain()
        # settles waiting on the audit write: bounded too
        await self._settler.drain(self.stop_timeout_s)
        await cancel_and_wait(self._tasks)
        self._tasks = []
        if self._leases is not None:
            await self._leases.stop()
        if self._deadlines is not None:
            self._deadlines.close()
            self._deadlines = None
        await self.handler.close()
        if unfinished:
            raise LifecycleError(
                f"consumer {self.entry_id}: {len(unfinished)} handler(s) did not finish within "
                f"stop_timeout {self.stop_timeout_s}s; their messages were returned to the "
                f"queue: {', '.join(unfinished)}"
            )

    async def _drain(self) -> list[str]:
        """Wait for in-flight handlers; cancel the late ones, returning their messages
        (cancelled again each ``stop_timeout`` while one runs on: a library may have
        swallowed the cancellation, see ``tasks.py``)."""
        busy = list(self._active)
        if not busy:
            return []
        _, pending = await asyncio.wait(busy, timeout=self.stop_timeout_s)
        unfinished = []
        for task in pending:
            delivery = self._active.get(task)
            if delivery is not None:
                unfinished.append(delivery.message.id)
        await cancel_and_wait(pending, self.stop_timeout_s)
        return unfinished
