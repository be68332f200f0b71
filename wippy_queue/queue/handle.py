"""The message as a handler sees it: ``wippy_queue.current_message()``.

Settling is single-shot: the first ``ack``/``nack`` wins, a second raises
SettleError, and once the handler has returned the handle is released and every
method raises. ``ack``/``nack`` are plain methods so that async handlers, sync
handlers (in a worker thread) and Lua all use them the same way; the actual
settle runs on the event loop. A thread's decision goes to the loop ahead of its
handler's result; one that arrives after the call was given up on (timed out, cut
off by a stop) is logged, not settled a second time.
"""

from __future__ import annotations

import asyncio
import logging
import math
import threading
from collections.abc import Awaitable, Callable
from typing import Any, NoReturn

from wippy_queue.errors import SettleError
from wippy_queue.queue.message import ATTEMPTS, Headers, HeaderValue, Message
from wippy_queue.queue.outcome import ACK, Outcome, Reason

Settle = Callable[[Outcome], Awaitable[None]]

log = logging.getLogger(__name__)


class MessageHandle:
    __slots__ = (
        "_attempt",
        "_decision",
        "_loop",
        "_loop_thread",
        "_message",
        "_pending",
        "_released",
        "_settle",
        "data",
        "queue_id",
    )

    def __init__(
        self,
        message: Message,
        data: Any,
        queue_id: str,
        settle: Settle,
        loop: asyncio.AbstractEventLoop,
        attempt: int = 1,
    ) -> None:
        self._message = message
        self._attempt = attempt
        self.data = data
        self.queue_id = queue_id
        #: None once released: a handle kept past its handler holds nothing of the
        #: consumer's, and breaks the cycle job -> handle -> settle -> job (no GC work)
        self._settle: Settle | None = settle
        self._loop = loop
        self._loop_thread = threading.get_ident()
        self._decision: Outcome | None = None
        self._pending: asyncio.Future[None] | None = None
        self._released = False

    def _live(self) -> Message:
        if self._released:
            self._gone()
        return self._message

    def _gone(self) -> NoReturn:
        raise SettleError(
            f"message {self._message.id} was released when its handler returned; "
            "use it only inside the handler"
        )

    @property
    def id(self) -> str:
        return self._live().id

    @property
    def body(self) -> bytes:
        return self._live().body

    @property
    def attempt(self) -> int:
        """This delivery's attempt (1 for the first), from the broker's own counter."""
        self._live()
        return self._attempt

    def header(self, key: str) -> HeaderValue | None:
        """A header; ``attempts`` is this delivery's attempt (Wippy's header name)."""
        if key == ATTEMPTS:
            return self.attempt
        return self._live().headers.get(key)

    def headers(self) -> Headers:
        return {**self._live().headers, ATTEMPTS: self._attempt}

    def ack(self) -> None:
        self._decide(ACK)

    def nack(self, reason: str = "", *, delay_s: float | None = None) -> None:
        if delay_s is not None and (
            isinstance(delay_s, bool)
            or not isinstance(delay_s, int | float)
            or not 0 <= delay_s < math.inf
        ):
            raise SettleError(f"nack delay_s must be seconds >= 0, got {delay_s!r}")
        self._decide(Outcome.nack(Reason.NACK, reason or None, delay_s))

    @property
    def decision(self) -> Outcome | None:
        return self._decision

    def _decide(self, outcome: Outcome) -> None:
        message = self._live()
        if self._decision is not None:
            done = "acked" if self._decision.ack else "nacked"
            raise SettleError(f"message {message.id} was already {done}; settle a message once")
        settle = self._settle
        if settle is None:  # released since _live() (a timed-out handler's thread)
            self._gone()
        self._decision = outcome
        if threading.get_ident() == self._loop_thread:
            self._pending = self._loop.create_task(settle(outcome))  # type: ignore[arg-type]
        else:  # decided on the loop, in order with finish(): never settled twice
            self._loop.call_soon_threadsafe(self._decided_in_thread, settle, outcome)

    def _decided_in_thread(self, settle: Settle, outcome: Outcome) -> None:
        """On the loop: a handler thread's ack or nack. Before its handler's result it
        is settled (its thread posted it first); after finish() (the call was given up
        on, e.g. timed out) the message is settled already and the decision too late."""
        if self._released:  # (finish() settled it, or a stop gave it back)
            log.warning(
                "message %s: its handler's %s came after the handler was given up on; "
                "the message was settled without it",
                self._message.id,
                "ack" if outcome.ack else "nack",
            )
            return
        self._pending = self._loop.create_task(settle(outcome))  # type: ignore[arg-type]

    async def finish(self, outcome: Outcome) -> Outcome:
        """Release the handle and settle with ``outcome`` unless the handler already did."""
        self._released = True
        settle, self._settle = self._settle, None
        if self._pending is None:
            assert settle is not None, "finish() a handle once"
            self._decision = outcome
            await settle(outcome)
        else:
            await self._pending
        assert self._decision is not None
        return self._decision

    def release(self) -> None:
        self._released = True
        self._settle = None
