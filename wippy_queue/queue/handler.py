"""The handler protocol and how a handler's result maps to ack or nack."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any

from wippy_queue.queue.outcome import ACK, Outcome, Reason


class Handler(ABC):
    """One consumer's instance of a function entry (state such as a thread pool or
    Lua states is per consumer, sized by its ``concurrency``)."""

    def __init__(self, entry_id: str) -> None:
        self.entry_id = entry_id

    async def start(self, *, concurrency: int, timeout_s: float | None = None) -> None:
        """Prepare per-worker resources before the first call. ``timeout_s`` is given
        only to a handler with a ``backlog``: its calls may wait to start, so it times
        each from its start; the consumer times every other handler's calls."""

    def backlog(self, prefetch: int) -> int:
        """How many calls beyond ``concurrency`` may wait inside the handler for a
        worker (0: none). A thread-backed handler takes the next waiting call the moment
        a thread frees, without a round trip through the event loop (two thread
        wake-ups, the larger part of a sync call's cost); the consumer then hands it up
        to ``concurrency + backlog`` calls at once, ``concurrency`` of them running."""
        return 0

    def drop_backlog(self) -> None:
        """Cancel the calls still waiting to start (a stop gives their messages back
        untried instead of running them first)."""

    async def close(self) -> None:
        """Free what ``start`` made."""

    @abstractmethod
    async def call(self, data: Any) -> Any:
        """Run the function on a message's decoded body; return its raw result."""


def outcome_of(result: Any) -> Outcome:
    """Wippy's rule: a returned value acks; ``False`` or ``(None, err)`` nacks."""
    if result is False:
        return Outcome.nack(Reason.RETURNED_FALSE, "handler returned false")
    if (
        isinstance(result, tuple)
        and len(result) == 2
        and result[0] is None
        and result[1] is not None
    ):
        return Outcome.nack(Reason.HANDLER_ERROR, str(result[1]))
    return ACK
