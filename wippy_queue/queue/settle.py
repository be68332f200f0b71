"""Settling: what happens to a delivery once its outcome is known, in one place.

- ``Outcome`` (``queue/outcome.py``): ack, or a nack with its ``Reason``; settling
  it is an ``Action``: ack, nack (retry) or dead-letter.
- ``RetryPolicy``: what a nack becomes (a retry after a delay, or a dead letter at
  ``max_attempts``) and how long a retried message waits (a growing retry delay, or
  the deny back-off).
- ``Settler``: the one path every delivery of a consumer is settled through: now,
  or once the settle hooks (the audit record) are written; a refused or failed
  settle gives the message back untried. It holds the consumer's credit for each
  delivery until it is settled, so backpressure holds across deferred settles; an
  ack that a group-committing driver has taken over gives its credit back at once
  (it commits with the next batch while the consumer takes the next messages).
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Protocol

from wippy_queue.queue.driver import Delivery, LostDelivery
from wippy_queue.queue.message import EXPIRES_AT, Message
from wippy_queue.queue.middleware import Job
from wippy_queue.queue.outcome import BACKED_OFF, FINAL, Action, Outcome, Reason
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

    def lost(self, job: Job, action: Action, error: str) -> None:
        """The settle could not be done: the broker no longer honours this delivery."""


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """A queue's rule for failed attempts.

    A failed attempt (the handler raised, returned false, timed out or nacked without
    a delay) waits its queue's ``retry_delay``: ``retry_initial_s`` growing by
    ``retry_factor`` per attempt to at most ``retry_max_s`` (jitter included), each
    delay moved at random by up to ``retry_jitter`` of itself; all zero is Wippy's
    immediate requeue. A handler's own ``nack(delay_s=...)`` wins. A denied message
    backs off instead (``deny_initial_s`` doubling to ``deny_max_s``), so a message no
    consumer may take never spins the CPU; so does one that cannot be decoded, and one
    whose security check failed (``BACKED_OFF``).
    """

    dead_letter: Queue | None = None
    max_attempts: int = 0
    deny_initial_s: float = 0.1
    deny_max_s: float = 5.0
    retry_initial_s: float = 0.1
    retry_max_s: float = 30.0
    retry_factor: float = 2.0
    retry_jitter: float = 0.1
    #: where the jitter comes from (a seeded one in tests); None: the ``random`` module
    rng: random.Random | None = field(default=None, compare=False, repr=False)

    def action(self, attempt: int, outcome: Outcome) -> Action:
        if outcome.ack:
            return Action.ACK
        if outcome.reason in FINAL:  # never retried, whatever the attempt
            return Action.DEAD_LETTER if self.dead_letter is not None else Action.DROP
        if self.dead_letter is not None and attempt >= self.max_attempts:
            return Action.DEAD_LETTER
        return Action.NACK

    def delay_s(self, attempt: int, outcome: Outcome) -> float:
        if outcome.delay_s is not None:
            return outcome.delay_s
        if outcome.reason in BACKED_OFF:
            return self.backoff_s(attempt)
        return self.retry_delay_s(attempt)

    def backoff_s(self, attempt: int) -> float:
        return _grown(self.deny_initial_s, 2.0, attempt, self.deny_max_s)

    def retry_delay_s(self, attempt: int) -> float:
        """Seconds a message waits after its failed attempt number ``attempt`` (1-based)."""
        if self.retry_max_s <= 0:
            return 0.0
        base = _grown(self.retry_initial_s, self.retry_factor, attempt, self.retry_max_s)
        if self.retry_jitter:
            spread = base * self.retry_jitter
            base += (self.rng or random).uniform(-spread, spread)
        return min(max(base, 0.0), self.retry_max_s)


def _grown(initial_s: float, factor: float, attempt: int, max_s: float) -> float:
    """``initial_s`` grown by ``factor`` per attempt after the first, at most ``max_s``
    (a message retried forever reaches attempt numbers whose power overflows)."""
    try:
        return min(initial_s * factor ** max(attempt - 1, 0), max_s)
    except OverflowError:
        return max_s


def dead_letter_message(
    delivery: Delivery, outcome: Outcome, queue_id: str, consumer: str, ttl_s: float | None = None
) -> Message:
    """The copy that goes to the dead-letter queue: same id, body and headers, plus why.

    The original queue's expiry does not follow it: ``ttl_s`` (the dead-letter queue's
    own) starts afresh.
    """
    original = delivery.message
    headers = {k: v for k, v in original.headers.items() if k != EXPIRES_AT}
    now = time.time()
    if ttl_s is not None:
        headers[EXPIRES_AT] = round(now + ttl_s, 3)
    headers.update(
        {
            DL_REASON: outcome.reason,
            DL_QUEUE: queue_id,
            DL_CONSUMER: consumer,
            DL_TIME: now,
            DL_ATTEMPTS: delivery.attempt,
            DL_MESSAGE_ID: original.id,
        }
    )
    if outcome.error:
        headers[DL_ERROR] = outcome.error[:2000]
    return Message(original.id, original.body, headers)


class Settler:
    """Settles one consumer's deliveries; every path goes through here.

    ``done`` is called once per delivery, when it is settled, given back or lost.
    ``on_error`` hears of a settle that failed (the broker of the dead-letter queue
    is down): the message has been given back, the consumer decides what next. A
    settle the broker no longer honours (``LostDelivery``: the message comes again)
    is logged and told to the hooks (the audit trail), and the consumer goes on.
    Drivers shield their settles from cancellation (the contract suite checks it), so
    a stop never leaves one half done.
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
        done: Callable[[Delivery], None],
        on_error: Callable[[Exception], None],
    ) -> None:
        self.consumer_id = consumer_id
        self.queue = queue
        self.policy = policy
        self.auto_ack = auto_ack
        #: settle in the background (drivers that group-commit): the worker goes on
        self.pipelined = pipelined
        self._hooks = tuple(hooks)
        self._done_callback = done
        self._on_error = on_error
        self._groups: dict[asyncio.Future[Any], list[_Decided]] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        #: deliveries whose settle has begun (their credit is returned by that settle)
        self._taken: set[Delivery] = set()
        #: settles in the background: waiting on a hook (an audit write), or pipelined
        self.pending = 0
        #: pipelined acks not made yet (``ack_then``), and what ``drain`` waits on
        self._acking = 0
        self._acked_all: asyncio.Future[None] | None = None

    async def settle(self, job: Job, delivery: Delivery, started: float, outcome: Outcome) -> None:
        """Settle ``delivery`` with ``outcome``: now, or once the hooks' writes are done.
        (``started`` before ``outcome``: the consumer binds the first three positionally,
        a keyword in a per-message ``partial`` costs a dict per call.)"""
        self._taken.add(delivery)
        if self.auto_ack and delivery.settled:  # acked on delivery, before the handler ran
            self._done(delivery)
            return
        action = Action.ACK if outcome.ack else self.policy.action(delivery.attempt, outcome)
        decided = _Decided(job, delivery, outcome, action)
        waits = self._ask_hooks(decided, started) if self._hooks else ()
        if isinstance(waits, Exception):
            await self._refused(decided, waits)
        elif waits:
            self._defer(decided, list(waits))
        elif self.pipelined:  # committed with other workers' settles
            self.pending += 1
            if action is Action.ACK:  # no task of its own: the driver calls back
                self._acking += 1
                try:
                    delivery.ack_then(partial(self._acked, decided))
                except Exception as err:  # refused at once (e.g. its driver has stopped)
                    self._acked(decided, err)
                # decided, and the driver's to commit: the consumer may take the next
                # messages while it does (the delivery stays taken: a stop cannot give
                # it back). Its lease is held until the commit, so a queue may show up
                # to one more batch of acks in flight meanwhile.
                self._done_callback(delivery)
            else:
                self._spawn(self._pipelined(decided))
        else:  # no hooks, or done (the record is written): settle now
            await self._apply_or_give_back(decided)

    async def _pipelined(self, decided: _Decided) -> None:
        try:
            await self._apply_or_give_back(decided)
        finally:
            self.pending -= 1

    def _acked(self, decided: _Decided, error: BaseException | None) -> None:
        """A pipelined ack was made (``error`` None) or failed: as ``_apply_or_give_back``
        (the ack began, so there is nothing to give back; its credit is back already)."""
        self.pending -= 1
        self._acking -= 1
        if isinstance(error, LostDelivery):
            self._lost(decided, error)
        elif error is not None:
            self._settle_failed(decided.delivery, error)
        self._taken.discard(decided.delivery)
        if isinstance(error, Exception) and not isinstance(error, LostDelivery):
            self._on_error(error)
        if not self._acking and self._acked_all is not None and not self._acked_all.done():
            self._acked_all.set_result(None)

    def _settle_failed(self, delivery: Delivery, err: BaseException) -> None:
        log.error(
            "consumer %s: settling message %s failed: %s: %s; it goes back to the queue",
            self.consumer_id,
            delivery.message.id,
            type(err).__name__,
            err,
        )

    def _spawn(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _refused(self, decided: _Decided, err: Exception) -> None:
        """A hook refused the settle. While one is down (the audit trail cannot be
        written: its gate is closed) the message goes back untried. Otherwise the hook
        failed on this message alone: it goes back as a failed attempt, backed off so
        that it cannot spin, and is never acked or dead-lettered unrecorded."""
        delivery = decided.delivery
        log.error(
            "consumer %s: message %s given back: %s: %s",
            self.consumer_id,
            delivery.message.id,
            type(err).__name__,
            err,
        )
        if any(h.gate is not None and not h.gate.is_set() for h in self._hooks):
            await self.give_back(delivery)
            return
        delay_s = self.policy.backoff_s(delivery.attempt)
        retry = Outcome.nack(Reason.MIDDLEWARE_ERROR, str(err), delay_s)
        await self._apply_or_give_back(_Decided(decided.job, delivery, retry, Action.NACK))

    async def give_back(self, delivery: Delivery) -> Exception | None:
        """Back to the queue untried (prefetched, cut off by a stop, refused): no attempt.
        A release that fails is logged and returned, not raised: whoever gives back
        several goes on with the rest (the broker hands the message out again once its
        lease or channel ends)."""
        try:
            if not delivery.settled:
                await delivery.release()
        except LostDelivery as err:  # it comes back by itself
            log.info("consumer %s: %s", self.consumer_id, err)
        except Exception as err:
            log.error(
                "consumer %s: giving message %s back failed: %s: %s",
                self.consumer_id,
                delivery.message.id,
                type(err).__name__,
                err,
            )
            return err
        finally:
            self._done(delivery)
        return None

    async def cut_off(self, delivery: Delivery) -> None:
        """Its handler was cancelled (a stop): give it back unless its settle has begun."""
        if delivery not in self._taken:
            await self.give_back(delivery)

    def _done(self, delivery: Delivery) -> None:
        self._taken.discard(delivery)
        self._done_callback(delivery)

    async def _apply_or_give_back(self, decided: _Decided) -> None:
        delivery = decided.delivery
        try:
            await self.apply(delivery, decided.outcome, decided.action)
        except asyncio.CancelledError:
            # Cut off (a stop) before the driver had the settle, e.g. while the dead
            # letter waited for room in a full queue: back to the queue, never stranded
            # (``cut_off`` leaves a settle that has begun to that settle).
            if not delivery.settled:
                await asyncio.shield(self.give_back(delivery))
            raise
        except LostDelivery as err:
            self._lost(decided, err)
        except Exception as err:
            self._settle_failed(delivery, err)
            await self.give_back(delivery)
            self._on_error(err)
            return
        self._done(delivery)

    def _lost(self, decided: _Decided, err: LostDelivery) -> None:
        log.warning(
            "consumer %s: message %s could not be %s: %s",
            self.consumer_id,
            decided.delivery.message.id,
            "acked" if decided.action is Action.ACK else f"settled ({decided.action})",
            err,
            extra={"fields": {"consumer": self.consumer_id, "message_id": decided.job.message.id}},
        )
        for hook in self._hooks:
            try:
                hook.lost(decided.job, decided.action, str(err))
            except Exception:
                log.exception("consumer %s: recording a lost settle failed", self.consumer_id)

    async def apply(self, delivery: Delivery, outcome: Outcome, action: Action) -> None:
        if action is Action.ACK:
            await delivery.ack()
        elif action is Action.DEAD_LETTER:
            await self._dead_letter(delivery, outcome)
        elif action is Action.DROP:
            log.warning(
                "consumer %s: message %s dropped unhandled (%s)",
                self.consumer_id,
                delivery.message.id,
                outcome.reason,
            )
            await delivery.nack(requeue=False, reason=outcome.reason)
        else:
            delay_s = self.policy.delay_s(delivery.attempt, outcome)
            await delivery.nack(requeue=True, delay_s=delay_s, reason=outcome.reason)

    async def _dead_letter(self, delivery: Delivery, outcome: Outcome) -> None:
        target = self.policy.dead_letter
        assert target is not None
        copy = dead_letter_message(delivery, outcome, self.queue.id, self.consumer_id, target.ttl_s)
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

    def _ask_hooks(self, decided: _Decided, started: float) -> list[Awaitable[None]] | Exception:
        """Ask every settle hook (the audit record): what is left to wait for, or why not."""
        duration_s = time.monotonic() - started
        waits = []
        try:
            for hook in self._hooks:
                wait = hook.before_settle(decided.job, decided.outcome, decided.action, duration_s)
                if wait is not None:
                    waits.append(wait)
        except Exception as err:
            return err
        return waits

    def _defer(self, decided: _Decided, waits: list[Awaitable[None]]) -> None:
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
        group.append(decided)

    def _ready(self, future: asyncio.Future[Any]) -> None:
        items = self._groups.pop(future, [])
        error = "cancelled" if future.cancelled() else future.exception()
        self._spawn(self._settle_group(items, error))

    async def _settle_group(self, items: list[_Decided], error: object | None) -> None:
        for decided in items:
            self.pending -= 1
            if error is not None:
                # e.g. the audit trail cannot be written: nothing is acked unaudited
                log.error(
                    "consumer %s: message %s given back unsettled: %s",
                    self.consumer_id,
                    decided.delivery.message.id,
                    error,
                )
                failed = await self.give_back(decided.delivery)
                if failed is not None:  # (the rest of the group still goes back)
                    self._on_error(failed)
            else:
                await self._apply_or_give_back(decided)

    async def drain(self, timeout_s: float) -> None:
        """Wait (bounded) for every deferred settle; give back whatever is still waiting.
        A settle still running after that (a dead letter waiting for room in a full
        queue) is given ``timeout_s`` more, then cut off: its message goes back."""
        waiting: set[asyncio.Future[Any]] = {*self._groups, *self._tasks}
        if self._acking:
            self._acked_all = asyncio.get_running_loop().create_future()
            waiting.add(self._acked_all)
        if waiting:
            await asyncio.wait(waiting, timeout=timeout_s)
        for future, items in list(self._groups.items()):
            # (never cancelled: an audit batch's future is shared with other consumers)
            future.remove_done_callback(self._ready)
            del self._groups[future]
            self._spawn(self._settle_group(items, "not written within the stop timeout"))
        if self._tasks:
            _, late = await asyncio.wait(set(self._tasks), timeout=timeout_s)
            for task in late:
                task.cancel()  # (see _apply_or_give_back: back to the queue)
            if late:
                await asyncio.wait(late, timeout=timeout_s)


@dataclass(slots=True)
class _Decided:
    """A delivery whose outcome, and what settling it does, are decided."""

    job: Job
    delivery: Delivery
    outcome: Outcome
    action: Action
