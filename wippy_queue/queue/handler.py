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

    async def start(self, *, concurrency: int) -> None:
        """Prepare per-worker resources before the first call."""

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
